"""Before Ray starts: what would make trials fail, caught in this process (preflight), or the trials listed without
running any (--dry-run).

Both build models without their weights: preflight on the meta device for every combination of the settings that
decide whether a model can be built and frozen as asked, the dry run as structure-only models for the trainable
parameter counts of each planned trial. Ray is imported only by the dry run, for the search's planned trials.
"""

from __future__ import annotations

import itertools
import os
import tempfile

import pandas as pd

from study.core.config import StudyError, TrialConfig
from study.core.metrics import RUNG_ACCURACY, RUNG_COST
from study.core.registry import SCHEDULERS, SEARCHES
from study.core.space import Space
from study.trial.backbones import create_backbone, default_input_size, structure_only
from study.trial.data import class_count, load_data, resolve_data_root
from study.trial.freeze import phase_plans, plan_for
from study.trial.layers import weight_layers

# Settings that decide whether a model can be built and frozen as asked: preflight crosses all their values.
MODEL_SETTINGS = ("backbone", "weights", "head", "img_size", "unfreeze_depth", "unfreeze_unit", "bn_insert")
BATCH_BYTES_PER_VALUE = 1 + 4  # an input batch as the loader's uint8 and as the float32 the model reads


def preflight(space: Space) -> dict[str, str]:
    """What would make trials fail, caught before Ray starts: datasets and their splits, weights that cannot be had
    or do not fit, model surgery a backbone cannot take (a depth beyond it, single_linear on a non-VGG, BN
    insertion in a ViT), and an input batch larger than this machine's memory (check_batch_fits).

    Models are built on the meta device for every combination of the values of MODEL_SETTINGS: weights files
    are read and checked against the architecture, ImageNet weights found in (or downloaded into) the cache,
    and nothing is kept in memory. Loading the data here also downloads what is missing and decodes it into the
    node's cache with every core of this process, once, before the trials start.

    Returns the data the study decides on: each dataset's fingerprint by its name (`data`; "" where not checked),
    which every trial then demands (TrialConfig.data_fingerprint).
    """
    configs = space.example_configs()
    check_batch_fits(configs)
    for data_root in {c.data_root for c in configs}:
        check_data_root(data_root)
    choices = [sorted({getattr(c, key) for c in configs}, key=str) for key in MODEL_SETTINGS]
    models: dict[tuple, tuple] = {}
    for values in itertools.product(*choices):
        config = configs[0].replace(**dict(zip(MODEL_SETTINGS, values)))
        size = config.img_size or default_input_size(config.backbone)
        key = (config.backbone, config.weights, config.head, size)
        if key not in models:
            model = create_backbone(
                config.backbone, config.weights, 10, config.seed, size, config.head, on_meta=True
            ).model
            models[key] = (model, weight_layers(model))
        plan_for(models[key][0], config, layers=models[key][1])
    data_settings = {
        (c.data, c.split_seed, c.img_size or default_input_size(c.backbone), c.data_root, c.train_fraction)
        for c in configs
    }
    fingerprints: dict[str, str] = {}
    for data, split_seed, img_size, data_root, train_fraction in data_settings:
        splits = load_data(data, split_seed, img_size, data_root, train_fraction, fingerprints.get(data, ""))
        fingerprints[data] = splits.fingerprint
    return fingerprints


def check_data_root(setting: str | None) -> None:
    """The data root (downloads, decoded images, features) can be created and written: else every trial fails on it
    or runs without the node's caches, decoding its data again. Checked on this node; each node has its own."""
    root = resolve_data_root(setting)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=root).close()
    except OSError as error:
        raise StudyError(
            f"the data root {root} cannot be written ({error.strerror or type(error).__name__}): pass --data-root DIR, "
            "a directory on a writable disk (datasets and the decoded-image and feature caches go there)"
        ) from None


def check_batch_fits(configs: list[TrialConfig]) -> None:
    """One batch of input images, at the largest input size and batch size any trial may take, fits in this
    machine's memory as uint8 and as the float32 copy the model reads. Generous (the activations need several times
    more): it stops only a study whose every such trial would die of the allocation after Ray started."""
    img_size = max(config.img_size or default_input_size(config.backbone) for config in configs)
    batch_size = max(config.batch_size for config in configs)
    needed = batch_size * 3 * img_size**2 * BATCH_BYTES_PER_VALUE
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > memory:
        raise StudyError(
            f"img_size={img_size} with batch_size={batch_size}: one batch of input images takes "
            f"{needed / 2**30:,.0f} GiB (uint8 and float32), more than this machine's {memory / 2**30:,.0f} GiB of "
            "memory: lower img_size or batch_size"
        )


def dry_run(space: Space, seed: int) -> pd.DataFrame:
    """The trials the study would run, with what each trains: structure-only models, no weights, no data."""
    from study import tune

    configs, total = tune.planned_configs(space, seed)
    table = planned_table(space, configs)
    print_plan(space, seed, known=len(configs), total=total, scheduler=tune.scheduler_name(space))
    formats = {"trainable_params": "{:,}".format, "total_params": "{:,}".format}
    print(table.to_string(index=False, formatters=formats))
    return table


def planned_table(space: Space, configs: list[dict]) -> pd.DataFrame:
    """One row per planned trial: its dimensions' values, the layers it trains and its parameter counts."""
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
                **({"repeat": config.repeat} if space.repeats > 1 else {}),
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
    return table


def print_plan(space: Space, seed: int, *, known: int, total: int, scheduler: str) -> None:
    """The dry run's header: the search, its seed and trial count, the early stopping, what is fixed. `known`: the
    trials listed now (fewer than `total` where TPE picks the later ones from results)."""
    shown = (
        f"{total} trials"
        if known == total
        else f"{total} trials; the first {known} (TPE's seeded random start) are known now, the rest follow "
        "from results"
    )
    print(
        f"Dry run of {space.name} ({space.source}): search {space.search}, seed {seed}, {shown}; up to "
        f"{space.max_epochs} epochs each, {early_stopping(space)}."
    )
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


def early_stopping(space: Space) -> str:
    if not space.asha:
        return "no ASHA"
    objective = (
        f"multi-objective ASHA on {RUNG_ACCURACY} x {RUNG_COST}"
        if space.asha["objectives"] == "pareto"
        else f"ASHA on {space.metric} ({space.mode})"
    )
    return f"{objective}, grace {space.asha['grace_period']}, reduction {space.asha['reduction_factor']}"
