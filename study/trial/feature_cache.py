"""The frozen-prefix feature cache: compute the frozen start of a network once, train only the rest on it.

Most transfer-learning trials freeze most of the network. Where the frozen start of a
trial's network (its *prefix*) always sees the same input and never changes, its output
for each image is fixed: it is computed once, kept in the node's cache, and every epoch
trains only the *suffix* on it; evaluation reads it too. Results are those of the
uncached trial up to float rounding (same batches, same head, same steps).

When. The prefix must be deterministic while training: no random augmentation in front
of it (`augment: none`), and nothing in it trains or updates BatchNorm statistics
(`FreezePlan.fixed`: `frozen_bn: train` and `train_bn_affine: true` shrink it to what
comes before the first BatchNorm, usually nothing). `feature_cache: false` turns it off.
A trial that runs uncached says why in `cache_note`.

Where to cut is study/trial/cut.py's: the last point before the first node that trains
or updates statistics where one tensor carries all the state. No cache, with the
reason recorded, when it finds none (`CutSearch.reason`) or when the features of the
trial's splits exceed the store's size bound (`FeatureStore.budget`). Where the store
cannot be written (a full or unwritable data root), the features a trial computes stay
in its memory for that trial and `cache_note` says why: the cache is an optimisation,
never a reason for a trial to fail.

Shared per node. Features are files under DATA_ROOT/features-v1/, one per (backbone,
weights (with random weights, the seed that initialised them), head, input size and
preprocessing, device type and precision, library versions, cut point, split content):
trials of any study on the node with the same backbone, weights, data (split and
train_fraction: the images' bytes are hashed) and cut reuse them. Written atomically
under a file lock (parallel trials wait for the one building them, then read), memory-
mapped when read (trials share one copy in the page cache), on CUDA moved to the GPU
where they fit. A split whose features at an earlier cut point of the same network are
cached is computed from those instead of from the images (a grid over depths that runs
deepest first computes each stretch of the network once). The directory is bounded
(MEMORY_SHARE of the node's memory): the least recently used files go first.

Honest time. Building the training split's features is training time: it is part of the
first epoch of the trial that builds them and also recorded alone (`cache_build_s`). A
trial that reuses them spends no time on them: its `study_train_time_s` is what it spent,
so the study's total is the sum over its trials. Its `train_time_s`, the time every front
and rung uses, adds the cost of the features it reused (their `cost_s`, building from
images included): what the same configuration takes alone on a fresh node, whatever an
earlier trial or study left in the cache. Validation and test features are built during
evaluation and count as evaluation time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import timm
import torch
import torch.fx
from torch.utils.data import DataLoader, Dataset

from study.trial.batching import batches, drops_last_batch
from study.trial.cut import Cut
from study.trial.data import resolve_data_root
from study.trial.decode import build_lock, save_cache
from study.trial.splits import ImageSet, Splits

__all__ = [
    "CACHE_DIR",
    "CachedSplit",
    "FeatureBatch",
    "FeatureCache",
    "FeatureStore",
    "content_digest",
    "family_key",
    "node_memory",
    "off_report",
    "rows_loader",
]

CACHE_DIR = "features-v1"  # under the data root; bump the version when what a cache file holds changes
MEMORY_SHARE = 0.25  # of the node's memory that the cached features may take together
GPU_SHARE = 0.25  # of the GPU's free memory that one split's features may take to be kept on the GPU
HASH_CHUNK = 1024  # images hashed at a time


def node_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class FeatureStore:
    """Feature files in DATA_ROOT/features-v1/, at most `budget` bytes together; least recently used out."""

    def __init__(self, data_root: str | None, budget: int | None = None):
        self.directory = resolve_data_root(data_root) / CACHE_DIR
        self.budget = budget if budget is not None else int(MEMORY_SHARE * node_memory())

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    def load(self, key: str) -> dict | None:
        """The record `key`, memory-mapped; None when absent (never built, evicted, or unreadable)."""
        path = self.path(key)
        try:
            record = torch.load(path, mmap=True, weights_only=True)
        except (FileNotFoundError, NotADirectoryError):  # never built, evicted, or no store directory
            return None
        except Exception as error:  # a damaged file: torch raises RuntimeError, pickle and zip errors
            print(f"feature cache {path} is unreadable ({type(error).__name__}): computing it again", flush=True)
            return None
        with contextlib.suppress(OSError):  # a read-only data root still serves its features
            os.utime(path)  # recently used: evicted last
        return record

    def lock(self, key: str) -> AbstractContextManager[str]:
        """The node's lock on building `key`; yields why it cannot be taken ('' when held)."""
        return build_lock(self.directory, key)

    def save(self, key: str, record: dict) -> str:
        """Write atomically, first evicting least recently used files until the new one fits the budget: '' when
        written, else why not (a full or unwritable disk)."""
        return save_cache(
            self.path(key), record, before_publish=lambda temporary: self.evict(keep=os.path.getsize(temporary))
        )

    def evict(self, keep: int) -> list[Path]:
        """Remove least recently used files until `keep` more bytes fit. A trial reading a removed file keeps its
        memory map (POSIX): eviction never breaks a running trial, a later one computes the features again."""
        files = []
        for path in self.directory.glob("*.pt"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        used, removed = sum(size for _, size, _ in files), []
        for _, size, path in sorted(files):
            if used + keep <= self.budget:
                break
            path.unlink(missing_ok=True)
            used -= size
            removed.append(path)
        return removed


# --- one trial's cached features --------------------------------------------------------------


class FeatureBatch(NamedTuple):
    """Rows of a cached split on the trial's device: what the suffix takes, and their labels."""

    features: torch.Tensor
    labels: torch.Tensor


@dataclass(kw_only=True)
class CachedSplit:
    features: torch.Tensor  # N x feature shape, on the trial's device where it fits, else in (mapped) host memory
    labels: torch.Tensor  # on the trial's device
    status: str  # "built" by this trial, or "reused"
    build_s: float  # seconds this trial spent computing them
    cost_s: float  # seconds they took from the images, earlier cut points' features included
    origin: str  # what they were computed from
    unkept: str  # why features this trial built are in its memory only, not in the store ('' when stored)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, positions: torch.Tensor, device: torch.device) -> FeatureBatch:
        """These rows on `device` (positions pinned on CUDA: no copy waits for the GPU)."""
        on_device = positions.to(device, non_blocking=True)
        if self.features.device.type == device.type:
            return FeatureBatch(features=self.features[on_device], labels=self.labels[on_device])
        rows = self.features[positions]
        rows = (rows.pin_memory() if device.type == "cuda" else rows).to(device, non_blocking=True)
        return FeatureBatch(features=rows, labels=self.labels[on_device])


class _Rows(Dataset):
    """Batches of row positions (DataLoader's __getitems__), drawn by the same sampler as the image batches."""

    def __init__(self, count: int):
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitems__(self, positions: list[int]) -> torch.Tensor:
        return torch.as_tensor(positions)


def _as_is(batch):
    return batch


def rows_loader(count: int, batch_size: int, generator: torch.Generator, pin_memory: bool) -> DataLoader:
    """Shuffled batches of positions in the same order as data.train_loader's image batches with an equally
    seeded generator (the same sampler draws them), so cached and uncached trials see the same batches."""
    return DataLoader(
        _Rows(count),
        batch_size=batch_size,
        shuffle=True,
        drop_last=drops_last_batch(count, batch_size),  # as data.train_loader: no training batch of one
        generator=generator,
        collate_fn=_as_is,
        pin_memory=pin_memory,
    )


def content_digest(images: ImageSet) -> str:
    """A digest of the split's images, in order: equal splits share features, a changed image never does."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(str((tuple(images.store.shape[1:]), len(images))).encode())
    for start in range(0, len(images), HASH_CHUNK):
        digest.update(images.batch(torch.arange(start, min(start + HASH_CHUNK, len(images))))[0].numpy().tobytes())
    return digest.hexdigest()


@dataclass(kw_only=True)
class FeatureCache:
    """The features of one trial's splits at its cut: computed or read on first use, then kept."""

    cut: Cut
    store: FeatureStore
    family: str  # everything the prefix depends on but the cut point and the images
    data: Splits
    prepare: Callable[[torch.Tensor], torch.Tensor]  # uint8 batch -> the model's input on the device
    memory_format: Callable[[torch.Tensor], torch.Tensor]  # the model's memory format for a batch on the device
    device: torch.device
    autocast: Callable[[], AbstractContextManager]
    batch_size: int  # of the forward passes that compute features (evaluation's: the same batches, the same numbers)
    splits: dict[str, CachedSplit] = field(default_factory=dict)

    @property
    def suffix(self) -> torch.fx.GraphModule:
        return self.cut.suffix

    def split(self, name: str) -> CachedSplit:
        if name not in self.splits:
            self.splits[name] = self._obtain(name)
        return self.splits[name]

    def key(self, node: torch.fx.Node, digest: str) -> str:
        return f"{self.family}-{node.name}-{digest}"

    def _obtain(self, name: str) -> CachedSplit:
        images: ImageSet = getattr(self.data, name)
        digest = content_digest(images)
        key = self.key(self.cut.node, digest)
        record, status, unkept = self.store.load(key), "reused", ""
        if record is None:
            with self.store.lock(key) as unlocked:
                record = None if unlocked else self.store.load(key)
                if record is None:
                    record, status = self._build(images, digest), "built"
                    unkept = unlocked or self.store.save(key, record)
                    if unkept:  # the cache is an optimisation: the trial goes on with the features it computed
                        print(
                            f"note: the {name} features are kept in this trial's memory, not in "
                            f"{self.store.path(key)}: {unkept}",
                            flush=True,
                        )
                    else:
                        record = self.store.load(key) or record  # read back mapped: one copy in the page cache
        features = self._placed(record["features"])
        build_s = record["build_s"] if status == "built" else 0.0
        return CachedSplit(
            features=features,
            labels=images.labels.to(self.device),
            status=status,
            build_s=build_s,
            cost_s=record["cost_s"],
            origin=record["origin"],
            unkept=unkept,
        )

    def _build(self, images: ImageSet, digest: str) -> dict:
        """Compute the features, from an earlier cut point's cached features where there are some."""
        start = _clock(self.device)
        source, source_record = None, None
        for node in self.cut.earlier:
            source_record = self.store.load(self.key(node, digest))
            if source_record is not None:
                source = node
                break
        segment_module = self.cut.prefix_from(source)
        if source is None:
            inputs = (self.prepare(batch) for batch, _ in batches(images, self.batch_size))
        else:
            stored = source_record["features"]
            step = self.batch_size
            inputs = (self.memory_format(stored[i : i + step].to(self.device)) for i in range(0, len(stored), step))
        features = torch.empty((len(images), *self.cut.feature_shape), dtype=self.cut.dtype)
        position = 0
        with torch.inference_mode(), self.autocast():
            for batch in inputs:
                output = segment_module(batch)
                features[position : position + len(output)] = output.to("cpu")
                position += len(output)
        build_s = _clock(self.device) - start
        earlier_cost = source_record["cost_s"] if source_record is not None else 0.0
        origin = (
            f"images through {self.cut.name}" if source is None else f"{source.name} features through {self.cut.name}"
        )
        return {"features": features, "build_s": build_s, "cost_s": build_s + earlier_cost, "origin": origin}

    def _placed(self, features: torch.Tensor) -> torch.Tensor:
        if (
            self.device.type == "cuda"
            and features.numel() * features.element_size() <= GPU_SHARE * torch.cuda.mem_get_info(self.device)[0]
        ):
            return features.to(self.device)
        return features

    def batches(self, name: str, batch_size: int) -> Iterator[FeatureBatch]:
        """Split `name` in order, on the device: evaluation."""
        cached = self.split(name)
        for start in range(0, len(cached), batch_size):
            end = min(start + batch_size, len(cached))
            yield FeatureBatch(
                features=cached.features[start:end].to(self.device, non_blocking=True), labels=cached.labels[start:end]
            )

    def report(self) -> dict:
        """What the cache did for this trial so far: the training split's status, and every split's origin."""
        train = self.splits.get("train")
        origins = "; ".join(
            f"{name}: {'built' if s.status == 'built' else 'reused'} from {s.origin}"
            + (f", kept in this trial's memory only: {s.unkept}" if s.unkept else "")
            for name, s in self.splits.items()
        )
        return {
            "cache": train.status if train else "pending",
            "cache_cut": self.cut.name,
            "cache_note": f"{self.cut.describe()}; {origins}" if origins else self.cut.describe(),
            "cache_build_s": train.build_s if train else 0.0,
            "cache_cost_s": train.cost_s if train else 0.0,
            "cache_device": train.features.device.type if train else "",  # where the training features are kept
        }


def family_key(**identity) -> str:
    """A short digest of everything the prefix's output depends on besides the cut and the images."""
    identity.update(torch=torch.__version__, timm=timm.__version__)
    return hashlib.blake2b(json.dumps(identity, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def off_report(reason: str) -> dict:
    return {
        "cache": "off",
        "cache_cut": "",
        "cache_note": reason,
        "cache_build_s": 0.0,
        "cache_cost_s": 0.0,
        "cache_device": "",
    }


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
