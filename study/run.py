"""Run a study: `python -m study.run --space unfreeze_depth`.

Everything a user can get wrong is checked before Ray starts (one line on
stderr, exit code 2); then Ray Tune runs the trials (on this machine, or on a
Ray cluster with --address), and the results directory receives
trials.csv/.parquet, epochs.parquet and pareto.csv (rewritten after every
finished trial), pareto.html, study.json (resolved space, command line,
versions, hardware, resources, seed) and report.html (study/report.py).
`--resume DIR` continues an interrupted study; `--dry-run` lists the trials
without running them. Ctrl-C stops the study gracefully: the finished trials
are exported (tables, Pareto front, report) and the exit status is 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import itertools
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch

from study.config import WEIGHT_SOURCES, StudyError, TrialConfig, parse_assignment, weights_source
from study.data import DATA_NAMES, absolute_data, class_count, load_data
from study.environment import hardware, package_versions
from study.models import create_backbone, default_input_size, plan_for, structure_only, weight_layers
from study.report import REPORT_FILE, write_report
from study.results import atomic_write, export, trials_table, varying_settings
from study.space import SEARCHES, Dimension, Space, load_space

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
INTERRUPTED_EXIT = 130  # the shell's code for a process ended by SIGINT (128 + 2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    parser.add_argument("--search", choices=SEARCHES, help="search algorithm, replacing the space's")
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
    return parser.parse_args(argv)


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
    from study import tuning

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
        plan = plan_for(models[key][0], config, layers=models[key][1])
        rows.append(
            {
                "trial": number,
                **{name: getattr(config, name) for name in space.dimensions},
                "trained_layers": f"{plan.depth}/{len(plan.layers)}",
                "inserted_bn": len(plan.inserted_bn),
                "trainable_params": plan.trainable_params,
                "total_params": plan.total_params,
            }
        )
    table = pd.DataFrame(rows)
    asha = (
        f"ASHA on {space.metric} ({space.mode}), grace {space.asha['grace_period']}, reduction "
        f"{space.asha['reduction_factor']}"
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
    print("Nothing is trained; no weights or data are read (structure-only models).")
    if space.fixed:
        print("Fixed: " + ", ".join(f"{key}={value}" for key, value in space.fixed.items()))
    formats = {"trainable_params": "{:,}".format, "total_params": "{:,}".format}
    print(table.to_string(index=False, formatters=formats))
    return table


def check_out(out: Path | None, space: Space, overwrite: bool) -> Path:
    """The results directory, checked before Ray starts and created only after (create_out): it can be written,
    and it holds no study that would be lost (unless --overwrite, which replaces only a study's directory)."""
    out = out or Path("results") / f"{space.name}-{datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and not out.is_dir():
        raise StudyError(f"--out {out} is a file: choose a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise StudyError(
                f"--out {out} already holds files: choose a new directory, continue an interrupted study with "
                f"--resume {out}, or replace it with --overwrite"
            )
        if not (out / "study.json").is_file():
            raise StudyError(
                f"--out {out} holds files but no study.json: --overwrite replaces only a study's results directory; "
                "choose another --out"
            )
        inside = [path for path in input_paths(space) if path.resolve().is_relative_to(out.resolve())]
        if inside:
            raise StudyError(
                f"--overwrite would delete {inside[0]}, which this study reads: move it out of {out}, or choose "
                "another --out"
            )
    existing = next(path for path in (out.absolute(), *out.absolute().parents) if path.exists())
    if not existing.is_dir():
        raise StudyError(
            f"--out {out} cannot be created: {existing} is a file, not a directory; choose a writable directory"
        )
    try:  # the real test of writability (os.access says yes to root in /proc): a directory made and removed at once
        os.rmdir(tempfile.mkdtemp(prefix=".study-write-test-", dir=existing))
    except OSError as error:
        raise StudyError(
            f"--out {out} cannot be created in {existing} ({error.strerror}): choose a writable directory"
        ) from None
    return out


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
    if overwrite and out.exists():
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StudyError(f"--out {out} cannot be created ({error.strerror}): choose a writable directory") from None


def check_resource_options(args: argparse.Namespace) -> None:
    if args.cpus_per_trial is not None and args.cpus_per_trial <= 0:
        raise StudyError(f"--cpus-per-trial {args.cpus_per_trial:g} must be positive")
    gpus = args.gpus_per_trial
    if gpus is not None and not 0 <= gpus <= 1:
        raise StudyError(
            f"--gpus-per-trial {gpus:g} is outside 0..1: a trial trains on one device (more GPUs would sit idle); "
            "fractions pack trials on a GPU (0.25: four per GPU)"
        )
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise StudyError(f"--max-concurrent {args.max_concurrent} must be at least 1")
    if args.max_failures is not None and args.max_failures < 0:
        raise StudyError(f"--max-failures {args.max_failures} is negative: use 0 (no retry) or the number of retries")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = ["python", "-m", "study.run", *(sys.argv[1:] if argv is None else argv)]
    try:
        if args.resume is not None:
            return resume(args, command)
        return run(args, command)
    except KeyboardInterrupt:  # Ctrl-C outside Tune's loop (which catches the first one itself: see run_study)
        print("\ninterrupted", file=sys.stderr)
        return INTERRUPTED_EXIT


def run(args: argparse.Namespace, command: list[str]) -> int:
    """A new study. Everything that can fail is checked before anything is written: the input, the resources, the
    results directory, then Ray (started or joined); the results directory is created last."""
    try:
        space = resolve_space(args)
        seed = 0 if args.seed is None else args.seed
        if args.dry_run:
            dry_run(space, seed)
            return 0
        check_resource_options(args)
        preflight(space)
        out = check_out(args.out, space, args.overwrite)
        mlflow = check_mlflow(args, out)
    except StudyError as error:
        return fail(error)

    from study import tuning  # Ray is imported only once the input is known to be good

    storage, name = tuning.experiment_location(out, args.storage)
    started = time.perf_counter()
    try:
        cluster = start(tuning, args, out, f"{storage.rstrip('/')}/{name}")
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
    }
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
        records, unfinished = tuning.run_study(
            space, out, storage, name, resources, seed, cluster, tuning.Monitoring(args.verbose, args.mlflow)
        )
    except KeyboardInterrupt:
        return interrupted(out, record)
    return finish(out, space, record, records, started, unfinished)


def check_mlflow(args: argparse.Namespace, out: Path):
    """--mlflow: MLflow installed and its store reachable, before Ray starts (None without --mlflow)."""
    if args.mlflow is None:
        return None
    if args.address and args.address.startswith("ray://"):
        raise StudyError(
            "--mlflow logs from Tune's driver loop, which Ray Client (ray://) runs on the head node: join the cluster "
            "with --address HOST:6379 from a node, or leave out --mlflow"
        )
    from study.tracking import MlflowTracker

    tracker = MlflowTracker(args.mlflow, out.resolve().name)
    tracker.check()
    return tracker


def start(tuning, args: argparse.Namespace, out: Path, experiment: str):
    """Start or join Ray and say where to watch the study: Ray's logs, its dashboard, the report, TensorBoard."""
    exposed = args.address is None and not args.no_dashboard and not loopback(args.dashboard_host)
    cluster = tuning.start_ray(args.address, None if args.no_dashboard else args.dashboard_host, args.verbose)
    if cluster.log_dir:
        print(f"Ray's logs: {cluster.log_dir}", flush=True)
    print(f"Report: {(out / REPORT_FILE).resolve()} (rewritten as trials finish)", flush=True)
    print(f"TensorBoard: tensorboard --logdir {experiment}", flush=True)
    if args.mlflow:
        from study.tracking import store

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
        record = read_study(out)
        if "finished" in record:
            raise StudyError(
                f"the study in {out} finished at {record['finished']}: nothing to resume (start a new one with "
                "another --out)"
            )
        space = Space.from_record(record["space"])
        # As the study started (Ray restores its display and trackers); before these options: Ray's output.
        monitoring = record.get("monitoring", {"verbose": True})
        args.verbose, args.mlflow = monitoring.get("verbose", False), monitoring.get("mlflow")
        check_resource_options(args)
    except StudyError as error:
        return fail(error)
    from study import tuning

    experiment = record["ray_experiment"]
    started = time.perf_counter()
    try:
        if not tuning.restorable(experiment):
            raise StudyError(
                f"{experiment} holds no Ray Tune experiment state: the study was interrupted before its first trial "
                "started; start it again with a new --out"
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
        records, unfinished = tuning.resume_study(experiment, space, resources, args.verbose)
    except KeyboardInterrupt:
        return interrupted(out, record)
    return finish(out, space, record, records, started, unfinished)


def read_study(out: Path) -> dict:
    path = out / "study.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise StudyError(
            f"{path} does not exist: --resume takes the results directory (--out) of a study started by python -m "
            "study.run"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StudyError(f"{path} is unreadable ({error}): --resume needs the study.json its study wrote") from None
    if "ray_experiment" not in record:
        raise StudyError(
            f"{path} records no Ray experiment (a study from an older version, or no study.json of study.run): it "
            "cannot be resumed"
        )
    return record


def finish(out: Path, space: Space, record: dict, records: list[dict], started: float, unfinished: int = 0) -> int:
    """Export the finished trials (tables, Pareto front, report) and complete study.json. `unfinished` > 0: the study
    was interrupted (Ctrl-C): what finished is exported all the same, and study.json stays resumable."""
    if unfinished and not records:
        return interrupted(out, record, f"no trial finished, {unfinished} to run")
    trials, epochs = trials_table(records)
    front = export(out, trials, epochs, title=f"{space.name}: validation accuracy vs training time")
    counts = trials["status"].value_counts().to_dict()
    if unfinished:
        record.update(trials=counts)
        code = interrupted(out, record, f"{len(trials)} finished trial(s) exported, {unfinished} not finished")
        print(f"Report: {write_report(out).resolve()}")
        return code
    record.update(
        wall_time_s=round(time.perf_counter() - started, 1),
        finished=datetime.now().isoformat(timespec="seconds"),
        trials=counts,
    )
    write_json(out / "study.json", record)
    report = write_report(out)
    print_summary(out, trials, front, record["wall_time_s"])
    print(f"Report: {report.resolve()}")
    return 0 if (trials["status"] != "error").any() else 1


def interrupted(out: Path, record: dict, kept: str = "the trials that finished are in its results tables") -> int:
    """Record the interruption in study.json (no `finished`: it stays resumable) and say how to continue. Without
    `kept`: a second Ctrl-C stopped Tune at once; the tables hold what finished before (written after every trial)."""
    record.setdefault("interrupted", []).append(datetime.now().isoformat(timespec="seconds"))
    write_json(out / "study.json", record)
    print(
        f"\ninterrupted: {kept} ({out.resolve()}); continue the study with: python -m study.run --resume {out}",
        file=sys.stderr,
        flush=True,
    )
    return INTERRUPTED_EXIT


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(data, indent=2, default=str) + "\n"))


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


if __name__ == "__main__":
    sys.exit(main())
