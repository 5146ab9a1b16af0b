"""The surgery that decides what trains: the freeze plan, its training phases, and carrying it out on a model.

A `FreezePlan` is decided from the trial's settings and the backbone's layers
(study/trial/layers.py) before the model is touched: `freeze_plan` counts the
depth in units, and the head (study/trial/heads.py) always trains. `apply_freeze`
then carries the plan out. Deciding apart from doing lets study.run's preflight
and `python -m study.layers` show the plan of a model on the meta device.

BatchNorm insertion. `bn_insert: before_retrained_conv` puts a new BatchNorm
(BatchNorm1d/2d/3d over the conv's input channels, gamma 1, beta 0) in front of
every conv layer that trains, so their number equals the number of retrained
conv layers. The new BatchNorm is a child `inserted_bn` of its conv, applied to
the conv's input by a forward pre-hook: layer numbers and every existing
state_dict name stay those of the unmodified model (weights files, layer tables
and the frozen prefix are unaffected); the new tensors are `<conv>.inserted_bn.*`.
It rides with its conv: not a layer, trainable, in train mode. Transformers,
whose only conv is the patch embedding, are rejected (use bn_insert=none).

Norm layers of the frozen part (those whose parameters the depth leaves frozen).
`train_bn_affine: true` also trains their affine parameters (weight, bias):
BatchNorm in CNNs, LayerNorm in ViTs (they have no BatchNorm, so Frankle et
al.'s BN-only training applies to the norm they have). `frozen_bn: eval`
(default) keeps BatchNorm with running statistics in the frozen part in eval
mode during training, so the statistics never move; `train` lets them update.
LayerNorm has no statistics: frozen_bn does not change it. `FreezePlan.effective`
(the results' `effective` column) says what each setting did to the trial's model.

Frozen means frozen: requires_grad is off, and BatchNorm riding with a frozen
layer stays in eval mode while training (unless frozen_bn=train).
`FreezePlan.frozen_prefix_layers` says up to which layer the network is frozen
and deterministic (a cache of its output would stay valid); timm's default
dropout and drop-path rates, which study never changes, are 0.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from study.core.config import StudyError, TrialConfig
from study.core.registry import UNFREEZE_UNITS
from study.trial.heads import head_modules, in_head
from study.trial.layers import Layer, resolve_depth, weight_layers

__all__ = [
    "HEAD_WARMUP",
    "INSERTED_BN",
    "MAIN_PHASE",
    "FreezePlan",
    "Phase",
    "TransferModel",
    "apply_freeze",
    "freeze_plan",
    "insert_batchnorm",
    "phase_plans",
    "plan_for",
]

INSERTED_BN = "inserted_bn"
BATCHNORM_FOR_CONV = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}  # by the conv's spatial dimensions
HEAD_WARMUP = "head_warmup"
MAIN_PHASE = "main"


class TransferModel(nn.Module):
    """A backbone whose frozen part stays frozen in train mode (BatchNorm there keeps eval statistics)."""

    def __init__(self, backbone: nn.Module, frozen_norms: list[str]):
        super().__init__()
        self.backbone = backbone
        self.frozen_norms = frozen_norms

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        for name in self.frozen_norms:
            self.backbone.get_submodule(name).eval()
        return self


@dataclass(kw_only=True)
class FreezePlan:
    """What trains and how: the single source of truth that apply_freeze carries out."""

    layers: list[Layer]
    depth: int  # resolved: the number of trained layers
    # names of the parameters that train: head, trained layers, inserted BN, frozen-part norm affine
    trainable: set[str]
    head_params: int
    total_params: int  # after the surgery, inserted BatchNorm included
    param_sizes: dict[str, int] = field(default_factory=dict)  # every parameter, inserted BatchNorm included
    unit: str = "layer"
    unit_depth: int = 0  # resolved: the number of trained units
    num_units: int = 0
    # conv layer name -> channels of the BatchNorm in front of it
    inserted_bn: dict[str, int] = field(default_factory=dict)
    affine_norms: dict[str, str] = field(default_factory=dict)  # frozen-part norm module -> its type, affine trained
    frozen_stat_norms: list[str] = field(default_factory=list)  # frozen-part BatchNorm with running statistics
    frozen_bn: str = "eval"
    train_bn_affine: bool = False
    train_bias: bool = False
    bias_params: list[str] = field(default_factory=list)  # frozen-part biases trained (train_bias)
    # backbone parameter -> its unit (unfreeze_unit's numbering, 1..num_units); the head's are absent
    param_unit: dict[str, int] = field(default_factory=dict)

    @property
    def trainable_params(self) -> int:
        return sum(self.param_sizes[name] for name in self.trainable)

    @property
    def trained_layers(self) -> list[Layer]:
        return self.layers[len(self.layers) - self.depth :]

    @property
    def eval_norms(self) -> list[str]:
        """BatchNorm modules kept in eval mode while training."""
        return self.frozen_stat_norms if self.frozen_bn == "eval" else []

    @property
    def frozen_prefix_layers(self) -> int:
        """How many leading layers are frozen and deterministic while training: nothing in them trains and no
        BatchNorm there updates statistics, so their output is a fixed function of the input."""
        moving = set(self.frozen_stat_norms) - set(self.eval_norms)
        for position, layer in enumerate(self.layers):
            if any(p in self.trainable for p in layer.params) or any(n in moving for n in layer.norms):
                return position
        return len(self.layers)

    def prefix_end(self) -> str:
        """What ends the frozen prefix, in words (the feature cache's note), or "" when everything is frozen."""
        if self.frozen_prefix_layers == len(self.layers):
            return ""
        layer = self.layers[self.frozen_prefix_layers]
        moving = set(self.frozen_stat_norms) - set(self.eval_norms)
        trained = [p for p in layer.params if p in self.trainable]
        if layer in self.trained_layers:
            why = f"unfreeze_depth trains it ({layer.name})"
        elif set(trained) & set(self.bias_params):
            why = f"train_bias=true trains {next(p for p in trained if p in self.bias_params)}"
        elif trained:
            why = f"train_bn_affine=true trains {trained[0]}"
        else:
            why = f"frozen_bn=train updates {next(n for n in layer.norms if n in moving)}"
        return f"layer {layer.index}: {why}"

    def lr_scale(self, name: str, decay: float) -> float:
        """The factor of the trial's lr for parameter `name`: decay ** (its unit's distance from the head), the
        head (and anything outside the units) at 1. Inserted BatchNorm trains with its conv's unit."""
        conv = name.partition(f".{INSERTED_BN}.")[0] if f".{INSERTED_BN}." in name else None
        unit = self.param_unit.get(f"{conv}.weight" if conv else name)
        return 1.0 if unit is None else decay ** (self.num_units - unit + 1)

    def fixed(self, name: str, module: nn.Module) -> bool:
        """Whether module `name` of the backbone (sub-modules included) stays the same function while training:
        none of its parameters trains and none of its BatchNorm updates running statistics (a BatchNorm stays
        fixed only where this plan keeps it in eval mode). The frozen prefix (study/trial/cut.py) is made of
        these."""
        for inner, part in module.named_modules(prefix=name):
            if any(f"{inner}.{p}" in self.trainable for p, _ in part.named_parameters(recurse=False)):
                return False
            if (
                isinstance(part, nn.modules.batchnorm._NormBase)
                and part.track_running_stats
                and inner not in self.eval_norms
            ):
                return False
        return True

    @property
    def effective(self) -> str:
        """What the surgery settings did to this model, in words (the results' `effective` column)."""
        parts = [f"trains {self.depth}/{len(self.layers)} layers"]
        if self.unit != "layer":
            parts[0] += f" (last {self.unit_depth}/{self.num_units} {self.unit}s)"
        parts.append(f"bn_inserted {len(self.inserted_bn)}")
        if self.train_bias:
            parts.append(f"bias {len(self.bias_params)} tensors in the frozen part")
        if self.train_bn_affine:
            kinds = Counter(self.affine_norms.values())
            trained = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
            parts.append(f"norm_affine {trained}" if kinds else "norm_affine none (no norm layer in the frozen part)")
        if self.frozen_stat_norms:
            parts.append(f"frozen_bn {self.frozen_bn} ({len(self.frozen_stat_norms)} BatchNorm)")
        else:
            parts.append(f"frozen_bn {self.frozen_bn} has no effect (no BatchNorm in the frozen part)")
        return "; ".join(parts)

    def trainable_params_at(self, depth: int) -> int:
        """Trainable parameters with the last `depth` layers and the head trained (no other surgery)."""
        return self.head_params + sum(layer.num_params for layer in self.layers[len(self.layers) - depth :])


def freeze_plan(
    model: nn.Module,
    depth: int | str,
    backbone: str,
    *,
    unit: str = "layer",
    bn_insert: str = "none",
    train_bn_affine: bool = False,
    frozen_bn: str = "eval",
    train_bias: bool = False,
    layers: list[Layer] | None = None,
) -> FreezePlan:
    """Decide what trains (module docstring); `layers` = weight_layers(model) when already known."""
    layers = layers or weight_layers(model)
    by_depth = _trained_by_depth(model, layers, depth, backbone, unit)
    heads = head_modules(model)
    sizes = {name: parameter.numel() for name, parameter in model.named_parameters()}
    head_names = {name for name in sizes if in_head(name, heads)}
    trainable = head_names | by_depth.params
    modules = dict(model.named_modules())
    frozen_norms = _frozen_norms(layers, modules, by_depth)

    inserted = {}
    if bn_insert == "before_retrained_conv":
        inserted = _inserted_batchnorm(layers, by_depth.layers, modules, backbone)
    for conv, channels in inserted.items():
        for name in (f"{conv}.{INSERTED_BN}.weight", f"{conv}.{INSERTED_BN}.bias"):
            sizes[name] = channels
            trainable.add(name)
    affine = {}
    if train_bn_affine:
        affine = {norm: type(modules[norm]).__name__ for norm in frozen_norms if _own_params(norm, modules)}
        for norm in affine:
            trainable.update(_own_params(norm, modules))
    bias_params = []
    if train_bias:
        # BitFit: every bias tensor of the backbone's frozen part (conv, linear and norm biases)
        bias_params = [n for n in by_depth.param_unit if n.rpartition(".")[2] == "bias" and n not in trainable]
        trainable.update(bias_params)
    return FreezePlan(
        layers=layers,
        depth=len(by_depth.layers),
        trainable=trainable,
        head_params=sum(sizes[n] for n in head_names),
        total_params=sum(sizes.values()),
        param_sizes=sizes,
        unit=unit,
        unit_depth=by_depth.unit_depth,
        num_units=by_depth.num_units,
        inserted_bn=inserted,
        affine_norms=affine,
        frozen_stat_norms=[norm for norm in frozen_norms if _keeps_statistics(modules[norm])],
        frozen_bn=frozen_bn,
        train_bn_affine=train_bn_affine,
        train_bias=train_bias,
        bias_params=bias_params,
        param_unit=by_depth.param_unit,
    )


@dataclass(kw_only=True)
class _TrainedByDepth:
    """What `unfreeze_depth` alone trains, counted in units."""

    unit_depth: int  # resolved: the number of trained units
    num_units: int
    param_unit: dict[str, int]  # backbone parameter -> its unit, in the layers' order
    params: set[str]  # the backbone parameters of the trained units
    layers: list[Layer]  # the trained layers


def _trained_by_depth(
    model: nn.Module, layers: list[Layer], depth: int | str, backbone: str, unit: str
) -> _TrainedByDepth:
    units = UNFREEZE_UNITS.get(unit)(model, layers)
    if units is None:
        raise StudyError(
            f"timm defines no {unit}s for {backbone} that follow its forward pass: use unfreeze_unit=layer"
        )
    layer_units = [units[f"{layer.name}.weight"] for layer in layers]
    num_units = layer_units[-1]
    unit_depth = resolve_depth(depth, num_units, backbone, unit)
    first_unit = num_units - unit_depth + 1
    # A parameter trains with its unit; one whose timm group holds no layer goes with its layer.
    layer_of = {name: number for layer, number in zip(layers, layer_units) for name in layer.params}
    param_unit = {name: units.get(name, layer_of[name]) for name in layer_of}
    return _TrainedByDepth(
        unit_depth=unit_depth,
        num_units=num_units,
        param_unit=param_unit,
        params={name for name, number in param_unit.items() if number >= first_unit},
        layers=[layer for layer, number in zip(layers, layer_units) if number >= first_unit],
    )


def _own_params(module: str, modules: dict[str, nn.Module]) -> list[str]:
    """The names of the parameters `module` holds itself (not its sub-modules')."""
    return [f"{module}.{p}" for p, _ in modules[module].named_parameters(recurse=False)]


def _frozen_norms(layers: list[Layer], modules: dict[str, nn.Module], by_depth: _TrainedByDepth) -> list[str]:
    """The norm modules of the frozen part: their parameters do not train; without any, their layer does not."""

    def frozen(norm: str, layer: Layer) -> bool:
        names = set(_own_params(norm, modules))
        return not names <= by_depth.params if names else layer not in by_depth.layers

    return [norm for layer in layers for norm in layer.norms if frozen(norm, layer)]


def _inserted_batchnorm(
    layers: list[Layer], trained: list[Layer], modules: dict[str, nn.Module], backbone: str
) -> dict[str, int]:
    """bn_insert=before_retrained_conv: trained conv layer name -> the channels of the BatchNorm in front of it."""
    if not any(layer.kind == "conv" for layer in layers[1:]):
        raise StudyError(
            f"bn_insert=before_retrained_conv puts BatchNorm in front of conv layers, but {backbone} has no conv "
            f"layer after its input layer (a transformer normalised by LayerNorm): use bn_insert=none"
        )
    return {layer.name: modules[layer.name].in_channels for layer in trained if layer.kind == "conv"}


def _keeps_statistics(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats


def plan_for(model: nn.Module, config: TrialConfig, layers: list[Layer] | None = None) -> FreezePlan:
    """The freeze plan of a trial's settings (after its head warm-up, if any)."""
    return freeze_plan(
        model,
        config.unfreeze_depth,
        config.backbone,
        unit=config.unfreeze_unit,
        bn_insert=config.bn_insert,
        train_bn_affine=config.train_bn_affine,
        frozen_bn=config.frozen_bn,
        train_bias=config.train_bias,
        layers=layers,
    )


@dataclass(kw_only=True)
class Phase:
    """Epochs first..last (1-based, inclusive) of a trial, trained as `plan` says."""

    name: str  # HEAD_WARMUP or MAIN_PHASE
    first: int
    last: int
    plan: FreezePlan

    @property
    def epochs(self) -> int:
        return self.last - self.first + 1

    def describe(self) -> str:
        what = "head only" if self.name == HEAD_WARMUP else self.plan.effective.split(";")[0]
        return f"epochs {self.first}-{self.last} ({self.name}): {what}, {self.plan.trainable_params:,} trainable"


def phase_plans(model: nn.Module, config: TrialConfig, layers: list[Layer] | None = None) -> list[Phase]:
    """The trial's training phases in order: the head warm-up (if head_warmup_epochs > 0: only the new head trains,
    no surgery, the frozen part's BatchNorm as frozen_bn says), then the trial's own plan."""
    layers = layers or weight_layers(model)
    phases = []
    warmup, rest = config.phase_epochs()
    if warmup:
        head_only = freeze_plan(
            model, 0, config.backbone, unit=config.unfreeze_unit, frozen_bn=config.frozen_bn, layers=layers
        )
        phases.append(Phase(name=HEAD_WARMUP, first=1, last=warmup, plan=head_only))
    phases.append(Phase(name=MAIN_PHASE, first=warmup + 1, last=warmup + rest, plan=plan_for(model, config, layers)))
    return phases


def apply_freeze(model: nn.Module, plan: FreezePlan) -> TransferModel:
    """Carry out `plan` on `model` (the one it was made for): insert BatchNorm, set requires_grad, fix norm modes."""
    for conv in plan.inserted_bn:
        insert_batchnorm(model.get_submodule(conv))
    names = set()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in plan.trainable)
        names.add(name)
    if plan.trainable - names:
        raise ValueError(f"the plan trains parameters this model lacks: {sorted(plan.trainable - names)[:3]}")
    return TransferModel(model, plan.eval_norms)


def insert_batchnorm(conv: nn.modules.conv._ConvNd) -> nn.Module:
    """A new BatchNorm over `conv`'s input, applied in front of it; the conv's own names stay as they were."""
    if hasattr(conv, INSERTED_BN):
        raise ValueError(f"{conv} already has an inserted BatchNorm")
    norm = BATCHNORM_FOR_CONV[len(conv.kernel_size)](
        conv.in_channels, device=conv.weight.device, dtype=conv.weight.dtype
    )
    conv.add_module(INSERTED_BN, norm)
    conv.register_forward_pre_hook(_normalise_input)
    return norm


def _normalise_input(conv: nn.Module, inputs: tuple) -> tuple:
    return (getattr(conv, INSERTED_BN)(inputs[0]), *inputs[1:])
