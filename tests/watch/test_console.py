"""study/watch/console.py: the compact console, scripted (plain and on a pseudo-terminal) and as a user of the
smoke study sees it, piped and on a terminal (where the live report is watched too)."""

import io
import json
import os
import pty
import re
import subprocess
import sys
import time

import pandas as pd
import pytest

from study.analysis.page import REPORT_FILE
from study.watch.console import StudyConsole, trial_line
from tests.helpers import REPO
from tests.watch.clock import Clock

ESCAPE = re.compile(r"\x1b")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # every control character but tab and newline
CSI = re.compile(r"\x1b\[(\??)([0-9;]*)([A-Za-z])")


def row(trial_id, depth, status="completed", val_acc=0.8, seconds=3.0, epochs_run=2, **extra):
    return {
        "trial_id": trial_id,
        "unfreeze_depth": depth,
        "status": status,
        "val_acc": val_acc,
        "train_time_s": seconds,
        "epochs_run": epochs_run,
        "epochs": 4,
        "error": "",
        **extra,
    }


def screen(raw: str) -> list[str]:
    """What a terminal shows after `raw`: the few controls rich's Live display uses (cursor up, erase line,
    carriage return; colours and cursor visibility ignored). Any other control sequence fails the test."""
    lines, row_, col = [""], 0, 0
    i = 0
    while i < len(raw):
        char = raw[i]
        if char == "\x1b":
            match = CSI.match(raw, i)
            assert match, f"unexpected escape sequence {raw[i : i + 10]!r}"
            private, args, command = match.groups()
            if command == "A":
                row_ = max(0, row_ - int(args or 1))
            elif command == "K":
                assert args == "2", f"unexpected erase {match.group()!r}"
                lines[row_] = ""
            else:
                assert command == "m" or (private and args == "25"), f"unexpected control {match.group()!r}"
            i = match.end()
            continue
        if char == "\r":
            col = 0
        elif char == "\n":
            row_ += 1
            col = 0
            lines += [""] * (row_ + 1 - len(lines))
        else:
            line = lines[row_].ljust(col)
            lines[row_] = line[:col] + char + line[col + 1 :]
            col += 1
        i += 1
    return [line.rstrip() for line in lines]


def under_pty(command: list[str], env: dict, timeout: float, watch=None) -> tuple[int, str]:
    """Run `command` on a pseudo-terminal (120 columns); its output as the terminal received it. `watch` is
    called every half second while it runs."""
    master, child = pty.openpty()
    env = {**os.environ, **env, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "50"}
    process = subprocess.Popen(command, stdin=child, stdout=child, stderr=child, env=env, cwd=REPO, close_fds=True)
    os.close(child)
    os.set_blocking(master, False)
    received, deadline, last_watch = b"", time.monotonic() + timeout, 0.0
    try:
        while True:
            try:
                data = os.read(master, 65536)
                if not data:
                    break
                received += data
            except BlockingIOError:
                if process.poll() is not None:
                    time.sleep(0.2)
                    try:
                        received += os.read(master, 65536)
                    except OSError:
                        pass
                    break
                time.sleep(0.05)
            except OSError:  # the child closed the terminal
                break
            if watch and time.monotonic() - last_watch > 0.5:
                watch()
                last_watch = time.monotonic()
            assert time.monotonic() < deadline, "timed out: " + received.decode(errors="replace")[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    return process.wait(), received.decode(errors="replace")


# --- the console, scripted ---------------------------------------------------------------------------------------


def test_plain_console_prints_each_trial_and_a_status_line_at_most_every_30_s():
    clock, stream = Clock(), io.StringIO()
    console = StudyConsole(5, ["unfreeze_depth"], stream=stream, clock=clock)
    assert not console.live  # a StringIO is no terminal
    console.start()
    stopped = "below the rung's median at epoch 2"
    for now, event in [
        (5, lambda: console.update(running=2)),
        (12, lambda: console.trial_finished(row("a_00000", 0, val_acc=0.61, seconds=0.4))),
        (20, lambda: console.update(running=2)),
        (31, lambda: console.update(running=2)),  # 31 s since the start, a trial finished since: a status line
        (33, lambda: console.trial_finished(row("a_00001", "all", "stopped_early", 0.55, 75.0, 1))),
        (34, lambda: console.trial_finished(row("a_00002", 2, "stopped_early", 0.58, 9.0, 2, stop_reason=stopped))),
        (50, lambda: console.update(running=1)),  # 19 s after the last status line: none
        (62, lambda: console.update(running=1)),
        (63, lambda: console.trial_finished(row("a_00003", 4, "error", float("nan"), float("nan"), 0, error="E: x"))),
        (93, lambda: console.update(running=1)),
        (200, lambda: console.update(running=1)),  # nothing new for 107 s: no line
        (392, lambda: console.update(running=1)),
        (393, lambda: console.update(running=1)),  # nothing new for 300 s: a line saying the study is alive
        (400, lambda: None),
    ]:
        clock.now = now
        event()
    console.close()
    lines = stream.getvalue().splitlines()
    assert not CONTROL.search(stream.getvalue())
    best = "best val_acc 0.6100 (unfreeze_depth=0) | 1 on the front"  # the one completed trial
    assert lines == [
        "[1/5] a_00000 unfreeze_depth=0: completed, val_acc 0.6100, train 0.4 s",
        f"1/5 trials: 1 completed, 0 stopped, 0 errors, 2 running, 2 pending | elapsed 31 s | ~2m04s left | {best}",
        "[2/5] a_00001 unfreeze_depth=all: stopped early, val_acc 0.5500, train 1m15s (the scheduler stopped it "
        "after epoch 1/4)",
        f"[3/5] a_00002 unfreeze_depth=2: stopped early, val_acc 0.5800, train 9.0 s ({stopped})",
        f"3/5 trials: 1 completed, 2 stopped, 0 errors, 1 running, 1 pending | elapsed 1m02s | ~41 s left | {best}",
        "[4/5] a_00003 unfreeze_depth=4: error: E: x",
        f"4/5 trials: 1 completed, 2 stopped, 1 errors, 1 running, 0 pending | elapsed 1m33s | ~23 s left | {best}",
        f"4/5 trials: 1 completed, 2 stopped, 1 errors, 1 running, 0 pending | elapsed 6m33s | ~1m38s left | {best}",
        f"4/5 trials: 1 completed, 2 stopped, 1 errors, 0 running, 1 pending | elapsed 6m40s | ~1m40s left | {best}",
    ]


def test_trial_line_names_every_searched_setting_and_the_error():
    line = trial_line(
        row("x", 3, "error", 0.5, 2.0, 1, lr=0.00031622, error="RuntimeError: out of memory"),
        ["unfreeze_depth", "lr"],
        2,
        None,
    )
    assert (
        line == "[2] x unfreeze_depth=3 lr=0.0003162: error, val_acc 0.5000, train 2.0 s: RuntimeError: out of memory"
    )


LIVE_SCRIPT = """
import sys, time
from study.core.config import TrialConfig
from study.watch.console import StudyConsole
console = StudyConsole(3, ["unfreeze_depth"], period_s=30)
assert console.live, "a pseudo-terminal is a terminal"
console.start()
for i, depth in enumerate([0, 2, "all"]):
    time.sleep(1.3)  # rich refreshes the live line every second
    console.update(running=1)
    console.trial_finished({"trial_id": f"t{i}", "unfreeze_depth": depth, "status": "completed",
                            "val_acc": 0.5 + i / 10, "train_time_s": 3.0, "epochs_run": 2, "epochs": 2})
    print(f"a worker's line {i}")  # other output prints above the live line
time.sleep(1.3)
console.close()
print("Study finished: the summary")
"""


def test_live_console_on_a_terminal_updates_one_line_in_place_and_leaves_the_summary():
    code, raw = under_pty([sys.executable, "-c", LIVE_SCRIPT], {"PYTHONPATH": str(REPO)}, timeout=60)
    assert code == 0, raw[-2000:]
    assert raw.count("\x1b[2K") >= 4  # the status line, erased and redrawn in place
    shown = [line for line in screen(raw) if line]
    trial_lines = [line for line in shown if line.startswith("[")]
    assert len(trial_lines) == 3 and all("completed, val_acc" in line for line in trial_lines)
    status = [line for line in shown if "trials:" in line]
    assert len(status) == 1 and status[0].startswith("3/3 trials: 3 completed") and "best val_acc 0.7000" in status[0]
    assert shown[-2:] == [status[0], "Study finished: the summary"]
    assert [line for line in shown if line.startswith("a worker's line")] == [f"a worker's line {i}" for i in range(3)]


# --- the study's console as a user sees it --------------------------------------------------------------------


@pytest.mark.slow
def test_piped_smoke_study_prints_one_line_per_trial_and_no_control_characters(smoke_study):
    output = smoke_study.result.stdout
    assert not CONTROL.search(output) and not ESCAPE.search(smoke_study.result.stderr)
    lines = output.splitlines()
    trials = pd.read_parquet(smoke_study.out / "trials.parquet")
    trial_lines = [line for line in lines if re.match(r"\[\d/3\] ", line)]
    assert sorted(line.split()[1] for line in trial_lines) == sorted(trials["trial_id"])
    status_lines = [line for line in lines if re.match(r"\d/3 trials: ", line)]
    wall = json.loads((smoke_study.out / "study.json").read_text())["wall_time_s"]
    assert 1 <= len(status_lines) <= wall // 30 + 1 and status_lines[-1].startswith("3/3 trials: ")
    first = lines[:6]
    assert any(line.startswith("Ray's logs: ") and line.endswith("/logs") for line in first)
    assert f"Report: {(smoke_study.out / REPORT_FILE).resolve()} (rewritten as trials finish)" in first
    assert f"TensorBoard: tensorboard --logdir {(smoke_study.out / 'ray' / 'tune').resolve()}" in first
    assert any(line.startswith("Ray dashboard: http://127.0.0.1:") for line in first)
    assert not [line for line in lines if "Trial status" in line or "│" in line or "INFO" in line]
    fixed = 6 + 7 + len(pd.read_csv(smoke_study.out / "pareto.csv"))  # first lines; summary, its front's rows
    assert len(lines) <= fixed + len(trial_lines) + len(status_lines), output


@pytest.mark.slow
def test_smoke_study_on_a_terminal_shows_a_live_line_and_a_live_report(tmp_path):
    out = tmp_path / "results"
    versions: list[str] = []

    def keep_report():
        path = out / REPORT_FILE
        if path.exists():
            page = path.read_text()
            if not versions or versions[-1] != page:
                versions.append(page)

    code, raw = under_pty(
        [sys.executable, "-m", "study.run", "--space", "smoke", "--out", str(out)],
        {"PYTHONPATH": str(REPO)},
        timeout=600,
        watch=keep_report,
    )
    assert code == 0, raw[-3000:]
    assert raw.count("\x1b[2K") >= 3
    shown = [line for line in screen(raw) if line]
    assert len([line for line in shown if re.match(r"\[\d/3\] ", line)]) == 3
    assert [line for line in shown if re.match(r"\d/3 trials: ", line)][-1].startswith("3/3 trials: ")
    end = shown.index(next(line for line in shown if line.startswith("Study finished in ")))
    assert shown[-1].startswith("Report: ") and "Pareto front" in shown[end + 1]
    keep_report()
    assert any("Partial report" in page and 'http-equiv="refresh"' in page for page in versions[:-1])
    assert "http-equiv" not in versions[-1] and "Partial report" not in versions[-1]
