"""The trial config: one typed, flat dataclass that every layer reads.

Spaces, CLI overrides and Ray's sampled values all end up here; unknown keys and
values of the wrong type are errors, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass

import numpy as np
import yaml

from study.core.registry import AUGMENTATIONS, HEADS, LR_SCHEDULES, OPTIMIZERS, UNFREEZE_UNITS


class StudyError(Exception):
    """A user-facing problem: the message is one line naming the problem and the fix."""


# torch's weights-only unpickler wraps its one-line reason in a paragraph of advice; the reason follows this marker.
UNPICKLER_REASON = "WeightsUnpickler error:"


def short_reason(error: BaseException, limit: int = 160) -> str:
    """What went wrong, for the parentheses of a StudyError: the message's first line (or the reason torch's
    weights-only unpickler gives), ended at the last sentence within `limit` characters, else at the last word with
    " ..." (a single longer word is kept whole, never cut); the exception's type name when the message is empty."""
    text = str(error)
    if UNPICKLER_REASON in text:
        text = text.partition(UNPICKLER_REASON)[2]
    line = " ".join((text.strip().splitlines() or [""])[0].split())
    if not line:
        return type(error).__name__
    if len(line) <= limit:
        return line
    sentence_end = line.rfind(". ", 0, limit)
    if sentence_end + 1 >= limit // 2:  # a sentence that says enough on its own
        return line[: sentence_end + 1]
    word_end = line.rfind(" ", 0, limit + 1)
    return f"{line[:word_end].rstrip(',;:')} ..." if word_end > 0 else line.split(" ", 1)[0]


DEVICES = ("auto", "cpu", "cuda")
ALL_LAYERS = "all"
# Named weight sources; anything else must be a path to one of WEIGHT_FILE_SUFFIXES (study/trial/backbones.py loads it).
WEIGHT_SOURCES = ("imagenet", "random")
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".safetensors")
BN_INSERTS = ("none", "before_retrained_conv")
FROZEN_BN_MODES = ("eval", "train")


@dataclass(frozen=True)
class Limit:
    """Where a number may lie: low..high (None: unbounded), an end excluded if open; `rule` tells the user."""

    low: float | None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    rule: str = ""

    def admits(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below


SEED_LIMIT = Limit(0, 2**32 - 1, rule="is outside 0..4294967295: a seed is an unsigned 32-bit integer (NumPy's)")
# Every number a user gives, checked in one place (check_number): the trial settings (TrialConfig), the CLI's
# numbers (study/cli/run/checks.py), a space's study keys and the bounds of its ranges (study/core/space.py). NaN and
# infinity never pass, for any number, limited here or not.
NUMBER_LIMITS = {
    "lr": Limit(0, low_open=True, rule="must be positive"),
    "momentum": Limit(0, 1, high_open=True, rule="is outside [0, 1): SGD's momentum is a fraction, e.g. 0.9"),
    "weight_decay": Limit(0, rule="is negative: use 0 or a positive value"),
    "batch_size": Limit(1, rule="must be positive"),
    "epochs": Limit(1, rule="must be positive"),
    "seed": SEED_LIMIT,
    "split_seed": SEED_LIMIT,
    "repeat": Limit(0, rule="is negative: repeats count from 0 (a space's `repeats: N` sets it, 0..N-1)"),
    "train_fraction": Limit(0, 1, low_open=True, rule="is outside (0, 1]: use e.g. 0.1 for a 10% subset, 1 for all"),
    # timm's largest pretrained inputs are 1024 px; four times that is already 200 MB per image as float32
    "img_size": Limit(8, 4096, rule="is outside 8..4096: use e.g. 224, or null for the backbone's default"),
    "loader_workers": Limit(0, rule="is negative: use 0 (load in the trial process), a count, or null"),
    "unfreeze_depth": Limit(0, rule="is invalid: use an integer >= 0 or 'all'"),
    "num_samples": Limit(1, rule="must be at least 1"),
    "repeats": Limit(1, 1000, rule="is outside 1..1000: the runs of each configuration, e.g. 3 (1: no repeats)"),
    "max_epochs": Limit(1, rule="must be at least 1"),
    "cpus_per_trial": Limit(0, low_open=True, rule="must be positive"),
    "gpus_per_trial": Limit(
        0,
        1,
        rule="is outside 0..1: a trial trains on one device (more GPUs would sit idle); fractions pack trials on a "
        "GPU (0.25: four per GPU)",
    ),
    "max_concurrent": Limit(1, rule="must be at least 1"),
    "max_failures": Limit(0, rule="is negative: use 0 (no retry) or the number of retries"),
    "layer_lr_decay": Limit(0, 1, low_open=True, rule="is outside (0, 1]: use e.g. 0.9, or 1 for no decay"),
}


def check_number(name: str, value, option: str | None = None) -> None:
    """A number within NUMBER_LIMITS[name] (if any) and finite; anything else is a StudyError. `option`: the CLI's
    name of it (e.g. --cpus-per-trial), shown instead of name=value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    shown = f"{option} {value:g}" if option else f"{name}={value}"
    if not math.isfinite(value):
        raise StudyError(f"{shown} is not a finite number: give a number{_limit_hint(name)}")
    limit = NUMBER_LIMITS.get(name)
    if limit and not limit.admits(value):
        raise StudyError(f"{shown} {limit.rule}")


def _limit_hint(name: str) -> str:
    limit = NUMBER_LIMITS.get(name)
    return f" ({name} {limit.rule.removeprefix('is ')})" if limit else ""


@dataclass(frozen=True, kw_only=True)
class TrialConfig:
    # Model
    backbone: str = "tf_efficientnet_lite0"
    # imagenet (timm's pretrained weights), random, or a path to a .pth/.pt/.safetensors state dict
    weights: str = "imagenet"
    # The new head for the dataset's classes (always trained): linear = the backbone's classifier
    # replaced; single_linear = VGG's three fully connected layers replaced by one linear layer.
    head: str = "linear"
    # Units trained counted back from the head (the new head always trains):
    # 0 = linear probe, "all" = full fine-tuning. See study/trial/layers.py for "layer", "block", "stage".
    unfreeze_depth: int | str = 0
    unfreeze_unit: str = "layer"
    # Model surgery (study/trial/freeze.py): a new trainable BatchNorm in front of every retrained conv
    # layer; training the affine parameters of the norm layers in the frozen part; whether the
    # frozen part's BatchNorm keeps its running statistics (eval) or updates them (train).
    bn_insert: str = "none"
    train_bn_affine: bool = False
    frozen_bn: str = "eval"
    # BitFit: the biases of the frozen part train too (a frozen layer without a bias stays frozen).
    train_bias: bool = False
    # Data (study/trial/data.py)
    data: str = "digits"  # digits, a torchvision dataset name, or folder:PATH
    data_root: str | None = None  # downloads and decoded caches; None: ~/.cache/study/data on each node
    # Filled in by the study, never by a space or --set: a folder's digest as the study found it before Ray started
    # (study.json's data_fingerprints), so a trial refuses files changed since rather than train on other data than
    # the study's other trials. "": not checked (digits and the torchvision sets are fixed published releases).
    data_fingerprint: str = ""
    img_size: int | None = None  # None: the backbone's pretrained input size
    split_seed: int = 0  # the train/val/test split and train subset; kept apart from `seed` so trials share them
    train_fraction: float = 1.0  # a stratified subset of the training split, in (0, 1]
    augment: str = "none"  # training only (study/trial/augment.py); evaluation data is never augmented
    loader_workers: int | None = None  # DataLoader worker processes; None: from the trial's CPU share
    # Optimisation
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0  # on weights only: norm parameters and biases are exempt (study/trial/optim.py)
    batch_size: int = 64
    epochs: int = 5
    # Fine-tuning protocol (study/trial/train.py). The first head_warmup_epochs epochs train the new head alone (every
    # other parameter frozen, no surgery), the rest the trial's unfreeze depth and surgery, with a new optimizer.
    head_warmup_epochs: int = 0
    # The learning rate per batch over each phase: constant, cosine (to 0) or step (x STEP_GAMMA at each third),
    # after a linear warm-up of warmup_epochs epochs (a fraction of an epoch is allowed) at the phase's start.
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    # Layer-wise lr decay: a trained unit (as unfreeze_unit counts) d units from the head trains at lr * decay**d.
    layer_lr_decay: float = 1.0
    # The trial's randomness (head initialisation, batch order, random backbone weights) comes from `trial_seed`:
    # `seed` itself for repeat 0, a seed derived from both for the later repeats of a configuration (a space's
    # `repeats: N` runs repeat 0..N-1). The split has its own seed (split_seed): repeats share it.
    seed: int = 0
    repeat: int = 0
    device: str = "auto"
    # Speed (study/trial/device.py, study/trial/feature_cache.py): mixed precision (autocast) on CUDA; CPU trials run in
    # float32.
    amp: bool = True
    # Compute the frozen prefix's output once and train only the rest on it, where the results stay the same.
    feature_cache: bool = True
    # Results: save the final model (under the study's results directory) for `python -m study.merge`
    save_checkpoint: bool = False

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _coerce(field.name, getattr(self, field.name)))
            check_number(field.name, getattr(self, field.name))
        self._check_protocol()
        depth = self.unfreeze_depth
        if isinstance(depth, str) and depth != ALL_LAYERS:
            raise StudyError(f"unfreeze_depth={depth!r} is invalid: use an integer >= 0 or '{ALL_LAYERS}'")
        object.__setattr__(self, "weights", weights_source(self.weights))
        _check_choice("head", self.head, HEADS.names())
        _check_choice("unfreeze_unit", self.unfreeze_unit, UNFREEZE_UNITS.names())
        _check_choice("bn_insert", self.bn_insert, BN_INSERTS)
        _check_choice("frozen_bn", self.frozen_bn, FROZEN_BN_MODES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS.names())
        _check_choice("augment", self.augment, AUGMENTATIONS.names())
        _check_choice("device", self.device, DEVICES)

    def _check_protocol(self) -> None:
        if not 0 <= self.head_warmup_epochs < self.epochs:
            raise StudyError(
                f"head_warmup_epochs={self.head_warmup_epochs} must be in 0..{self.epochs - 1} (epochs={self.epochs} "
                "counts the warm-up too): lower it or raise the epoch budget"
            )
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES.names())
        shortest = min(length for length in self.phase_epochs() if length > 0)
        if not 0 <= self.warmup_epochs < shortest:
            raise StudyError(
                f"warmup_epochs={self.warmup_epochs} must be >= 0 and shorter than each training phase "
                f"({shortest} epochs): lower it"
            )

    @property
    def trial_seed(self) -> int:
        """The seed of the trial's randomness: `seed` for repeat 0, so a study without repeats trains exactly as
        before they existed; for later repeats one drawn from (seed, repeat) by NumPy's SeedSequence, so repeats of
        seeds 0 and 1 never collide the way seed + repeat would."""
        if self.repeat == 0:
            return self.seed
        return int(np.random.SeedSequence([self.seed, self.repeat]).generate_state(1)[0])

    def phase_epochs(self) -> tuple[int, int]:
        """Epochs of the head warm-up and of the trial's own training after it."""
        return self.head_warmup_epochs, self.epochs - self.head_warmup_epochs

    @classmethod
    def from_dict(cls, values: dict, where: str = "trial config") -> TrialConfig:
        unknown = [key for key in values if key not in FIELD_TYPES]
        if unknown:
            raise StudyError(f"{where}: unknown setting '{unknown[0]}'{closest_hint(unknown[0], FIELD_TYPES)}")
        try:
            return cls(**values)
        except StudyError as error:
            raise StudyError(f"{where}: {error}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> TrialConfig:
        return dataclasses.replace(self, **changes)


FIELD_TYPES: dict[str, object] = typing.get_type_hints(TrialConfig)
# The setting a study derives from `data` (TrialConfig.data_fingerprint): it follows `data`; no one sets it.
DATA_FINGERPRINT = "data_fingerprint"


def closest_hint(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(sorted(valid))})"


class YamlLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no object construction), reading `1e-3` as a float as YAML 1.2 does, not as text, and
    refusing aliases (`*name`): nested aliases expand a few hundred bytes into gigabytes ("billion laughs"), and a
    space file is small enough to write out."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed: write the value out", self.peek_event().start_mark
            )
        return super().compose_node(parent, index)


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str):
    return yaml.load(text, Loader=YamlLoader)  # YamlLoader is a SafeLoader subclass


def parse_assignment(text: str) -> tuple[str, object]:
    """`key=value` from the command line; the value is read as YAML so `1e-3`, `true` and `null` work."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise StudyError(f"--set {text!r} is not key=value: write e.g. --set lr=0.01")
    if key not in FIELD_TYPES:
        raise StudyError(f"--set: unknown setting '{key}'{closest_hint(key, FIELD_TYPES)}")
    return key, load_yaml(raw)


def weights_source(value: str) -> str:
    """A named source, or the absolute path of a weights file (trials may run in another directory)."""
    if value in WEIGHT_SOURCES:
        return value
    if not value.endswith(WEIGHT_FILE_SUFFIXES):
        raise StudyError(
            f"weights='{value}' is neither {' nor '.join(WEIGHT_SOURCES)} nor a path to a "
            f"{', '.join(WEIGHT_FILE_SUFFIXES)} file: use one of those"
        )
    return os.path.abspath(os.path.expanduser(value))


def _coerce(name: str, value):
    """Accept a value only if it has the field's type; ints widen to float, nothing else converts."""
    allowed = _allowed_types(FIELD_TYPES[name])
    if hasattr(value, "item") and not isinstance(value, (bool, int, float, str)):
        value = value.item()  # numpy scalars from Ray's samplers
    if type(value) in allowed:  # exact type: `lr: true` must not pass as the int 1
        return value
    if type(value) is int and float in allowed:
        return float(value)
    expected = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise StudyError(f"setting '{name}' must be {expected}, got {value!r}")


def _allowed_types(annotation) -> tuple:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise StudyError(f"{name}='{value}' is unknown{closest_hint(value, choices)}")
