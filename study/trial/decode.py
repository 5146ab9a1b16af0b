"""Decoding images once per node: a whole split into one uint8 tensor, kept in the node's cache.

Each split is decoded into one uint8 tensor (N x C x H x W) saved under DATA_ROOT/decoded-v1/ (written atomically
under a file lock); every trial memory-maps that file (torch.load(mmap=True, weights_only=True)), so trials running
at once share one copy in the page cache. Images of one common size no larger than the input size (CIFAR, STL-10,
Fashion-MNIST, CIFAR as JPEG files) are stored at their own size and resized per batch; others are resized (shorter
side) and centre-cropped to the input size when decoded. A split that would take more than half of the node's
memory decoded is refused with a message. The cache is an optimisation: where it cannot be written (a full disk, a
directory that cannot be made), the split stays in the decoding process's memory and a note says why.

A file that cannot be decoded is skipped; the count and the first files are printed (at every load, from the
cache too) and become `skipped_images` in the trial's results. A class whose images are all unreadable is an error.

The sources (study/trial/torchvision_sets.py, study/trial/folders.py) say what to decode; this module decodes and
caches it, the same way for both.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as F

from study.core.config import StudyError
from study.core.files import atomic_write
from study.trial.splits import ImageSet

CACHE_DIR = "decoded-v1"  # under the data root; bump the version when what a cache file holds changes
MEMORY_SHARE = 0.5  # of the node's memory that one decoded split may take
DECODE_BATCH = 64
SHOWN_SKIPS = 3


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
    """The decoded split `key` from the node's cache, built once (by whichever process takes the lock first). Where
    the cache cannot be written (a full or unwritable disk), the split is decoded into this process's memory and a
    note says why: the cache is an optimisation, and the study goes on."""
    path = root / CACHE_DIR / f"{key}.pt"
    decoded = _load(path)
    if decoded is None:
        with build_lock(path.parent, key) as unlocked:
            decoded = None if unlocked else _load(path)
            if decoded is None:
                print(
                    f"decoding {key} into {path} (once for this node)" if not unlocked else f"decoding {key}",
                    flush=True,
                )
                decoded = build()
                problem = unlocked or save_cache(path, decoded)
                if problem:
                    print(
                        f"note: the decoded images are kept in this process's memory, not in {path}: {problem}; "
                        f"every trial decodes them again until {root} can be written and has room",
                        flush=True,
                    )
                    return decoded
                decoded = _load(path)
    return decoded


@contextmanager
def build_lock(directory: Path, key: str) -> Iterator[str]:
    """Held while cache file `key` is built, so that one process builds it and the others wait and reuse it
    (study.core.files.data_lock's lock file). Where the directory cannot be made or locked (a full or read-only
    disk), nothing is held and the caller keeps what it builds in memory: yields why ('' when locked)."""
    from filelock import FileLock

    with ExitStack() as held:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            held.enter_context(FileLock(str(directory / f".{key}.lock")))
            unlocked = ""
        except OSError as error:
            unlocked = f"{directory} cannot be written ({error.strerror or type(error).__name__})"
        yield unlocked


def save_cache(path: Path, record: dict, before_publish: Callable[[str], None] | None = None) -> str:
    """Write a cache file (a dict of tensors and numbers) atomically: '' when written, else why not. A full disk
    makes torch.save raise RuntimeError (`[enforce fail at inline_container.cc:672] unexpected pos`), not OSError:
    the reason then compares the record's size with the space left."""
    try:
        atomic_write(path, lambda temporary: torch.save(record, temporary), before_publish)
        return ""
    except StudyError:  # atomic_write's answer to ENOSPC and EDQUOT
        return f"out of disk space in {path.parent}"
    except OSError as error:
        return f"{path.parent} cannot be written ({error.strerror or type(error).__name__})"
    except RuntimeError as error:
        failure = (str(error).strip().splitlines() or [""])[0]
    # measured only now: until the traceback is gone, its frames keep torch's (deleted) file open and its blocks used
    needed = sum(value.nbytes for value in record.values() if isinstance(value, torch.Tensor))
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        return f"out of disk space in {path.parent}: {needed / 2**20:,.1f} MiB needed, {free / 2**20:,.1f} MiB free"
    return f"torch.save failed in {path.parent}: {failure}"


def _load(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return torch.load(path, mmap=True, weights_only=True)
    except Exception as error:  # a damaged file: torch raises RuntimeError, pickle and zip errors
        print(f"decoded cache {path} is unreadable ({type(error).__name__}): decoding again", flush=True)
        return None


class DecodedSplit(NamedTuple):
    images: ImageSet
    classes: list[str]
    skipped: int  # unreadable files left out when it was decoded


def from_cache(decoded: dict, where: str) -> DecodedSplit:
    """A cached split as an ImageSet; its unreadable files are printed again (each load says what it lacks)."""
    skipped = decoded["skipped"]
    if skipped:
        print(
            f"{where}: skipped {len(skipped)} unreadable image file(s): {'; '.join(skipped[:SHOWN_SKIPS])}", flush=True
        )
    return DecodedSplit(
        images=ImageSet(store=decoded["images"], labels=decoded["labels"]),
        classes=decoded["classes"],
        skipped=len(skipped),
    )
