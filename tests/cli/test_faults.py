"""Nothing lost: Ctrl-C exports the finished trials, failing trials are retried (--max-failures) and recorded,
out of memory is a trial error with a clear message; and the security defaults hold in the package's source.

Raising and NaN trials, and a driver killed mid-way, are in tests/test_orchestration.py.
"""

import ast
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from study.cli import run
from study.core.config import TrialConfig
from study.trial import train
from study.tune.records import describe_error
from tests.helpers import REPO, run_module

SMALL = (
    "fixed: {backbone: tf_efficientnet_lite0, data: digits, img_size: 32, train_fraction: 0.3, optimizer: adamw, "
    "lr: 0.003, batch_size: 64}\n"
)


def start_study(*args: str) -> subprocess.Popen:
    """`python -m study.run ARGS` as a user starts it, its output collected."""
    return subprocess.Popen(
        [sys.executable, "-m", "study.run", *args, "--no-dashboard"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a command
    )


def wait_until(driver: subprocess.Popen, ready, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert driver.poll() is None, f"the study ended before {what}: " + "".join(driver.communicate())[-3000:]
        assert time.monotonic() < deadline, f"the study stalled before {what}"
        time.sleep(0.1)


def finished_rows(out) -> int:
    try:
        return len(pd.read_csv(out / "trials.csv"))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


def stop(driver: subprocess.Popen, *signals: signal.Signals) -> tuple[str, str]:
    """Send the signals to the study this test started, then collect its output. SIGINT goes to its process group
    (Ray's processes included), as Ctrl-C in a terminal sends it; SIGTERM to the driver alone, as `kill PID`."""
    try:
        for number, sent in enumerate(signals):
            if number:
                time.sleep(0.5)
            if sent == signal.SIGINT:
                os.killpg(driver.pid, sent)
            else:
                driver.send_signal(sent)
        return driver.communicate(timeout=180)
    finally:
        driver.kill()


# Four trials, two at a time (one CPU each on two cores), three epochs each, no ASHA: when the first trial finishes,
# others are training; every trial that is a result ran all three epochs.
CONCURRENT = SMALL + "dimensions: {unfreeze_depth: {grid: [0, 1, 2, 3]}}\nmax_epochs: 3\nasha: false\n"


@pytest.mark.slow
@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_with_concurrent_trials_keeps_only_finished_trials_and_the_study_resumes(tmp_path, sent):
    space = tmp_path / "space.yaml"
    space.write_text(CONCURRENT)
    out = tmp_path / "study"
    driver = start_study("--space", str(space), "--out", str(out), "--max-concurrent", "2")
    wait_until(driver, lambda: finished_rows(out) >= 1, "a trial finished")
    stdout, stderr = stop(driver, sent)
    assert driver.returncode == 128 + sent, stdout[-3000:] + stderr[-3000:]
    assert f"continue the study with: python -m study.run --resume {out}" in stderr
    assert "Traceback" not in stderr and "*** SIG" not in stderr and "PC: @" not in stderr, stderr[-3000:]

    trials = pd.read_csv(out / "trials.csv")
    # finished trials only: none that the signal cut short (it would show as stopped with fewer epochs)
    assert 1 <= len(trials) < 4 and (trials["status"] == "completed").all(), trials.to_string()
    assert (trials["epochs_run"] == 3).all() and trials["val_acc"].between(0, 1).all()
    assert (out / "pareto.csv").exists() and (out / "pareto.html").exists() and (out / "report.html").exists()
    study = json.loads((out / "study.json").read_text())
    assert "finished" not in study and len(study["interrupted"]) == 1 and study["interrupted_by"] == [sent.name]
    assert sum(study["trials"].values()) == len(trials)

    result = run_module("study.run", "--resume", str(out), "--no-dashboard")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{len(trials)} trial(s) finished before the interruption are kept" in result.stdout
    after = pd.read_csv(out / "trials.csv").set_index("trial_id")
    assert len(after) == 4 and (after["status"] == "completed").all() and (after["epochs_run"] == 3).all()
    assert after.loc[trials["trial_id"], "started_at"].tolist() == trials["started_at"].tolist()  # kept, not run again
    assert sorted(after["unfreeze_depth"].astype(int)) == [0, 1, 2, 3]
    assert "finished" in json.loads((out / "study.json").read_text())


@pytest.mark.slow
def test_ctrl_c_before_the_first_trial_finished_and_a_second_ctrl_c_record_the_interruption(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(CONCURRENT)
    out = tmp_path / "study"
    driver = start_study("--space", str(space), "--out", str(out), "--max-concurrent", "2")
    wait_until(driver, lambda: (out / "study.json").exists(), "study.json was written")
    stdout, stderr = stop(driver, signal.SIGINT, signal.SIGINT)  # Ctrl-C twice: stop at once
    assert driver.returncode == 130, stdout[-3000:] + stderr[-3000:]
    assert "Traceback" not in stderr and f"continue the study with: python -m study.run --resume {out}" in stderr
    study = json.loads((out / "study.json").read_text())
    assert "finished" not in study and study["interrupted_by"] == ["SIGINT"]
    assert finished_rows(out) == 0  # no trial had finished: none is a result

    result = run_module("study.run", "--resume", str(out), "--no-dashboard")
    if result.returncode == 2:  # stopped before Ray saved any experiment state: nothing to continue from
        assert "holds no Ray Tune experiment state" in result.stderr and "--overwrite" in result.stderr
    else:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert finished_rows(out) == 4


@pytest.mark.slow
def test_a_failing_trial_is_retried_then_recorded_and_overwrite_replaces_a_study(tmp_path):
    space = tmp_path / "space.yaml"
    # device=cuda in a trial Ray gives no GPU (--gpus-per-trial 0) raises in the trial, on any machine
    space.write_text(SMALL + "dimensions: {device: {grid: [cpu, cuda]}}\nmax_epochs: 1\nasha: false\n")
    out = tmp_path / "study"
    (out / "ray" / "tune").mkdir(parents=True)
    # the study being replaced, and a file of the user's beside it (no study writes it: --overwrite keeps it)
    old_study = {"command": ["python", "-m", "study.run"], "space": {}, "ray_experiment": str(out / "ray" / "tune")}
    (out / "study.json").write_text(json.dumps(old_study))
    (out / "trials.csv").write_text("trial_id,status\nold_trial,completed\n")
    (out / "ray" / "tune" / "old-state.json").write_text("{}")
    (out / "notes.txt").write_text("the user's own notes")
    result = run_module(
        "study.run",
        "--space",
        str(space),
        "--out",
        str(out),
        "--overwrite",
        "--max-failures",
        "2",
        "--gpus-per-trial",
        "0",
        "--no-dashboard",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 retries of a failing trial" in result.stdout and not (out / "ray" / "tune" / "old-state.json").exists()
    assert (out / "notes.txt").read_text() == "the user's own notes" and "--overwrite kept" in result.stdout

    trials = pd.read_csv(out / "trials.csv").set_index("status")
    assert "old_trial" not in trials["trial_id"].tolist()
    assert sorted(trials.index) == ["completed", "error"] and trials.loc["completed", "device_used"] == "cpu"
    assert trials.loc["error", "error"].startswith("StudyError: device=cuda but Ray gave this trial no GPU")
    # Ray's record of the failed trial: the first run and two retries
    errors = (out / "ray" / "tune" / trials.loc["error", "trial_id"] / "error.txt").read_text()
    assert [line.split(" (")[0] for line in errors.splitlines() if line.startswith("Failure #")] == [
        "Failure # 1",
        "Failure # 2",
        "Failure # 3",
    ]
    study = json.loads((out / "study.json").read_text())
    assert study["resources"]["max_failures"] == 2 and study["trials"] == {"completed": 1, "error": 1}


@pytest.mark.parametrize(
    "error",
    [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), MemoryError()],
    ids=["cuda", "host"],
)
def test_out_of_memory_ends_the_trial_with_what_to_change(small_digits, monkeypatch, error):
    def out_of_memory(trial):
        raise error

    monkeypatch.setattr(train, "train_epoch", out_of_memory)
    config = TrialConfig(img_size=32, epochs=1, batch_size=48, weights="random", device="cpu", feature_cache=False)
    with pytest.raises(MemoryError) as raised:
        list(train.run_trial(config, small_digits))
    message = describe_error(raised.value)  # what trials.csv records for the trial (study/tune/records.py)
    assert message.startswith(f"MemoryError: out of memory ({type(error).__name__}")
    assert "lower batch_size (now 48) or img_size, or run fewer trials at once" in message and "\n" not in message
    assert raised.value.__cause__ is error


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_the_package_loads_only_weights_and_safe_yaml_and_evaluates_no_input():
    package = REPO / "study"
    sources = {str(path.relative_to(package)): ast.parse(path.read_text()) for path in sorted(package.rglob("*.py"))}
    torch_loads = yaml_loads = 0
    for name, tree in sources.items():
        for call, function in calls(tree):
            keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
            assert function not in ("eval", "exec", "compile", "__import__", "yaml.unsafe_load", "yaml.full_load"), (
                f"{name}: {ast.unparse(call)}"
            )
            assert not function.endswith(("pickle.loads", "marshal.loads")), f"{name}: {ast.unparse(call)}"
            if function == "torch.load":
                torch_loads += 1
                assert keywords.get("weights_only") == "True", f"{name}: {ast.unparse(call)}"
            if (
                function.endswith("load_state_dict") and "weights_only" in keywords
            ):  # timm's loader: weights_only=True by default
                assert keywords["weights_only"] == "True", f"{name}: {ast.unparse(call)}"
            if function == "yaml.load":
                yaml_loads += 1
                assert keywords.get("Loader") == "YamlLoader", (
                    f"{name}: {ast.unparse(call)}"
                )  # a yaml.SafeLoader subclass
            if function.endswith("pickle.load"):  # Ray's own error file of a trial, written by the same driver
                assert (name, function) == ("tune/callbacks.py", "cloudpickle.load"), f"{name}: {ast.unparse(call)}"
    assert torch_loads >= 3 and yaml_loads == 1  # the checks above looked at the real calls

    import yaml

    from study.core.config import YamlLoader

    assert issubclass(YamlLoader, yaml.SafeLoader)
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.load("!!python/object/apply:os.system ['true']", Loader=YamlLoader)


def test_a_data_root_that_cannot_be_written_stops_the_study_before_ray_starts(tmp_path, capsys):
    """Else every trial would fail on it, or run without the node's caches, each decoding its data again."""
    (tmp_path / "a-file").write_text("not a directory")
    data_root = tmp_path / "a-file" / "data"  # under a regular file: unwritable for root too
    out = tmp_path / "study"
    assert run.main(["--space", "smoke", "--data-root", str(data_root), "--out", str(out), "--no-dashboard"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: the data root {data_root} cannot be written (Not a directory): pass --data-root")
    assert error.count("\n") == 1 and not out.exists()
