"""The Tuner's callbacks that keep and show results while a study runs: ExportCallback and WatchCallback.

Results are exported while the study runs: when trials finish or fail, `ExportCallback` rewrites the results tables
(study/analysis/results.py, atomic files), at most every EXPORT_PERIOD_S (a rewrite costs time in proportion to the
finished trials: one per trial would grow with the study), so a study whose driver dies has already saved its
finished trials but those of its last second. The callback's record of finished trials is part of Ray's experiment
state, which Ray saves (every CHECKPOINT_PERIOD_S, study/tune/runner.py) together with the trials' statuses:
`--resume` restores both from the same snapshot, so the tables and Ray agree on what ran.

Ray pickles both callbacks by class path with the Tuner, so a resumed study finds them here. Where the tables go is
not pickled: a resumed study writes into the results directory it resumes (study/tune/cluster.py `resuming`), so a
study copied or moved elsewhere never writes into the directory it started in.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from ray import cloudpickle, tune

from study.analysis.results import Tables, TrialRows, assemble, trial_rows, write_tables
from study.core.config import StudyError
from study.core.metrics import EPOCH_METRICS, OUTCOMES, REPORT_KEYS
from study.tune.cluster import resumed
from study.tune.records import describe_error, live_record

# How often, at most, the results tables are rewritten while trials finish (the first finished trial at once, all at
# the end). A trial that finished in the last period before the driver died may be missing from the tables: it is
# in Ray's saved state (kept, and exported by --resume) or not (run again): never lost.
EXPORT_PERIOD_S = 1.0


@dataclass(kw_only=True)
class Monitoring:
    """How a study shows itself: the compact console, or Ray's own output (verbose); MLflow's URI, if any."""

    verbose: bool = False
    mlflow: str | None = None


class ExportCallback(tune.Callback):
    """Rewrites the results tables after trials finish or fail, at most every EXPORT_PERIOD_S (module docstring)."""

    pending = False  # finished trials not in the tables yet
    written = -math.inf  # time.monotonic() of the last rewrite

    def __init__(self, out: Path, max_epochs: int, storage_scheme: str | None = None):
        self.out = out
        self.max_epochs = max_epochs
        self.storage_scheme = storage_scheme
        self.finished: dict[str, dict] = {}  # trial id -> record (study/tune/records.py)
        self.histories: dict[str, list[dict]] = {}  # epoch reports of running trials
        # trial id -> its table rows, made once per finished trial (not saved: Ray saves `finished`, and the rows
        # follow from it); without them every rewrite would rebuild every trial's row, a cost growing with the study
        self._rows: dict[str, TrialRows] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.histories[trial.trial_id] = []  # also a trial run again after --resume: from its first epoch

    def on_trial_result(self, iteration, trials, trial, result, **info):
        history = self.histories.setdefault(trial.trial_id, [])
        if history:  # only the last epoch's per-image outcomes are kept (study/core/outcomes.py): drop the earlier
            for key in OUTCOMES:
                history[-1].pop(key, None)
        history.append({key: result[key] for key in REPORT_KEYS if key in result})

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = None
        if trial.pickled_error_file and Path(trial.pickled_error_file).exists():
            with open(trial.pickled_error_file, "rb") as file:  # Ray's own file, written by this process just now
                error = describe_error(cloudpickle.load(file))
        self._finish(trial, error or "the trial failed (Ray recorded no error message)")

    def _finish(self, trial, error: str | None) -> None:
        history = self.histories.pop(trial.trial_id, [])
        self.finished[trial.trial_id] = live_record(trial, history, error, self.max_epochs, self.storage_scheme)
        self._rows.pop(trial.trial_id, None)  # a trial run again after --resume replaces its record
        self.pending = True
        self.flush()

    def __getstate__(self) -> dict:
        # the rows derive from `finished`; `out` is the resumed directory's (`resuming`): neither is pickled
        return {**self.__dict__, "_rows": {}, "out": None}

    def __setstate__(self, state: dict) -> None:
        # a Tuner pickled before the rows existed has none, and one pickled with `out` names the directory the study
        # started in: a copy of it resumed elsewhere would rewrite the original's tables
        study = resumed()
        self.__dict__.update({"_rows": {}, **state, "out": study and study.out})

    def rows(self, trial_id: str) -> TrialRows:
        """A finished trial's rows of the trials and epochs tables (study/analysis/results.py trial_rows), made once."""
        if trial_id not in self._rows:
            self._rows[trial_id] = trial_rows(self.finished[trial_id])
        return self._rows[trial_id]

    def tables(self) -> Tables:
        """The tables of every finished trial, in trial id order."""
        return assemble([self.rows(trial_id) for trial_id in sorted(self.finished)])

    def on_step_end(self, iteration, trials, **info):
        self.flush()

    def on_experiment_end(self, trials, **info):
        self.flush(now=True)

    def flush(self, now: bool = False) -> None:
        """Rewrite the tables if trials finished since the last rewrite and EXPORT_PERIOD_S has passed (or `now`):
        a rewrite costs time in proportion to the finished trials, so one per trial would grow with the study."""
        if self.pending and (now or time.monotonic() - self.written >= EXPORT_PERIOD_S):
            tables = self.tables()
            self.pending, self.written = False, time.monotonic()
            try:
                write_tables(self.out, *tables)
            except StudyError as error:  # out of disk space: the study goes on; its end writes the tables again
                print(f"warning: {error}", flush=True)

    def get_state(self) -> dict:
        return {"finished": self.finished}

    def set_state(self, state: dict) -> None:
        self.finished = state["finished"]
        self._rows = {}


class WatchCallback(tune.Callback):
    """What a user watches while the study runs, fed from Tune's driver loop: the compact console
    (study/watch/console.py), the live report (study/watch/live.py LiveReport) and MLflow
    (study/watch/tracking.py).

    It reads each finished trial's record from `export`, which Ray calls first; both are saved with the Tuner,
    so a resumed study shows and logs the same way. The console and live report are rebuilt on each start
    (`setup`), not saved."""

    active: WatchCallback | None = None  # the one running in this process, for `fit` to close its console

    def __init__(self, export: ExportCallback, total: int, searched: list[str], console: bool, mlflow=None):
        self.export = export
        self.total = total
        self.searched = searched
        self.console_on = console
        self.mlflow = mlflow
        self._console = None
        self._report = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_console": None, "_report": None}

    def setup(self, **info):
        from study.watch.console import StudyConsole
        from study.watch.live import LiveReport

        self._report = LiveReport(self.export.out, self.total)
        self._report.start(len(self.export.finished))
        WatchCallback.active = self
        if self.console_on:
            self._console = StudyConsole(self.total, self.searched)
            if self.export.finished:  # resumed: the trials kept count, without a line each again
                self._console.resume(self.export.tables().trials.to_dict("records"))
            self._console.start()

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.mlflow:
            self.mlflow.trial_started(trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.mlflow:
            self.mlflow.epoch(trial.trial_id, {key: result[key] for key in EPOCH_METRICS if key in result})

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finished(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finished(trial)

    def _finished(self, trial) -> None:
        record = self.export.finished.get(trial.trial_id)
        if record is None:
            return
        row = self.export.rows(trial.trial_id).trial  # this trial's row alone: no table of every trial per trial
        if self.mlflow:
            self.mlflow.trial_finished(row)
        if self._console is not None:
            self._console.trial_finished(row)
        if self._report is not None:
            self._report.trial_finished(len(self.export.finished))

    def on_step_end(self, iteration, trials, **info):
        if self._console is not None:
            self._console.update(running=sum(trial.status == "RUNNING" for trial in trials))
        if self._report is not None:
            self._report.update()

    def on_experiment_end(self, trials, **info):
        self.close()
        if self.mlflow:
            self.mlflow.close()

    def close(self) -> None:
        """The console closed and the live report's last page written: the final report comes next."""
        if self._report is not None:
            self._report.close()
        if self._console is not None:
            self._console.close()
            self._console = None
