"""Early stopping through Ray and the CLI: multi-objective ASHA's decisions repeat with one trial at a time, its
rungs keep the cheap trial that single-metric ASHA stops at the grace period, and `asha: false` stops none."""

import pandas as pd
import pytest

from tests.conftest import run_module

# The smoke study's trials (digits, 32 px, two epochs, a rung at epoch 1), the accurate one first: after one epoch
# depth 2 is the most accurate (about 0.76), full fine-tuning less accurate and four times costlier (dominated),
# the linear probe (depth 0, about 0.60) the cheapest but below single-metric ASHA's cutoff (the median of the two).
SPACE = """description: scheduler test
fixed: {{backbone: tf_efficientnet_lite0, data: digits, img_size: 32, optimizer: adamw, lr: 0.003, batch_size: 128}}
dimensions:
  unfreeze_depth: {{grid: [2, all, 0]}}
search: grid
max_epochs: 2
asha: {asha}
"""


def study(tmp_path, name: str, objectives: str) -> pd.DataFrame:
    space = tmp_path / f"{objectives}.yaml"
    asha = "false" if objectives == "none" else f"{{grace_period: 1, reduction_factor: 2, objectives: {objectives}}}"
    space.write_text(SPACE.format(asha=asha))
    out = tmp_path / name
    # one data root for all runs: later runs find the features cached, which must not change a decision
    result = run_module(
        "study.run",
        "--space",
        str(space),
        "--out",
        str(out),
        "--max-concurrent",
        "1",
        "--data-root",
        str(tmp_path / "data"),
        "--no-dashboard",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = pd.read_parquet(out / "trials.parquet")
    return trials.set_index(trials["unfreeze_depth"].astype(str))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("mo_asha")
    return {
        "pareto": study(tmp_path, "pareto", "pareto"),
        "pareto again": study(tmp_path, "pareto-again", "pareto"),
        "metric": study(tmp_path, "metric", "metric"),
        "no asha": study(tmp_path, "no-asha", "none"),
    }


@pytest.mark.slow
def test_one_trial_at_a_time_gives_the_same_statuses_and_stop_reasons_twice(runs):
    first, second = runs["pareto"], runs["pareto again"]
    assert first[["status", "stop_reason"]].equals(second[["status", "stop_reason"]])
    assert first["stop_reason"].str.contains("rung epoch 1: rank").all()


@pytest.mark.slow
def test_the_rungs_stop_the_dominated_trial_and_keep_the_cheap_one_that_single_metric_asha_stops(runs):
    pareto, metric = runs["pareto"], runs["metric"]
    assert pareto.loc["all", "status"] == metric.loc["all", "status"] == "stopped_early"
    assert pareto.loc["all", "stop_reason"].startswith("stopped at rung epoch 1: rank 2 of 2, front 2 of 2")
    assert pareto.loc["0", "status"] == "completed" and pareto.loc["2", "status"] == "completed"
    assert pareto.loc["0", "stop_reason"].startswith("completed all 2 epochs; passed rung epoch 1: rank 2 of 3")
    assert metric.loc["0", "status"] == "stopped_early"
    assert metric.loc["0", "stop_reason"].startswith("stopped at rung epoch 1: val_acc")


@pytest.mark.slow
def test_single_metric_asha_stops_the_trial_behind_at_the_grace_period_and_lets_the_others_complete(runs):
    metric = runs["metric"]
    assert metric.loc["0", "status"] == "stopped_early" and metric.loc["0", "epochs_run"] == 1  # grace period 1
    assert (metric.loc["2", "status"], metric.loc["2", "epochs_run"]) == ("completed", 2)


@pytest.mark.slow
def test_without_asha_every_trial_runs_every_epoch(runs):
    grid = runs["no asha"]
    assert (grid["status"] == "completed").all() and (grid["epochs_run"] == 2).all(), grid[["status", "epochs_run"]]
