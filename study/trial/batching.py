"""Batches of a decoded split: shuffled and augmented per sample for training, in order for evaluation.

Batches leave the store as uint8; preprocessing (resize, normalise) runs later on the trial's device
(study/trial/augment.py `preprocessor`). A training batch is one gather from the store followed by the per-sample
augmentation, in DataLoader workers when the trial has them. An epoch never ends on a batch of one image
(`drops_last_batch`): BatchNorm cannot train on it, and the cached-feature path (study/trial/feature_cache.py) drops
the same batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from study.trial.splits import ImageSet


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
