"""The backbone's layers and units: what `unfreeze_depth` counts.

Layers. A *layer* is a weight layer: a conv or linear module of the backbone,
numbered 1..L in the order the forward pass first calls it (found with hooks on
one forward pass, on the meta device when only the structure is needed). The
same definition serves CNNs and ViTs (a ViT block has 4 layers: qkv, proj, fc1,
fc2). The classification head is not counted: a new head always trains
(study/trial/heads.py).

Parameters outside conv/linear modules ride with a layer, so that depth L trains
every parameter:
- a leaf module (BatchNorm, LayerNorm, ...) rides with the weight layer called
  just before it (conv -> BN), or with the first layer if none was called yet;
  normalisation modules ride this way even without parameters (for their mode);
- parameters held directly by a container (a ViT's cls_token and pos_embed,
  layer-scale gammas) ride with the first weight layer called inside it;
- a module the forward pass never calls rides with layer 1.

Units. `unfreeze_unit` counts the depth in layers (default), blocks or stages.
Blocks and stages are timm's own parameter groups, `model.group_matcher(coarse=False)`
and `coarse=True` applied by `timm.models.group_parameters`: a ResNet's residual
blocks and its 4 stages, a ViT's 12 transformer blocks, an EfficientNet's
inverted-residual blocks and stages, VGG's conv layers. Depth K in blocks trains
the parameters of the last K groups: every parameter goes with its timm group (a
ViT block's norm1 trains with its block, although as a layer rider it goes with
the previous block's fc2), and parameters of groups without a layer go with
their layer. A layer belongs to the group of its weight; layers timm leaves
ungrouped before the head (VGG's fully connected pre-logits) form the last block.
study/core/registry.py UNFREEZE_UNITS names the numberings (layer_units, block_units,
stage_units); study/trial/freeze.py turns a depth in units into what trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import timm
import timm.layers.norm
import torch
from torch import nn

from study.core.config import ALL_LAYERS, StudyError
from study.trial.heads import head_modules, in_head

__all__ = [
    "NORM_TYPES",
    "WEIGHT_LAYER_TYPES",
    "Layer",
    "block_units",
    "layer_units",
    "param_units",
    "resolve_depth",
    "stage_units",
    "weight_layers",
]

WEIGHT_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORM_TYPES = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    *(
        getattr(timm.layers.norm, name)
        for name in (
            "RmsNorm",
            "RmsNormFp32",
            "RmsNorm2d",
            "RmsNorm2dFp32",
            "SimpleNorm",
            "SimpleNormFp32",
            "SimpleNorm2d",
            "SimpleNorm2dFp32",
        )
    ),
)


@dataclass(kw_only=True)
class Layer:
    index: int  # 1-based, forward order
    name: str  # module path in the backbone
    kind: str  # "conv" or "linear"
    params: list[str] = field(default_factory=list)  # its own and the riding parameter names
    num_params: int = 0
    norms: list[str] = field(default_factory=list)  # normalisation modules riding with it
    # timm's fine parameter group, 1-based; None where timm's groups do not follow the forward pass
    block: int | None = None
    stage: int | None = None  # timm's coarse parameter group, likewise


def weight_layers(model: nn.Module) -> list[Layer]:
    """Number the backbone's weight layers in forward order and attach every other parameter (module docstring)."""
    heads = head_modules(model)
    modules = {name: module for name, module in model.named_modules() if not in_head(name, heads)}
    holders = [
        name
        for name, module in modules.items()
        if next(module.parameters(recurse=False), None) is not None or isinstance(module, NORM_TYPES)
    ]
    first_call = _first_calls(model, {name: modules[name] for name in holders})
    called = sorted((name for name in holders if name in first_call), key=first_call.get)
    layer_names = [name for name in called if isinstance(modules[name], WEIGHT_LAYER_TYPES)]
    if not layer_names:
        raise StudyError(f"{type(model).__name__} has no conv or linear layers outside its head")
    layers = {
        name: Layer(index=i, name=name, kind="conv" if isinstance(modules[name], nn.modules.conv._ConvNd) else "linear")
        for i, name in enumerate(layer_names, 1)
    }
    for name in holders:
        owner = name if name in layers else _rider_owner(name, holders, first_call, layer_names)
        layers[owner].params += [f"{name}.{p}" if name else p for p, _ in modules[name].named_parameters(recurse=False)]
        if isinstance(modules[name], NORM_TYPES):
            layers[owner].norms.append(name)
    sizes = dict(model.named_parameters())
    for layer in layers.values():
        layer.num_params = sum(sizes[p].numel() for p in layer.params)
    ordered = list(layers.values())
    for unit in ("block", "stage"):
        units = param_units(model, ordered, unit) or {}
        for layer in ordered:
            setattr(layer, unit, units.get(f"{layer.name}.weight"))
    return ordered


def _first_calls(model: nn.Module, watched: dict[str, nn.Module]) -> dict[str, int]:
    """Module name -> the order in which one forward pass of `model` first calls it, for the `watched` modules."""
    first_call: dict[str, int] = {}

    def record(name: str):
        def hook(_module, _inputs) -> None:  # a pre-hook that returned a value would replace the input
            first_call.setdefault(name, len(first_call))

        return hook

    # prepend: a layer is recorded before its inserted BatchNorm runs, so that BatchNorm rides with it
    handles = [module.register_forward_pre_hook(record(name), prepend=True) for name, module in watched.items()]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()  # never touch BatchNorm statistics while looking
        with torch.no_grad():
            model(torch.zeros(1, *model.pretrained_cfg["input_size"], device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return first_call


def _rider_owner(name: str, holders: list[str], first_call: dict, layer_names: list[str]) -> str:
    if name not in first_call:
        return layer_names[0]
    order = first_call[name]
    # A container holds parameters in sub-modules too (BatchNormAct2d's act/drop children hold none: a leaf here).
    is_container = any(other != name and other.startswith(f"{name}." if name else "") for other in holders)
    if is_container:
        inside = [
            layer for layer in layer_names if first_call[layer] > order and (not name or layer.startswith(name + "."))
        ]
        return inside[0] if inside else layer_names[0]
    before = [layer for layer in layer_names if first_call[layer] < order]
    return before[-1] if before else layer_names[0]


def param_units(model: nn.Module, layers: list[Layer], unit: str) -> dict[str, int] | None:
    """Parameter name -> its block or stage number (timm's fine or coarse group, numbered 1.. in forward order).

    Only groups holding a layer get a number (parameters of other groups, the head's among them, are absent).
    None where timm defines no groups for the model, or groups whose order is not the forward order.
    """
    try:
        matcher = model.group_matcher(coarse=unit == "stage")
    except (AttributeError, NotImplementedError):
        return None
    group_of = timm.models.group_parameters(model, matcher, reverse=True)
    layer_groups = [group_of[f"{layer.name}.weight"] for layer in layers]
    if any(later < earlier for earlier, later in zip(layer_groups, layer_groups[1:])):
        return None
    numbers = {group: number for number, group in enumerate(dict.fromkeys(layer_groups), 1)}
    return {name: numbers[group] for name, group in group_of.items() if group in numbers}


# The units of study/core/registry.py UNFREEZE_UNITS: (model, layers) -> parameter name -> unit number, or None.
def layer_units(model: nn.Module, layers: list[Layer]) -> dict[str, int]:
    return {name: layer.index for layer in layers for name in layer.params}


def block_units(model: nn.Module, layers: list[Layer]) -> dict[str, int] | None:
    return param_units(model, layers, "block")


def stage_units(model: nn.Module, layers: list[Layer]) -> dict[str, int] | None:
    return param_units(model, layers, "stage")


def resolve_depth(depth: int | str, count: int, backbone: str, unit: str = "layer") -> int:
    if depth == ALL_LAYERS:
        return count
    if depth > count:
        raise StudyError(
            f"unfreeze_depth={depth} exceeds the {count} {unit}s of {backbone}: "
            f"use 0..{count} or 'all' (python -m study.layers {backbone} lists them)"
        )
    return depth
