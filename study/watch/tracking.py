"""MLflow tracking of a study (`--mlflow URI`): one MLflow run per trial, logged from the driver.

The experiment is named after the study (its results directory's name, e.g.
unfreeze_depth-20261201-105217). Each trial's run holds every trial setting
as a parameter, the per-epoch metrics with the epoch as step, `status`,
`stop_reason` and `trial_id` as tags, and at the end the trial's results row
(numeric columns as `result.NAME` metrics, the whole row as result.json).

Everything is logged by MLflow's own client in the driver process, fed by
Tune's callback (study/tune/callbacks.py `WatchCallback`): trials never talk to
MLflow, so the tracking URI is the one given (Ray's MLflowLoggerCallback
ignores it inside trials, ray#36257) and concurrent trials cannot collide
(ray#30649).

URI: a directory (created if needed) becomes an SQLite store DIR/mlflow.db
with artifacts in DIR/artifacts (MLflow 3 refuses its old file store by
default); sqlite:///PATH.db keeps artifacts beside the database; http(s)://
is a tracking server (artifacts wherever it stores them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
import time
from pathlib import Path
from typing import NamedTuple

from study.core.config import StudyError, TrialConfig

MISSING = "--mlflow needs MLflow, which is not installed: pip install 'study[mlflow]' (or pip install mlflow)"
# MLflow retries an unreachable server for minutes; the check before Ray starts gives up after this.
CHECK_RETRIES = "0"
CHECK_TIMEOUT_S = "10"


class Store(NamedTuple):
    """Where MLflow keeps a study: its tracking URI, and the artifact location of new experiments (None: the
    store's default)."""

    tracking_uri: str
    artifact_location: str | None


def store(uri: str) -> Store:
    """The store an --mlflow URI names (module docstring)."""
    if "://" in uri or uri.startswith("file:"):
        if uri.startswith("sqlite:///"):
            database = Path(uri.removeprefix("sqlite:///"))
            artifacts = (database.expanduser().resolve().parent / "mlartifacts").as_uri()
            return Store(tracking_uri=uri, artifact_location=artifacts)
        return Store(tracking_uri=uri, artifact_location=None)
    directory = Path(uri).expanduser().resolve()
    return Store(
        tracking_uri=f"sqlite:///{directory / 'mlflow.db'}", artifact_location=(directory / "artifacts").as_uri()
    )


class MlflowTracker:
    """Logs a study's trials to MLflow (module docstring). Picklable: Ray saves it with the Tuner, and a resumed
    study logs on to the same store (the client and open runs are rebuilt, not saved)."""

    def __init__(self, uri: str, experiment: str):
        self.uri = uri if "://" in uri or uri.startswith("file:") else str(Path(uri).expanduser().resolve())
        self.experiment = experiment
        self._client = None
        self._experiment_id: str | None = None
        self._runs: dict[str, str] = {}  # trial id -> open MLflow run id

    def __getstate__(self) -> dict:
        return {"uri": self.uri, "experiment": self.experiment}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["uri"], state["experiment"])

    def check(self) -> None:
        """Before Ray starts: MLflow installed, the store reachable and the experiment there (StudyError if not)."""
        overrides = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": CHECK_RETRIES, "MLFLOW_HTTP_REQUEST_TIMEOUT": CHECK_TIMEOUT_S}
        with _environment(overrides):
            try:
                self.experiment_id()
            except StudyError:
                raise
            except Exception as error:
                first = (str(error).strip().splitlines() or [type(error).__name__])[0]
                raise StudyError(
                    f"--mlflow {self.uri}: {first[:300]}: give a directory, sqlite:///PATH.db or a running tracking "
                    "server's http://HOST:PORT"
                ) from None
            finally:
                self._client = None  # the real client is made later, without the check's short timeouts

    def client(self):
        if self._client is None:
            try:
                from mlflow import MlflowClient
            except ImportError:
                raise StudyError(MISSING) from None
            logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines (database set-up) are noise here
            tracking_uri = store(self.uri).tracking_uri
            if tracking_uri.startswith("sqlite:///"):
                Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=tracking_uri)
        return self._client

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            client = self.client()
            found = client.get_experiment_by_name(self.experiment)
            if found is not None:
                self._experiment_id = found.experiment_id
            else:
                artifacts = store(self.uri).artifact_location
                self._experiment_id = client.create_experiment(self.experiment, artifact_location=artifacts)
        return self._experiment_id

    def trial_started(self, trial_id: str, config: dict) -> None:
        from mlflow.entities import Param

        client = self.client()
        run = client.create_run(self.experiment_id(), run_name=trial_id, tags={"trial_id": trial_id})
        self._runs[trial_id] = run.info.run_id
        settings = TrialConfig.from_dict(config).to_dict()
        params = [Param(key, _param(value)) for key, value in settings.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            client.log_batch(run.info.run_id, params=params[start : start + 100])

    def epoch(self, trial_id: str, metrics: dict) -> None:
        from mlflow.entities import Metric

        run_id = self._runs.get(trial_id)
        if run_id is None or "epoch" not in metrics:
            return
        stamp = int(1000 * metrics.get("reported_at", time.time()))
        logged = [
            Metric(key, float(value), stamp, int(metrics["epoch"]))
            for key, value in metrics.items()
            if key != "epoch" and _is_number(value)
        ]
        self.client().log_batch(run_id, metrics=logged)

    def trial_finished(self, row: dict) -> None:
        """The trial's results row (study/analysis/results.py trials_table): tags, result metrics, result.json; run
        ended."""
        from mlflow.entities import Metric, RunTag

        run_id = self._runs.pop(row["trial_id"], None)
        if run_id is None:
            return
        client = self.client()
        stamp = int(1000 * time.time())
        tags = {"status": row.get("status"), "stop_reason": row.get("stop_reason") or _stop_reason_tag(row)}
        if row.get("error"):
            tags["error"] = str(row["error"])[:5000]
        metrics = [Metric(f"result.{key}", float(value), stamp, 0) for key, value in row.items() if _is_number(value)]
        client.log_batch(run_id, metrics=metrics, tags=[RunTag(key, str(value)) for key, value in tags.items()])
        client.log_dict(run_id, {key: _json(value) for key, value in row.items()}, "result.json")
        client.set_terminated(run_id, "FAILED" if row.get("status") == "error" else "FINISHED")

    def close(self) -> None:
        """Runs of trials that did not finish (an interrupted study) end as KILLED; they run again on --resume."""
        for run_id in self._runs.values():
            self.client().set_terminated(run_id, "KILLED")
        self._runs.clear()


def _stop_reason_tag(row: dict) -> str:
    """The stop_reason tag of a row that records no reason: its status, and for a stopped trial after which epoch."""
    if row.get("status") == "stopped_early":
        return f"stopped by the scheduler after epoch {row.get('epochs_run')}"
    return row.get("status") or ""


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _param(value) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]  # MLflow's limit on a parameter's value


def _json(value):
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return None if not math.isfinite(float(value)) else value.item() if hasattr(value, "item") else value
    if value is None or isinstance(value, (str, bool, list, dict)):
        return value
    return str(value)


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
