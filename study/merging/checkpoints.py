"""The checkpoints a merge reads: a trial's model.pt found, loaded without running pickled code, rebuilt, compared.

A trial with `save_checkpoint: true` saves its backbone's state dict (head included, timm keys) with its config,
data, classes, weights source and input size (study/trial/train.py, CHECKPOINT_FORMAT). `load_checkpoint` reads it
with `torch.load(weights_only=True)` and turns every way it can be wrong into one StudyError line. Two checkpoints
merge when they are of one backbone and hold the same tensors of the same shapes; only their heads may differ, in
their number of classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from study.core.config import StudyError, TrialConfig, short_reason
from study.trial.backbones import create_backbone
from study.trial.freeze import apply_freeze, plan_for
from study.trial.heads import head_modules, in_head
from study.trial.train import CHECKPOINT_FILE, CHECKPOINT_FORMAT

CHECKPOINT_KEYS = ("state_dict", "config", "data", "classes", "weights_used", "img_size")
ZIP_MAGIC = b"PK\x03\x04"  # how every file torch.save writes begins (a zip archive's first local header)


@dataclass(kw_only=True)
class Checkpoint:
    path: Path
    state: dict[str, torch.Tensor]  # the backbone's state dict, head included (timm keys)
    config: TrialConfig
    data: str
    classes: list[str]
    weights_used: str
    img_size: int

    def build(self) -> nn.Module:
        """The model in eval mode with this checkpoint's weights, rebuilt
        with the trial's surgery (head, inserted BN)."""
        model, _ = create_backbone(
            self.config.backbone, "random", len(self.classes), self.config.seed, self.img_size, self.config.head
        )
        model = apply_freeze(model, plan_for(model, self.config)).backbone
        try:
            model.load_state_dict(self.state, strict=True)
        except RuntimeError as error:
            first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
            raise StudyError(
                f"{self.path} does not fit timm's {self.config.backbone} ({first}): was it written by another "
                "version of the model?"
            ) from None
        return model.eval()

    def describe(self) -> dict:
        return {
            "path": str(self.path),
            "backbone": self.config.backbone,
            "data": self.data,
            "classes": self.classes,
            "weights_used": self.weights_used,
            "img_size": self.img_size,
            "config": self.config.to_dict(),
        }


def find_checkpoint_file(path: Path) -> Path:
    """PATH may be model.pt, a checkpoint directory holding it, or a trial directory (its latest checkpoint_*/)."""
    if path.is_file():
        return path
    if (path / CHECKPOINT_FILE).is_file():
        return path / CHECKPOINT_FILE
    saved = sorted(path.glob(f"checkpoint_*/{CHECKPOINT_FILE}"))
    if saved:
        return saved[-1]
    where = "does not exist" if not path.exists() else f"holds no {CHECKPOINT_FILE}"
    raise StudyError(
        f"checkpoint {path} {where}: pass a model.pt saved by a trial with save_checkpoint: true (trials.csv lists "
        "them)"
    )


def load_checkpoint(path: Path) -> Checkpoint:
    file = find_checkpoint_file(path)
    fix = "pass a model.pt saved by a trial with save_checkpoint: true"
    try:
        with file.open("rb") as handle:
            is_zip = handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    except OSError as error:
        raise StudyError(f"{file} cannot be read ({error.strerror}): {fix}") from None
    if not is_zip:  # torch.load would hand it to the legacy unpickler, which fails in its own ways on any bytes
        raise StudyError(
            f"{file} is not a checkpoint written by study.run (not a zip archive, which torch.save writes): {fix}"
        )
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        # a damaged archive or a foreign pickle: the weights-only unpickler raises whatever its stack machine trips
        # over (UnpicklingError, RuntimeError, EOFError, KeyError, IndexError, ValueError, AttributeError, ...)
        raise StudyError(
            f"{file} is not a checkpoint written by study.run, or is damaged ({type(error).__name__}: "
            f"{short_reason(error, 120)}): {fix}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise StudyError(
            f"{file} is not a study checkpoint (format {CHECKPOINT_FORMAT}): pass a model.pt saved by a trial with "
            "save_checkpoint: true"
        )
    missing = [key for key in CHECKPOINT_KEYS if key not in payload]
    if missing or not isinstance(payload["config"], dict) or not isinstance(payload["state_dict"], dict):
        problem = f"no {missing[0]!r}" if missing else "config or state_dict is no mapping"
        raise StudyError(
            f"{file} is a damaged study checkpoint ({problem}): save it again (a trial with save_checkpoint: true), "
            "or pass another model.pt"
        )
    config = TrialConfig.from_dict(payload["config"], where=str(file))
    return Checkpoint(
        path=file,
        state=payload["state_dict"],
        config=config,
        data=payload["data"],
        classes=list(payload["classes"]),
        weights_used=payload["weights_used"],
        img_size=payload["img_size"],
    )


def head_keys(model: nn.Module) -> set[str]:
    """The names of the head's tensors in `model`'s state dict."""
    heads = head_modules(model)
    return {key for key in model.state_dict() if in_head(key, heads)}


def check_compatible(a: Checkpoint, b: Checkpoint, heads: set[str]) -> None:
    """Same backbone, same tensors of the same shapes; heads may differ in their number of classes."""
    if a.config.backbone != b.config.backbone:
        raise StudyError(
            f"A is a {a.config.backbone} checkpoint but B is {b.config.backbone}: merge two checkpoints of one backbone"
        )
    missing = sorted(set(a.state) ^ set(b.state))
    if missing:
        raise StudyError(
            f"A and B hold different tensors (first: '{missing[0]}'): merge two checkpoints of one architecture"
        )
    for key in a.state:
        if key not in heads and a.state[key].shape != b.state[key].shape:
            raise StudyError(
                f"tensor '{key}' is {tuple(a.state[key].shape)} in A but {tuple(b.state[key].shape)} in B: merge two "
                "checkpoints of one architecture"
            )
