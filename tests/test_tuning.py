"""study/tuning.py without a running cluster: device choice, resource checks, search algorithms, planned trials."""

import textwrap

import optuna
import pytest

from study import tuning
from study.config import StudyError
from study.space import load_space


@pytest.mark.parametrize(
    "setting, gpu_ids, cuda, device",
    [
        ("auto", [], True, "cpu"),  # a GPU node, but Ray gave the trial no GPU: never take one
        ("auto", ["0"], True, "cuda"),
        ("auto", [], False, "cpu"),
        ("cuda", ["1"], True, "cuda"),
        ("cpu", ["0"], True, "cpu"),  # asked for the CPU: it gets it, whatever Ray reserved
        ("cpu", ["0"], False, "cpu"),
    ],
)
def test_a_trial_trains_on_the_device_its_ray_resources_give_it(setting, gpu_ids, cuda, device):
    assert tuning.trial_device(setting, gpu_ids, cuda) == device


def test_device_mistakes_inside_a_trial_are_one_line_errors():
    with pytest.raises(StudyError, match=r"device=cuda but Ray gave this trial no GPU: .*--gpus-per-trial"):
        tuning.trial_device("cuda", [], True)
    with pytest.raises(StudyError, match=r"Ray gave this trial GPU 0,1 but PyTorch cannot use CUDA"):
        tuning.trial_device("auto", ["0", "1"], False)


def cluster(cpus: float, gpus: float) -> tuning.Cluster:
    return tuning.Cluster(None, True, False, 2, 2 * cpus, 2 * gpus, {"CPU": cpus, "GPU": gpus})


def test_a_trial_larger_than_every_node_is_an_error_locally_and_a_warning_on_a_cluster():
    assert tuning.check_fit(cluster(4, 1), 2, 0.25, joined=False) is None
    with pytest.raises(StudyError, match=r"a trial asks for 1 GPU but the largest node has 4 CPU and 0 GPU"):
        tuning.check_fit(cluster(4, 0), 1, 1, joined=False)
    warning = tuning.check_fit(cluster(4, 0), 8, 1, joined=True)  # an autoscaler may still add such a node
    assert warning.startswith("warning: a trial asks for 8 CPU and 1 GPU") and "autoscaler" in warning


def searcher(storage, max_epochs=3, multi=True) -> tuning.FullBudgetOptunaSearch:
    sampler = optuna.samplers.TPESampler(seed=0)
    if multi:
        search = tuning.FullBudgetOptunaSearch(
            max_epochs, metric=["val_acc", "train_time_s"], mode=["max", "min"], sampler=sampler, storage=storage
        )
        search.set_search_properties(
            None, None, {"lr": tuning.tune_domain(load_space("optimizer").dimensions["lr"]), "epochs": max_epochs}
        )
    else:
        search = tuning.FullBudgetOptunaSearch(max_epochs, sampler=sampler, storage=storage)
        search.set_search_properties(
            "val_acc", "max", {"lr": tuning.tune_domain(load_space("optimizer").dimensions["lr"]), "epochs": max_epochs}
        )
    return search


def test_multi_objective_optuna_learns_only_from_trials_that_ran_every_epoch():
    storage = optuna.storages.InMemoryStorage()
    search = searcher(storage)
    for trial in ("full", "stopped", "failed"):
        assert 1e-4 <= search.suggest(trial)["lr"] <= 3e-2
        search.on_trial_result(trial, {"epoch": 1, "val_acc": 0.5, "train_time_s": 1.0, "training_iteration": 1})
    search.on_trial_complete("full", {"epoch": 3, "val_acc": 0.9, "train_time_s": 3.0})
    search.on_trial_complete("stopped", {"epoch": 1, "val_acc": 0.5, "train_time_s": 1.0})  # ASHA stopped it
    search.on_trial_complete("failed", {"epoch": 2, "val_acc": 0.6, "train_time_s": 2.0}, error=True)
    trials = optuna.load_study(study_name="optuna", storage=storage).trials
    states = [t.state for t in trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL]
    assert trials[0].values == [0.9, 3.0] and trials[1].values is None and trials[2].values is None
    assert "lr" in search.suggest("next")  # the sampler goes on after pruned and failed trials


def test_single_objective_optuna_keeps_the_curves_of_a_stopped_trial_as_pruned():
    storage = optuna.storages.InMemoryStorage()
    search = searcher(storage, max_epochs=2, multi=False)
    search.suggest("a"), search.suggest("b")
    for trial, accuracy in (("a", 0.4), ("b", 0.7)):
        search.on_trial_result(trial, {"epoch": 1, "val_acc": accuracy, "training_iteration": 1})
    search.on_trial_result("b", {"epoch": 2, "val_acc": 0.8, "training_iteration": 2})
    search.on_trial_complete("a", {"epoch": 1, "val_acc": 0.4})
    search.on_trial_complete("b", {"epoch": 2, "val_acc": 0.8})
    a, b = optuna.load_study(study_name="optuna", storage=storage).trials
    assert a.state == optuna.trial.TrialState.PRUNED and a.intermediate_values == {1: 0.4}
    assert b.state == optuna.trial.TrialState.COMPLETE and b.value == 0.8


def write(tmp_path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_planned_trials_are_the_seeded_draws_the_study_makes(tmp_path):
    space = load_space(
        write(
            tmp_path,
            """
        fixed: {backbone: tf_efficientnet_lite0}
        dimensions:
          unfreeze_depth: {grid: [0, 2]}
          lr: {loguniform: [1.0e-4, 1.0e-2]}
        search: random
        num_samples: 3
        """,
        )
    )
    configs, total = tuning.planned_trials(space, seed=7)
    assert total == len(configs) == 6 and [c["unfreeze_depth"] for c in configs] == [0, 2] * 3
    assert configs == tuning.planned_trials(space, seed=7)[0]
    assert [c["lr"] for c in configs] != [c["lr"] for c in tuning.planned_trials(space, seed=8)[0]]
    assert all(
        c["backbone"] == "tf_efficientnet_lite0" and c["epochs"] == 5 and 1e-4 <= c["lr"] <= 1e-2 for c in configs
    )


def test_planned_optuna_trials_are_tpe_random_start_ones(tmp_path):
    space = load_space("optimizer").override({}, num_samples=14)
    configs, total = tuning.planned_trials(space, seed=0)
    assert total == 14 and len(configs) == tuning.OPTUNA_STARTUP_TRIALS  # later ones depend on results
    assert configs == tuning.planned_trials(space, seed=0)[0]
    assert {c["optimizer"] for c in configs} <= {"sgd", "adam", "adamw"} and all(
        c["unfreeze_depth"] == 8 for c in configs
    )
    search = tuning.search_algorithm(space, seed=0)  # what the study's own searcher proposes first
    search.set_search_properties(space.metric, space.mode, tuning.param_space(space))
    assert search.suggest("first")["lr"] == configs[0]["lr"]


def test_a_trial_run_again_after_resume_keeps_its_last_run_only():
    rows = [
        {"epoch": 1, "val_acc": 0.1},
        {"epoch": 2, "val_acc": 0.2},
        {"epoch": 1, "val_acc": 0.3},
        {"epoch": 2, "val_acc": 0.4},
    ]
    assert tuning.last_run(rows) == rows[2:] and tuning.last_run(rows[:2]) == rows[:2] and tuning.last_run([]) == []


def test_errors_become_one_line_with_the_original_type():
    assert (
        tuning.describe_error(FloatingPointError("training loss became nan in epoch 1"))
        == "FloatingPointError: training loss became nan in epoch 1"
    )
    text = (
        "Failure # 1 (occurred at 2026)\nTraceback (most recent call last):\n  File x\nValueError: Expected more "
        "than 1 value per channel\n"
    )
    assert tuning.describe_error(text) == "ValueError: Expected more than 1 value per channel"


def test_storage_is_the_results_directory_or_a_fresh_experiment_under_a_shared_location(tmp_path):
    assert tuning.experiment_location(tmp_path / "out", None) == (str((tmp_path / "out" / "ray").resolve()), "tune")
    storage, name = tuning.experiment_location(tmp_path / "out", "s3://bucket/studies")
    assert storage == "s3://bucket/studies" and name.startswith("out-")
    assert tuning.experiment_location(tmp_path / "out", str(tmp_path / "nfs"))[0] == str(tmp_path / "nfs")
