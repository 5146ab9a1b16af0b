"""Datasets as decoded uint8 tensors: found by name, split once, decoded once per node, batched.

This module is where a dataset name (the `data` setting) becomes a `Splits`; the work is in its neighbours:
- `digits`: scikit-learn's bundled handwritten digits (1,797 real 8x8 scans); no files, no network, no data root
  (here);
- torchvision datasets by name (TORCHVISION_SETS), downloaded into the data root when absent:
  study/trial/torchvision_sets.py;
- `folder:PATH`: an ImageFolder root with train/ (and optionally val/, test/) class subfolders, or a single folder
  of class subfolders: study/trial/folders.py.

Files are decoded once per node into the data root's cache (study/trial/decode.py); the train/val/test splits are
carved, seeded by `split_seed`, in study/trial/splits.py; study/trial/batching.py batches them for a trial.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from study.core.config import StudyError
from study.trial.folders import load_folder, scan_folder
from study.trial.splits import ImageSet, SourceParts, Splits, make_splits
from study.trial.torchvision_sets import TORCHVISION_SETS, load_torchvision

FOLDER_PREFIX = "folder:"
BUILTIN = ("digits",)
DATA_NAMES = (*BUILTIN, *TORCHVISION_SETS)


def default_data_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "study" / "data"


def resolve_data_root(setting: str | None) -> Path:
    return Path(setting).expanduser() if setting else default_data_root()


def folder_path(name: str) -> Path:
    return Path(name[len(FOLDER_PREFIX) :]).expanduser().resolve()


def absolute_data(name: str) -> str:
    """`name` with a folder's path made absolute (relative paths mean nothing in another working directory)."""
    return f"{FOLDER_PREFIX}{folder_path(name)}" if name.startswith(FOLDER_PREFIX) else name


def load_data(
    name: str,
    split_seed: int,
    img_size: int,
    data_root: str | None = None,
    train_fraction: float = 1.0,
    expected_fingerprint: str = "",
) -> Splits:
    """The train/val/test splits of dataset `name`; `img_size` is the storage size of images that need resizing.

    `expected_fingerprint` (unless ""): the fingerprint a study decided on (Splits.fingerprint when it loaded the
    data before its trials); a folder whose files changed since is a StudyError, raised before anything is decoded.
    Only folders have one: digits and the torchvision sets are fixed published releases."""
    if name == "digits":
        source = SourceParts(parts={"all": load_digits_set()}, classes=[str(c) for c in range(10)], skipped=0)
    elif name in TORCHVISION_SETS:
        source = load_torchvision(name, resolve_data_root(data_root), img_size)
    elif name.startswith(FOLDER_PREFIX):
        source = load_folder(folder_path(name), resolve_data_root(data_root), img_size, expected_fingerprint)
    else:
        raise StudyError(f"unknown dataset '{name}': use one of {', '.join(DATA_NAMES)} or folder:PATH")
    return make_splits(name, source, split_seed, train_fraction)


def class_count(name: str) -> int:
    """The number of classes of dataset `name` without loading it (a folder's is read from its class folders)."""
    if name in TORCHVISION_SETS:
        return TORCHVISION_SETS[name].num_classes
    if name.startswith(FOLDER_PREFIX):
        return len(next(iter(scan_folder(folder_path(name)).values())).classes)
    if name == "digits":
        return 10
    raise StudyError(f"unknown dataset '{name}': use one of {', '.join(DATA_NAMES)} or folder:PATH")


def load_digits(split_seed: int) -> Splits:
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes): real data with no download."""
    return load_data("digits", split_seed, img_size=8)


def load_digits_set() -> ImageSet:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.from_numpy(np.round(bunch.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    return ImageSet(store=images, labels=torch.from_numpy(bunch.target.astype(np.int64)))
