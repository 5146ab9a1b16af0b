"""A study's results as tables: trials, per-epoch curves, the Pareto front; written and read back.

Everything here works on plain records and DataFrames (no Ray, no Plotly), so results can be rebuilt, tested and
analysed without a cluster, and the Ray layer rewrites the tables after every finished trial without importing a
plotting library. Files are written atomically (study/core/files.py: temporary file, then rename): an
interrupted export never leaves half a file. `load_results` reads a results directory back, whatever part of it
exists. The figures drawn from these tables are in study/analysis/views/, the pages in study/analysis/page.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from study.analysis.pareto import pareto_front
from study.analysis.repeats import front_candidates
from study.analysis.uncertainty import accuracy_interval
from study.core.config import StudyError, TrialConfig
from study.core.files import atomic_write, damaged, read_json
from study.core.metrics import (
    ACCURACY,
    EPOCH_METRICS,
    FINAL_METRICS,
    MAIN_COST,
    OUTCOMES,
    PLACEMENT_INFO,
    SCHEDULER_INFO,
    TRIAL_INFO,
)
from study.core.outcomes import decode, unpack


class Tables(NamedTuple):
    """A study's tables: one row per trial, one row per epoch of every trial, and each trial's per-image outcomes
    at its final epoch (one row per trial and split)."""

    trials: pd.DataFrame
    epochs: pd.DataFrame
    outcomes: pd.DataFrame


class TrialRows(NamedTuple):
    """One trial's row of the trials table, its rows of the epochs table and of the outcomes table."""

    trial: dict
    epochs: list[dict]
    outcomes: list[dict]


OUTCOMES_FILE = "outcomes.parquet"
OUTCOME_COLUMNS = ["trial_id", "split", "images", "correct"]
# The 95% interval of each accuracy a trial reports (study/analysis/uncertainty.py): column -> its image count.
INTERVALS = {ACCURACY: "val_images", "test_acc": "test_images"}


def trials_table(records: list[dict]) -> Tables:
    """Build (trials, epochs) from records of {trial_id, config, history, error, max_epochs}.

    `history` is the list of epoch reports. Status: `error` if the trial raised,
    `completed` if it ran all `max_epochs`, else `stopped_early` (by ASHA).
    `stop_reason` says why the trial ended where it did (see `stop_reason`).
    Final metrics are those of the last epoch run; `best_val_acc` is reported beside.
    `efficiency` is validation accuracy per second of training (document 004's
    accuracy / time, with evaluation excluded from the time); `finished_at` is
    the Unix time of the trial's last report (its finishing order).
    """
    return assemble([trial_rows(record) for record in records])


def assemble(rows: list[TrialRows]) -> Tables:
    """(trials, epochs) from each trial's `trial_rows`: a running study keeps those per finished trial, so that
    rewriting its tables costs one table's construction, not every trial's rows again."""
    trials = pd.DataFrame([row.trial for row in rows])
    epoch_table = pd.DataFrame(
        [epoch for row in rows for epoch in row.epochs], columns=["trial_id", *EPOCH_METRICS, *SCHEDULER_INFO]
    )
    outcomes = pd.DataFrame([outcome for row in rows for outcome in row.outcomes], columns=OUTCOME_COLUMNS)
    return Tables(trials=_uniform_types(trials), epochs=epoch_table, outcomes=outcomes)


def trial_rows(record: dict) -> TrialRows:
    """One record's row of the trials table and its rows of the epochs table (see trials_table)."""
    history = record["history"]
    row = {"trial_id": record["trial_id"]}
    row["status"] = (
        "error" if record["error"] else "completed" if len(history) >= record["max_epochs"] else "stopped_early"
    )
    row["error"] = record["error"] or ""
    row["stop_reason"] = stop_reason(row["status"], history, record["max_epochs"])
    row.update(TrialConfig.from_dict(record["config"]).to_dict())  # every setting, defaults included
    row["epochs_run"] = len(history)
    last = history[-1] if history else {}
    row.update({key: last.get(key, math.nan) for key in FINAL_METRICS})
    row["efficiency"] = row[ACCURACY] / row[MAIN_COST] if row[MAIN_COST] > 0 else math.nan
    best = max(history, key=lambda h: h[ACCURACY]) if history else {}
    row["best_val_acc"] = best.get(ACCURACY, math.nan)
    row["best_epoch"] = best.get("epoch", math.nan)
    row["eval_time_s"] = sum(h["eval_time_s"] for h in history) if history else math.nan
    row["images_per_s"] = sum(h["images_per_s"] for h in history) / len(history) if history else math.nan
    row["finished_at"] = last.get("reported_at", math.nan)
    row.update({key: last.get(key) for key in (*TRIAL_INFO, *PLACEMENT_INFO)})
    for accuracy, images in INTERVALS.items():
        interval = accuracy_interval(row[accuracy], _number(row.get(images)))
        row[f"{accuracy}_low"], row[f"{accuracy}_high"] = interval.low, interval.high
    row["checkpoint"] = record.get("checkpoint") or ""  # the saved final model (save_checkpoint), for study.merge
    epochs = [{"trial_id": record["trial_id"], **{k: h.get(k) for k in EPOCH_METRICS}, **_decision(h)} for h in history]
    return TrialRows(trial=row, epochs=epochs, outcomes=outcome_rows(record["trial_id"], last))


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def outcome_rows(trial_id: str, report: dict) -> list[dict]:
    """The final epoch's per-image outcomes of each split (study/core/outcomes.py), as packed bytes."""
    rows = []
    for key in OUTCOMES:
        split = key.removesuffix("_correct")
        images = _number(report.get(f"{split}_images"))
        if isinstance(report.get(key), str) and math.isfinite(images):
            rows.append({"trial_id": trial_id, "split": split, "images": int(images), "correct": decode(report[key])})
    return rows


def _decision(report: dict) -> dict:
    """The scheduler's decision in a report; Ray's result tables read an empty one back as NaN."""
    decision = report.get("rung_decision")
    return {"rung_decision": decision if isinstance(decision, str) else ""}


def stop_reason(status: str, history: list[dict], max_epochs: int) -> str:
    """Why a trial ended where it did: the rung that stopped it, or for a completed one every rung it passed."""
    decisions = [decision for h in history if (decision := _decision(h)["rung_decision"])]
    ran = f"{len(history)} epoch{'' if len(history) == 1 else 's'}"
    if status == "error":
        return f"failed after {ran} (see error)"
    if status == "completed":
        passed = f"; {'; '.join(decisions)}" if decisions else ""
        return f"completed all {max_epochs} epochs{passed}"
    if decisions and decisions[-1].startswith("stopped"):
        return decisions[-1]
    return f"stopped after {ran} without a rung decision"


def split_outcomes(outcomes: pd.DataFrame, split: str) -> dict:
    """trial id -> its outcomes on `split`'s images (booleans in the split's order), from the outcomes table."""
    rows = outcomes[outcomes["split"] == split] if "split" in outcomes else outcomes.iloc[0:0]
    return {row.trial_id: unpack(bytes(row.correct), int(row.images)) for row in rows.itertuples()}


def _uniform_types(table: pd.DataFrame) -> pd.DataFrame:
    """Columns mixing types (unfreeze_depth: 3 and 'all') become text so Parquet can store them."""
    for column in table.columns:
        kinds = {type(v) for v in table[column] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(kinds) > 1 and not kinds <= {int, float}:
            table[column] = table[column].map(lambda v: None if v is None else str(v))
    return table


def write_tables(
    out: Path, trials: pd.DataFrame, epochs: pd.DataFrame, outcomes: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The tables alone (trials.csv/.parquet, epochs.parquet, outcomes.parquet, pareto.csv; configurations.csv and
    .parquet when the study has repeats), as rewritten after every finished trial while a study runs; return the
    front (of configurations when the study has repeats, study/analysis/repeats.py)."""
    candidates = front_candidates(trials)
    front = pareto_front(candidates)
    atomic_write(out / "trials.csv", lambda p: trials.to_csv(p, index=False))
    atomic_write(out / "trials.parquet", lambda p: trials.to_parquet(p, index=False))
    atomic_write(out / "epochs.parquet", lambda p: epochs.to_parquet(p, index=False))
    if outcomes is not None:
        atomic_write(out / OUTCOMES_FILE, lambda p: outcomes.to_parquet(p, index=False))
    if candidates is not trials:
        atomic_write(out / "configurations.csv", lambda p: candidates.to_csv(p, index=False))
        atomic_write(out / "configurations.parquet", lambda p: candidates.to_parquet(p, index=False))
    atomic_write(out / "pareto.csv", lambda p: front.to_csv(p, index=False))
    return front


@dataclass(kw_only=True)
class Results:
    """A results directory as read back: whatever part of it exists, and notes on what does not."""

    path: Path
    trials: pd.DataFrame
    epochs: pd.DataFrame  # empty (with its columns) when the directory has no epochs.parquet
    study: dict  # study.json; empty when missing
    outcomes: pd.DataFrame  # per-image outcomes (OUTCOME_COLUMNS); empty when the directory has no outcomes.parquet
    notes: list[str] = field(default_factory=list)


RESUME_FIX = "rewrite it with python -m study.run --resume, or restore it from a copy"
SHOWN_IDS = 5  # trial ids a note lists
# --resume answers "nothing to resume" for a study whose study.json records `finished`
FINISHED_FIX = (
    "the study finished (--resume has nothing to run): restore it from a copy, or run the study again (its command "
    "is in study.json)"
)


def read_table(path: Path, fix: str = RESUME_FIX):
    """A results table (parquet or CSV); damage (truncated, empty, not a table) is a StudyError."""
    import pyarrow

    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pyarrow.ArrowException) as error:
        # EmptyDataError and ArrowInvalid are ValueErrors
        raise damaged(path, error, fix) from None


def load_results(path: str | Path) -> Results:
    """Read a study's results directory; only a trials table (parquet or CSV) is required. A damaged file is a
    StudyError naming it (and, for a finished study, a fix other than --resume); a damaged study.json, which only
    describes the study, is a note, and so is a trials.csv that holds other trials than the trials.parquet read."""
    path = Path(path)
    if not path.is_dir():
        raise StudyError(
            f"results directory {path} does not exist: pass the --out directory of a study (python -m study.run)"
        )
    notes = []
    study = read_study(path, notes)
    fix = FINISHED_FIX if "finished" in study else RESUME_FIX
    if (path / "trials.parquet").exists():
        trials = read_table(path / "trials.parquet", fix)
        if (path / "trials.csv").exists():
            notes += csv_disagreement(path, trials)
    elif (path / "trials.csv").exists():
        trials = read_table(path / "trials.csv", fix)
    else:
        raise StudyError(
            f"{path} holds no trials.parquet or trials.csv: pass a study's results directory (the --out of python -m "
            "study.run)"
        )
    missing = [column for column in ("trial_id", "status", ACCURACY) if column not in trials]
    if missing:
        raise StudyError(f"{path}: the trials table lacks the column '{missing[0]}': it was not written by study.run")
    if (path / "epochs.parquet").exists():
        epochs = read_table(path / "epochs.parquet", fix)
        if "trial_id" not in epochs:
            raise StudyError(f"{path / 'epochs.parquet'} has no trial_id column: it was not written by study.run")
    else:
        epochs = pd.DataFrame(columns=["trial_id", *EPOCH_METRICS])
        notes.append("epochs.parquet is missing: no per-epoch curves.")
    if (path / OUTCOMES_FILE).exists():
        outcomes = read_table(path / OUTCOMES_FILE, fix)
    else:
        outcomes = pd.DataFrame(columns=OUTCOME_COLUMNS)
        notes.append(
            f"{OUTCOMES_FILE} is missing (results from before per-image outcomes were recorded): no paired comparisons."
        )
    return Results(path=path, trials=trials, epochs=epochs, study=study, outcomes=outcomes, notes=notes)


def read_study(path: Path, notes: list[str]) -> dict:
    """study.json as a mapping; missing or damaged, an empty one and a note (it only describes the study)."""
    study = {}
    try:
        study = read_json(path / "study.json")
    except FileNotFoundError:
        notes.append("study.json is missing: the study's settings are unknown.")
    except StudyError as error:
        notes.append(f"study.json is unreadable ({error}); the study's settings are unknown.")
    if not isinstance(study, dict):
        notes.append(
            f"study.json holds a {type(study).__name__}, not a study's record: the study's settings are unknown."
        )
        study = {}
    return study


def csv_disagreement(path: Path, trials: pd.DataFrame) -> list[str]:
    """A note when trials.csv, written beside trials.parquet, holds other trials than the parquet that was read."""
    fix = "trials.parquet was read; rewrite trials.csv from it, or remove it"
    try:
        written = read_table(path / "trials.csv", fix)
    except StudyError as error:
        return [str(error)]
    csv_ids = set(written["trial_id"].astype(str)) if "trial_id" in written else set()
    parquet_ids = set(trials["trial_id"].astype(str))
    if csv_ids == parquet_ids and len(written) == len(trials):
        return []
    differences = "; ".join(
        f"only in {name}: {', '.join(sorted(ids)[:SHOWN_IDS])}{', ...' if len(ids) > SHOWN_IDS else ''}"
        for name, ids in (("trials.parquet", parquet_ids - csv_ids), ("trials.csv", csv_ids - parquet_ids))
        if ids
    )
    return [
        f"trials.csv holds other trials than trials.parquet ({differences or 'rows repeated'}): it was edited or "
        f"written by another run; {fix}"
    ]
