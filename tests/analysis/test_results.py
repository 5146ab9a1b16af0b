import json

import pandas as pd
import pytest

from study.analysis.page import export
from study.analysis.results import load_results, trials_table
from study.core.config import FIELD_TYPES, StudyError, TrialConfig
from study.core.metrics import EPOCH_METRICS, PLACEMENT_INFO, TRIAL_INFO
from study.trial.train import run_trial
from tests.helpers import brute_force_front


def epoch(n, val_acc, train_time):
    return {
        "epoch": n,
        "train_loss": 1.0 / n,
        "train_acc": 0.5,
        "val_loss": 1.0,
        "val_acc": val_acc,
        "test_loss": 1.0,
        "test_acc": val_acc - 0.01,
        "epoch_time_s": 1.0,
        "train_time_s": train_time,
        "eval_time_s": 0.5,
        "images_per_s": 100.0,
        "peak_memory_mib": 500.0 + n,
        "reported_at": 1000.0 + train_time,
        "weights_used": "random",
        "num_layers": 49,
        "unfrozen_layers": 0,
        "trainable_params": 10,
        "total_params": 100,
        "img_size_used": 32,
        "device_used": "cpu",
        "memory_measure": "process_peak_rss",
    }


RECORDS = [
    {
        "trial_id": "t0",
        "config": {"unfreeze_depth": 0, "epochs": 3},
        "error": None,
        "max_epochs": 3,
        "history": [epoch(1, 0.5, 1.0), epoch(2, 0.6, 2.0), epoch(3, 0.7, 3.0)],
    },
    {
        "trial_id": "t1",
        "config": {"unfreeze_depth": "all", "epochs": 3},
        "error": None,
        "max_epochs": 3,
        "history": [epoch(1, 0.4, 5.0)],
    },
    {
        "trial_id": "t2",
        "config": {"unfreeze_depth": 4, "epochs": 3},
        "error": "FloatingPointError: loss became nan",
        "max_epochs": 3,
        "history": [epoch(1, 0.9, 0.5)],
    },
    {
        "trial_id": "t3",
        "config": {"unfreeze_depth": 8, "epochs": 3},
        "error": None,
        "max_epochs": 3,
        "history": [epoch(1, 0.8, 4.0), epoch(2, 0.95, 8.0), epoch(3, 0.9, 12.0)],
    },
]


def test_trials_table_statuses_final_and_best_metrics():
    trials, epochs, _ = trials_table(RECORDS)
    assert trials["status"].tolist() == ["completed", "stopped_early", "error", "completed"]
    assert trials["error"].tolist()[2] == "FloatingPointError: loss became nan"
    t3 = trials.set_index("trial_id").loc["t3"]
    assert t3["val_acc"] == 0.9 and t3["best_val_acc"] == 0.95 and t3["best_epoch"] == 2 and t3["epochs_run"] == 3
    assert t3["train_time_s"] == 12.0 and t3["eval_time_s"] == 1.5
    assert t3["optimizer"] == "adamw" and t3["backbone"] == "tf_efficientnet_lite0"  # defaults resolved
    assert t3["efficiency"] == pytest.approx(0.9 / 12.0)  # accuracy per second of training (document 004)
    assert t3["peak_memory_mib"] == 503.0 and t3["memory_measure"] == "process_peak_rss"
    assert t3["finished_at"] == 1012.0  # its last report: the finishing order
    assert len(epochs) == 3 + 1 + 1 + 3 and set(epochs["trial_id"]) == {"t0", "t1", "t2", "t3"}


def test_export_writes_every_file_and_a_true_front(tmp_path):
    dominated = {  # completed, less accurate and slower than t3: on no front
        "trial_id": "t4",
        "config": {"unfreeze_depth": 2, "epochs": 3},
        "error": None,
        "max_epochs": 3,
        "history": [epoch(1, 0.7, 5.0), epoch(2, 0.8, 10.0), epoch(3, 0.85, 14.0)],
    }
    trials, epochs, _ = trials_table([*RECORDS, dominated])
    front = export(tmp_path, trials, epochs, title="test")
    for name in ("trials.csv", "trials.parquet", "epochs.parquet", "pareto.csv", "pareto.html"):
        assert (tmp_path / name).stat().st_size > 0
    assert not list(tmp_path.glob(".*.tmp"))
    # depth mixes numbers and 'all': stored as text, read back intact
    assert pd.read_parquet(tmp_path / "trials.parquet")["unfreeze_depth"].tolist() == ["0", "all", "4", "8", "2"]
    assert front["trial_id"].tolist() == ["t0", "t3"]  # t1 stopped (and beaten by t0), t2 errored, t4 beaten by t3
    saved = pd.read_csv(tmp_path / "pareto.csv")
    assert saved["trial_id"].tolist() == front["trial_id"].tolist() and "t2" not in saved["trial_id"].tolist()
    usable = trials[trials["status"] != "error"]
    assert set(saved["trial_id"]) == brute_force_front(usable[usable["status"] == "completed"])
    html = (tmp_path / "pareto.html").read_text()
    assert (
        "plotly" in html and "Pareto front" in html and "t3\\u003c\\u002fb\\u003e (completed)" in html
    )  # hover text, JSON-escaped


def test_load_results_reads_whatever_part_of_a_directory_exists(tmp_path):
    trials, epochs, outcomes = trials_table(RECORDS)
    export(tmp_path, trials, epochs, title="test", outcomes=outcomes)
    (tmp_path / "study.json").write_text(json.dumps({"seed": 0}))
    full = load_results(tmp_path)
    assert full.trials["trial_id"].tolist() == ["t0", "t1", "t2", "t3"] and len(full.epochs) == 8 and not full.notes
    assert full.study == {"seed": 0}

    for name in ("trials.parquet", "epochs.parquet", "study.json", "outcomes.parquet"):
        (tmp_path / name).unlink()
    partial = load_results(tmp_path)  # trials.csv alone
    assert partial.trials["val_acc"].tolist()[0] == 0.7 and partial.epochs.empty and partial.study == {}
    assert any("epochs.parquet is missing" in n for n in partial.notes) and any(
        "study.json is missing" in n for n in partial.notes
    )
    assert any("no paired comparisons" in n for n in partial.notes)

    (tmp_path / "study.json").write_text('{"seed": ')  # cut short
    assert any("study.json is unreadable" in n for n in load_results(tmp_path).notes)


def test_load_results_errors_name_the_directory_and_the_fix(tmp_path):
    with pytest.raises(StudyError, match="does not exist: pass the --out directory"):
        load_results(tmp_path / "missing")
    with pytest.raises(StudyError, match="holds no trials.parquet or trials.csv"):
        load_results(tmp_path)
    pd.DataFrame({"trial_id": ["a"], "status": ["completed"]}).to_csv(tmp_path / "trials.csv", index=False)
    with pytest.raises(StudyError, match="lacks the column 'val_acc'"):
        load_results(tmp_path)


def test_every_trial_says_why_it_ended_where_it_did():
    passed = "passed rung epoch 1: rank 1 of 2, front 1 of 1, on val_acc x train_time_s; the top 1 continue"
    stopped = "stopped at rung epoch 1: rank 2 of 2, front 2 of 2, on val_acc x train_time_s; the top 1 continue"
    records = [
        {
            **RECORDS[0],
            "history": [{**epoch(1, 0.5, 1.0), "rung_decision": passed}, epoch(2, 0.6, 2.0), epoch(3, 0.7, 3.0)],
        },
        {**RECORDS[1], "history": [{**epoch(1, 0.4, 5.0), "rung_decision": stopped}]},
        {**RECORDS[1], "trial_id": "t2", "error": "RuntimeError: boom"},
        {**RECORDS[0], "trial_id": "t3", "history": [{**epoch(1, 0.5, 1.0), "rung_decision": float("nan")}]},
    ]
    trials, epochs, _ = trials_table(records)
    assert trials["stop_reason"].tolist() == [
        f"completed all 3 epochs; {passed}",
        stopped,
        "failed after 1 epoch (see error)",
        "stopped after 1 epoch without a rung decision",  # e.g. a study that ran without the scheduler's callback
    ]
    assert epochs.loc[epochs["trial_id"] == "t0", "rung_decision"].tolist() == [passed, "", ""]


def test_no_reported_name_is_a_setting():
    """A report key named like a setting would overwrite that setting's column in the trials table."""
    assert not set(FIELD_TYPES) & {*EPOCH_METRICS, *TRIAL_INFO, *PLACEMENT_INFO}


def test_settings_keep_their_columns_beside_what_the_trial_used(small_digits, tmp_path):
    """amp/device/img_size/loader_workers are settings; what a trial resolved them to has its own column, and a
    trial that failed before its first report keeps its settings."""
    ran = {"img_size": 32, "amp": True, "device": "auto", "loader_workers": 1, "epochs": 1, "feature_cache": False}
    failed = {"img_size": 48, "amp": False, "device": "cpu", "loader_workers": 3, "epochs": 1, "backbone": "resnet18"}
    records = [
        {
            "trial_id": "ran",
            "config": ran,
            "error": None,
            "max_epochs": 1,
            "history": list(run_trial(TrialConfig.from_dict(ran), small_digits)),
        },
        {
            "trial_id": "failed",
            "config": failed,
            "error": "RuntimeError: before any report",
            "max_epochs": 1,
            "history": [],
        },
    ]
    trials, epochs, _ = trials_table(records)
    export(tmp_path, trials, epochs, title="settings")
    for table in (trials, pd.read_parquet(tmp_path / "trials.parquet"), pd.read_csv(tmp_path / "trials.csv")):
        rows = table.set_index("trial_id")
        for name, setting in failed.items():
            assert rows.loc["failed", name] == setting, name
        for name in ("img_size_used", "device_used", "amp_dtype", "loader_workers_used"):
            assert pd.isna(rows.loc["failed", name]), name
        assert bool(rows.loc["ran", "amp"]) is True and rows.loc["ran", "amp_dtype"] == "off"  # CPU: float32
        assert rows.loc["ran", "device"] == "auto" and rows.loc["ran", "device_used"] == "cpu"
        assert rows.loc["ran", "img_size"] == 32 and rows.loc["ran", "img_size_used"] == 32
        assert rows.loc["ran", "loader_workers"] == 1 and rows.loc["ran", "loader_workers_used"] == 1
    front = pd.read_csv(tmp_path / "pareto.csv").set_index("trial_id")
    assert front.index.tolist() == ["ran"]
    assert bool(front.loc["ran", "amp"]) is True and front.loc["ran", "device"] == "auto"


def test_a_damaged_table_of_a_finished_study_is_not_answered_with_resume(tmp_path):
    """--resume answers "nothing to resume" for a finished study: its damaged tables come back from a copy or a new
    run."""
    trials, epochs, outcomes = trials_table(RECORDS)
    export(tmp_path, trials, epochs, title="test", outcomes=outcomes)
    (tmp_path / "trials.parquet").write_bytes(b"not parquet")
    (tmp_path / "study.json").write_text(json.dumps({"seed": 0}))  # interrupted: --resume rewrites the tables
    with pytest.raises(StudyError, match="rewrite it with python -m study.run --resume"):
        load_results(tmp_path)
    (tmp_path / "study.json").write_text(json.dumps({"seed": 0, "finished": "2026-12-03T10:00:00"}))
    for damaged in ("trials.parquet", "epochs.parquet", "outcomes.parquet"):
        export(tmp_path, trials, epochs, title="test", outcomes=outcomes)
        (tmp_path / damaged).write_bytes(b"not parquet")
        with pytest.raises(StudyError) as caught:
            load_results(tmp_path)
        assert str(caught.value).endswith(
            "the study finished (--resume has nothing to run): restore it from a copy, or run the study again (its "
            "command is in study.json)"
        ) and str(caught.value).startswith(str(tmp_path / damaged))


def test_a_trials_csv_that_disagrees_with_trials_parquet_is_noted(tmp_path):
    trials, epochs, outcomes = trials_table(RECORDS)
    export(tmp_path, trials, epochs, title="test", outcomes=outcomes)
    (tmp_path / "study.json").write_text(json.dumps({"seed": 0}))
    assert not load_results(tmp_path).notes
    trials[trials["trial_id"] != "t3"].assign(val_acc=0.1).to_csv(tmp_path / "trials.csv", index=False)
    results = load_results(tmp_path)
    assert results.trials["trial_id"].tolist() == ["t0", "t1", "t2", "t3"]  # the parquet, as before
    assert results.notes == [
        "trials.csv holds other trials than trials.parquet (only in trials.parquet: t3): it was edited or written by "
        "another run; trials.parquet was read; rewrite trials.csv from it, or remove it"
    ]
    (tmp_path / "trials.csv").write_text("trial_id,status,val_acc\nt9,completed,0.5\n")
    assert load_results(tmp_path).notes == [
        "trials.csv holds other trials than trials.parquet (only in trials.parquet: t0, t1, t2, t3; only in "
        "trials.csv: t9): it was edited or written by another run; trials.parquet was read; rewrite trials.csv from "
        "it, or remove it"
    ]
    (tmp_path / "trials.csv").write_bytes(bytes(range(256)))
    assert load_results(tmp_path).notes[0].startswith(f"{tmp_path / 'trials.csv'} is damaged or not what it should be")
