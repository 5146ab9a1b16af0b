"""Datasets as decoded uint8 tensors: found by name, split once, decoded once per node, batched.

Sources (the `data` setting):
- `digits`: scikit-learn's bundled handwritten digits (1,797 real 8x8 scans); no
  files, no network, no data root.
- torchvision datasets by name (TORCHVISION_SETS), through torchvision's own
  classes, downloaded into the data root when absent (under a file lock, so
  parallel trials do not race). `fashion_mnist` also takes the files of Debian's
  `dataset-fashion-mnist` package when it is installed.
- `folder:PATH`: an ImageFolder root with train/ (and optionally val/, test/)
  class subfolders, or a single folder of class subfolders.

Splits are seeded by `split_seed` (never by the trial seed, so every trial of a
study sees the same split) and described in every trial's results:
- official splits are used as they are; a dataset without a validation split
  gives VAL_FRACTION of its training split, stratified by class;
- a dataset with no split at all (digits, a single folder) is split 60/20/20
  train/val/test, stratified;
- a folder without test/ has an empty test split (test metrics are NaN);
- `train_fraction` < 1 keeps a stratified subset of the training split.

Decoding happens once per node: each split is decoded into one uint8 tensor
(N x C x H x W) saved under DATA_ROOT/decoded-v1/ (written atomically under a file
lock); every trial memory-maps that file (torch.load(mmap=True,
weights_only=True)), so trials running at once share one copy in the page
cache. Images of one common size no larger than the input size (CIFAR, STL-10,
Fashion-MNIST, CIFAR as JPEG files) are stored at their own size and resized
per batch; others are resized (shorter side) and centre-cropped to the input
size when decoded. A split that would take more than half of the node's memory
decoded is refused with a message.

Bad data in folders (and in torchvision's file-based sets):
- a file that cannot be decoded is skipped; the count and the first files are
  printed (at every load) and `skipped_images` is recorded with the trial;
- a class folder without images, or whose images are all unreadable: error;
- train/, val/ and test/ with different class folders: error naming them.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from study.core.config import StudyError
from study.core.files import atomic_write, data_lock

VAL_FRACTION = 0.2  # of the training split, when a dataset has no validation split
TEST_FRACTION = 0.2  # of all images, when a dataset has no split at all
FOLDER_PREFIX = "folder:"
BUILTIN = ("digits",)
CACHE_DIR = "decoded-v1"  # under the data root; bump the version when what a cache file holds changes
MEMORY_SHARE = 0.5  # of the node's memory that one decoded split may take
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DECODE_BATCH = 64
SHOWN_SKIPS = 3


@dataclass(frozen=True)
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
    "cifar10": TorchvisionSet("CIFAR10", TRAIN_TEST, "NHWC"),
    "cifar100": TorchvisionSet("CIFAR100", TRAIN_TEST, "NHWC", num_classes=100),
    "stl10": TorchvisionSet(
        "STL10", {"train": {"split": "train"}, "test": {"split": "test"}}, "NCHW", labels_attribute="labels"
    ),
    "fashion_mnist": TorchvisionSet("FashionMNIST", TRAIN_TEST, "NHW"),
    "flowers102": TorchvisionSet("Flowers102", {s: {"split": s} for s in ("train", "val", "test")}, num_classes=102),
    "oxford_pets": TorchvisionSet("OxfordIIITPet", PETS_SPLITS, num_classes=37),
    # Document 004's cats vs dogs: the Oxford-IIIT Pet images labelled cat or dog.
    "oxford_pets_binary": TorchvisionSet(
        "OxfordIIITPet",
        PETS_SPLITS,
        options={"target_types": "binary-category"},
        classes_attribute="bin_classes",
        num_classes=2,
    ),
}
DATA_NAMES = (*BUILTIN, *TORCHVISION_SETS)


@dataclass
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
        return ImageSet(self.store, self.labels[positions], self.rows[positions])

    def batch(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.store[self.rows[positions]], self.labels[positions]


@dataclass
class Splits:
    name: str
    classes: list[str]
    train: ImageSet
    val: ImageSet
    test: ImageSet
    description: str = ""  # how the splits were made, for the results
    skipped: int = 0  # unreadable files left out

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


# --- names and availability -------------------------------------------------------------


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
    name: str, split_seed: int, img_size: int, data_root: str | None = None, train_fraction: float = 1.0
) -> Splits:
    """The train/val/test splits of dataset `name`; `img_size` is the storage size of images that need resizing."""
    if name == "digits":
        parts, classes, skipped = {"all": load_digits_set()}, [str(c) for c in range(10)], 0
    elif name in TORCHVISION_SETS:
        parts, classes, skipped = load_torchvision(name, resolve_data_root(data_root), img_size)
    elif name.startswith(FOLDER_PREFIX):
        parts, classes, skipped = load_folder(folder_path(name), resolve_data_root(data_root), img_size)
    else:
        raise StudyError(f"unknown dataset '{name}': use one of {', '.join(DATA_NAMES)} or folder:PATH")
    return make_splits(name, classes, parts, split_seed, train_fraction, skipped)


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
    return ImageSet(images, torch.from_numpy(bunch.target.astype(np.int64)))


# --- splits -----------------------------------------------------------------------------


def make_splits(
    name: str, classes: list[str], parts: dict[str, ImageSet], seed: int, train_fraction: float, skipped: int
) -> Splits:
    """Train/val/test from the dataset's own splits (`all` when it has none), carving what is missing."""
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
    return Splits(name, classes, train, val, test, "; ".join(notes), skipped)


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


# --- torchvision datasets ---------------------------------------------------------------


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


def load_torchvision(name: str, root: Path, img_size: int) -> tuple[dict[str, ImageSet], list[str], int]:
    spec = TORCHVISION_SETS[name]
    keys = {split: f"{name}-{split}" if spec.layout else f"{name}-{split}-{img_size}px" for split in spec.splits}
    if not all((root / CACHE_DIR / f"{key}.pt").exists() for key in keys.values()):
        ensure_downloaded(name, root)
    parts, classes, skipped = {}, [], 0
    for split, key in keys.items():
        decoded = cached(root, key, functools.partial(decode_torchvision, name, split, root, img_size))
        parts[split], classes, count = from_cache(decoded, f"{name} {split}")
        skipped += count
    return parts, classes, skipped


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


# --- folders ----------------------------------------------------------------------------


def contained_files(class_dir: str, is_valid_file: Callable[[str], bool]) -> tuple[list[str], list[str]]:
    """(the image files of a class folder, the links skipped). Links are followed only within the class folder, and
    each directory and file once: a link out of it (e.g. `cat/loop -> ..`) would label other classes' images as this
    class, and a link back into it would count its images again."""
    base = os.path.realpath(class_dir)
    inside = lambda real: real == base or real.startswith(base + os.sep)
    files, skipped, seen_dirs, seen_files = [], [], {base}, set()
    for directory, dirnames, filenames in os.walk(class_dir, followlinks=True):
        for name in list(dirnames):
            real = os.path.realpath(os.path.join(directory, name))
            if not inside(real) or real in seen_dirs:
                dirnames.remove(name)
                skipped.append(os.path.join(directory, name))
            seen_dirs.add(real)
        for name in sorted(filenames):
            path = os.path.join(directory, name)
            if not is_valid_file(path):
                continue
            real = os.path.realpath(path)
            if not inside(real) or real in seen_files:
                skipped.append(path)
                continue
            seen_files.add(real)
            files.append(path)
    return files, skipped


def image_folder(path: Path):
    """torchvision's ImageFolder of `path`, its files found by contained_files; `skipped_links` lists the rest."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    class ContainedImageFolder(ImageFolder):
        def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
            valid = is_valid_file or (lambda name: has_file_allowed_extension(name, extensions or IMG_EXTENSIONS))
            self.skipped_links, samples = [], []
            root = os.path.realpath(directory)
            for target in sorted(class_to_idx):
                class_dir = os.path.join(directory, target)
                if root.startswith(os.path.realpath(class_dir) + os.sep) or os.path.realpath(class_dir) == root:
                    self.skipped_links.append(class_dir)  # a class folder that is a link to the root or above it
                    continue
                files, skipped = contained_files(class_dir, valid)
                samples += [(file, class_to_idx[target]) for file in files]
                self.skipped_links += skipped
            return samples

    return ContainedImageFolder(str(path), allow_empty=True)


def scan_folder(root: Path) -> dict:
    """The ImageFolders of `root` by split (`all` for a single folder of classes); layout errors are StudyErrors."""
    if not root.is_dir():
        raise StudyError(
            f"data folder {root} does not exist: give folder:PATH with train/ and val/ class subfolders, or class "
            "subfolders"
        )
    splits = (
        {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
        if (root / "train").is_dir()
        else {"all": root}
    )
    folders = {}
    for split, path in splits.items():
        try:
            folder = image_folder(path)
        except FileNotFoundError:
            raise StudyError(
                f"{path} has no class folders: put each class's images in a subfolder named after the class"
            ) from None
        if folder.skipped_links:
            print(
                f"note: {path}: skipped {len(folder.skipped_links)} link(s) that lead out of their class folder or "
                f"back into it (e.g. {folder.skipped_links[0]}): images are read from inside their class folder "
                "only, each once",
                flush=True,
            )
        counts = np.bincount(folder.targets, minlength=len(folder.classes))
        empty = [c for c, n in zip(folder.classes, counts) if n == 0]
        if empty:
            raise StudyError(
                f"{path}: class folder(s) {', '.join(empty)} hold no image files: add images or remove the folder(s)"
            )
        folders[split] = folder
    reference = next(iter(folders))
    for split, folder in folders.items():
        if folder.classes != folders[reference].classes:
            have, want = set(folder.classes), set(folders[reference].classes)
            differences = [
                f"{label} {sorted(names)}" for label, names in (("lacks", want - have), ("adds", have - want)) if names
            ]
            raise StudyError(
                f"{splits[split]} has other class folders than {splits[reference]} ({split}/ "
                f"{'; '.join(differences)}): "
                f"use the same class folders in every split"
            )
    return folders


def load_folder(root: Path, data_root: Path, img_size: int) -> tuple[dict[str, ImageSet], list[str], int]:
    parts, skipped = {}, 0
    folders = scan_folder(root)
    for split, folder in folders.items():
        key = f"folder-{re.sub(r'[^A-Za-z0-9_.-]', '_', root.name)}-{folder_fingerprint(folder)}-{split}-{img_size}px"
        where = str(root if split == "all" else root / split)
        decoded = cached(
            data_root,
            key,
            functools.partial(
                decode_files, folder, folder.classes, img_size, where, lambda index, s=folder.samples: s[index][0]
            ),
        )
        parts[split], _, count = from_cache(decoded, where)
        skipped += count
    return parts, next(iter(folders.values())).classes, skipped


def folder_fingerprint(folder) -> str:
    """Changes when any file is added, removed, renamed, or rewritten: a stale cache is never used."""
    digest = hashlib.sha1(f"{folder.root}|{folder.classes}".encode())
    for path, label in folder.samples:
        stat = os.stat(path)
        digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


# --- decoding ---------------------------------------------------------------------------


class _Decoding(Dataset):
    """Item i of `dataset` through its own loader, as uint8 C x H x W no larger than needed; failures are reported, not
    raised."""

    def __init__(self, dataset, img_size: int, describe: Callable[[int], str]):
        self.dataset, self.img_size, self.describe = dataset, img_size, describe

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            image, label = self.dataset[index]
        except (
            Exception
        ) as error:  # image decoders raise many kinds (OSError, SyntaxError, ValueError, DecompressionBombError)
            return None, None, f"{self.describe(index)} ({type(error).__name__}: {str(error)[:120]})"
        image = F.pil_to_tensor(image) if isinstance(image, Image.Image) else image
        if min(image.shape[-2:]) > self.img_size:  # shrink now: a big image never sits in memory whole
            image = fit(image, self.img_size)
        # As an array it travels from a worker by value; a tensor would hold a file descriptor per image.
        return image.numpy(), label, None


def fit(image: torch.Tensor, img_size: int) -> torch.Tensor:
    """Shorter side to img_size, centre crop: the same geometry as the batch preprocessing."""
    return F.center_crop(F.resize(image, img_size, antialias=True), img_size)


def too_large(where: str, count: int, img_size: int) -> StudyError:
    return StudyError(
        f"{where}: {count} images at {img_size} px do not fit in half of this node's memory once decoded: lower "
        "img_size (or use a smaller dataset)"
    )


def decode_files(dataset, classes: list[str], img_size: int, where: str, describe: Callable[[int], str]) -> dict:
    """Every image of a file-based dataset decoded into one tensor (in parallel with the trial's CPU share)."""
    threads = torch.get_num_threads()
    loader = DataLoader(
        _Decoding(dataset, img_size, describe),
        batch_size=DECODE_BATCH,
        num_workers=threads if threads > 1 else 0,
        collate_fn=list,
    )
    budget = MEMORY_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    images, labels, skipped, stored = [], [], [], 0
    for batch in loader:
        for image, label, problem in batch:
            if problem:
                skipped.append(problem)
                continue
            images.append(torch.from_numpy(image))
            labels.append(label)
            stored += image.size
        if stored > budget:
            raise too_large(where, len(dataset), img_size)
    readable = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    unreadable = [c for c, n in zip(classes, readable) if n == 0]
    if unreadable:
        raise StudyError(
            f"{where}: class(es) {', '.join(unreadable)} have no readable image (e.g. {skipped[0]}): replace the "
            "broken files"
        )
    if len({image.shape for image in images}) > 1:  # else: one common size, no larger than needed, kept as it is
        # mixed sizes: every image becomes img_size x img_size, the small ones larger than they were decoded
        if sum(image.shape[0] for image in images) * img_size**2 > budget:
            raise too_large(where, len(dataset), img_size)
        images = [fit(image, img_size) for image in images]
    return {
        "images": torch.stack(images),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "classes": classes,
        "skipped": skipped,
    }


# --- the node's cache -------------------------------------------------------------------


def cached(root: Path, key: str, build: Callable[[], dict]) -> dict:
    """The decoded split `key` from the node's cache, built once (by whichever process takes the lock first)."""
    path = root / CACHE_DIR / f"{key}.pt"
    decoded = _load(path)
    if decoded is None:
        with data_lock(path.parent, key):
            decoded = _load(path)
            if decoded is None:
                print(f"decoding {key} into {path} (once for this node)", flush=True)
                decoded = build()
                atomic_write(path, lambda temporary: torch.save(decoded, temporary))
                decoded = _load(path)
    return decoded


def _load(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return torch.load(path, mmap=True, weights_only=True)
    except Exception as error:  # a damaged file: torch raises RuntimeError, pickle and zip errors
        print(f"decoded cache {path} is unreadable ({type(error).__name__}): decoding again", flush=True)
        return None


def from_cache(decoded: dict, where: str) -> tuple[ImageSet, list[str], int]:
    skipped = decoded["skipped"]
    if skipped:
        print(
            f"{where}: skipped {len(skipped)} unreadable image file(s): {'; '.join(skipped[:SHOWN_SKIPS])}", flush=True
        )
    return ImageSet(decoded["images"], decoded["labels"]), decoded["classes"], len(skipped)


# --- batches ----------------------------------------------------------------------------


class _TrainImages(Dataset):
    """Batched access (DataLoader's __getitems__): one gather from the store, then `per_sample` on each image."""

    def __init__(self, data: ImageSet, per_sample: v2.Transform | None):
        self.data, self.per_sample = data, per_sample

    def __len__(self) -> int:
        return len(self.data)

    def __getitems__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.data.batch(torch.as_tensor(positions))
        if self.per_sample is not None:
            # One thread: on a single small image, intra-op threads only add synchronisation (up to
            # 40x slower on a busy machine). DataLoader workers run with one thread anyway.
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                images = torch.stack(
                    [self.per_sample(image) for image in images]
                )  # each image draws its own parameters
            finally:
                torch.set_num_threads(threads)
        return images, labels


def _batch_as_is(batch):
    return batch


def drops_last_batch(count: int, batch_size: int) -> bool:
    """Whether an epoch of `count` training images drops its last batch: when it would hold one image. BatchNorm in
    training mode cannot normalise a batch of one (PyTorch raises "Expected more than 1 value per channel"); the
    image left out is another one each epoch (the batches are shuffled), so every image still trains."""
    return count > 1 and count % batch_size == 1


def train_loader(
    data: ImageSet,
    batch_size: int,
    per_sample: v2.Transform | None,
    generator: torch.Generator,
    workers: int,
    pin_memory: bool,
) -> DataLoader:
    """Shuffled uint8 training batches (seeded by `generator`, workers included), per-sample augmentation applied."""
    return DataLoader(
        _TrainImages(data, per_sample),
        batch_size=batch_size,
        shuffle=True,
        drop_last=drops_last_batch(len(data), batch_size),
        generator=generator,
        num_workers=workers,
        collate_fn=_batch_as_is,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
    )


def batches(data: ImageSet, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 batches in order, never augmented: evaluation."""
    for start in range(0, len(data), batch_size):
        yield data.batch(torch.arange(start, min(start + batch_size, len(data))))


# --- command line -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m study.data",
        description="Fetch a dataset into the data root, for machines without internet access.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    download = commands.add_parser("download", help="download (or copy Debian's files of) a torchvision dataset")
    download.add_argument("name", choices=sorted(TORCHVISION_SETS))
    download.add_argument("--data-root", type=Path, default=None, help=f"default: {default_data_root()}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = resolve_data_root(str(args.data_root) if args.data_root else None)
    try:
        ensure_downloaded(args.name, root)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.name} is in {root}")
    return 0
