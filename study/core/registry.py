"""Every named option, defined once: a registry from name to implementation, as timm registers its models.

Eight registries: AUGMENTATIONS (the `augment` setting), OPTIMIZERS (`optimizer`), HEADS (`head`), UNFREEZE_UNITS
(`unfreeze_unit`), LR_SCHEDULES (`lr_schedule`), SEARCHES (a space's `search`), SCHEDULERS (the trial scheduler a
space runs under) and TRANSFER_SCORES (a space's `prescreen.score`, `python -m study.rank`). Each entry
is a name, its implementation ("module:attribute", imported on first use) and one line saying what it does. What
reads them: the config's valid choices and its "did you mean" hints (study/core/config.py, study/core/space.py), the
CLI's choices (`--search`), the dry run (which names the search algorithm and scheduler), and the options page of the
docs (`python -m study.core.registry` prints it; docs/options.md is that output, checked by a test).

Registering a new name is one line here, beside its kind's others; the implementation stays in its own module:

    OPTIMIZERS.add("lion", "study.trial.optim:lion", "Lion (Chen et al. 2023): the sign of the momentum")

and what calls the implementation gets it by name (`OPTIMIZERS.get(config.optimizer)`). The implementation's
signature is that of its kind's others (see each registry's `calls` line). Names are known without importing any
implementation, so validating a config or a space never imports torch or Ray.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class Option:
    name: str
    target: str  # "module:attribute"
    description: str


@dataclass
class Registry:
    kind: str  # what the names are, e.g. "optimizer"
    setting: str  # where a user writes one: a TrialConfig field or a space key
    calls: str  # the implementations' signature, for whoever adds one
    options: dict[str, Option] = field(default_factory=dict)

    def add(self, name: str, target: str, description: str) -> None:
        """Register `name`, implemented by `target` ("module:attribute")."""
        if name in self.options:
            raise ValueError(f"{self.kind} '{name}' is registered twice ({self.options[name].target} and {target})")
        if ":" not in target:
            raise ValueError(f"{self.kind} '{name}': the target '{target}' is not 'module:attribute'")
        self.options[name] = Option(name=name, target=target, description=description)

    def names(self) -> tuple[str, ...]:
        return tuple(self.options)

    def __contains__(self, name: object) -> bool:
        return name in self.options

    def __iter__(self):
        return iter(self.options.values())

    def get(self, name: str) -> Callable:
        """The implementation of `name` (imported on first use); KeyError for an unregistered name."""
        module, _, attribute = self.options[name].target.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def describe(self, name: str) -> str:
        return self.options[name].description


AUGMENTATIONS = Registry(
    "augmentation policy", "augment", "study.trial.augment.Policy (per-sample and per-batch parts)"
)
AUGMENTATIONS.add("none", "study.trial.augment:NONE", "no augmentation")
AUGMENTATIONS.add("basic", "study.trial.augment:BASIC", "random resized crop (scale 0.08-1) and horizontal flip")
AUGMENTATIONS.add(
    "pspnet", "study.trial.augment:PSPNET", "PSPNet's: random scale 0.5-2, rotation +-10 degrees, crop, blur, mirror"
)
AUGMENTATIONS.add("augmix", "study.trial.augment:AUGMIX", "torchvision's AugMix (severity 3, width 3)")
AUGMENTATIONS.add(
    "cutmix_mixup",
    "study.trial.augment:CUTMIX_MIXUP",
    "CutMix or MixUp per batch (alpha 1); train accuracy is not measured (NaN)",
)
AUGMENTATIONS.add("trivialaugment", "study.trial.augment:TRIVIAL_AUGMENT", "torchvision's TrivialAugmentWide")

OPTIMIZERS = Registry("optimizer", "optimizer", "(param_groups, config) -> torch.optim.Optimizer")
OPTIMIZERS.add("sgd", "study.trial.optim:sgd", "SGD with momentum (`momentum`)")
OPTIMIZERS.add("adam", "study.trial.optim:adam", "Adam (its weight decay is L2 added to the gradient)")
OPTIMIZERS.add("adamw", "study.trial.optim:adamw", "AdamW (decoupled weight decay)")

HEADS = Registry("head", "head", "(model, num_classes, backbone) -> None, replacing the classifier in place")
HEADS.add("linear", "study.trial.heads:linear_head", "the backbone's classifier replaced by a new one (timm)")
HEADS.add(
    "single_linear",
    "study.trial.heads:single_linear_head",
    "VGG only: its three fully connected layers replaced by one linear layer (document 000)",
)

UNFREEZE_UNITS = Registry(
    "unfreeze unit", "unfreeze_unit", "(model, layers) -> {parameter name: unit number} or None where undefined"
)
UNFREEZE_UNITS.add(
    "layer", "study.trial.layers:layer_units", "one weight layer (conv or linear) with its norm and bias"
)
UNFREEZE_UNITS.add("block", "study.trial.layers:block_units", "timm's fine parameter groups (e.g. a residual block)")
UNFREEZE_UNITS.add("stage", "study.trial.layers:stage_units", "timm's coarse parameter groups (a resolution stage)")

SEARCHES = Registry("search algorithm", "search", "(space, seed, max_concurrent) -> a Ray Tune Searcher")
SEARCHES.add(
    "grid", "study.tune.search:variant_generator", "every combination of the grid dimensions (Ray's generator)"
)
SEARCHES.add("random", "study.tune.search:variant_generator", "grids crossed, sampled dimensions drawn (Ray, seeded)")
SEARCHES.add("optuna", "study.tune.search:optuna_tpe", "Optuna's TPE on the space's metric (seeded)")
SEARCHES.add(
    "optuna_mo", "study.tune.search:optuna_tpe", "multi-objective TPE: maximise val_acc and minimise train_time_s"
)

SCHEDULERS = Registry("trial scheduler", "asha", "(space) -> a Ray Tune TrialScheduler")
SCHEDULERS.add(
    "pareto_asha",
    "study.tune.schedulers:pareto_asha_scheduler",
    "multi-objective ASHA: at each rung, the top 1/reduction_factor by non-dominated sorting on validation accuracy "
    "against standalone training time continue (`asha: {objectives: pareto}`, the default; study/tune/rungs.py)",
)
SCHEDULERS.add(
    "asha", "study.tune.schedulers:asha_scheduler", "Ray's ASHA on `metric` alone (`asha: {objectives: metric}`)"
)
SCHEDULERS.add("fifo", "study.tune.schedulers:fifo_scheduler", "every trial runs all its epochs (`asha: false`)")

LR_SCHEDULES = Registry(
    "learning-rate schedule", "lr_schedule", "(optimizer, batches after the warm-up) -> a torch LRScheduler"
)
LR_SCHEDULES.add("constant", "study.trial.optim:constant_schedule", "the learning rate stays `lr` (after any warm-up)")
LR_SCHEDULES.add("cosine", "study.trial.optim:cosine_schedule", "cosine annealing to 0 at the phase's end (torch)")
LR_SCHEDULES.add(
    "step", "study.trial.optim:step_schedule", "x0.1 at one and two thirds of the batches after the warm-up"
)

TRANSFER_SCORES = Registry(
    "transferability score", "prescreen.score", "(train, train_labels, val, val_labels: CPU tensors) -> float"
)
TRANSFER_SCORES.add(
    "logme",
    "study.ranking.scores:logme_score",
    "LogME: mean per-class log marginal evidence of a Bayesian linear model on the features, per image",
)
TRANSFER_SCORES.add(
    "knn",
    "study.ranking.scores:knn_score",
    "validation accuracy of a cosine k-nearest-neighbour classifier on the features",
)
TRANSFER_SCORES.add(
    "probe",
    "study.ranking.scores:probe_score",
    "validation accuracy of a closed-form ridge linear probe on standardised features",
)

REGISTRIES = (
    AUGMENTATIONS,
    OPTIMIZERS,
    HEADS,
    UNFREEZE_UNITS,
    LR_SCHEDULES,
    SEARCHES,
    SCHEDULERS,
    TRANSFER_SCORES,
)


def markdown() -> str:
    """The options page of the docs (docs/options.md), from the registries."""
    lines = [
        "# Named options",
        "",
        "Generated by `python -m study.core.registry` from study/core/registry.py, where each name is defined once",
        "(see its docstring for how to add one).",
    ]
    for registry in REGISTRIES:
        lines += ["", f"## {registry.kind} (`{registry.setting}`)", "", "| name | what it does |", "| --- | --- |"]
        lines += [f"| `{option.name}` | {option.description} |" for option in registry]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
