"""Run a study: `python -m study.run --space unfreeze_depth`.

The command line of `python -m study.run` and the space it asks for. The line above is the --help description
(`__doc__.splitlines()[0]`): keep it word for word. The options are grouped as --help shows them; STUDY_OPTIONS
are the ones that define a study, which --resume takes from study.json instead. resolve_space applies the options
to the space file and makes its paths absolute, since Ray runs each trial in a working directory of its own.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from study.core.config import check_number, parse_assignment, weights_source
from study.core.registry import SEARCHES
from study.core.space import Dimension, Space, load_space
from study.trial.data import DATA_NAMES, absolute_data

DEFAULT_SPACE = "unfreeze_depth"
# What defines a study: --resume takes all of it from the study's study.json.
STUDY_OPTIONS = (
    "space",
    "data",
    "data_root",
    "backbone",
    "num_samples",
    "repeats",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.run", description=__doc__.splitlines()[0])
    # --help lists the groups in the order they are added.
    add_study_options(parser)
    add_resource_options(parser)
    add_cluster_options(parser)
    add_monitoring_options(parser)
    add_watching_options(parser)
    return parser


def add_study_options(parser: argparse.ArgumentParser) -> None:
    """What to study: the space, the data and backbone, the budget, the results directory, the search."""
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
    parser.add_argument(
        "--repeats",
        type=int,
        help="run each configuration this many times with trial seeds of its own (the split stays), replacing the "
        "space's repeats; grid and random searches only",
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


def add_resource_options(parser: argparse.ArgumentParser) -> None:
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


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
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


def add_monitoring_options(parser: argparse.ArgumentParser) -> None:
    monitoring = parser.add_argument_group("monitoring (local Ray only)")
    monitoring.add_argument(
        "--dashboard-host",
        default="127.0.0.1",
        help="address the Ray dashboard listens on (default 127.0.0.1: this machine only)",
    )
    monitoring.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")


def add_watching_options(parser: argparse.ArgumentParser) -> None:
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
    if args.repeats is not None:
        check_number("repeats", args.repeats, "--repeats")  # before the space's check, which would name its file
    study = {
        key: value
        for key, value in (
            ("num_samples", args.num_samples),
            ("repeats", args.repeats),
            ("max_epochs", args.max_epochs),
            ("search", args.search),
        )
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
        key: Dimension(kind=d.kind, values=[fix(key, value) for value in d.values])
        for key, d in space.dimensions.items()
    }
    return dataclasses.replace(space, fixed=fixed, dimensions=dimensions)
