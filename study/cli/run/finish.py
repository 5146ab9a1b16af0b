"""How a study ends: what finished exported (tables, Pareto front, report), study.json completed, or marked
interrupted and left resumable, a summary printed, and the exit status returned.

The exit status says how it ended: 0 when a trial succeeded, 1 when every trial failed, 2 for an error before
Ray (study/cli/run/orchestrate.py), and 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM) when a signal
stopped it, as a shell reports a process a signal ended.
"""

from __future__ import annotations

import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from study.analysis.recommend import recommend
from study.analysis.repeats import varying_settings
from study.analysis.results import trials_table
from study.analysis.uncertainty import with_interval
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
    print_summary(out, trials, front, record["wall_time_s"], outcomes)
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


def print_summary(out: Path, trials, front, wall_time_s: float, outcomes) -> None:
    """The study's ending on the console: what ran, the front with 95% intervals, and the recommendation."""
    counts = ", ".join(f"{n} {status}" for status, n in trials["status"].value_counts().items())
    print(f"\nStudy finished in {wall_time_s:.0f} s: {len(trials)} trials ({counts}).")
    for row in trials[trials["status"] == "error"].itertuples():
        print(f"  {row.trial_id} failed: {row.error}")
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
