"""Run a study: `python -m study.run --space unfreeze_depth`.

Everything a user can get wrong is checked before Ray starts (one line on
stderr, exit code 2); then Ray Tune runs the trials with ASHA, and the results
directory receives trials.csv/.parquet, epochs.parquet, pareto.csv/.html,
study.json (resolved space, command line, versions, hardware, seed) and
report.html (study/report.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from datetime import datetime
from pathlib import Path

from study.config import StudyError, parse_assignment, weights_source
from study.data import DATA_NAMES, absolute_data, load_data
from study.environment import hardware, package_versions
from study.models import create_backbone, default_input_size, plan_for, weight_layers
from study.report import write_report
from study.results import atomic_write, export, trials_table, varying_settings
from study.space import Dimension, Space, load_space

DEFAULT_SPACE = "unfreeze_depth"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.run", description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=DEFAULT_SPACE, help="a name from search_spaces/ or a path to a .yaml file")
    parser.add_argument("--data", help=f"dataset: {', '.join(DATA_NAMES)} (digits is built in; the others download), or folder:PATH (class subfolders, or train/ val/ test/ of them)")
    parser.add_argument("--data-root", type=Path, help="where datasets are downloaded and decoded images cached (default: ~/.cache/study/data on each node)")
    parser.add_argument("--backbone", help="any timm model name")
    parser.add_argument("--num-samples", type=int, help="draws of the sampled dimensions (grids repeat this often)")
    parser.add_argument("--max-epochs", type=int, help="every trial's epoch budget (ASHA's max_t)")
    parser.add_argument("--out", type=Path, help="results directory (default: results/SPACE-TIMESTAMP)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fix a trial setting (repeatable)")
    parser.add_argument("--cpus-per-trial", type=float, default=1, help="CPU cores per trial (default 1)")
    parser.add_argument("--gpus-per-trial", type=float, help="GPUs per trial, fractions pack trials (default: 1 if a GPU is visible, else 0)")
    parser.add_argument("--address", help="an existing Ray cluster (auto, or ray://HOST:10001); default: a local Ray instance")
    parser.add_argument("--seed", type=int, default=0, help="trial seed and sampler seed (default 0)")
    parser.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard (local Ray only)")
    return parser.parse_args(argv)


def resolve_space(args: argparse.Namespace) -> Space:
    space = load_space(args.space)
    settings = dict(parse_assignment(text) for text in args.set)
    settings.update({key: value for key, value in (("data", args.data), ("backbone", args.backbone)) if value is not None})
    if args.data_root is not None:
        settings["data_root"] = str(args.data_root)
    settings["seed"] = args.seed
    study = {key: value for key, value in (("num_samples", args.num_samples), ("max_epochs", args.max_epochs)) if value is not None}
    return absolute_paths(space.override(settings, **study))


def absolute_paths(space: Space) -> Space:
    """Paths made absolute (weights files, folder data, the data root): Ray runs each trial in its own working directory."""
    absolute = {"data": absolute_data, "data_root": lambda path: str(Path(path).expanduser().resolve()), "weights": weights_source}
    fix = lambda key, value: absolute[key](value) if key in absolute and isinstance(value, str) else value
    fixed = {key: fix(key, value) for key, value in space.fixed.items()}
    dimensions = {key: Dimension(d.kind, [fix(key, value) for value in d.values]) for key, d in space.dimensions.items()}
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
            model, _ = create_backbone(config.backbone, config.weights, 10, config.seed, size, config.head, on_meta=True)
            models[key] = (model, weight_layers(model))
        plan_for(models[key][0], config, layers=models[key][1])
    data_settings = {(c.data, c.split_seed, c.img_size or default_input_size(c.backbone), c.data_root, c.train_fraction) for c in configs}
    for data, split_seed, img_size, data_root, train_fraction in data_settings:
        load_data(data, split_seed, img_size, data_root, train_fraction)


def prepare_out(out: Path | None, space_name: str) -> Path:
    out = out or Path("results") / f"{space_name}-{datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and any(out.iterdir()):
        raise StudyError(f"--out {out} already holds files: choose a new directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StudyError(f"--out {out} cannot be created ({error.strerror}): choose a writable directory") from None
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        space = resolve_space(args)
        preflight(space)
        gpus = args.gpus_per_trial if args.gpus_per_trial is not None else default_gpus()
        out = prepare_out(args.out, space.name)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    from study import tuning  # Ray is imported only once the input is known to be good

    record = {
        "space": dataclasses.asdict(space),
        "command": sys.argv if argv is None else ["python", "-m", "study.run", *argv],
        "seed": args.seed,
        "resources": {"cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": gpus, "address": args.address},
        "versions": package_versions(),
        "hardware": hardware(),
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    write_json(out / "study.json", record)
    started = time.perf_counter()
    try:
        dashboard = tuning.start_ray(args.address, dashboard=not args.no_dashboard)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if dashboard:
        print(f"Ray dashboard: {dashboard}", flush=True)
    records = tuning.run_study(space, out, args.cpus_per_trial, gpus, args.seed)
    trials, epochs = trials_table(records)
    front = export(out, trials, epochs, title=f"{space.name}: validation accuracy vs training time")
    record.update(wall_time_s=round(time.perf_counter() - started, 1), finished=datetime.now().isoformat(timespec="seconds"),
                  trials=trials["status"].value_counts().to_dict())  # fmt: skip
    write_json(out / "study.json", record)
    report = write_report(out)
    print_summary(out, trials, front, record["wall_time_s"])
    print(f"Report: {report.resolve()}")
    return 0 if (trials["status"] != "error").any() else 1


def default_gpus() -> float:
    import torch

    return 1.0 if torch.cuda.is_available() else 0.0


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(data, indent=2, default=str) + "\n"))


def print_summary(out: Path, trials, front, wall_time_s: float) -> None:
    columns = ["trial_id", *varying_settings(trials), "status", "val_acc", "test_acc", "train_time_s", "trainable_params"]
    counts = ", ".join(f"{n} {status}" for status, n in trials["status"].value_counts().items())
    print(f"\nStudy finished in {wall_time_s:.0f} s: {len(trials)} trials ({counts}).")
    for row in trials[trials["status"] == "error"].itertuples():
        print(f"  {row.trial_id} failed: {row.error}")
    print(f"Pareto front (validation accuracy vs training time):\n{front[columns].to_string(index=False, float_format=lambda v: f'{v:.4f}')}")
    print(f"Results: {out.resolve()}")


if __name__ == "__main__":
    sys.exit(main())
