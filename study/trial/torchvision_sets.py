"""torchvision datasets by name (TORCHVISION_SETS): download, Debian's Fashion-MNIST, decoding into the node's cache.

Each dataset is read through torchvision's own class, downloaded into the data root when absent (under a file lock,
so parallel trials do not race). `fashion_mnist` also takes the files of Debian's `dataset-fashion-mnist` package
when it is installed. A node without internet access gets one line naming the command that fetches a dataset
elsewhere (`python -m study.data download`, study/cli/data.py).

Sets that hold one array (CIFAR, STL-10, Fashion-MNIST) are stored as they are; sets of image files go through
study/trial/decode.py like a folder's.
"""

from __future__ import annotations

import functools
import gzip
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from study.core.config import StudyError
from study.core.files import atomic_write, data_lock
from study.trial.decode import CACHE_DIR, cached, decode_files, from_cache
from study.trial.splits import SourceParts

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True, kw_only=True)
class TorchvisionSet:
    class_name: str  # in torchvision.datasets
    splits: dict  # official split -> constructor arguments
    layout: str | None = None  # "NHWC", "NCHW" or "NHW": the class holds one array (`.data`); None: image files
    options: dict = field(default_factory=dict)
    classes_attribute: str = "classes"
    labels_attribute: str = "targets"  # array sets only
    num_classes: int = 10  # known without the files (study.run --dry-run)


TRAIN_TEST = {"train": {"train": True}, "test": {"train": False}}
PETS_SPLITS = {"train": {"split": "trainval"}, "test": {"split": "test"}}
TORCHVISION_SETS = {
    "cifar10": TorchvisionSet(class_name="CIFAR10", splits=TRAIN_TEST, layout="NHWC"),
    "cifar100": TorchvisionSet(class_name="CIFAR100", splits=TRAIN_TEST, layout="NHWC", num_classes=100),
    "stl10": TorchvisionSet(
        class_name="STL10",
        splits={"train": {"split": "train"}, "test": {"split": "test"}},
        layout="NCHW",
        labels_attribute="labels",
    ),
    "fashion_mnist": TorchvisionSet(class_name="FashionMNIST", splits=TRAIN_TEST, layout="NHW"),
    "flowers102": TorchvisionSet(
        class_name="Flowers102", splits={s: {"split": s} for s in ("train", "val", "test")}, num_classes=102
    ),
    "oxford_pets": TorchvisionSet(class_name="OxfordIIITPet", splits=PETS_SPLITS, num_classes=37),
    # Document 004's cats vs dogs: the Oxford-IIIT Pet images labelled cat or dog.
    "oxford_pets_binary": TorchvisionSet(
        class_name="OxfordIIITPet",
        splits=PETS_SPLITS,
        options={"target_types": "binary-category"},
        classes_attribute="bin_classes",
        num_classes=2,
    ),
}


def torchvision_dataset(name: str, split: str, root: Path, download: bool = False):
    import torchvision.datasets

    spec = TORCHVISION_SETS[name]
    return getattr(torchvision.datasets, spec.class_name)(
        root=str(root), download=download, **spec.splits[split], **spec.options
    )


def fetch_command(name: str, root: Path) -> str:
    return f"python -m study.data download {name} --data-root {root}"


def ensure_downloaded(name: str, root: Path) -> None:
    """Make every split of `name` readable from `root`: Debian's files or torchvision's download when absent."""
    spec = TORCHVISION_SETS[name]
    with data_lock(root, f"download-{spec.class_name}"):
        if all(_present(name, split, root) for split in spec.splits):
            return
        if name == "fashion_mnist" and copy_debian_fashion_mnist(root):
            return
        try:
            for split in spec.splits:
                torchvision_dataset(name, split, root, download=True)
        except Exception as error:  # urllib, HTTP, integrity and archive errors all mean "not fetched"
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
            raise StudyError(
                f"dataset '{name}' is not in {root} and could not be downloaded ({reason}): "
                f"run `{fetch_command(name, root)}` where the internet is reachable, then copy {root} here"
            ) from None


def _present(name: str, split: str, root: Path) -> bool:
    try:
        torchvision_dataset(name, split, root)
    except RuntimeError:  # torchvision's "Dataset not found or corrupted"
        return False
    return True


def copy_debian_fashion_mnist(root: Path) -> bool:
    """Decompress Debian's dataset-fashion-mnist files into torchvision's layout; False when the package is absent."""
    sources = [DEBIAN_FASHION_MNIST / f"{file}.gz" for file in FASHION_MNIST_FILES]
    if not all(source.is_file() for source in sources):
        return False
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for source, file in zip(sources, FASHION_MNIST_FILES):
        atomic_write(raw / file, functools.partial(gunzip, source))
    print(f"fashion_mnist: using Debian's dataset-fashion-mnist files from {DEBIAN_FASHION_MNIST}", flush=True)
    return True


def gunzip(source: Path, target: str) -> None:
    with gzip.open(source, "rb") as packed, open(target, "wb") as unpacked:
        shutil.copyfileobj(packed, unpacked)


def load_torchvision(name: str, root: Path, img_size: int) -> SourceParts:
    spec = TORCHVISION_SETS[name]
    keys = {split: f"{name}-{split}" if spec.layout else f"{name}-{split}-{img_size}px" for split in spec.splits}
    if not all((root / CACHE_DIR / f"{key}.pt").exists() for key in keys.values()):
        ensure_downloaded(name, root)
    parts, classes, skipped = {}, [], 0
    for split, key in keys.items():
        decoded = cached(root, key, functools.partial(decode_torchvision, name, split, root, img_size))
        parts[split], classes, count = from_cache(decoded, f"{name} {split}")
        skipped += count
    return SourceParts(parts=parts, classes=classes, skipped=skipped)


def decode_torchvision(name: str, split: str, root: Path, img_size: int) -> dict:
    spec = TORCHVISION_SETS[name]
    dataset = torchvision_dataset(name, split, root)
    classes = list(getattr(dataset, spec.classes_attribute))
    if spec.layout is None:
        return decode_files(
            dataset, classes, img_size, f"{name} {split}", lambda index: f"{name} {split} image {index}"
        )
    array = torch.as_tensor(np.asarray(dataset.data))
    images = {"NHWC": lambda: array.permute(0, 3, 1, 2), "NCHW": lambda: array, "NHW": lambda: array.unsqueeze(1)}[
        spec.layout
    ]()
    labels = torch.as_tensor(np.asarray(getattr(dataset, spec.labels_attribute)), dtype=torch.int64)
    return {"images": images.contiguous(), "labels": labels, "classes": classes, "skipped": []}
