"""The Ray cluster a study runs on: starting or joining it, what it has, what a trial asks of it, where Tune writes.

A trial must fit on one node, so the cluster is described by its totals and by its largest node. On a cluster the
driver's copy of the `study` package (STUDY_PACKAGE) is shipped to every worker, so trials run the driver's code.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import ray

from study.core.config import StudyError

RAY_DIR = "ray"  # under the study's results directory: Ray Tune's own experiment files (without --storage)
EXPERIMENT = "tune"
# study.json's `ray_experiment` without --storage: relative to the results directory, so that a study copied, moved or
# mounted elsewhere resumes from its own experiment, never from the one of the directory it was copied from
OWN_EXPERIMENT = f"{RAY_DIR}/{EXPERIMENT}"
STUDY_PACKAGE = Path(__file__).resolve().parents[1]  # the whole study package, shipped to Ray workers


@dataclass(kw_only=True)
class Cluster:
    dashboard_url: str | None
    token_auth: bool  # Ray's token authentication is on for this driver (RAY_AUTH_MODE=token)
    client: bool  # connected through Ray Client (ray://): Tune's driver loop runs on the head node
    nodes: int
    cpus: float
    gpus: float
    largest_node: dict  # CPU and GPU of the node with the most of each (a trial must fit on one node)
    log_dir: str | None = None  # Ray's log files on this machine (the session's logs directory)


@dataclass(kw_only=True)
class Resources:
    """What each trial asks of the cluster, and how many run and retry."""

    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int | None = None
    max_failures: int = 0  # retries of a failing trial (Ray's FailureConfig); Tuner.restore keeps it on --resume

    def per_trial(self) -> dict:
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}


class ExperimentLocation(NamedTuple):
    """Where Ray Tune keeps a study's experiment: `storage_path` and the experiment `name` under it."""

    storage: str
    name: str


def start_ray(address: str | None, dashboard_host: str | None, verbose: bool = False) -> Cluster:
    """Join `address` (an existing cluster) or start a local Ray with its dashboard on `dashboard_host` (None: off).
    Ray's INFO lines are for `verbose` only; its warnings and errors always print (and everything goes to its log
    files).

    On a cluster, the driver's copy of the `study` package is shipped to every worker (runtime_env py_modules),
    so trials run the driver's code; the nodes need the project's dependencies installed.
    """
    if not sys.stderr.isatty():  # the workers' and raylet's lines come with colour codes otherwise
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if not verbose:  # study prints the same (how the dashboard authenticates) in its own words
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
            lambda record: not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")
        )
    context = _init_ray(address, dashboard_host, logging.INFO if verbose else logging.WARNING)
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


def _init_ray(address: str | None, dashboard_host: str | None, level: int):
    """ray.init, its failure one line that says what to check."""
    try:
        if address:
            return ray.init(address=address, runtime_env={"py_modules": [str(STUDY_PACKAGE)]}, logging_level=level)
        # "local": a new instance even where another Ray runs (ray.init() would join the last `ray start` cluster)
        return ray.init(
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


def experiment_location(out: Path, storage: str | None) -> ExperimentLocation:
    """Where Ray Tune keeps the experiment: the results directory's ray/tune, or a fresh name under --storage."""
    if storage is None:
        return ExperimentLocation(storage=str((out / RAY_DIR).resolve()), name=EXPERIMENT)
    return ExperimentLocation(
        storage=storage if "://" in storage else str(Path(storage).expanduser().resolve()),
        name=f"{out.resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}",
    )


def leftover_processes(session_dir: str) -> list:
    """The processes still writing into Ray session `session_dir` (its logs): after its driver was SIGKILLed, a
    local Ray's dashboard and runtime-env agents can outlive it (parent 1, listening on their ports). They are
    found by the files they hold open, since Ray renames them (`ray::DashboardAgent`) and their command lines no
    longer name the session; this process is never among them."""
    import psutil

    session = str(Path(session_dir).resolve()) + os.sep
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            if any(opened.path.startswith(session) for opened in process.open_files()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # gone meanwhile, or another user's: not ours to stop
    return found


def stop_leftover_processes(session_dir: str, grace_s: float = 5.0) -> int:
    """Stop (SIGTERM, then SIGKILL after `grace_s`) the processes left in Ray session `session_dir`; how many."""
    import psutil

    processes = leftover_processes(session_dir)
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    return len(processes)


def recorded_experiment(experiment: str, storage: str | None) -> str:
    """study.json's `ray_experiment` for a study whose experiment is at `experiment`: OWN_EXPERIMENT without
    --storage; under --storage (a separate location, possibly a URI) the experiment's path as it is."""
    return OWN_EXPERIMENT if storage is None else experiment


class ResumedExperiment(NamedTuple):
    """The experiment a --resume continues, and a note to print when it is not the one study.json names."""

    path: str
    note: str | None = None


def experiment_to_resume(out: Path, recorded: str) -> ResumedExperiment:
    """The Ray experiment of the study in `out`, from study.json's `ray_experiment` (`recorded`): relative to `out`,
    or a --storage path or URI as recorded. Studies of earlier versions recorded the absolute path of their own
    ray/tune: copied or moved, such a study resumes from the ray/tune it holds, not from the original's."""
    if "://" in recorded:
        return ResumedExperiment(recorded)
    path, own = Path(recorded), (out / OWN_EXPERIMENT).resolve()
    if not path.is_absolute():
        return ResumedExperiment(str((out / path).resolve()))
    if path.parts[-2:] == (RAY_DIR, EXPERIMENT) and not path.is_relative_to(out.resolve()) and own.is_dir():
        return ResumedExperiment(
            str(own),
            f"note: {out / 'study.json'} names the Ray experiment {path}, outside {out} (the study was copied or "
            f"moved): it resumes from its own, {own}",
        )
    return ResumedExperiment(recorded)


class Resumed(NamedTuple):
    """The study a --resume continues in this process: its results directory and its Ray experiment."""

    out: Path
    experiment: str


_RESUMED: ContextVar[Resumed | None] = ContextVar("resumed", default=None)


@contextlib.contextmanager
def resuming(out: Path, experiment: str):
    """Around Tuner.restore and fit of the study in `out`: what Ray unpickled with the Tuner (callbacks, the
    searcher's trial specifications) names the places the study was pickled in, which a copied or moved study left.
    Its callbacks write into `out` (study/tune/callbacks.py) and its new trials are kept in `experiment`
    (keep_in_experiment)."""
    token = _RESUMED.set(Resumed(out, experiment))
    try:
        yield
    finally:
        _RESUMED.reset(token)


def resumed() -> Resumed | None:
    """The study being resumed in this process (`resuming`), or None."""
    return _RESUMED.get()


def keep_in_experiment(trial) -> None:
    """A trial the restored searcher creates after --resume carries the storage of the Experiment it was pickled
    with: the original's Ray experiment, were the study copied or moved. Its worker would save its checkpoint there
    and its results would be read back from there. Ray moves the trials it restores into the experiment resumed;
    this moves a new one the same way (before Ray starts its worker: the scheduler's on_trial_add)."""
    study = resumed()
    if study is None or "://" in study.experiment:  # not resumed; --storage on a URI stays as given
        return
    place = Path(study.experiment)
    storage = trial.storage
    if storage is None or (storage.storage_fs_path, storage.experiment_dir_name) == (str(place.parent), place.name):
        return
    moved = copy.copy(storage)
    moved.storage_fs_path, moved.experiment_dir_name = str(place.parent), place.name
    trial.set_storage(moved)
