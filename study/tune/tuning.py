"""The one place that knows Ray: the trainable, search algorithms, the Tuner, clusters, resume, results.

Ray's API has changed several times; this file is written against Ray 2.60
(`ray.tune.report`, `tune.RunConfig`, `tune.Tuner`, `Tuner.restore`, token
authentication). Nothing else imports Ray.

Search algorithms (the space's `search`, study/core/space.py): `grid` and `random`
are Ray's variant generator (seeded); `optuna` and `optuna_mo` are Ray's
OptunaSearch with Optuna's TPE sampler (seeded). Early stopping (the space's
`asha`): `objectives: pareto` is `ParetoASHAScheduler`, a Ray TrialScheduler
over the rungs and decision rule of study/tune/rungs.py (MO-ASHA: val_acc against
standalone training time); `objectives: metric` is Ray's ASHAScheduler on the
space's `metric`. Either way every rung decision is written into the trial's
report of that epoch (`rung_decision`, by `RungDecisions`), from which the
results tables derive each trial's `stop_reason`. The sampler learns only from
trials that ran every epoch: a trial the scheduler stopped is told to Optuna as
pruned, a failed one as failed (`FullBudgetOptunaSearch`).

Results are exported while the study runs: when trials finish or fail,
`ExportCallback` rewrites the results tables (study/analysis/results.py, atomic files),
at most every EXPORT_PERIOD_S (a rewrite costs time in proportion to the
finished trials: one per trial would grow with the study), so a study whose
driver dies has already saved its finished trials but those of its last second.
The callback's record of finished trials is part of Ray's experiment state,
which Ray saves (every CHECKPOINT_PERIOD_S) together with the trials'
statuses: `--resume` restores both from the same snapshot, so the tables and
Ray agree on what ran.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import ray
import torch
from ray import cloudpickle, tune
from ray.tune.logger import TBXLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.variant_generator import generate_variants

from study.analysis.results import assemble, trial_rows, write_tables
from study.core.config import StudyError, TrialConfig
from study.core.metrics import EPOCH_METRICS, MULTI_OBJECTIVE, REPORT_KEYS, RUNG_ACCURACY, RUNG_COST
from study.core.registry import SCHEDULERS, SEARCHES
from study.core.space import Dimension, Space
from study.trial.train import run_trial
from study.tune.rungs import ParetoRungs
from study.watch.tracking import MlflowTracker

RAY_DIR = "ray"  # under the study's results directory: Ray Tune's own experiment files (without --storage)
EXPERIMENT = "tune"
STUDY_PACKAGE = Path(__file__).resolve().parents[1]  # the whole study package, shipped to Ray workers
# How often Ray saves the experiment state (trial statuses, searcher, ExportCallback): a trial that finished
# less than this before the driver died is not in the saved state and runs again on --resume (never lost).
# Ray's default ("auto") is 10 s or more; the state of a study is small, so saving it every second costs little.
CHECKPOINT_PERIOD_S = "1"
# How often, at most, the results tables are rewritten while trials finish (the first finished trial at once, all at
# the end). A trial that finished in the last period before the driver died may be missing from the tables: it is
# in Ray's saved state (kept, and exported by --resume) or not (run again): never lost.
EXPORT_PERIOD_S = 1.0
# TPE draws this many trials at random before it models results (Optuna's default n_startup_trials).
OPTUNA_STARTUP_TRIALS = 10


# --- inside a trial ----------------------------------------------------------------------------------------------


def trial_device(setting: str, gpu_ids: list[str], cuda_available: bool) -> str:
    """The device a trial trains on: the one Ray's resources give it, never a GPU it was not given.

    Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a trial without GPUs, so on a GPU node such a trial
    would still see every GPU: `auto` follows Ray's assignment (`gpu_ids`), not what CUDA shows.
    """
    if setting == "cpu":
        return "cpu"
    if gpu_ids and not cuda_available:
        raise StudyError(
            f"Ray gave this trial GPU {','.join(gpu_ids)} but PyTorch cannot use CUDA on this node (a CPU-only torch "
            "build, or no driver): fix the node, or run with --set device=cpu"
        )
    if setting == "cuda" and not gpu_ids:
        raise StudyError(
            "device=cuda but Ray gave this trial no GPU: give trials GPUs with --gpus-per-trial (e.g. 1, or 0.25 to "
            "pack four per GPU)"
        )
    return "cuda" if gpu_ids else "cpu"


def quiet_exit(unraisable) -> None:
    """sys.unraisablehook of a trial's worker: Ray stops a worker (at a study's end, on Ctrl-C) with SIGTERM, whose
    handler raises SystemExit wherever the worker is, a garbage-collection callback included; Python reports an
    exception there as "Exception ignored in ..." with a traceback, which Ray forwards to the driver's console.
    That exit is intended: drop it; report anything else as Python would."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, SystemExit):
        return
    sys.__unraisablehook__(unraisable)


def trainable(config: dict) -> None:
    """Ray Tune function trainable: one report per epoch; ASHA may stop it between epochs.

    Every report also says where the trial ran (node, GPU) and when it started. With save_checkpoint, the last
    epoch's report carries the final model as a Ray checkpoint, which Ray copies into the trial's directory
    (ray/tune/TRIAL_ID/checkpoint_000000/model.pt). A trial that ASHA stops early never reaches its last epoch
    and saves none.
    """
    started = time.time()
    sys.unraisablehook = quiet_exit  # per process: every trial of a warm worker sets the same hook
    context = ray.get_runtime_context()
    cpus = context.get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    gpu_ids = [str(i) for i in context.get_accelerator_ids().get("GPU", [])]
    trial = TrialConfig.from_dict(config)
    device = trial_device(trial.device, gpu_ids, torch.cuda.is_available())
    trial = trial.replace(device=device)
    placement = {
        "node_id": context.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
        "gpu_ids": ",".join(gpu_ids),
        "gpu_name": torch.cuda.get_device_name() if device == "cuda" else "",
        "started_at": started,
    }
    with tempfile.TemporaryDirectory(prefix="study-checkpoint-") as directory:
        for metrics in run_trial(trial, checkpoint_dir=Path(directory) if trial.save_checkpoint else None):
            final = trial.save_checkpoint and metrics["epoch"] == trial.epochs
            tune.report(
                {**metrics, **placement}, checkpoint=tune.Checkpoint.from_directory(directory) if final else None
            )


# --- the cluster -------------------------------------------------------------------------------------------------


@dataclass
class Cluster:
    dashboard_url: str | None
    token_auth: bool  # Ray's token authentication is on for this driver (RAY_AUTH_MODE=token)
    client: bool  # connected through Ray Client (ray://): Tune's driver loop runs on the head node
    nodes: int
    cpus: float
    gpus: float
    largest_node: dict  # CPU and GPU of the node with the most of each (a trial must fit on one node)
    log_dir: str | None = None  # Ray's log files on this machine (the session's logs directory)


def start_ray(address: str | None, dashboard_host: str | None, verbose: bool = False) -> Cluster:
    """Join `address` (an existing cluster) or start a local Ray with its dashboard on `dashboard_host` (None: off).
    Ray's INFO lines are for `verbose` only; its warnings and errors always print (and everything goes to its log
    files).

    On a cluster, the driver's copy of the `study` package is shipped to every worker (runtime_env py_modules),
    so trials run the driver's code; the nodes need the project's dependencies installed.
    """
    level = logging.INFO if verbose else logging.WARNING
    if not sys.stderr.isatty():  # the workers' and raylet's lines come with colour codes otherwise
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if not verbose:  # study prints the same (how the dashboard authenticates) in its own words
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
            lambda record: not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")
        )
    try:
        if address:
            context = ray.init(address=address, runtime_env={"py_modules": [str(STUDY_PACKAGE)]}, logging_level=level)
        else:
            # "local": a new instance even where another Ray runs (ray.init() would join the last `ray start` cluster)
            context = ray.init(
                address="local",
                include_dashboard=dashboard_host is not None,
                dashboard_host=dashboard_host or "127.0.0.1",
                logging_level=level,
            )
    except Exception as error:  # Ray raises plain Exception too, e.g. when a local node times out during startup
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if address:
            raise StudyError(
                f"cannot reach Ray at {address}: {first}: check --address (e.g. auto, HOST:6379 or ray://HOST:10001)"
            ) from None
        raise StudyError(
            f"a new local Ray instance did not start: {first}: the machine may be short of memory or CPU; try again "
            "when it is less busy (Ray's logs: /tmp/ray/session_latest/logs)"
        ) from None
    url = context.dashboard_url
    session = (getattr(context, "address_info", None) or {}).get("session_dir")
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    total = ray.cluster_resources()
    return Cluster(
        dashboard_url=f"http://{url}" if url else None,
        token_auth=os.environ.get("RAY_AUTH_MODE", "").lower() == "token",
        client=ray.util.client.ray.is_connected(),
        nodes=len(nodes),
        cpus=total.get("CPU", 0),
        gpus=total.get("GPU", 0),
        largest_node={kind: max((node.get(kind, 0) for node in nodes), default=0) for kind in ("CPU", "GPU")},
        log_dir=f"{session}/logs" if session else None,
    )


def token_location() -> str:
    """Where this driver's Ray token comes from (Ray's order:
    RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "the RAY_AUTH_TOKEN environment variable"
    return os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token"


def check_fit(cluster: Cluster, cpus_per_trial: float, gpus_per_trial: float, joined: bool) -> str | None:
    """A trial that fits no node would wait forever: an error on a local Ray; on a cluster a warning (returned),
    since an autoscaler may add such a node once trials ask for it."""
    short = [
        f"{need:g} {kind}"
        for kind, need in (("CPU", cpus_per_trial), ("GPU", gpus_per_trial))
        if need > cluster.largest_node[kind]
    ]
    if not short:
        return None
    have = f"the largest node has {cluster.largest_node['CPU']:g} CPU and {cluster.largest_node['GPU']:g} GPU"
    if not joined:
        raise StudyError(f"a trial asks for {' and '.join(short)} but {have}: lower --cpus-per-trial/--gpus-per-trial")
    return (
        f"warning: a trial asks for {' and '.join(short)} but {have} now: trials wait until a node that large "
        "joins (an autoscaler may add one)"
    )


def slots(cluster: Cluster, resources: Resources) -> int:
    """How many trials the cluster runs at once. Ray Tune asks a searcher other than its own variant generator for
    one trial at a time unless told how many may run together, which would run Optuna's trials one by one."""
    count = cluster.cpus // resources.cpus_per_trial
    if resources.gpus_per_trial:
        count = min(count, cluster.gpus // resources.gpus_per_trial)
    return max(1, int(count))


def experiment_location(out: Path, storage: str | None) -> tuple[str, str]:
    """(storage_path, experiment name) for Ray Tune: the results
    directory's ray/tune, or a fresh name under --storage."""
    if storage is None:
        return str((out / RAY_DIR).resolve()), EXPERIMENT
    return storage if "://" in storage else str(
        Path(storage).expanduser().resolve()
    ), f"{out.resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}"


# --- search ------------------------------------------------------------------------------------------------------


@functools.cache
def _full_budget_optuna_search() -> type:
    """The class below, defined on first use: Ray's OptunaSearch imports Optuna, which grid and random studies and
    the trials never need. It pickles by name (module __getattr__), as Ray's experiment state requires."""
    from ray.tune.search.optuna import OptunaSearch

    class FullBudgetOptunaSearch(OptunaSearch):
        """Ray's OptunaSearch telling Optuna only what a full epoch budget measured.

        A trial that ran all `max_epochs` is told as complete with its final metrics. One stopped early (by ASHA) is
        told as pruned: its accuracy and time are those of a shorter run, and as complete it would look cheap and
        bias the time objective. One that failed is told as failed, even if it reported epochs before failing
        (Ray's OptunaSearch would tell its last report as complete).
        """

        def __init__(self, max_epochs: int, **kwargs):
            super().__init__(**kwargs)
            self.max_epochs = max_epochs

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            full_budget = not error and result is not None and result.get("epoch", 0) >= self.max_epochs
            super().on_trial_complete(trial_id, result if full_budget else None, error)

    FullBudgetOptunaSearch.__module__, FullBudgetOptunaSearch.__qualname__ = __name__, "FullBudgetOptunaSearch"
    return FullBudgetOptunaSearch


def __getattr__(name: str):
    if name == "FullBudgetOptunaSearch":
        return _full_budget_optuna_search()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def search_algorithm(space: Space, seed: int, max_concurrent: int | None = None):
    """The space's search algorithm (study/core/registry.py SEARCHES)."""
    return SEARCHES.get(space.search)(space, seed, max_concurrent)


def variant_generator(space: Space, seed: int, max_concurrent: int | None) -> BasicVariantGenerator:
    # Its own limit: Ray ignores TuneConfig.max_concurrent_trials for a variant generator passed in (and a
    # resumed study restores the generator with its limit).
    return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent or 0)


def optuna_tpe(space: Space, seed: int, max_concurrent: int | None):
    """Optuna's TPE (seeded); optuna_mo: on both objectives of MULTI_OBJECTIVE."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial from Optuna besides Ray's table: noise
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=OPTUNA_STARTUP_TRIALS)
    if space.search == "optuna_mo":
        return _full_budget_optuna_search()(
            space.max_epochs, metric=list(MULTI_OBJECTIVE), mode=list(MULTI_OBJECTIVE.values()), sampler=sampler
        )
    return _full_budget_optuna_search()(space.max_epochs, sampler=sampler)


def tune_domain(dimension: Dimension):
    """A space's dimension as Ray Tune's search domain."""
    if dimension.kind == "grid":
        return tune.grid_search(dimension.values)
    if dimension.kind == "choice":
        return tune.choice(dimension.values)
    if dimension.kind == "uniform":
        return tune.uniform(*dimension.values)
    if dimension.kind == "loguniform":
        return tune.loguniform(*dimension.values)
    return tune.randint(dimension.values[0], dimension.values[1] + 1)  # Ray excludes the upper end; spaces include it


def param_space(space: Space) -> dict:
    """Ray Tune's param_space: every trial setting, sampled or fixed."""
    dimensions = {key: tune_domain(dimension) for key, dimension in space.dimensions.items()}
    return {**space.fixed, **dimensions, "epochs": space.max_epochs}


def scheduler_name(space: Space) -> str:
    """The space's trial scheduler (study/core/registry.py SCHEDULERS)."""
    if not space.asha:
        return "fifo"
    return "pareto_asha" if space.asha["objectives"] == "pareto" else "asha"


def scheduler_for(space: Space) -> TrialScheduler:
    return SCHEDULERS.get(scheduler_name(space))(space)


def pareto_asha_scheduler(space: Space) -> ParetoASHAScheduler:
    settings = {key: space.asha[key] for key in ("grace_period", "reduction_factor")}
    return ParetoASHAScheduler(space.max_epochs, **settings)


def asha_scheduler(space: Space) -> ExplainedASHAScheduler:
    settings = {key: space.asha[key] for key in ("grace_period", "reduction_factor")}
    # multi-objective search: the Tuner has no metric, so ASHA carries the space's own
    metric = {"metric": space.metric, "mode": space.mode} if space.search == "optuna_mo" else {}
    return ExplainedASHAScheduler(space.max_epochs, **settings, **metric)


def fifo_scheduler(space: Space) -> FIFOScheduler:
    return FIFOScheduler()


def planned_trials(space: Space, seed: int) -> tuple[list[dict], int]:
    """The trial configs a study would run, without Ray running: (configs known now, trials in all).

    grid/random: every trial, drawn as Ray's variant generator draws them with the same seed. optuna: the first
    ones TPE proposes before any result (its seeded random start-up draws); the later ones depend on results.
    """
    params = param_space(space)
    if space.search in ("grid", "random"):
        rng = np.random.default_rng(seed)  # what BasicVariantGenerator(random_state=seed) draws from
        configs = [
            spec["config"]
            for _ in range(space.num_samples)
            for _, spec in generate_variants({"config": params}, random_state=rng)
        ]
        return configs, len(configs)
    searcher = search_algorithm(space, seed)
    searcher.set_search_properties(
        None if space.search == "optuna_mo" else space.metric,
        None if space.search == "optuna_mo" else space.mode,
        params,
    )
    fixed = {key: value for key, value in params.items() if key not in space.dimensions}
    configs = [
        {**fixed, **searcher.suggest(f"planned_{i}")} for i in range(min(space.num_samples, OPTUNA_STARTUP_TRIALS))
    ]
    return configs, space.num_samples


# --- early stopping ----------------------------------------------------------------------------------------------


class ParetoASHAScheduler(FIFOScheduler):
    """Multi-objective asynchronous successive halving (study/tune/rungs.py) as a Ray Tune scheduler.

    Ray asks it after every report (one per epoch) whether the trial continues; a trial at max_epochs has
    completed and stops. It needs no metric from the Tuner: its objectives are fixed (val_acc, standalone
    training time).
    """

    def __init__(self, max_epochs: int, grace_period: int, reduction_factor: float):
        super().__init__()
        self.max_epochs = max_epochs
        self.rungs = ParetoRungs(grace_period, reduction_factor, max_epochs)
        self.decisions: dict[str, dict[int, str]] = {}  # trial id -> rung epoch -> reason

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # the Tuner's metric is the searcher's; the rungs rank on their own two objectives

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        epoch = result["training_iteration"]
        if epoch >= self.max_epochs:
            return TrialScheduler.STOP
        decision = self.rungs.on_result(
            trial.trial_id, epoch, result.get(RUNG_ACCURACY, math.nan), result.get(RUNG_COST, math.nan)
        )
        if decision is None:
            return TrialScheduler.CONTINUE
        self.decisions.setdefault(trial.trial_id, {})[epoch] = decision.reason()
        return TrialScheduler.CONTINUE if decision.continues else TrialScheduler.STOP

    def decision(self, trial_id: str, epoch: int) -> str:
        return self.decisions.get(trial_id, {}).get(epoch, "")

    def debug_string(self) -> str:
        return "MO-ASHA rungs at epochs " + ", ".join(
            f"{epoch} ({len(self.rungs.recorded[epoch])} recorded)" for epoch in self.rungs.milestones
        )


class ExplainedASHAScheduler(ASHAScheduler):
    """Ray's single-metric ASHA, saying why it stopped or passed a trial at each rung.

    The cutoff is read from Ray's own bracket (its rungs and `cutoff`) just before Ray decides with it.
    """

    def __init__(self, max_epochs: int, grace_period: int, reduction_factor: float, **metric):
        super().__init__(
            time_attr="training_iteration",
            max_t=max_epochs,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
            **metric,  # metric and mode: given here under optuna_mo, else by the Tuner (Ray refuses both)
        )
        self.decisions: dict[str, dict[int, str]] = {}

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        epoch, value = result.get("training_iteration"), result.get(self._metric)
        rung = None
        if epoch is not None and value is not None and epoch < self._max_t:
            bracket = self._trial_info[trial.trial_id]
            rung = next(((m, rec) for m, rec in bracket._rungs if epoch >= m), None)  # Ray's rungs, highest first
            if rung and trial.trial_id in rung[1]:
                rung = None
            cutoff = bracket.cutoff(rung[1]) if rung else None
            recorded = len(rung[1]) if rung else 0
        action = super().on_trial_result(tune_controller, trial, result)
        if rung:
            verb = "stopped at rung" if action == TrialScheduler.STOP else "passed rung"
            against = (
                "alone at the rung"
                if cutoff is None
                else f"the cutoff is {cutoff:.4f}, the {1 - 1 / self._reduction_factor:.0%} quantile of "
                f"{recorded} recorded"
            )
            self.decisions.setdefault(trial.trial_id, {})[int(epoch)] = (
                f"{verb} epoch {int(rung[0])}: {self._metric} {value:.4f} ({self._mode}), {against}"
            )
        return action

    def decision(self, trial_id: str, epoch: int) -> str:
        return self.decisions.get(trial_id, {}).get(epoch, "")


class RungDecisions(tune.Callback):
    """Writes the scheduler's decision at this epoch into the trial's report (`rung_decision`, empty between
    rungs), so that Ray's result files, the exported tables and a resumed study all keep it. Ray passes the
    report to the callbacks after the scheduler has decided on it, and lets them change it in place."""

    def __init__(self, scheduler: TrialScheduler):
        self.scheduler = scheduler

    def on_trial_result(self, iteration, trials, trial, result, **info):
        decision = getattr(self.scheduler, "decision", None)
        result["rung_decision"] = decision(trial.trial_id, result.get("training_iteration")) if decision else ""

    # Ray saves callbacks' state with the experiment, not the scheduler's: the rungs' records travel here, so that
    # after --resume a trial reaching a rung is ranked among the results recorded before the interruption too.
    def get_state(self) -> dict:
        rungs = getattr(self.scheduler, "rungs", None)
        return {"recorded": rungs.recorded, "decisions": self.scheduler.decisions} if rungs else {}

    def set_state(self, state: dict) -> None:
        if state and isinstance(self.scheduler, ParetoASHAScheduler):
            self.scheduler.rungs.recorded = state["recorded"]
            self.scheduler.decisions = state["decisions"]


# --- running -----------------------------------------------------------------------------------------------------


@dataclass
class Resources:
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int | None = None
    max_failures: int = 0  # retries of a failing trial (Ray's FailureConfig); Tuner.restore keeps it on --resume

    def per_trial(self) -> dict:
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}


@dataclass
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
        self.finished: dict[str, dict] = {}  # trial id -> record (study/analysis/results.py trials_table)
        self.histories: dict[str, list[dict]] = {}  # epoch reports of running trials
        # trial id -> its table rows, made once per finished trial (not saved: Ray saves `finished`, and the rows
        # follow from it); without them every rewrite would rebuild every trial's row, a cost growing with the study
        self._rows: dict[str, tuple[dict, list[dict]]] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.histories[trial.trial_id] = []  # also a trial run again after --resume: from its first epoch

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.histories.setdefault(trial.trial_id, []).append({key: result[key] for key in REPORT_KEYS if key in result})

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = None
        if trial.pickled_error_file and Path(trial.pickled_error_file).exists():
            with open(trial.pickled_error_file, "rb") as file:  # Ray's own file, written by this process just now
                error = describe_error(cloudpickle.load(file))
        self._finish(trial, error or "the trial failed (Ray recorded no error message)")

    def _finish(self, trial, error: str | None) -> None:
        checkpoint = trial.checkpoint.path if trial.checkpoint and not error else None
        self.finished[trial.trial_id] = {
            "trial_id": trial.trial_id,
            "config": dict(trial.config),
            "history": self.histories.pop(trial.trial_id, []),
            "error": error,
            "checkpoint": checkpoint and with_scheme(checkpoint, self.storage_scheme),
            "max_epochs": self.max_epochs,
        }
        self._rows.pop(trial.trial_id, None)  # a trial run again after --resume replaces its record
        self.pending = True
        self.flush()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_rows": {}}  # derived from `finished`: never pickled with the Tuner

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"_rows": {}, **state})  # a Tuner pickled before the rows existed has none

    def rows(self, trial_id: str) -> tuple[dict, list[dict]]:
        """A finished trial's rows of the trials and epochs tables (study/analysis/results.py trial_rows), made once."""
        if trial_id not in self._rows:
            self._rows[trial_id] = trial_rows(self.finished[trial_id])
        return self._rows[trial_id]

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(trials, epochs) of every finished trial, in trial id order."""
        return assemble([self.rows(trial_id) for trial_id in sorted(self.finished)])

    def on_step_end(self, iteration, trials, **info):
        self.flush()

    def on_experiment_end(self, trials, **info):
        self.flush(now=True)

    def flush(self, now: bool = False) -> None:
        """Rewrite the tables if trials finished since the last rewrite and EXPORT_PERIOD_S has passed (or `now`):
        a rewrite costs time in proportion to the finished trials, so one per trial would grow with the study."""
        if self.pending and (now or time.monotonic() - self.written >= EXPORT_PERIOD_S):
            trials, epochs = self.tables()
            self.pending, self.written = False, time.monotonic()
            try:
                write_tables(self.out, trials, epochs)
            except StudyError as error:  # out of disk space: the study goes on; its end writes the tables again
                print(f"warning: {error}", flush=True)

    def get_state(self) -> dict:
        return {"finished": self.finished}

    def set_state(self, state: dict) -> None:
        self.finished = state["finished"]
        self._rows = {}


class WatchCallback(tune.Callback):
    """What a user watches while the study runs, fed from Tune's driver loop: the compact console
    (study/watch/console.py), the live report (study/analysis/report.py LiveReport) and MLflow
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
        from study.analysis.report import LiveReport
        from study.watch.console import StudyConsole

        self._report = LiveReport(self.export.out, self.total)
        self._report.start(len(self.export.finished))
        WatchCallback.active = self
        if self.console_on:
            self._console = StudyConsole(self.total, self.searched)
            if self.export.finished:  # resumed: the trials kept count, without a line each again
                self._console.resume(self.export.tables()[0].to_dict("records"))
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
        row, _ = self.export.rows(trial.trial_id)  # this trial's row alone: no table of every trial per trial
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
        self.close_console()
        if self.mlflow:
            self.mlflow.close()

    def close_console(self) -> None:
        if self._console is not None:
            self._console.close()
            self._console = None


def with_scheme(path: str, scheme: str | None) -> str:
    return f"{scheme}://{path}" if scheme else path


def _ray_settings(verbose: bool = True) -> None:
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", CHECKPOINT_PERIOD_S)
    if not verbose:
        # Ray's newer console engine prints its experiment box and paths even at verbose=0; the legacy one, at
        # verbose=0, prints nothing.
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"


def run_study(
    space: Space,
    out: Path,
    storage: str,
    name: str,
    resources: Resources,
    seed: int,
    cluster: Cluster,
    monitoring: Monitoring | None = None,
) -> tuple[list[dict], int, int | None]:
    """Run every trial of `space`: (one record per finished trial (study/analysis/results.py trials_table), unfinished
    trials, the signal that stopped the study or None).

    Ctrl-C or SIGTERM (GracefulStop): Ray Tune stops the running trials, saves its experiment state and returns;
    the trials it stopped are unfinished (they run again with --resume), not results. A second signal raises
    KeyboardInterrupt at once."""
    monitoring = monitoring or Monitoring()
    _ray_settings(monitoring.verbose or cluster.client)
    scheme = storage.split("://")[0] if "://" in storage else None
    scheduler = scheduler_for(space)
    single = space.search != "optuna_mo"  # multi-objective: the searcher and the scheduler carry their own metrics
    # Event files for TensorBoard in each trial's directory (RESULTS/ray/tune/TRIAL_ID), per epoch; explicit, so a
    # missing tensorboardX is an error, not a warning in Ray's output.
    # RungDecisions first: it writes the scheduler's decision into the report the others read.
    callbacks: list[tune.Callback] = [RungDecisions(scheduler), TBXLoggerCallback()]
    watch = None
    # Ray Client runs Tune's loop on the head node, whose disk is not this machine's: tables at the end only, and
    # Ray's own output (the head's console is not this one).
    if not cluster.client:
        export = ExportCallback(out, space.max_epochs, scheme)
        watch = WatchCallback(
            export,
            trial_count(space),
            list(space.dimensions),
            console=not monitoring.verbose,
            mlflow=MlflowTracker(monitoring.mlflow, out.resolve().name) if monitoring.mlflow else None,
        )
        callbacks += [export, watch]
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources.per_trial()),
        param_space=param_space(space),
        tune_config=tune.TuneConfig(
            metric=space.metric if single else None,
            mode=space.mode if single else None,
            scheduler=scheduler,
            search_alg=search_algorithm(space, seed, resources.max_concurrent),
            num_samples=space.num_samples,
            max_concurrent_trials=None
            if space.search in ("grid", "random")
            else resources.max_concurrent or slots(cluster, resources),
            trial_dirname_creator=_trial_dirname,
            reuse_actors=True,  # a trial starts in a warm process: no interpreter start and imports per trial
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            verbose=0 if watch and watch.console_on else 1,
            failure_config=tune.FailureConfig(max_failures=resources.max_failures),
            callbacks=callbacks,
        ),
    )
    with GracefulStop() as stop:
        results = fit(tuner)
    return (*finished_records(results, f"{storage.rstrip('/')}/{name}", space, scheme, stop.signum), stop.signum)


def fit(tuner: tune.Tuner) -> tune.ResultGrid:
    """tuner.fit(), the live console closed whatever happens (a terminal is never left under a live display)."""
    try:
        return tuner.fit()
    finally:
        if WatchCallback.active is not None:
            WatchCallback.active.close_console()
            WatchCallback.active = None


def trial_count(space: Space) -> int:
    """The trials a study runs: every combination of the grids, num_samples times (Ray's variant generator);
    num_samples trials for Optuna."""
    if space.search in ("grid", "random"):
        return math.prod(len(d.values) for d in space.dimensions.values() if d.kind == "grid") * space.num_samples
    return space.num_samples


def finished_records(
    results: tune.ResultGrid, experiment: str, space: Space, scheme: str | None, stopped_by: int | None = None
) -> tuple[list[dict], int]:
    """(records of the trials that finished or failed, how many of the study's trials did neither).

    A study stopped by a signal (`stopped_by`) is judged by the state Ray saved when the signal came, before it
    stopped the running trials: Ray's returned results count the trials it stopped as terminated, yet they are no
    results (they run again with --resume). Trials not created yet (the variant generator creates the next one when
    a slot frees) are in neither."""
    total = trial_count(space)
    if stopped_by is None and results.num_terminated + results.num_errors == total == len(results):
        return records_from(results, space.max_epochs, scheme), 0
    done = saved_done_trials(experiment)
    records = records_from(results, space.max_epochs, scheme, keep=done)
    return records, total - len(records)


def saved_done_trials(experiment: str) -> set[str]:
    """The ids of the trials that finished or failed in Ray's saved experiment state (none if it saved none yet)."""
    with _quiet_about_unfinished_trials():
        try:
            trials = tune.ExperimentAnalysis(experiment).trials
        except (ValueError, FileNotFoundError):  # stopped before Ray saved any state: nothing finished
            return set()
    return {trial.trial_id for trial in trials if trial.status in ("TERMINATED", "ERROR")}


class GracefulStop(contextlib.AbstractContextManager):
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler, `kill`) during Tuner.fit stop the study gracefully: the first one
    asks Tune to stop (the handler Ray Tune installs for SIGUSR1, which saves the experiment state, stops the trials
    and returns); a second one, or one before Tune's loop started, raises KeyboardInterrupt at once.

    Ray Tune's own SIGINT handler is turned off (TUNE_DISABLE_SIGINT_HANDLER) so both signals take one path, and
    ours replace the C++ handlers Ray's core worker installs (a stack dump on SIGTERM)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.signum: int | None = None
        self.previous = {sig: signal.getsignal(sig) for sig in (*self.SIGNALS, signal.SIGUSR1)}
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until Tune installs its handler: nothing to stop yet
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if self.signum is not None or not callable(tune_stop):
            raise KeyboardInterrupt(signal.Signals(signum).name)
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping the study (running trials are not results: they run again "
            "with --resume); send it again to stop at once",
            flush=True,
        )
        tune_stop(signum, frame)

    def __exit__(self, *exc_info):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        return False


def _trial_dirname(trial) -> str:
    return trial.trial_id


def restorable(experiment: str) -> bool:
    """Ray can continue the experiment: its Tuner and a saved experiment state (a study stopped while Tune was
    starting has the first without the second)."""
    if not tune.Tuner.can_restore(experiment):
        return False
    with _quiet_about_unfinished_trials():
        try:
            tune.ExperimentAnalysis(experiment)
        except (ValueError, FileNotFoundError):
            return False
    return True


def resume_study(
    experiment: str, space: Space, resources: Resources, verbose: bool = True
) -> tuple[list[dict], int, int | None]:
    """Continue an interrupted study from Ray's experiment directory: finished and failed trials are kept as
    they are, unfinished ones run again from their first epoch (trials save no checkpoints mid-way). `verbose`:
    the study started with Ray's own output (its saved Tuner shows it again)."""
    _ray_settings(verbose)
    scheme = experiment.split("://")[0] if "://" in experiment else None
    with _quiet_about_unfinished_trials():
        tuner = tune.Tuner.restore(
            experiment,
            tune.with_resources(trainable, resources.per_trial()),
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
    with GracefulStop() as stop:
        results = fit(tuner)
    return (*finished_records(results, experiment, space, scheme, stop.signum), stop.signum)


def finished_before(experiment: str) -> tuple[int, int]:
    """(finished or failed, unfinished) trials in Ray's saved state of an interrupted experiment."""
    with _quiet_about_unfinished_trials():
        statuses = [trial.status for trial in tune.ExperimentAnalysis(experiment).trials]
    done = sum(status in ("TERMINATED", "ERROR") for status in statuses)
    return done, len(statuses) - done


@contextlib.contextmanager
def _quiet_about_unfinished_trials():
    """Reading an interrupted experiment, Ray warns about every trial that never reported: expected here."""
    analysis = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = analysis.level
    analysis.setLevel(logging.ERROR)
    try:
        yield
    finally:
        analysis.setLevel(level)


def records_from(
    results: tune.ResultGrid, max_epochs: int, scheme: str | None = None, keep: set[str] | None = None
) -> list[dict]:
    """One record per trial of `results` (those in `keep` only, if given)."""
    records = []
    for result in results:
        if keep is not None and Path(result.path).name not in keep:
            continue  # an unfinished trial: it may not even have its params.json yet
        history = result.metrics_dataframe
        rows = (
            []
            if history is None or history.empty
            else history[[k for k in REPORT_KEYS if k in history]].to_dict("records")
        )
        records.append(
            {
                "trial_id": Path(result.path).name,
                "config": result.config or saved_config(result),
                "history": last_run(rows),
                "error": describe_error(result.error) if result.error else None,
                "checkpoint": with_scheme(result.checkpoint.path, scheme) if result.checkpoint else None,
                "max_epochs": max_epochs,
            }
        )
    return sorted(records, key=lambda r: r["trial_id"])


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
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}".rstrip(": ")
