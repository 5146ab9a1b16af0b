"""study/tune without a running cluster: device choice, resource checks, search algorithms, planned trials."""

import pickle

import optuna
import pandas as pd
import pytest

from study.core.config import StudyError
from study.core.space import load_space
from study.tune import callbacks
from study.tune.callbacks import ExportCallback, WatchCallback
from study.tune.cluster import Cluster, check_fit, experiment_location
from study.tune.records import describe_error, last_run
from study.tune.schedulers import ExplainedASHAScheduler, ParetoASHAScheduler, RungDecisions, scheduler_for
from study.tune.search import (
    OPTUNA_STARTUP_TRIALS,
    FullBudgetOptunaSearch,
    param_space,
    planned_configs,
    search_algorithm,
    trial_count,
    tune_domain,
    variant_generator,
)
from study.tune.trainable import quiet_exit, trial_device
from tests.helpers import brute_force_front, run_module, write_space


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
    assert trial_device(setting, gpu_ids, cuda) == device


def test_device_mistakes_inside_a_trial_are_one_line_errors():
    with pytest.raises(StudyError, match=r"device=cuda but Ray gave this trial no GPU: .*--gpus-per-trial"):
        trial_device("cuda", [], True)
    with pytest.raises(StudyError, match=r"Ray gave this trial GPU 0,1 but PyTorch cannot use CUDA"):
        trial_device("auto", ["0", "1"], False)


def cluster(cpus: float, gpus: float) -> Cluster:
    return Cluster(
        dashboard_url=None,
        token_auth=True,
        client=False,
        nodes=2,
        cpus=2 * cpus,
        gpus=2 * gpus,
        largest_node={"CPU": cpus, "GPU": gpus},
    )


def test_a_trial_larger_than_every_node_is_an_error_locally_and_a_warning_on_a_cluster():
    assert check_fit(cluster(4, 1), 2, 0.25, joined=False) is None
    with pytest.raises(StudyError, match=r"a trial asks for 1 GPU but the largest node has 4 CPU and 0 GPU"):
        check_fit(cluster(4, 0), 1, 1, joined=False)
    warning = check_fit(cluster(4, 0), 8, 1, joined=True)  # an autoscaler may still add such a node
    assert warning.startswith("warning: a trial asks for 8 CPU and 1 GPU") and "autoscaler" in warning


def searcher(storage, max_epochs=3, multi=True) -> FullBudgetOptunaSearch:
    sampler = optuna.samplers.TPESampler(seed=0)
    if multi:
        search = FullBudgetOptunaSearch(
            max_epochs, metric=["val_acc", "train_time_s"], mode=["max", "min"], sampler=sampler, storage=storage
        )
        search.set_search_properties(
            None, None, {"lr": tune_domain(load_space("optimizer").dimensions["lr"]), "epochs": max_epochs}
        )
    else:
        search = FullBudgetOptunaSearch(max_epochs, sampler=sampler, storage=storage)
        search.set_search_properties(
            "val_acc", "max", {"lr": tune_domain(load_space("optimizer").dimensions["lr"]), "epochs": max_epochs}
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


def test_planned_trials_are_the_seeded_draws_the_study_makes(tmp_path):
    space = load_space(
        write_space(
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
    configs, total = planned_configs(space, seed=7)
    assert total == len(configs) == 6 and [c["unfreeze_depth"] for c in configs] == [0, 2] * 3
    assert configs == planned_configs(space, seed=7)[0]
    assert [c["lr"] for c in configs] != [c["lr"] for c in planned_configs(space, seed=8)[0]]
    assert all(
        c["backbone"] == "tf_efficientnet_lite0" and c["epochs"] == 5 and 1e-4 <= c["lr"] <= 1e-2 for c in configs
    )


def test_planned_optuna_trials_are_tpe_random_start_ones(tmp_path):
    space = load_space("optimizer").override({}, num_samples=14)
    configs, total = planned_configs(space, seed=0)
    assert total == 14 and len(configs) == OPTUNA_STARTUP_TRIALS  # later ones depend on results
    assert configs == planned_configs(space, seed=0)[0]
    assert {c["optimizer"] for c in configs} <= {"sgd", "adam", "adamw"} and all(
        c["unfreeze_depth"] == 8 for c in configs
    )


@pytest.mark.slow
@pytest.mark.parametrize("search", ["random", "optuna"])
def test_planned_trials_are_the_trials_a_real_study_then_runs(tmp_path, search):
    """The dry run's list against what Ray Tune and Optuna actually ran with the same seed: not against itself."""
    space = write_space(
        tmp_path,
        f"""
        fixed: {{backbone: tf_efficientnet_lite0, data: digits, img_size: 32, batch_size: 256, unfreeze_depth: 0}}
        dimensions:
          lr: {{loguniform: [1.0e-4, 1.0e-2]}}
          optimizer: {{choice: [sgd, adamw]}}
        search: {search}
        num_samples: 3
        max_epochs: 1
        asha: false
        """,
    )
    planned, total = planned_configs(load_space(space), seed=0)  # the study's default sampler seed
    assert total == len(planned) == 3
    out = tmp_path / "out"
    result = run_module(
        "study.run", "--space", space, "--out", str(out), "--no-dashboard", "--data-root", str(tmp_path / "data")
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    ran = pd.read_parquet(out / "trials.parquet").sort_values("lr")
    expected = sorted((c["lr"], c["optimizer"]) for c in planned)
    assert ran["lr"].tolist() == pytest.approx([lr for lr, _ in expected], rel=1e-9)
    assert ran["optimizer"].tolist() == [optimizer for _, optimizer in expected]


def test_a_trial_run_again_after_resume_keeps_its_last_run_only():
    rows = [
        {"epoch": 1, "val_acc": 0.1},
        {"epoch": 2, "val_acc": 0.2},
        {"epoch": 1, "val_acc": 0.3},
        {"epoch": 2, "val_acc": 0.4},
    ]
    assert last_run(rows) == rows[2:] and last_run(rows[:2]) == rows[:2] and last_run([]) == []


def test_errors_become_one_line_with_the_original_type():
    assert (
        describe_error(FloatingPointError("training loss became nan in epoch 1"))
        == "FloatingPointError: training loss became nan in epoch 1"
    )
    text = (
        "Failure # 1 (occurred at 2026)\nTraceback (most recent call last):\n  File x\nValueError: Expected more "
        "than 1 value per channel\n"
    )
    assert describe_error(text) == "ValueError: Expected more than 1 value per channel"


def test_storage_is_the_results_directory_or_a_fresh_experiment_under_a_shared_location(tmp_path):
    assert experiment_location(tmp_path / "out", None) == (str((tmp_path / "out" / "ray").resolve()), "tune")
    storage, name = experiment_location(tmp_path / "out", "s3://bucket/studies")
    assert storage == "s3://bucket/studies" and name.startswith("out-")
    assert experiment_location(tmp_path / "out", str(tmp_path / "nfs"))[0] == str(tmp_path / "nfs")


def report(trial: str, epoch: int, accuracy: float, cost: float) -> dict:
    return {"training_iteration": epoch, "epoch": epoch, "val_acc": accuracy, "train_time_s": cost}


def test_the_pareto_scheduler_stops_by_rank_completes_at_the_budget_and_writes_its_reasons_into_the_reports():
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    scheduler = scheduler_for(load_space("smoke"))  # rung at epoch 1, budget 2 epochs, reduction factor 2
    assert isinstance(scheduler, ParetoASHAScheduler) and scheduler.set_search_properties("val_acc", "max")
    callback = RungDecisions(scheduler)
    decisions = {}
    for name, accuracy, cost in (("accurate", 0.75, 1.7), ("dominated", 0.53, 7.4), ("cheap", 0.60, 1.0)):
        trial = SimpleNamespace(trial_id=name, config={})
        result = report(name, 1, accuracy, cost)
        decisions[name] = scheduler.on_trial_result(None, trial, result)
        callback.on_trial_result(0, [], trial, result)
        assert result["rung_decision"] == scheduler.decision(name, 1) != ""
    assert decisions == {"accurate": "CONTINUE", "dominated": "STOP", "cheap": "CONTINUE"}
    assert scheduler.decision("cheap", 1).startswith("passed rung epoch 1: rank 2 of 3, front 1 of 2")
    final = report("cheap", 2, 0.7, 1.1)
    assert scheduler.on_trial_result(None, SimpleNamespace(trial_id="cheap", config={}), final) == TrialScheduler.STOP
    callback.on_trial_result(0, [], SimpleNamespace(trial_id="cheap", config={}), final)
    assert final["rung_decision"] == ""  # the budget is not a rung
    resumed = scheduler_for(load_space("smoke"))  # after --resume: Ray restores callbacks, not schedulers
    RungDecisions(resumed).set_state(callback.get_state())
    assert resumed.rungs.recorded == scheduler.rungs.recorded and len(resumed.rungs.recorded[1]) == 3
    assert resumed.decision("cheap", 1) == scheduler.decision("cheap", 1)


def test_single_metric_asha_is_rays_and_says_which_cutoff_stopped_a_trial(tmp_path):
    from types import SimpleNamespace

    space = load_space(
        write_space(
            tmp_path,
            """
            fixed: {backbone: tf_efficientnet_lite0, data: digits}
            max_epochs: 2
            asha: {grace_period: 1, reduction_factor: 2, objectives: metric}
            """,
        )
    )
    scheduler = scheduler_for(space)
    assert isinstance(scheduler, ExplainedASHAScheduler)
    scheduler.set_search_properties("val_acc", "max")  # as the Tuner does for a single-objective search
    for name, accuracy in (("a", 0.75), ("b", 0.53), ("c", 0.60)):
        trial = SimpleNamespace(trial_id=name, config={}, status="PENDING")  # as Ray adds a new trial
        scheduler.on_trial_add(None, trial)
        scheduler.on_trial_result(None, trial, report(name, 1, accuracy, 1.0))
    assert scheduler.decision("a", 1) == "passed rung epoch 1: val_acc 0.7500 (max), alone at the rung"
    assert scheduler.decision("c", 1) == (
        "stopped at rung epoch 1: val_acc 0.6000 (max), the cutoff is 0.6400, the 50% quantile of 2 recorded"
    )


def test_the_tables_are_rewritten_at_most_once_a_period_while_trials_finish_and_all_at_the_end(tmp_path, monkeypatch):
    """One rewrite per finished trial would cost in proportion to the study's size for every trial."""
    import pandas as pd
    from ray.tune.experiment import Trial

    callback = ExportCallback(tmp_path, max_epochs=1)
    report = {"epoch": 1, "val_acc": 0.5, "train_time_s": 1.0, "eval_time_s": 0.1, "images_per_s": 10.0}

    def finish(number: int) -> None:
        trial = Trial("trainable", config={"lr": 0.1 * number}, trial_id=f"t{number}", stub=True)
        callback.on_trial_start(0, [], trial)
        callback.on_trial_result(0, [], trial, report)
        callback.on_trial_complete(0, [], trial)

    rows = lambda: len(pd.read_csv(tmp_path / "trials.csv"))
    monkeypatch.setattr(callbacks, "EXPORT_PERIOD_S", 3600.0)
    finish(1)
    assert rows() == 1  # the first finished trial at once
    finish(2)
    finish(3)
    callback.on_step_end(0, [])
    assert rows() == 1  # within the period: not yet
    monkeypatch.setattr(callbacks, "EXPORT_PERIOD_S", 0.0)
    callback.on_step_end(0, [])
    assert rows() == 3  # the period passed: Tune's next loop step writes them
    monkeypatch.setattr(callbacks, "EXPORT_PERIOD_S", 3600.0)
    finish(4)
    callback.on_experiment_end([])
    assert rows() == 4 and callback.get_state()["finished"].keys() == {"t1", "t2", "t3", "t4"}


def test_each_finished_trial_is_made_into_table_rows_once_however_often_the_tables_and_console_are_rewritten(
    tmp_path, monkeypatch
):
    """The driver's cost per trial must not grow with the study: rebuilding every trial's row for every finished
    trial (the console's front) or every rewrite made a 1,000-trial study spend most of its driver time there."""
    import io

    from ray.tune.experiment import Trial

    from study.analysis import results
    from study.watch.console import StudyConsole

    made, trial_rows = [], results.trial_rows
    counted = lambda record: made.append(record["trial_id"]) or trial_rows(record)
    for module in (callbacks, results):  # results.trials_table's calls are counted too
        monkeypatch.setattr(module, "trial_rows", counted)
    monkeypatch.setattr(callbacks, "EXPORT_PERIOD_S", 0.0)  # a rewrite at every chance
    export = ExportCallback(tmp_path, max_epochs=2)
    watch = WatchCallback(export, total=6, searched=["lr"], console=False)
    watch._console = console = StudyConsole(6, ["lr"], stream=io.StringIO())
    runs = [(0.9, 5.0, 2), (0.8, 1.0, 2), (0.95, 9.0, 2), (0.7, 3.0, 2), (0.99, 0.5, 1), (0.85, 0.9, 2)]
    for number, (accuracy, seconds, epochs) in enumerate(runs):
        trial = Trial("trainable", config={"lr": 0.01 * (number + 1)}, trial_id=f"t{number}", stub=True)
        export.on_trial_start(0, [], trial)
        for epoch in range(1, epochs + 1):
            report = {"epoch": epoch, "val_acc": accuracy, "train_time_s": seconds * epoch / epochs}
            export.on_trial_result(0, [], trial, {**report, "eval_time_s": 0.1, "images_per_s": 10.0})
        for callback in (export, watch):  # Ray calls them in this order
            callback.on_trial_complete(0, [], trial)
            callback.on_step_end(0, [])
    export.on_experiment_end([])
    assert sorted(made) == [f"t{n}" for n in range(len(runs))]  # once each
    table, *_ = results.trials_table([export.finished[f"t{n}"] for n in range(len(runs))])
    stored = pd.read_parquet(tmp_path / "trials.parquet")
    assert stored.drop(columns="lr").equals(table.drop(columns="lr")) and stored["lr"].tolist() == table["lr"].tolist()
    # the console's front, kept trial by trial, is the front of all of them (t4 stopped early: not on it)
    assert {row["trial_id"] for row in console.front} == brute_force_front(table[table["status"] == "completed"])
    assert {row["trial_id"] for row in console.front} == {"t0", "t2", "t5"}  # t5 beats t1 and t3


def test_a_worker_stopped_by_ray_exits_without_a_traceback_and_other_ignored_errors_still_print(capsys, monkeypatch):
    """Ray's SIGTERM handler raises SystemExit in whatever runs, e.g. a WeakSet callback during garbage collection:
    Python would print that as "Exception ignored in" with a traceback on the driver's console."""
    import gc
    import sys

    class Raises:
        def __init__(self, error: BaseException):
            self.error = error

        def __del__(self):
            raise self.error

    monkeypatch.setattr(sys, "unraisablehook", quiet_exit)
    Raises(SystemExit(1))  # dropped at once: __del__ raises where nothing can catch it
    gc.collect()
    assert capsys.readouterr().err == ""
    Raises(ValueError("a real bug"))
    gc.collect()
    assert "ValueError: a real bug" in capsys.readouterr().err


def test_the_export_callback_pickles_without_its_derived_rows_and_unpickles_from_an_older_pickle(tmp_path):
    import pickle

    callback = ExportCallback(tmp_path, max_epochs=1)
    callback.finished["t0"] = {"trial_id": "t0", "config": {}, "history": [], "error": "E: x", "max_epochs": 1}
    callback.rows("t0")
    again = pickle.loads(pickle.dumps(callback))
    assert again._rows == {} and again.finished == callback.finished and again.rows("t0") == callback.rows("t0")
    older = ExportCallback.__new__(ExportCallback)  # as pickle restores a Tuner saved before the cache
    older.__setstate__({key: value for key, value in callback.__dict__.items() if key != "_rows"})
    assert older.rows("t0")[0]["status"] == "error"


def test_repeats_run_each_planned_configuration_with_the_same_draws_and_a_repeat_index_each(tmp_path):
    space = load_space(
        write_space(
            tmp_path,
            """
        dimensions:
          unfreeze_depth: {grid: [0, 2]}
          lr: {loguniform: [1.0e-4, 1.0e-2]}
        search: random
        num_samples: 2
        repeats: 3
        """,
        )
    )
    params = param_space(space)
    assert next(iter(params)) == "repeat" and params["repeat"] == {"grid_search": [0, 1, 2]}
    assert "repeat" not in param_space(space.override({}, repeats=1))  # no repeats: the trials of before
    configs, total = planned_configs(space, seed=7)
    assert total == len(configs) == trial_count(space) == 2 * 2 * 3
    groups = {}
    for config in configs:
        settings = tuple(sorted((key, value) for key, value in config.items() if key != "repeat"))
        groups.setdefault(settings, []).append(config["repeat"])
    # every configuration (depth, drawn lr) three times, once per repeat: the repeats are not other draws
    assert len(groups) == 4 and all(sorted(repeats) == [0, 1, 2] for repeats in groups.values())
    # the variant generator the study runs creates exactly these trials, in this order
    generator = variant_generator(space, 7, None)
    generator.add_configurations({"study": {"run": lambda config: None, "config": params, "num_samples": 2}})
    created = []
    while (trial := generator.next_trial()) is not None:
        created.append(trial.config)
    assert created == configs


@pytest.mark.parametrize(
    "dimensions, search",
    [
        ("data: {grid: ['folder:/a', 'folder:/b']}\n  lr: {loguniform: [1.0e-4, 1.0e-2]}", "random"),
        ("data: {choice: ['folder:/a', 'folder:/b', digits]}\n  lr: {loguniform: [1.0e-4, 1.0e-2]}", "random"),
        ("data: {choice: ['folder:/a', 'folder:/b', digits]}\n  lr: {loguniform: [1.0e-4, 1.0e-2]}", "optuna"),
        ("lr: {loguniform: [1.0e-4, 1.0e-2]}", "random"),  # data fixed: digits, the default
    ],
)
def test_each_trial_demands_the_fingerprint_of_its_own_data_whatever_the_search(tmp_path, dimensions, search):
    """preflight's fingerprints by data name reach every trial's config, following `data` where it is a dimension,
    without changing what the search draws."""
    space = load_space(write_space(tmp_path, f"dimensions:\n  {dimensions}\nsearch: {search}\nnum_samples: 6\n"))
    fingerprints = {"folder:/a": "aaaa", "folder:/b": "bbbb", "digits": ""}
    params = param_space(space, fingerprints)
    if search == "optuna":
        searcher = search_algorithm(space, 0)
        searcher.set_search_properties(space.metric, space.mode, params)
        configs = [searcher.suggest(f"t{i}") for i in range(3)]
        configs += [pickle.loads(pickle.dumps(searcher)).suggest("after_resume")]  # Ray restores it pickled
    else:
        generator = variant_generator(space, 7, None)
        generator.add_configurations({"study": {"run": lambda config: None, "config": params, "num_samples": 6}})
        configs = []
        while (trial := generator.next_trial()) is not None:
            configs.append(trial.config)
        planned = planned_configs(space, seed=7).configs  # no fingerprints: a dry run reads no data
        assert [{k: v for k, v in c.items() if k != "data_fingerprint"} for c in configs] == planned
    assert configs and all(c["data_fingerprint"] == fingerprints[c.get("data", "digits")] for c in configs)
    assert "data" not in space.dimensions or len({c["data"] for c in configs}) > 1


def resume_scheduler(scheduler, space, trials, running: str):
    """The scheduler of a study stopped while `running` trained and the other `trials` had finished, as --resume
    rebuilds it: Ray unpickles a fresh one with the Tuner, restores the callbacks' saved state (cloudpickled) and
    adds every trial again, the finished ones as they were and the unfinished one to run from its first epoch."""
    from ray import cloudpickle
    from ray.tune.experiment import Trial

    saved = cloudpickle.dumps(RungDecisions(scheduler).get_state())
    resumed = scheduler_for(space)
    resumed.set_search_properties("val_acc", "max")
    callback = RungDecisions(resumed)
    callback.set_state(cloudpickle.loads(saved))
    for name, trial in trials.items():
        trial.set_status(Trial.PENDING if name == running else Trial.TERMINATED)
        resumed.on_trial_add(None, trial)
    return resumed, callback


def arrive(scheduler, trial, accuracy: float, cost: float = 1.0, callback=None) -> str:
    result = report(trial.trial_id, 1, accuracy, cost)
    action = scheduler.on_trial_result(None, trial, result)
    if callback:
        callback.on_trial_result(0, [], trial, result)
        assert result["rung_decision"] == scheduler.decision(trial.trial_id, 1)
    return action


@pytest.mark.parametrize("objectives", ["pareto", "metric"])
def test_after_resume_the_rungs_hold_the_finished_trials_results_and_rank_a_trial_run_again_on_its_new_one(
    tmp_path, objectives
):
    """Issue 27 (8a): `first` passed rung 1 alone and was training at the stop; --resume runs it again from its
    first epoch under its trial id. It must be ranked again on its new result among the finished trials' results
    (not pass on its earlier decision, "rank 1 of 1", with its earlier result standing at the rung), and a trial
    arriving later must be ranked among all of them."""
    from ray.tune.experiment import Trial

    space = load_space(
        write_space(
            tmp_path,
            f"""
            fixed: {{backbone: tf_efficientnet_lite0, data: digits}}
            max_epochs: 2
            asha: {{grace_period: 1, reduction_factor: 2, objectives: {objectives}}}
            """,
        )
    )
    scheduler = scheduler_for(space)
    scheduler.set_search_properties("val_acc", "max")
    trials = {name: Trial("trainable", config={}, trial_id=name, stub=True) for name in ("first", "second", "third")}
    for trial in trials.values():
        scheduler.on_trial_add(None, trial)
    assert arrive(scheduler, trials["first"], 0.6, 5.0) == "CONTINUE"
    assert arrive(scheduler, trials["second"], 0.8, 1.0) == "CONTINUE"  # then completes
    assert arrive(scheduler, trials["third"], 0.5, 9.0) == "STOP"
    pareto = objectives == "pareto"
    assert scheduler.decision("first", 1).startswith(
        "passed rung epoch 1: rank 1 of 1" if pareto else "passed rung epoch 1: val_acc 0.6000 (max), alone"
    )

    resumed, callback = resume_scheduler(scheduler, space, trials, running="first")
    assert arrive(resumed, trials["first"], 0.4, 9.5, callback) == "STOP"  # its new run: worse than both
    assert resumed.decision("first", 1).startswith(
        "stopped at rung epoch 1: rank 3 of 3"
        if pareto
        else "stopped at rung epoch 1: val_acc 0.4000 (max), the cutoff is 0.6500, the 50% quantile of 2 recorded"
    )
    later = Trial("trainable", config={}, trial_id="later", stub=True)
    resumed.on_trial_add(None, later)
    arrive(resumed, later, 0.7, 2.0, callback)
    assert ("of 4," if pareto else "of 3 recorded") in resumed.decision("later", 1)
    recorded = RungDecisions(resumed).get_state()
    rung = recorded["recorded"][1] if pareto else recorded["brackets"][0][-1]  # Ray's rungs: highest first
    first_run = (0.4, 9.5) if pareto else 0.4
    assert rung["first"] == first_run and set(rung) == {"first", "second", "third", "later"}
