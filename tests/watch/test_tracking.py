"""study/watch/tracking.py: MLflow tracking (--mlflow), its one-line errors and the smoke study's runs; and the
TensorBoard event files the smoke study writes beside it."""

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from study.core.config import TrialConfig
from study.watch.tracking import store
from tests.helpers import REPO


def test_a_missing_mlflow_is_a_one_line_error(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        sys.modules["mlflow"] = None  # what an environment without MLflow gives: ImportError
        from study.cli import run
        sys.exit(run.main(["--space", "smoke", "--out", sys.argv[1], "--mlflow", sys.argv[2]]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "out"), str(tmp_path / "mlruns")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert (
        result.stderr
        == "error: --mlflow needs MLflow, which is not installed: pip install 'study[mlflow]' (or pip install mlflow)\n"
    )
    assert not (tmp_path / "out").exists()


def test_an_unreachable_mlflow_server_is_a_one_line_error_before_ray(tmp_path):
    from study.cli.run import main

    assert main(["--space", "smoke", "--out", str(tmp_path / "out"), "--mlflow", "http://127.0.0.1:9"]) == 2
    assert not (tmp_path / "out").exists()


def test_directory_and_sqlite_stores(tmp_path):
    assert store(str(tmp_path / "m")) == (
        f"sqlite:///{tmp_path / 'm' / 'mlflow.db'}",
        (tmp_path / "m" / "artifacts").as_uri(),
    )
    assert store(f"sqlite:///{tmp_path}/x.db")[1] == (tmp_path / "mlartifacts").as_uri()
    assert store("http://mlflow.example:5000") == ("http://mlflow.example:5000", None)


@pytest.mark.slow
def test_smoke_study_logged_every_trial_to_mlflow(smoke_study):
    from mlflow import MlflowClient

    trials = pd.read_parquet(smoke_study.out / "trials.parquet")
    epochs = pd.read_parquet(smoke_study.out / "epochs.parquet")
    client = MlflowClient(tracking_uri=store(str(smoke_study.mlflow))[0])
    experiment = client.get_experiment_by_name(smoke_study.out.name)
    runs = {run.data.tags["trial_id"]: run for run in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(trials["trial_id"])
    for trial in trials.to_dict("records"):
        run = runs[trial["trial_id"]]
        assert run.info.run_name == trial["trial_id"] and run.info.status == "FINISHED"
        assert run.data.params["unfreeze_depth"] == str(trial["unfreeze_depth"])
        assert run.data.params["img_size"] == "32" and run.data.params["optimizer"] == "adamw"
        assert len(run.data.params) == len(dataclasses.fields(TrialConfig))  # every setting, defaults included
        assert run.data.tags["status"] == trial["status"] and run.data.tags["stop_reason"]
        curve = client.get_metric_history(run.info.run_id, "val_acc")
        expected = epochs[epochs["trial_id"] == trial["trial_id"]].sort_values("epoch")
        assert [(m.step, round(m.value, 6)) for m in sorted(curve, key=lambda m: m.step)] == [
            (int(e), round(v, 6)) for e, v in zip(expected["epoch"], expected["val_acc"])
        ]
        assert run.data.metrics["result.val_acc"] == pytest.approx(trial["val_acc"])
        assert run.data.metrics["result.trainable_params"] == trial["trainable_params"]
        result = json.loads(Path(client.download_artifacts(run.info.run_id, "result.json")).read_text())
        assert result["trial_id"] == trial["trial_id"] and result["status"] == trial["status"]


@pytest.mark.slow
def test_smoke_study_wrote_tensorboard_event_files_with_per_epoch_val_acc(smoke_study):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    epochs = pd.read_parquet(smoke_study.out / "epochs.parquet")
    trials = pd.read_parquet(smoke_study.out / "trials.parquet")
    checked = []
    for trial_id in trials["trial_id"]:
        checked.append(trial_id)
        directory = smoke_study.out / "ray" / "tune" / trial_id
        assert list(directory.glob("events.out.tfevents.*")), f"no event file in {directory}"
        events = EventAccumulator(str(directory))
        events.Reload()
        scalars = events.Scalars("ray/tune/val_acc")
        expected = epochs[epochs["trial_id"] == trial_id].sort_values("epoch")
        assert [(s.step, round(s.value, 5)) for s in scalars] == [
            (int(e), round(v, 5)) for e, v in zip(expected["epoch"], expected["val_acc"])
        ]
    # the loop checks nothing when the table has no trials: the smoke study's 3 trials must all have been seen
    assert len(checked) == 3, f"the loop saw {len(checked)} trials"
