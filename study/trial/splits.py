"""What a loaded dataset is in memory, and how its train/val/test splits are carved.

`ImageSet` and `Splits` are the records every other data module, the trial and the commands above it share: a
split is `rows` of one decoded uint8 store, so subsets (a validation split carved from train, `train_fraction`, a
test's cut) never copy images. They live here, below the loaders (study/trial/decode.py, folders.py,
torchvision_sets.py), which all build ImageSets.

Splits are seeded by `split_seed` (never by the trial seed, so every trial of a study sees the same split) and
described in every trial's results:
- official splits are used as they are; a dataset without a validation split gives VAL_FRACTION of its training
  split, stratified by class;
- a dataset with no split at all (digits, a single folder) is split 60/20/20 train/val/test, stratified;
- a folder without test/ has an empty test split (test metrics are NaN);
- `train_fraction` < 1 keeps a stratified subset of the training split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from study.core.config import StudyError

VAL_FRACTION = 0.2  # of the training split, when a dataset has no validation split
TEST_FRACTION = 0.2  # of all images, when a dataset has no split at all


@dataclass(kw_only=True)
class ImageSet:
    """Some images of a decoded split: `rows` of `store`, which subsets and trials share without copying."""

    store: torch.Tensor  # uint8, N x C x H x W (memory-mapped when it comes from the node's cache)
    labels: torch.Tensor  # int64, one per image of this set
    rows: torch.Tensor | None = None  # this set's images in `store`; None: all, in order

    def __post_init__(self) -> None:
        if self.rows is None:
            self.rows = torch.arange(len(self.store))

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def images(self) -> torch.Tensor:
        """This set's images (a copy)."""
        return self.store[self.rows]

    def subset(self, positions) -> ImageSet:
        positions = torch.as_tensor(positions, dtype=torch.int64)
        return ImageSet(store=self.store, labels=self.labels[positions], rows=self.rows[positions])

    def batch(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.store[self.rows[positions]], self.labels[positions]


@dataclass(kw_only=True)
class Splits:
    name: str
    classes: list[str]
    train: ImageSet
    val: ImageSet
    test: ImageSet
    description: str = ""  # how the splits were made, for the results
    skipped: int = 0  # unreadable files left out
    fingerprint: str = ""  # the source's files as loaded (SourceParts.fingerprint)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def info(self) -> dict:
        return {
            "train_images": len(self.train),
            "val_images": len(self.val),
            "test_images": len(self.test),
            "skipped_images": self.skipped,
            "data_splits": self.description,
        }


class SourceParts(NamedTuple):
    """A dataset as its source divides it, before make_splits: its own splits by name (`all` when it has none)."""

    parts: dict[str, ImageSet]
    classes: list[str]
    skipped: int  # unreadable files left out, over every part
    # A digest of every file the parts came from (a folder's, study/trial/folders.py); "": a fixed published dataset
    fingerprint: str = ""


def make_splits(name: str, source: SourceParts, seed: int, train_fraction: float) -> Splits:
    """Train/val/test from the dataset's own splits (`all` when it has none), carving what is missing."""
    parts = source.parts
    if "all" in parts:
        rest, test = stratified(parts["all"], TEST_FRACTION, seed, f"{name}: the test split")
        train, val = stratified(rest, VAL_FRACTION / (1 - TEST_FRACTION), seed, f"{name}: the validation split")
        notes = [
            f"train/val/test {1 - VAL_FRACTION - TEST_FRACTION:.0%}/{VAL_FRACTION:.0%}/{TEST_FRACTION:.0%} of "
            f"{len(parts['all'])} images, stratified (split_seed {seed})"
        ]
    else:
        train = parts["train"]
        if "val" in parts:
            val, notes = parts["val"], ["train/val: the dataset's own"]
        else:
            train, val = stratified(train, VAL_FRACTION, seed, f"{name}: the validation split")
            notes = [f"val: {VAL_FRACTION:.0%} of the dataset's train split, stratified (split_seed {seed})"]
        if "test" in parts:
            test = parts["test"]
            notes.append("test: the dataset's own")
        else:
            test = train.subset([])
            notes.append("test: none (metrics NaN)")
    if train_fraction < 1:
        _, train = stratified(train, train_fraction, seed, f"{name}: train_fraction={train_fraction}")
        notes.append(f"train: a {train_fraction * 100:.3g}% stratified subset (split_seed {seed})")
    return Splits(
        name=name,
        classes=source.classes,
        train=train,
        val=val,
        test=test,
        description="; ".join(notes),
        skipped=source.skipped,
        fingerprint=source.fingerprint,
    )


def stratified(data: ImageSet, fraction: float, seed: int, what: str) -> tuple[ImageSet, ImageSet]:
    """(the rest, a stratified `fraction` of `data`), seeded; positions stay in store order."""
    from sklearn.model_selection import train_test_split  # imported when needed: it takes seconds

    try:
        rest, part = train_test_split(
            np.arange(len(data)), test_size=fraction, stratify=data.labels.numpy(), random_state=seed
        )
    except ValueError as error:
        raise StudyError(
            f"{what}: cannot take {fraction * 100:.3g}% of {len(data)} images stratified by class ({error}): "
            f"use more images per class or a larger fraction"
        ) from None
    return data.subset(np.sort(rest)), data.subset(np.sort(part))
