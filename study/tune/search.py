"""Search: a space as Ray Tune's param_space, the space's search algorithm, and the trials a dry run plans.

Search algorithms (the space's `search`, study/core/space.py; registered in study/core/registry.py SEARCHES):
`grid` and `random` are Ray's variant generator (seeded); `optuna` and `optuna_mo` are Ray's OptunaSearch with
Optuna's TPE sampler (seeded). The sampler learns only from trials that ran every epoch: a trial the scheduler
stopped is told to Optuna as pruned, a failed one as failed (`FullBudgetOptunaSearch`).

Every trial's config carries the fingerprint of its data as preflight found it (`data_fingerprint`, param_space):
fixed with the data, or, where `data` is a dimension, a sample_from that the variant generator resolves and
`FullBudgetOptunaSearch` fills in after Optuna's draw (Optuna cannot sample one).

Ray pickles the searcher into its experiment state by class name, so `FullBudgetOptunaSearch` must be reachable as
this module's attribute although it is defined only when first asked for (it would import Optuna, which grid and
random studies never need): the module `__getattr__` below.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
from ray import tune
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.sample import Function
from ray.tune.search.variant_generator import generate_variants

from study.core.config import DATA_FINGERPRINT, TrialConfig
from study.core.metrics import MULTI_OBJECTIVE
from study.core.registry import SEARCHES
from study.core.space import REPEAT, Dimension, Space

# TPE draws this many trials at random before it models results (Optuna's default n_startup_trials).
OPTUNA_STARTUP_TRIALS = 10


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
            self.derived: dict = {}  # settings that follow from sampled ones (sample_from in param_space)

        def set_search_properties(self, metric, mode, config: dict, **spec) -> bool:
            # Optuna cannot sample a sample_from: it samples the dimensions, suggest fills in what follows from them
            self.derived = {key: value.func for key, value in config.items() if isinstance(value, Function)}
            sampled = {key: value for key, value in config.items() if key not in self.derived}
            return super().set_search_properties(metric, mode, sampled, **spec)

        def suggest(self, trial_id: str):
            config = super().suggest(trial_id)
            if isinstance(config, dict):
                resolved = SimpleNamespace(config=SimpleNamespace(**config))
                config.update({key: derive(resolved) for key, derive in self.derived.items()})
            return config

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            full_budget = not error and result is not None and result.get("epoch", 0) >= self.max_epochs
            super().on_trial_complete(trial_id, result if full_budget else None, error)

    FullBudgetOptunaSearch.__module__, FullBudgetOptunaSearch.__qualname__ = __name__, "FullBudgetOptunaSearch"
    return FullBudgetOptunaSearch


def __getattr__(name: str):
    if name == "FullBudgetOptunaSearch":
        return _full_budget_optuna_search()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class PlannedConfigs(NamedTuple):
    """The trial configs a dry run can list (`configs`) and how many trials the study runs in all (`total`)."""

    configs: list[dict]
    total: int


def search_algorithm(space: Space, seed: int, max_concurrent: int | None = None):
    """The space's search algorithm (study/core/registry.py SEARCHES)."""
    return SEARCHES.get(space.search)(space, seed, max_concurrent)


def variant_generator(space: Space, seed: int, max_concurrent: int | None) -> BasicVariantGenerator:
    # Its own limit: Ray ignores TuneConfig.max_concurrent_trials for a variant generator passed in (and a
    # resumed study restores the generator with its limit).
    return BasicVariantGenerator(
        random_state=seed, max_concurrent=max_concurrent or 0, constant_grid_search=constant_draws(space)
    )


def constant_draws(space: Space) -> bool:
    """Whether a sample's drawn values are shared by every grid combination (Ray's constant_grid_search). With
    repeats they must be: repeat is a grid, and drawn anew for each of its values, the repeats of a configuration
    would be other configurations. Without repeats each combination draws its own, as studies always did."""
    return space.repeats > 1


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


def fingerprint_of_data(fingerprints: dict[str, str], spec) -> str:
    """A trial's data_fingerprint where `data` is a dimension (sample_from): the fingerprint of the data it drew.
    Read as attributes, as Ray's variant generator needs to defer it until `data` is drawn."""
    return fingerprints[spec.config.data]


def param_space(space: Space, data_fingerprints: dict[str, str] | None = None) -> dict:
    """Ray Tune's param_space: every trial setting, sampled or fixed; with repeats, the repeat index as a grid; with
    `data_fingerprints` (preflight's, by data name), each trial's data_fingerprint, following its data.

    Ray's variant generator crosses the grids in the order of their names, the first varying fastest, whatever
    their place here: `repeat` varies faster than `unfreeze_depth` and slower than `backbone`."""
    repeats = {REPEAT: tune.grid_search(list(range(space.repeats)))} if space.repeats > 1 else {}
    dimensions = {key: tune_domain(dimension) for key, dimension in space.dimensions.items()}
    fingerprint = {}
    if data_fingerprints is not None:
        fingerprint[DATA_FINGERPRINT] = (
            tune.sample_from(functools.partial(fingerprint_of_data, data_fingerprints))
            if "data" in space.dimensions
            else data_fingerprints[space.fixed.get("data", TrialConfig.data)]
        )
    return {**repeats, **space.fixed, **dimensions, **fingerprint, "epochs": space.max_epochs}


def trial_count(space: Space) -> int:
    """The trials a study runs: every combination of the grids, num_samples times, each repeated (Ray's variant
    generator); num_samples trials for Optuna (which takes no repeats)."""
    if space.search in ("grid", "random"):
        grids = math.prod(len(d.values) for d in space.dimensions.values() if d.kind == "grid")
        return grids * space.num_samples * space.repeats
    return space.num_samples


def planned_configs(space: Space, seed: int) -> PlannedConfigs:
    """The trial configs a study would run, without Ray running.

    grid/random: every trial, drawn as Ray's variant generator draws them with the same seed. optuna: the first
    ones TPE proposes before any result (its seeded random start-up draws); the later ones depend on results.
    """
    params = param_space(space)
    if space.search in ("grid", "random"):
        rng = np.random.default_rng(seed)  # what BasicVariantGenerator(random_state=seed) draws from
        configs = [
            spec["config"]
            for _ in range(space.num_samples)
            for _, spec in generate_variants(
                {"config": params}, constant_grid_search=constant_draws(space), random_state=rng
            )
        ]
        return PlannedConfigs(configs=configs, total=len(configs))
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
    return PlannedConfigs(configs=configs, total=space.num_samples)
