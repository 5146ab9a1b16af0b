"""Run a study: `python -m study.run --space unfreeze_depth`.

Everything a user can get wrong is checked before Ray starts (one line on
stderr, exit code 2); then Ray Tune runs the trials (on this machine, or on a
Ray cluster with --address), and the results directory receives
trials.csv/.parquet, epochs.parquet and pareto.csv (rewritten as trials
finish, at most once a second), pareto.html, study.json (resolved space, command line,
versions, hardware, resources, seed) and report.html (study/analysis/report.py).
`--resume DIR` continues an interrupted study; `--dry-run` lists the trials
without running them. Ctrl-C stops the study gracefully: the finished trials
are exported (tables, Pareto front, report) and the exit status is 130.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import ipaddress
import itertools
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch

from study.analysis.results import export, trials_table, varying_settings
from study.core.config import WEIGHT_SOURCES, StudyError, TrialConfig, check_number, parse_assignment, weights_source
from study.core.environment import hardware, package_versions
from study.core.files import read_json, write_json
from study.core.metrics import RUNG_ACCURACY, RUNG_COST
from study.core.registry import SCHEDULERS, SEARCHES
from study.core.space import Dimension, Space, load_space
from study.trial.data import DATA_NAMES, absolute_data, class_count, load_data
from study.trial.models import create_backbone, default_input_size, phase_plans, plan_for, structure_only, weight_layers

DEFAULT_SPACE = "unfreeze_depth"
# What defines a study: --resume takes all of it from the study's study.json.
STUDY_OPTIONS = (
    "space",
    "data",
    "data_root",
    "backbone",
    "num_samples",
    "max_epochs",
    "out",
    "set",
    "search",
    "seed",
    "cpus_per_trial",
    "gpus_per_trial",
    "max_concurrent",
    "storage",
    "dry_run",
    "overwrite",
    "max_failures",
    # The display and trackers are saved with Ray's Tuner: a resumed study shows and logs as it started.
    "verbose",
    "mlflow",
)
# An --address of HOST:PORT that nothing answers fails within this time, not after Ray's own connection retries.
ADDRESS_TIMEOUT_S = 5
INTERRUPTED_EXIT = 130  # the shell's code for a process ended by SIGINT (128 + 2); SIGTERM: 143 (128 + 15)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--space", help=f"a name from search_spaces/ or a path to a .yaml file (default: {DEFAULT_SPACE})"
    )
    parser.add_argument(
        "--data",
        help=f"dataset: {', '.join(DATA_NAMES)} (digits is built in; the others download), or folder:PATH (class "
        "subfolders, or train/ val/ test/ of them)",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        help="where datasets are downloaded and decoded images cached (default: ~/.cache/study/data on each node)",
    )
    parser.add_argument("--backbone", help="any timm model name")
    parser.add_argument(
        "--num-samples",
        type=int,
        help="draws of the sampled dimensions (grids repeat this often); Optuna: trials in all",
    )
    parser.add_argument("--max-epochs", type=int, help="every trial's epoch budget (ASHA's max_t)")
    parser.add_argument(
        "--out", type=Path, help="results directory (default: results/SPACE-TIMESTAMP); it must not hold a study yet"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the study in --out (deleted only once everything else checked out)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="fix a trial setting (repeatable)"
    )
    parser.add_argument("--search", choices=SEARCHES.names(), help="search algorithm, replacing the space's")
    parser.add_argument(
        "--seed",
        type=int,
        help="seeds the search algorithm and fixes every trial's seed (replacing a seed dimension); default: sampler "
        "seed 0, trial seeds from the space",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list the trials (settings, trainable parameters) and exit: nothing trains, no weights or data are read",
    )
    resources = parser.add_argument_group("resources")
    resources.add_argument("--cpus-per-trial", type=float, help="CPU cores per trial (default 1)")
    resources.add_argument(
        "--gpus-per-trial",
        type=float,
        help="GPUs per trial, 0 to 1; fractions pack trials on a GPU (0.25: four per GPU); default: 1 if the cluster "
        "has a GPU, else 0",
    )
    resources.add_argument(
        "--max-concurrent", type=int, help="at most this many trials at once (default: as many as the resources allow)"
    )
    resources.add_argument(
        "--max-failures",
        type=int,
        help="retry a failing trial this many times before it is recorded as an error (default 0)",
    )
    cluster = parser.add_argument_group("Ray cluster")
    cluster.add_argument(
        "--address",
        help="an existing Ray cluster: auto (the one `ray start` started on this machine, or RAY_ADDRESS), "
        "HOST:6379, or ray://HOST:10001; default: a new local Ray instance",
    )
    cluster.add_argument(
        "--storage",
        help="Ray Tune's storage for experiment state and checkpoints: a path every node can reach (NFS) or a URI "
        "(s3://bucket/dir, gs://...); default: DIR/ray on this machine",
    )
    cluster.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue the interrupted study whose results directory is DIR (finished trials are kept, unfinished "
        "ones run again)",
    )
    monitoring = parser.add_argument_group("monitoring (local Ray only)")
    monitoring.add_argument(
        "--dashboard-host",
        default="127.0.0.1",
        help="address the Ray dashboard listens on (default 127.0.0.1: this machine only)",
    )
    monitoring.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    watching = parser.add_argument_group("watching and tracking")
    watching.add_argument(
        "--verbose",
        action="store_true",
        help="Ray's own console output (a box per trial, status tables, INFO logs) instead of the compact one",
    )
    watching.add_argument(
        "--mlflow",
        metavar="URI",
        help="log every trial as an MLflow run: a directory (an SQLite store in it), sqlite:///PATH.db, or a "
        "tracking server http://HOST:PORT (needs pip install 'study[mlflow]')",
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def resolve_space(args: argparse.Namespace) -> Space:
    space = load_space(args.space or DEFAULT_SPACE)
    settings = dict(parse_assignment(text) for text in args.set)
    settings.update(
        {key: value for key, value in (("data", args.data), ("backbone", args.backbone)) if value is not None}
    )
    if args.data_root is not None:
        settings["data_root"] = str(args.data_root)
    if args.seed is not None:
        if "seed" in space.dimensions and "seed" not in settings:
            print(
                f"note: --seed {args.seed} fixes every trial's seed, replacing the space's seed dimension "
                f"{space.dimensions['seed'].values}"
            )
        settings.setdefault("seed", args.seed)
    study = {
        key: value
        for key, value in (("num_samples", args.num_samples), ("max_epochs", args.max_epochs), ("search", args.search))
        if value is not None
    }
    return absolute_paths(space.override(settings, **study))


def absolute_paths(space: Space) -> Space:
    """Paths made absolute (weights files, folder data, the data root): Ray runs each trial in its own working
    directory."""
    absolute = {
        "data": absolute_data,
        "data_root": lambda path: str(Path(path).expanduser().resolve()),
        "weights": weights_source,
    }
    fix = lambda key, value: absolute[key](value) if key in absolute and isinstance(value, str) else value
    fixed = {key: fix(key, value) for key, value in space.fixed.items()}
    dimensions = {
        key: Dimension(d.kind, [fix(key, value) for value in d.values]) for key, d in space.dimensions.items()
    }
    return dataclasses.replace(space, fixed=fixed, dimensions=dimensions)


# Settings that decide whether a model can be built and frozen as asked: preflight crosses all their values.
MODEL_SETTINGS = ("backbone", "weights", "head", "img_size", "unfreeze_depth", "unfreeze_unit", "bn_insert")


def preflight(space: Space) -> None:
    """What would make trials fail, caught before Ray starts: datasets and their splits, weights that cannot be had
    or do not fit, and model surgery a backbone cannot take (a depth beyond it, single_linear on a non-VGG, BN
    insertion in a ViT).

    Models are built on the meta device for every combination of the values of MODEL_SETTINGS: weights files
    are read and checked against the architecture, ImageNet weights found in (or downloaded into) the cache,
    and nothing is kept in memory. Loading the data here also downloads what is missing and decodes it into the
    node's cache with every core of this process, once, before the trials start.
    """
    configs = space.example_configs()
    choices = [sorted({getattr(c, key) for c in configs}, key=str) for key in MODEL_SETTINGS]
    models: dict[tuple, tuple] = {}
    for values in itertools.product(*choices):
        config = configs[0].replace(**dict(zip(MODEL_SETTINGS, values)))
        size = config.img_size or default_input_size(config.backbone)
        key = (config.backbone, config.weights, config.head, size)
        if key not in models:
            model, _ = create_backbone(
                config.backbone, config.weights, 10, config.seed, size, config.head, on_meta=True
            )
            models[key] = (model, weight_layers(model))
        plan_for(models[key][0], config, layers=models[key][1])
    data_settings = {
        (c.data, c.split_seed, c.img_size or default_input_size(c.backbone), c.data_root, c.train_fraction)
        for c in configs
    }
    for data, split_seed, img_size, data_root, train_fraction in data_settings:
        load_data(data, split_seed, img_size, data_root, train_fraction)


def dry_run(space: Space, seed: int) -> pd.DataFrame:
    """The trials the study would run, with what each trains: structure-only models, no weights, no data."""
    from study.tune import tuning

    configs, total = tuning.planned_trials(space, seed)
    models: dict[tuple, tuple] = {}
    rows = []
    for number, values in enumerate(configs, 1):
        config = TrialConfig.from_dict(values, where=f"{space.source}: trial {number}")
        size = config.img_size or default_input_size(config.backbone)
        key = (config.backbone, config.head, size, class_count(config.data))
        if key not in models:
            model = structure_only(config.backbone, key[3], config.head, size)
            models[key] = (model, weight_layers(model))
        phases = phase_plans(models[key][0], config, layers=models[key][1])
        plan = phases[-1].plan
        rows.append(
            {
                "trial": number,
                **{name: getattr(config, name) for name in space.dimensions},
                "trained_layers": f"{plan.depth}/{len(plan.layers)}",
                "inserted_bn": len(plan.inserted_bn),
                "trainable_params": plan.trainable_params,
                "total_params": plan.total_params,
                # per phase where a head warm-up comes first: epochs and trainable parameters of each
                "phases": " then ".join(f"{p.epochs} {p.name} ({p.plan.trainable_params:,})" for p in phases),
            }
        )
    table = pd.DataFrame(rows)
    if not any(" then " in phases for phases in table["phases"]):
        table = table.drop(columns="phases")
    asha = (
        (
            f"multi-objective ASHA on {RUNG_ACCURACY} x {RUNG_COST}"
            if space.asha["objectives"] == "pareto"
            else f"ASHA on {space.metric} ({space.mode})"
        )
        + f", grace {space.asha['grace_period']}, reduction {space.asha['reduction_factor']}"
        if space.asha
        else "no ASHA"
    )
    shown = (
        f"{total} trials"
        if len(configs) == total
        else f"{total} trials; the first {len(configs)} (TPE's seeded random start) are known now, the rest follow "
        "from results"
    )
    print(
        f"Dry run of {space.name} ({space.source}): search {space.search}, seed {seed}, {shown}; up to "
        f"{space.max_epochs} epochs each, {asha}."
    )
    scheduler = tuning.scheduler_name(space)
    print(
        f"search {space.search}: {SEARCHES.describe(space.search)}; scheduler {scheduler}: "
        f"{SCHEDULERS.describe(scheduler)}."
    )
    print("Nothing is trained; no weights or data are read (structure-only models).")
    if space.prescreen is not None:
        print(
            f"Pre-screen: the study would first rank the {len(space.dimensions['backbone'].values)} backbones by "
            f"{space.prescreen['score']} and search the top {space.prescreen['keep']} (that needs weights and data: "
            "not done in a dry run); the trials of every backbone are listed."
        )
    if space.fixed:
        print("Fixed: " + ", ".join(f"{key}={value}" for key, value in space.fixed.items()))
    formats = {"trainable_params": "{:,}".format, "total_params": "{:,}".format}
    print(table.to_string(index=False, formatters=formats))
    return table


def check_out(out: Path | None, space: Space, overwrite: bool) -> Path:
    """The results directory, checked before Ray starts and created only after (create_out): it can be written,
    no other process uses it (lock_study), and it holds no study that would be lost (unless --overwrite, which
    replaces only what a study wrote, in a directory whose study.json a study wrote)."""
    out = out or Path("results") / f"{space.name}-{datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and not out.is_dir():
        raise StudyError(f"--out {out} is a file: choose a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise StudyError(
                f"--out {out} already holds files: choose a new directory, continue an interrupted study with "
                f"--resume {out}, or replace it with --overwrite"
            )
        if out.is_symlink():
            raise StudyError(
                f"--out {out} is a symbolic link: --overwrite never deletes through a link; give the directory it "
                f"points to ({out.resolve()})"
            )
        if not (out / "study.json").is_file():
            raise StudyError(
                f"--out {out} holds files but no study.json: --overwrite replaces only a study's results directory; "
                "choose another --out"
            )
        if not is_study_record(read_json(out / "study.json")):
            raise StudyError(
                f"--out {out} holds a study.json that python -m study.run did not write (no command, space and "
                "ray_experiment): --overwrite replaces only a study's results directory; choose another --out"
            )
        written = study_written(out)
        links = [path for path in written if path.is_symlink()]
        if links:
            raise StudyError(
                f"--overwrite would delete {links[0]}, a symbolic link (to {os.readlink(links[0])}): a study writes "
                "no links; remove it yourself or choose another --out"
            )
        inside = [
            path for path in input_paths(space) if any(path.resolve().is_relative_to(old.resolve()) for old in written)
        ]
        if inside:
            raise StudyError(
                f"--overwrite would delete {inside[0]}, which this study reads: move it out of {out}, or choose "
                "another --out"
            )
    if out.is_dir():
        lock_study(out)
    existing = next(path for path in (out.absolute(), *out.absolute().parents) if path.exists())
    if not existing.is_dir():
        raise StudyError(
            f"--out {out} cannot be created: {existing} is a file, not a directory; choose a writable directory"
        )
    check_writable(existing, f"--out {out}")
    return out


def check_writable(directory: Path, what: str) -> None:
    """The real test of writability (os.access says yes to root in /proc): a directory made and removed at once."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".study-write-test-", dir=directory))
    except OSError as error:
        raise StudyError(
            f"{what} cannot be created in {directory} ({error.strerror}): choose a writable directory"
        ) from None


# What a study writes into its results directory, and all that --overwrite deletes there (anything else is kept):
# study.json, the tables and pages (study/analysis/results.py, study/analysis/report.py), Ray Tune's experiment
# (tuning.RAY_DIR, without --storage), and atomic_write's temporary files of a write that was cut short.
STUDY_FILES = (
    "study.json",
    "trials.csv",
    "trials.parquet",
    "epochs.parquet",
    "pareto.csv",
    "pareto.html",
    "report.html",
)
STUDY_FOLDERS = ("ray",)
STUDY_TEMPORARY = ".*.tmp"


def study_written(out: Path) -> list[Path]:
    named = [out / name for name in (*STUDY_FILES, *STUDY_FOLDERS)]
    return [path for path in named if path.exists() or path.is_symlink()] + sorted(out.glob(STUDY_TEMPORARY))


def is_study_record(record) -> bool:
    """A study.json that study.run wrote: a mapping with the command, space and Ray experiment it records."""
    return (
        isinstance(record, dict)
        and isinstance(record.get("command"), list)
        and record["command"][:3] == ["python", "-m", "study.run"]
        and isinstance(record.get("space"), dict)
        and isinstance(record.get("ray_experiment"), str)
    )


# The locks this process holds: a study directory is used by one process at a time (a study or its --resume).
_LOCKS: dict[Path, int] = {}


def lock_study(out: Path) -> None:
    """Lock the results directory for the rest of this process (flock on the directory itself: nothing is written,
    and the lock ends with the process however it ends)."""
    key = out.resolve()
    if key in _LOCKS:
        return
    handle = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise StudyError(
            f"{out} is in use by another python -m study.run (a study or a --resume of it runs now): wait until it "
            "ends, or stop it with Ctrl-C first"
        ) from None
    _LOCKS[key] = handle


def input_paths(space: Space) -> list[Path]:
    """The files and folders a study reads (space file, weights files, folder data) and its data root."""
    values = [*space.fixed.items(), *((key, value) for key, d in space.dimensions.items() for value in d.values)]
    paths = [Path(space.source)]
    for key, value in values:
        if (
            key == "weights"
            and isinstance(value, str)
            and value not in WEIGHT_SOURCES
            or key == "data_root"
            and isinstance(value, str)
        ):
            paths.append(Path(value))
        elif key == "data" and isinstance(value, str) and value.startswith("folder:"):
            paths.append(Path(value.removeprefix("folder:")))
    return paths


def create_out(out: Path, overwrite: bool) -> None:
    """Create (and lock) the results directory; with --overwrite, delete what the old study wrote there, and only that
    (check_out made sure it is a study's directory, without links)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StudyError(f"--out {out} cannot be created ({error.strerror}): choose a writable directory") from None
    lock_study(out)
    if not overwrite:
        if (out / "study.json").exists():  # another process started a study there since check_out
            raise StudyError(f"--out {out} holds a study now: choose a new directory")
        return
    for path in study_written(out):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    kept = sorted(path.name for path in out.iterdir())
    if kept:
        print(f"note: --overwrite kept what no study writes in {out}: {', '.join(kept[:5])}{' ...' * (len(kept) > 5)}")


# The CLI's numbers: checked first (study/core/config.py check_number), before a dry run or anything else.
NUMBER_OPTIONS = (
    "seed",
    "num_samples",
    "max_epochs",
    "cpus_per_trial",
    "gpus_per_trial",
    "max_concurrent",
    "max_failures",
)


def check_numbers(args: argparse.Namespace) -> None:
    for name in NUMBER_OPTIONS:
        if getattr(args, name) is not None:
            check_number(name, getattr(args, name), f"--{name.replace('_', '-')}")


def check_resource_options(args: argparse.Namespace) -> None:
    gpus = args.gpus_per_trial
    if args.address is None and gpus and not torch.cuda.is_available():
        raise StudyError(
            f"--gpus-per-trial {gpus:g} but this machine has no GPU that PyTorch can use (torch {torch.__version__}, "
            f"CUDA {torch.version.cuda or 'not built in'}): leave the option out to train on the CPU, or join a "
            "cluster with GPUs (--address)"
        )
    if args.address and (args.no_dashboard or args.dashboard_host not in ("127.0.0.1",)):
        raise StudyError(
            "--dashboard-host and --no-dashboard set up the local Ray that study starts; a cluster's dashboard is "
            "set by `ray start --head --dashboard-host`: leave them out with --address"
        )
    check_reachable(args.address)
    if args.address is None and not args.no_dashboard:
        check_dashboard_host(args.dashboard_host)


def check_dashboard_host(host: str) -> None:
    """The dashboard's host must resolve to an address of this machine (Ray would retry for over a minute)."""
    fix = "give an address of this machine: 127.0.0.1 (this machine only, the default) or 0.0.0.0 (every interface)"
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise StudyError(f"--dashboard-host {host} does not resolve ({error}): {fix}") from None
    try:
        with socket.socket(family, kind) as probe:
            probe.bind(address)
    except OSError as error:
        raise StudyError(f"--dashboard-host {host} cannot be listened on ({error.strerror}): {fix}") from None


# A --storage URI must answer within this time (a cloud store without network would stall Ray for minutes).
STORAGE_TIMEOUT_S = 20


def check_storage(storage: str | None) -> None:
    """--storage can be written (a path) or reached (a URI, through pyarrow's filesystems, as Ray Tune reaches it)."""
    if storage is None:
        return
    if "://" not in storage:
        path = Path(storage).expanduser().absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise StudyError(f"--storage {storage}: {existing} is a file, not a directory; choose a writable directory")
        check_writable(existing, f"--storage {storage}")
        return
    import pyarrow.fs

    outcome: list = []

    def probe():
        try:
            filesystem, path = pyarrow.fs.FileSystem.from_uri(storage)
            filesystem.get_file_info(path)
            outcome.append(None)
        except Exception as error:  # pyarrow raises its own kinds (ArrowInvalid, OSError) for each filesystem
            outcome.append(error)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(STORAGE_TIMEOUT_S)
    fix = "check the URI, the network and the credentials, or leave --storage out (DIR/ray on this machine)"
    if not outcome:
        raise StudyError(f"--storage {storage} did not answer within {STORAGE_TIMEOUT_S} s: {fix}")
    if outcome[0] is not None:
        reason = (str(outcome[0]).strip().splitlines() or [type(outcome[0]).__name__])[0][:160]
        raise StudyError(f"--storage {storage} cannot be reached ({reason}): {fix}")


def check_reachable(address: str | None) -> None:
    """An --address of HOST:PORT (or ray://HOST:PORT) must answer now: Ray itself retries for a long time."""
    if not address or address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise StudyError(
            f"--address {address} is not auto, HOST:PORT or ray://HOST:PORT: write e.g. --address 10.0.0.5:6379"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_TIMEOUT_S).close()
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise StudyError(
            f"cannot reach Ray at {address} ({reason}): start the cluster there (`ray start --head`) or fix "
            "--address (auto, HOST:6379 or ray://HOST:10001)"
        ) from None


def fail(error: StudyError) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 2


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc: its start in clock ticks after boot), else None."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round(uptime - ticks / os.sysconf("SC_CLK_TCK"), 2)


class Phases(dict):
    """Where a study's wall time went, recorded in study.json's `phases` (seconds): imports (the process's start
    to the command line parsed), preflight (the input checked), ray_import, ray_start, first_trial_start (Ray
    started to the first trial running in its worker), trials (Tune's run), export (tables, front, report); with
    a `prescreen:` space, prescreen (the backbones scored before Ray starts)."""

    @contextlib.contextmanager
    def timed(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self[phase] = round(time.perf_counter() - start, 2)


def main(argv: list[str] | None = None) -> int:
    phases = Phases(imports=process_age())
    args = parse_args(argv)
    command = ["python", "-m", "study.run", *(sys.argv[1:] if argv is None else argv)]
    stop_on_sigterm()
    try:
        if args.resume is not None:
            return resume(args, command)
        return run(args, command, phases)
    except KeyboardInterrupt as stop:  # a signal before the study's results directory exists: nothing to record
        print("\ninterrupted before the study started: nothing was written", file=sys.stderr)
        return exit_code(stop)
    finally:  # the study is recorded: a further Ctrl-C must not break Ray's shutdown at exit (a crash in its C++)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def stop_on_sigterm() -> None:
    """SIGTERM ends the driver as Ctrl-C does (KeyboardInterrupt), not at once: again after Ray starts, whose core
    worker installs its own handler (a C++ stack dump). Inside Tune's loop tuning.GracefulStop takes over."""

    def stop(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)


def exit_code(stop: BaseException | int | None) -> int:
    """128 + the signal's number, as a shell reports a process a signal ended: 130 for SIGINT, 143 for SIGTERM."""
    if isinstance(stop, BaseException):
        stop = signal.Signals.SIGTERM if stop.args == ("SIGTERM",) else signal.Signals.SIGINT
    return 128 + int(stop or signal.Signals.SIGINT)


def run(args: argparse.Namespace, command: list[str], phases: Phases | None = None) -> int:
    """A new study. Everything that can fail is checked before anything is written: the input, the resources, the
    results directory, then Ray (started or joined); the results directory is created last."""
    try:
        check_numbers(args)
        space = resolve_space(args)
        seed = 0 if args.seed is None else args.seed
        if args.dry_run:
            dry_run(space, seed)
            return 0
        phases = Phases() if phases is None else phases
        with phases.timed("preflight"):
            check_resource_options(args)
            preflight(space)
            out = check_out(args.out, space, args.overwrite)
            check_storage(args.storage)
            mlflow = check_mlflow(args, out)
        screened = None
        if space.prescreen is not None:  # before Ray: the ranking is plain PyTorch in this process
            from study.ranking.scores import prescreen

            with phases.timed("prescreen"):
                space, screened = prescreen(space)
    except StudyError as error:
        return fail(error)

    with phases.timed("ray_import"):
        from study import tuning  # Ray is imported only once the input is known to be good

    storage, name = tuning.experiment_location(out, args.storage)
    started = time.perf_counter()
    try:
        with phases.timed("ray_start"):
            cluster = start(tuning, args, out, f"{storage.rstrip('/')}/{name}")
        ray_started = time.time()
        resources = tuning.Resources(
            args.cpus_per_trial or 1.0,
            args.gpus_per_trial if args.gpus_per_trial is not None else float(cluster.gpus > 0),
            args.max_concurrent,
            args.max_failures or 0,
        )
        warning = tuning.check_fit(
            cluster, resources.cpus_per_trial, resources.gpus_per_trial, joined=args.address is not None
        )
        create_out(out, args.overwrite)
    except StudyError as error:
        return fail(error)
    if warning:
        print(warning)
    record = {
        "space": dataclasses.asdict(space),
        "command": command,
        "search": {"algorithm": space.search, "seed": seed},
        "seed": seed,
        "trial_seed": dataclasses.asdict(space.dimensions["seed"])
        if "seed" in space.dimensions
        else space.fixed.get("seed", TrialConfig.seed),
        "resources": dataclasses.asdict(resources),
        "cluster": {
            "address": args.address,
            "nodes": cluster.nodes,
            "cpus": cluster.cpus,
            "gpus": cluster.gpus,
            "ray_client": cluster.client,
        },
        "ray_experiment": f"{storage.rstrip('/')}/{name}",
        "dashboard": cluster.dashboard_url,
        "ray_logs": cluster.log_dir,
        "monitoring": {"verbose": args.verbose, "mlflow": mlflow and mlflow.uri},
        "versions": package_versions(),
        "hardware": hardware(),
        "started": datetime.now().isoformat(timespec="seconds"),
        "phases": phases,
    }
    if screened is not None:
        record["prescreen"] = screened
    write_json(out / "study.json", record)
    print(
        f"Study {space.name}: search {space.search} (seed {seed}), up to {space.max_epochs} epochs per trial; "
        f"{resources.cpus_per_trial:g} CPU and {resources.gpus_per_trial:g} GPU per trial"
        f"{f', at most {resources.max_concurrent} at once' if resources.max_concurrent else ''}"
        f"{f', {resources.max_failures} retries of a failing trial' if resources.max_failures else ''}; "
        f"{cluster.nodes} node(s) with {cluster.cpus:g} CPU and {cluster.gpus:g} GPU. Results: {out.resolve()}",
        flush=True,
    )
    try:
        with phases.timed("trials"):
            records, unfinished, signum = tuning.run_study(
                space, out, storage, name, resources, seed, cluster, tuning.Monitoring(args.verbose, args.mlflow)
            )
        first = min((h["started_at"] for r in records for h in r["history"] if "started_at" in h), default=None)
        phases["first_trial_start"] = round(first - ray_started, 2) if first is not None else None
        return finish(out, space, record, records, started, unfinished, signum)
    except KeyboardInterrupt as stop:
        return interrupted(out, record, exit_code(stop))
    except StudyError as error:  # out of disk space writing the results: what was written is kept
        return fail(error)


def check_mlflow(args: argparse.Namespace, out: Path):
    """--mlflow: MLflow installed and its store reachable, before Ray starts (None without --mlflow)."""
    if args.mlflow is None:
        return None
    if args.address and args.address.startswith("ray://"):
        raise StudyError(
            "--mlflow logs from Tune's driver loop, which Ray Client (ray://) runs on the head node: join the cluster "
            "with --address HOST:6379 from a node, or leave out --mlflow"
        )
    from study.watch.tracking import MlflowTracker

    tracker = MlflowTracker(args.mlflow, out.resolve().name)
    tracker.check()
    return tracker


def start(tuning, args: argparse.Namespace, out: Path, experiment: str):
    """Start or join Ray and say where to watch the study: Ray's logs, its dashboard, the report, TensorBoard."""
    exposed = args.address is None and not args.no_dashboard and not loopback(args.dashboard_host)
    cluster = tuning.start_ray(args.address, None if args.no_dashboard else args.dashboard_host, args.verbose)
    stop_on_sigterm()
    from study.analysis.report import REPORT_FILE

    if cluster.log_dir:
        print(f"Ray's logs: {cluster.log_dir}", flush=True)
    print(f"Report: {(out / REPORT_FILE).resolve()} (rewritten as trials finish)", flush=True)
    print(f"TensorBoard: tensorboard --logdir {experiment}", flush=True)
    if args.mlflow:
        from study.watch.tracking import store

        print(f"MLflow: experiment {out.resolve().name} in {store(args.mlflow)[0]}", flush=True)
    if cluster.dashboard_url:
        if cluster.token_auth:
            how = (
                f"Ray token authentication is on: the page asks for the token, which is in {tuning.token_location()} "
                f"(`ray get-auth-token` prints it); API clients send the header 'Authorization: Bearer TOKEN'"
            )
        else:
            how = "no authentication (RAY_AUTH_MODE=disabled)"
        print(f"Ray dashboard: {cluster.dashboard_url} ({how})", flush=True)
    if exposed:
        protection = (
            "its only protection is the Ray token, sent unencrypted over HTTP"
            if cluster.token_auth
            else "with RAY_AUTH_MODE=disabled it has no authentication at all"
        )
        print(
            f"warning: the Ray dashboard listens on {args.dashboard_host}, reachable from other machines: Ray's "
            "dashboard and "
            f"its job API run any code they are sent on this machine, and {protection}; expose it only on a trusted "
            f"network, or keep the default 127.0.0.1 and use an SSH tunnel (ssh -L 8265:127.0.0.1:8265 THIS_HOST)",
            flush=True,
        )
    if cluster.client:
        print(
            "note: through Ray Client (ray://), Tune runs on the head node: the results tables are written at the "
            "end only, not after every trial"
        )
    return cluster


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: other machines may reach it
        return False


def resume(args: argparse.Namespace, command: list[str]) -> int:
    """Continue the interrupted study in args.resume with its recorded space, resources and Ray experiment."""
    out = args.resume
    try:
        given = [
            f"--{name.replace('_', '-')}" for name in STUDY_OPTIONS if getattr(args, name) not in (None, False, [])
        ]
        if given:
            raise StudyError(f"--resume continues the study as {out / 'study.json'} records it: leave out {given[0]}")
        if out.is_dir():
            lock_study(out)
        record = read_study(out)
        if "finished" in record:
            raise StudyError(
                f"the study in {out} finished at {record['finished']}: nothing to resume (start a new one with "
                "another --out)"
            )
        try:
            space = Space.from_record(record["space"])
        except (TypeError, KeyError, AttributeError) as error:
            raise StudyError(
                f"{out / 'study.json'}: its space is damaged ({type(error).__name__}: {error}): start the study again "
                "with --overwrite"
            ) from None
        # As the study started (Ray restores its display and trackers); before these options: Ray's output.
        monitoring = record.get("monitoring", {"verbose": True})
        args.verbose, args.mlflow = monitoring.get("verbose", False), monitoring.get("mlflow")
        check_resource_options(args)
    except StudyError as error:
        return fail(error)
    from study.tune import tuning

    experiment = record["ray_experiment"]
    started = time.perf_counter()
    try:
        if not tuning.restorable(experiment):
            raise StudyError(
                f"{experiment} holds no Ray Tune experiment state: the study was interrupted before its first trial "
                f"started; start it again with --out {out} --overwrite (or a new --out)"
            )
        cluster = start(tuning, args, out, experiment)
        resources = tuning.Resources(**record["resources"])  # max_failures included
        warning = tuning.check_fit(
            cluster, resources.cpus_per_trial, resources.gpus_per_trial, joined=args.address is not None
        )
    except StudyError as error:
        return fail(error)
    if warning:
        print(warning)
    kept, again = tuning.finished_before(experiment)
    print(
        f"Resuming {out.resolve()}: {kept} trial(s) finished before the interruption are kept; {again} unfinished "
        f"trial(s) run again from their first epoch; the trials not started yet follow.",
        flush=True,
    )
    record.setdefault("resumed", []).append(
        {
            "at": datetime.now().isoformat(timespec="seconds"),
            "command": command,
            "kept": kept,
            "run_again": again,
            "address": args.address,
            "dashboard": cluster.dashboard_url,
        }
    )
    write_json(out / "study.json", record)
    try:
        records, unfinished, signum = tuning.resume_study(experiment, space, resources, args.verbose)
        return finish(out, space, record, records, started, unfinished, signum)
    except KeyboardInterrupt as stop:
        return interrupted(out, record, exit_code(stop))
    except StudyError as error:  # out of disk space writing the results: what was written is kept
        return fail(error)


def read_study(out: Path) -> dict:
    path = out / "study.json"
    try:
        record = read_json(
            path, "--resume needs the study.json its study wrote; start the study again with --overwrite"
        )
    except FileNotFoundError:
        raise StudyError(
            f"{path} does not exist: --resume takes the results directory (--out) of a study started by python -m "
            "study.run"
        ) from None
    if not isinstance(record, dict) or "ray_experiment" not in record:
        raise StudyError(
            f"{path} records no Ray experiment (a study from an older version, or no study.json of study.run): it "
            "cannot be resumed"
        )
    if not is_study_record(record) or not isinstance(record.get("resources"), dict):
        raise StudyError(
            f"{path} lacks what a study records (command, space, resources, ray_experiment): it was changed or not "
            "written by study.run; start the study again with --overwrite"
        )
    return record


def finish(
    out: Path,
    space: Space,
    record: dict,
    records: list[dict],
    started: float,
    unfinished: int = 0,
    signum: int | None = None,
) -> int:
    """Export the finished trials (tables, Pareto front, report) and complete study.json. `unfinished` > 0: the study
    was interrupted (`signum`: Ctrl-C or SIGTERM): what finished is exported all the same, and study.json stays
    resumable."""
    from study.analysis.report import write_report  # Plotly and the report: needed only now, at the end

    if unfinished and not records:
        return interrupted(out, record, exit_code(signum), f"no trial finished, {unfinished} to run")
    export_started = time.perf_counter()
    trials, epochs = trials_table(records)
    front = export(out, trials, epochs, title=f"{space.name}: validation accuracy vs training time")
    counts = trials["status"].value_counts().to_dict()
    if unfinished:
        record.update(trials=counts)
        code = interrupted(
            out, record, exit_code(signum), f"{len(trials)} finished trial(s) exported, {unfinished} not finished"
        )
        print(f"Report: {write_report(out).resolve()}")
        return code
    record.update(
        wall_time_s=round(time.perf_counter() - started, 1),
        finished=datetime.now().isoformat(timespec="seconds"),
        trials=counts,
    )
    write_json(out / "study.json", record)
    report = write_report(out)
    if "phases" in record and "resumed" not in record:
        record["phases"]["export"] = round(time.perf_counter() - export_started, 2)
        write_json(out / "study.json", record)
    print_summary(out, trials, front, record["wall_time_s"])
    print(f"Report: {report.resolve()}")
    return 0 if (trials["status"] != "error").any() else 1


def interrupted(
    out: Path, record: dict, code: int, kept: str = "the trials that finished are in its results tables"
) -> int:
    """Record the interruption in study.json (no `finished`: it stays resumable) and say how to continue; return the
    exit code. Without `kept`: a second signal stopped Tune at once; the tables hold what finished before (written
    as trials finish)."""
    record.setdefault("interrupted", []).append(datetime.now().isoformat(timespec="seconds"))
    record.setdefault("interrupted_by", []).append(signal.Signals(code - 128).name)
    write_json(out / "study.json", record)
    print(
        f"\ninterrupted: {kept} ({out.resolve()}); continue the study with: python -m study.run --resume {out}",
        file=sys.stderr,
        flush=True,
    )
    return code


def print_summary(out: Path, trials, front, wall_time_s: float) -> None:
    columns = [
        "trial_id",
        *varying_settings(trials),
        "status",
        "val_acc",
        "test_acc",
        "train_time_s",
        "trainable_params",
    ]
    counts = ", ".join(f"{n} {status}" for status, n in trials["status"].value_counts().items())
    print(f"\nStudy finished in {wall_time_s:.0f} s: {len(trials)} trials ({counts}).")
    for row in trials[trials["status"] == "error"].itertuples():
        print(f"  {row.trial_id} failed: {row.error}")
    print(
        "Pareto front (validation accuracy vs training "
        f"time):\n{front[columns].to_string(index=False, float_format=lambda v: f'{v:.4f}')}"
    )
    print(f"Results: {out.resolve()}")
