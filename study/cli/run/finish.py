"""How a study ends: what finished exported (tables, Pareto front, report), study.json completed, or marked
interrupted and left resumable, a summary printed, and the exit status returned.

The exit status says how it ended: 0 when a trial succeeded, 1 when every trial failed, 2 for an error before
Ray (study/cli/run/orchestrate.py) or a study stopped for want of disk space, and 128 + the signal's number (130
for Ctrl-C, 143 for SIGTERM) when a signal stopped it, as a shell reports a process a signal ended.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from study.analysis.recommend import recommend
from study.analysis.repeats import varying_settings
from study.analysis.results import trials_table, write_tables
from study.analysis.uncertainty import with_interval
from study.core.config import StudyError
from study.core.files import write_json
from study.core.metrics import ACCURACY, MAIN_COST
from study.core.space import Space

if TYPE_CHECKING:
    from study.tune.runner import StudyOutcome


def finish(out: Path, space: Space, record: dict, outcome: StudyOutcome, started: float) -> int:
    """Export the finished trials (tables, Pareto front, report) and complete study.json. Trials left unfinished:
    the study was interrupted (`outcome.stopped_by`: Ctrl-C or SIGTERM): what finished is exported all the same,
    and study.json stays resumable."""
    from study.analysis.page import export, write_report  # Plotly and the report: needed only now, at the end

    records, unfinished, signum = outcome.records, outcome.unfinished, outcome.stopped_by
    if unfinished and not records:
        return interrupted(out, record, exit_code(signum), f"no trial finished, {unfinished} to run")
    export_started = time.perf_counter()
    trials, epochs, outcomes = trials_table(records)
    front = export(out, trials, epochs, title=f"{space.name}: validation accuracy vs training time", outcomes=outcomes)
    counts = trials["status"].value_counts().to_dict()
    if unfinished:
        record.update(trials=counts)
        code = interrupted(
            out, record, exit_code(signum), f"{len(trials)} finished trial(s) exported, {unfinished} not finished"
        )
        print(f"Report: {write_report(out).resolve()}")
        return code
    record.update(
        wall_time_s=round(time.perf_counter() - started, 1),
        finished=datetime.now().isoformat(timespec="seconds"),
        trials=counts,
    )
    write_json(out / "study.json", record)
    report = write_report(out)
    if "phases" in record and "resumed" not in record:
        record["phases"]["export"] = round(time.perf_counter() - export_started, 2)
        write_json(out / "study.json", record)
    print_summary(out, trials, front, record["wall_time_s"], outcomes, record.get("ray_experiment"))
    print(f"Report: {report.resolve()}")
    return 0 if (trials["status"] != "error").any() else 1


def interrupted(
    out: Path, record: dict, code: int, kept: str = "the trials that finished are in its results tables"
) -> int:
    """Record the interruption in study.json (no `finished`: it stays resumable) and say how to continue; return the
    exit code. Without `kept`: a second signal stopped Tune at once; the tables hold what finished before (written
    as trials finish)."""
    record.setdefault("interrupted", []).append(datetime.now().isoformat(timespec="seconds"))
    record.setdefault("interrupted_by", []).append(signal.Signals(code - 128).name)
    write_json(out / "study.json", record)
    print(
        f"\ninterrupted: {kept} ({out.resolve()}); continue the study with: python -m study.run --resume {out}",
        file=sys.stderr,
        flush=True,
    )
    return code


def exit_code(stop: BaseException | int | None) -> int:
    """128 + the signal's number, as a shell reports a process a signal ended: 130 for SIGINT, 143 for SIGTERM."""
    if isinstance(stop, BaseException):
        stop = signal.Signals.SIGTERM if stop.args == ("SIGTERM",) else signal.Signals.SIGINT
    return 128 + int(stop or signal.Signals.SIGINT)


def print_summary(out: Path, trials, front, wall_time_s: float, outcomes, experiment: str | None = None) -> None:
    """The study's ending on the console: what ran, the front with 95% intervals, and the recommendation."""
    counts = ", ".join(f"{n} {status}" for status, n in trials["status"].value_counts().items())
    print(f"\nStudy finished in {wall_time_s:.0f} s: {len(trials)} trials ({counts}).")
    failed = trials[trials["status"] == "error"]
    for row in failed.itertuples():
        print(f"  {row.trial_id} failed: {row.error}")
    if len(failed) and experiment:
        print(
            f"  (each failed trial's traceback: error.txt in its directory, TRIAL_ID/ in Ray's experiment {experiment})"
        )
    shown = front.assign(
        **{
            accuracy: front.apply(lambda row, a=accuracy: with_interval(row, a), axis=1)
            for accuracy in (ACCURACY, "test_acc")
        }
    )
    columns = [
        *(["configuration", "repeats"] if "configuration" in front else ["trial_id", *varying_settings(trials)]),
        ACCURACY,
        "test_acc",
        MAIN_COST,
        *([] if "configuration" in front else ["cache"]),
        "trainable_params",
    ]
    print(
        "Pareto front (validation accuracy [95% interval] vs training time alone on a fresh node):\n"
        f"{shown[[c for c in columns if c in shown]].to_string(index=False, float_format=lambda v: f'{v:.4g}')}"
    )
    answer = recommend(trials, outcomes)
    print(answer.sentence)
    for line in answer.budgets:
        print(f"  {line}")


def stopped_for_disk_space(out: Path, record: dict, outcome: StudyOutcome) -> int:
    """The study stopped for want of disk space (study/tune/disk.py DiskGuard) once Ray saved its state: the
    tables of the finished trials and study.json's record of the interruption are written if they fit (a few
    small files, atomically: what does not fit keeps its previous version, and Ray's state holds every finished
    trial for --resume to export); the report pages, megabytes each, are left for --resume's end. Exit code 2."""
    low = outcome.low_disk
    if outcome.records:
        with contextlib.suppress(StudyError):
            write_tables(out, *trials_table(outcome.records))
    record.setdefault("interrupted", []).append(datetime.now().isoformat(timespec="seconds"))
    record.setdefault("interrupted_by", []).append("low disk space")
    with contextlib.suppress(StudyError):
        write_json(out / "study.json", record)
    free, reserve = f"{low.free / 2**20:.1f} MiB", f"{low.reserve / 2**20:.0f} MiB"
    short = (
        f"the disk holding {low.directory} has {free} free, less than the {reserve} a study keeps to save its results"
        if low.free < low.reserve
        else f"writing to the disk holding {low.directory} failed for want of space, though it shows {free} free "
        "(a disk quota used up?)"
    )
    print(
        f"error: {short}: the study stopped, its {len(outcome.records)} finished trial(s) kept, "
        f"{outcome.unfinished} to run; free space, then continue it with: python -m study.run --resume {out}",
        file=sys.stderr,
        flush=True,
    )
    return 2
