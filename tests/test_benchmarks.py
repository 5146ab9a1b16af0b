"""benchmarks/common.py: goals written in the scripts, checked and printed beside the headline; --quick runs never
write into the committed benchmarks/results/."""

import argparse
import ast
import importlib
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
common = importlib.import_module("common")
SCRIPTS = ("asha_vs_grid", "cache_speedup", "many_trials", "naive_vs_study", "trial_overhead")


def test_the_headline_says_met_or_missed_beside_each_goal(capsys):
    goals = [common.Goal("ratio", ">=", 5, "fast"), common.Goal("gap", "<=", 0.01, "same accuracy")]
    common.finish("demo", goals, {"ratio": 2.53, "gap": 0.008, "other": 1.5})
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "demo: ratio=2.53 (goal >= 5: missed), gap=0.008 (goal <= 0.01: met), other=1.5"
    assert common.headline("demo", goals[:1], {"ratio": 5.0}) == "demo: ratio=5 (goal >= 5: met)"
    assert not goals[0].met(math.nan)


def test_naive_vs_study_exits_non_zero_when_the_accuracies_differ_by_more_than_a_point(capsys):
    script = importlib.import_module("naive_vs_study")
    script.finish(script.NAME, script.GOALS, {"ratio": 2.0, "accuracy_gap": 0.01})  # speed missed: still exit 0
    with pytest.raises(SystemExit) as exit_:
        script.finish(script.NAME, script.GOALS, {"ratio": 9.0, "accuracy_gap": 0.0181})
    assert exit_.value.code not in (0, None) and "within 1 point" in str(exit_.value.code)
    assert "accuracy_gap=0.0181 (goal <= 0.01: missed)" in capsys.readouterr().out


def test_a_quick_run_writes_to_its_scratch_directory_never_to_the_committed_results(tmp_path):
    committed = {path: path.read_bytes() for path in common.RESULTS.iterdir()}
    table = pd.DataFrame({"a": [1]})
    path = common.save("naive_vs_study", table, {"quick": True}, argparse.Namespace(quick=True, work=tmp_path))
    assert path == tmp_path / "quick-results" / "naive_vs_study.csv" and path.with_suffix(".json").exists()
    assert {path: path.read_bytes() for path in common.RESULTS.iterdir()} == committed
    full = argparse.Namespace(quick=False, work=tmp_path)
    assert common.results_dir(full) == common.RESULTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_benchmark_writes_its_goals_and_ends_with_the_verdict(name):
    script = importlib.import_module(name)
    assert script.GOALS and all(isinstance(goal, common.Goal) for goal in script.GOALS)
    main = next(
        node for node in ast.parse((BENCHMARKS / f"{name}.py").read_text()).body if getattr(node, "name", "") == "main"
    )
    calls = [node for node in ast.walk(main) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
    finish = [call for call in calls if call.func.id == "finish"]
    assert finish and [a.id for a in finish[0].args[:2]] == ["NAME", "GOALS"], (
        "main() must end with finish(NAME, GOALS, ...)"
    )
    assert isinstance(main.body[-1], ast.Expr) and main.body[-1].value is finish[0]
    saves = [call for call in calls if call.func.id == "save"]
    assert saves and all(isinstance(call.args[-1], ast.Name) and call.args[-1].id == "args" for call in saves)


@pytest.mark.parametrize("depth, feature_cache", [(2, False), (2, True), ("all", False)])
def test_the_bare_loop_and_a_study_trial_reach_the_same_accuracies_epoch_by_epoch(depth, feature_cache, small_digits):
    """The naive side of naive_vs_study trains the same models as a trial: same split, weights, head, frozen layers,
    batch order, optimizer and weight decay (torch's AdamW default of 0.01 once made them differ); here with the same
    threads and memory format, so not even float rounding may differ."""
    from study.core.config import TrialConfig
    from study.trial.train import run_trial

    bare_loop = importlib.import_module("bare_loop")
    settings = dict(img_size=32, seed=0, lr=1e-3, batch_size=64, epochs=2)
    options = dict(backbone="tf_efficientnet_lite0", channels_last=True, eval_test=False)
    bare = bare_loop.train_depth(small_digits, depth, argparse.Namespace(**settings, **options))
    config = TrialConfig(unfreeze_depth=depth, feature_cache=feature_cache, **settings)
    trial = list(run_trial(config, small_digits))
    assert [epoch["val_acc"] for epoch in bare["epochs"]] == [report["val_acc"] for report in trial]
    assert trial[-1]["val_acc"] > trial[0]["val_acc"]  # it learned: equal accuracies at chance would prove little
