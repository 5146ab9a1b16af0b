"""A finished trial's record, the input of the results tables (study/analysis/results.py trials_table).

A record is made in two places that must agree: from Ray's live Trial while the study runs (study/tune/callbacks.py
ExportCallback) and from Ray's saved Result at its end or after --resume (study/tune/runner.py). Both are here, with
what they share: one line per error, storage-qualified checkpoint paths.
"""

from __future__ import annotations

import json
from pathlib import Path

from ray import exceptions, tune

from study.core.metrics import REPORT_KEYS

# Ray's errors for a trial whose process or node went away under it: nothing the trial's settings did, and the
# exception's own message (an actor id, "RPC error: Socket closed") says nothing a user can act on.
LOST_PROCESS = (
    exceptions.RayActorError,
    exceptions.NodeDiedError,
    exceptions.WorkerCrashedError,
    exceptions.LocalRayletDiedError,
)


def live_record(trial, history: list[dict], error: str | None, max_epochs: int, scheme: str | None) -> dict:
    """The record of a trial that Ray's driver loop has just seen finish (or fail, with `error`)."""
    checkpoint = trial.checkpoint.path if trial.checkpoint and not error else None
    return {
        "trial_id": trial.trial_id,
        "config": dict(trial.config),
        "history": history,
        "error": error,
        "checkpoint": checkpoint and with_scheme(checkpoint, scheme),
        "max_epochs": max_epochs,
    }


def records_from(
    results: tune.ResultGrid, max_epochs: int, scheme: str | None = None, keep: set[str] | None = None
) -> list[dict]:
    """One record per trial of `results` (those in `keep` only, if given)."""
    records = [
        saved_record(result, max_epochs, scheme)
        for result in results
        # an unfinished trial is left out: it may not even have its params.json yet
        if keep is None or Path(result.path).name in keep
    ]
    return sorted(records, key=lambda r: r["trial_id"])


def saved_record(result: tune.Result, max_epochs: int, scheme: str | None) -> dict:
    """The record of a trial from what Ray saved of it."""
    history = result.metrics_dataframe
    rows = []
    if history is not None and not history.empty:
        rows = history[[key for key in REPORT_KEYS if key in history]].to_dict("records")
    return {
        "trial_id": Path(result.path).name,
        "config": result.config or saved_config(result),
        "history": last_run(rows),
        "error": describe_error(result.error) if result.error else None,
        "checkpoint": with_scheme(result.checkpoint.path, scheme) if result.checkpoint else None,
        "max_epochs": max_epochs,
    }


def saved_config(result: tune.Result) -> dict:
    """The settings of a trial that never reported, read back after --resume (Ray then knows no result of it):
    Ray's parameters file, written in the trial's directory when it started."""
    with result.filesystem.open_input_stream(f"{result.path}/params.json") as file:
        return json.loads(file.readall())


def last_run(rows: list[dict]) -> list[dict]:
    """A trial run again after --resume appends to the reports of its interrupted run: keep the last run only."""
    starts = [i for i, row in enumerate(rows) if row.get("epoch") == 1]
    return rows[starts[-1] :] if starts else rows


def describe_error(error) -> str:
    """Ray wraps a trial's exception; the user needs the original type and message, on one line."""
    if isinstance(error, str):  # Ray's text record, when the exception could not be pickled
        lines = [line for line in error.strip().splitlines() if line.strip()]
        return lines[-1].strip() if lines else "the trial failed"
    cause = getattr(error, "cause", None) or error
    if isinstance(cause, exceptions.OutOfMemoryError):
        return (
            f"{type(cause).__name__}: Ray's memory monitor killed the trial's worker, its node was short of memory: "
            "run fewer trials at once (--max-concurrent) or give each more CPUs (--cpus-per-trial), or lower "
            "batch_size or img_size"
        )
    if isinstance(cause, LOST_PROCESS):
        return (
            f"{type(cause).__name__}: the trial's worker process or its node was lost while it ran (a node killed, "
            "shut down or unreachable, or the process crashed): --max-failures N runs such a trial again, on another "
            "node if its own is gone"
        )
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def with_scheme(path: str, scheme: str | None) -> str:
    """Ray reports a checkpoint's path without the storage's scheme (s3://...): put it back."""
    return f"{scheme}://{path}" if scheme else path
