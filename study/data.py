"""Datasets as decoded uint8 tensors, split once, and batches ready for a backbone.

Images are decoded once into memory (uint8, N x C x H x W) so no epoch re-decodes
a file; each batch is converted to float, resized to the backbone's input size
and normalised on the fly with torchvision.transforms.v2, which works on whole
batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torchvision.transforms import v2

from study.config import StudyError

VAL_FRACTION = 0.2
TEST_FRACTION = 0.2
FOLDER_PREFIX = "folder:"
BUILTIN = ("digits",)


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Splits:
    name: str
    classes: list[str]
    train: ImageSet
    val: ImageSet
    test: ImageSet

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def check_data_name(name: str) -> None:
    if name.startswith(FOLDER_PREFIX):
        root = Path(name[len(FOLDER_PREFIX) :]).expanduser()
        missing = [split for split in ("train", "val") if not (root / split).is_dir()]
        if missing:
            raise StudyError(f"data '{name}': {root} has no {' or '.join(f'{m}/' for m in missing)} folder: give an ImageFolder root with train/ and val/ class subfolders")
    elif name not in BUILTIN:
        raise StudyError(f"unknown dataset '{name}': use one of {', '.join(BUILTIN)} or folder:PATH")


def load_data(name: str, split_seed: int, img_size: int) -> Splits:
    check_data_name(name)
    if name == "digits":
        return load_digits(split_seed)
    return load_folder(Path(name[len(FOLDER_PREFIX) :]).expanduser(), img_size)


def load_digits(split_seed: int) -> Splits:
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes): real data with no download."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.from_numpy(np.round(bunch.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train, val, test = stratified_split(len(labels), bunch.target, split_seed)
    subset = lambda idx: ImageSet(images[idx], labels[idx])
    return Splits("digits", [str(c) for c in bunch.target_names], subset(train), subset(val), subset(test))


def stratified_split(count: int, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    indices = np.arange(count)
    rest, test = train_test_split(indices, test_size=TEST_FRACTION, stratify=labels, random_state=seed)
    train, val = train_test_split(
        rest, test_size=VAL_FRACTION / (1 - TEST_FRACTION), stratify=labels[rest], random_state=seed
    )
    return np.sort(train), np.sort(val), np.sort(test)


def load_folder(root: Path, img_size: int) -> Splits:
    """An ImageFolder root with train/ and val/ (and optionally test/; else val doubles as test).

    Images are decoded once and stored at the evaluation size (resize + centre crop).
    """
    from torchvision.datasets import ImageFolder

    fit = v2.Compose([v2.PILToTensor(), v2.RGB(), v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size)])
    sets = {}
    for split in ("train", "val", "test"):
        if (root / split).is_dir():
            folder = ImageFolder(str(root / split), transform=fit)
            if sets and folder.classes != sets["train"][1]:
                raise StudyError(f"{root / split} has classes {folder.classes} but train/ has {sets['train'][1]}: use the same class folders in every split")
            images = torch.stack([image for image, _ in folder]) if len(folder) else torch.empty(0, 3, img_size, img_size, dtype=torch.uint8)
            sets[split] = (ImageSet(images, torch.tensor(folder.targets, dtype=torch.int64)), folder.classes)
    test = sets.get("test", sets["val"])[0]
    return Splits(f"folder:{root}", sets["train"][1], sets["train"][0], sets["val"][0], test)


def preprocessor(img_size: int, mean, std, interpolation: str) -> v2.Transform:
    """uint8 batch -> normalised float batch at the backbone's input size (grayscale becomes RGB)."""
    mode = v2.InterpolationMode(interpolation)
    return v2.Compose(
        [v2.RGB(), v2.ToDtype(torch.float32, scale=True), v2.Resize((img_size, img_size), mode, antialias=True), v2.Normalize(mean, std)]
    )


def batches(
    data: ImageSet, batch_size: int, preprocess: v2.Transform, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches in a seeded random order when `generator` is given, else in order."""
    order = torch.randperm(len(data), generator=generator) if generator is not None else torch.arange(len(data))
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield preprocess(data.images[index]), data.labels[index]
