"""How a merged model is scored on the target data: its pre-logits features, a head, loss and accuracy per split.

Heads: `keep` evaluates with the head trained on the target's classes (A's or B's; interpolated when both were
trained on them); `probe` fits a new linear head on the merged backbone's frozen features of the training split
(AdamW, batches of PROBE_BATCH_SIZE, seeded init and order). The features of a model are computed once and serve
every head, and an evaluation changes nothing in the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from study.merging.checkpoints import Checkpoint
from study.trial.batching import batches
from study.trial.splits import ImageSet, Splits

PROBE_BATCH_SIZE = 64
SPLITS = ("train", "val", "test")


@dataclass(frozen=True, kw_only=True)
class ProbeSettings:
    """How `probe` heads are fitted (--probe-epochs, --probe-lr, --seed)."""

    epochs: int
    lr: float
    seed: int


@torch.inference_mode()
def pre_logits_features(
    model: nn.Module, data: ImageSet, preprocess, device: torch.device, batch_size: int
) -> torch.Tensor:
    """The pre-logits features (what the classifier reads) of every image, in order."""
    model.eval()
    parts = [
        model.forward_head(model.forward_features(preprocess(images.to(device))), pre_logits=True)
        for images, _ in batches(data, batch_size)
    ]
    return torch.cat(parts) if parts else torch.empty(0, model.num_features, device=device)


def fit_probe(
    train: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int, lr: float, seed: int
) -> nn.Linear:
    """A new linear head trained on frozen features: AdamW, batches of 64, seeded init and order."""
    torch.manual_seed(seed)
    head = nn.Linear(train.shape[1], num_classes).to(train.device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    labels = labels.to(train.device)
    for _ in range(epochs):
        for index in torch.randperm(len(train), generator=order).split(PROBE_BATCH_SIZE):
            loss = nn.functional.cross_entropy(head(train[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return head.eval()


class HeadScores(NamedTuple):
    loss: float  # mean cross-entropy; NaN on an empty split
    accuracy: float


@torch.inference_mode()
def head_scores(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor) -> HeadScores:
    """(mean cross-entropy, accuracy)."""
    if len(labels) == 0:
        return HeadScores(loss=math.nan, accuracy=math.nan)
    logits = head(feats)
    labels = labels.to(logits.device)
    return HeadScores(
        loss=nn.functional.cross_entropy(logits, labels).item(),
        accuracy=(logits.argmax(1) == labels).sum().item() / len(labels),
    )


@dataclass(kw_only=True)
class Target:
    """The data merged models are evaluated on, and how its images reach the model."""

    data: Splits
    preprocess: object  # images on the device -> the model's normalised input
    device: torch.device
    batch_size: int

    def evaluate(
        self, model: nn.Module, heads: dict[str, nn.Module | None], probe: ProbeSettings | None
    ) -> dict[str, dict]:
        """Accuracy and loss on train/val/test for each head; `heads` maps a name to a module, or to None for the
        probe."""
        feats = {
            split: pre_logits_features(model, getattr(self.data, split), self.preprocess, self.device, self.batch_size)
            for split in SPLITS
        }
        results = {}
        for name, head in heads.items():
            if head is None:
                head = fit_probe(
                    feats["train"], self.data.train.labels, self.data.num_classes, probe.epochs, probe.lr, probe.seed
                )
            row = {}
            for split in SPLITS:
                row[f"{split}_loss"], row[f"{split}_acc"] = head_scores(
                    head, feats[split], getattr(self.data, split).labels
                )
            results[name] = row
        return results


def reference_scores(
    target: Target, models: dict[str, nn.Module], checkpoints: tuple[Checkpoint, ...]
) -> dict[str, dict]:
    """A and B themselves on the target data, where their own head fits
    its classes: the ends of the sweep as trained."""
    results = {}
    for (name, model), ckpt in zip(models.items(), checkpoints):
        if ckpt.classes == target.data.classes:
            model.to(target.device)
            results[name] = target.evaluate(model, {"own": model.get_classifier()}, None)["own"]
            model.cpu()
    return results
