"""Augmentation policies (the `augment` setting) and the batch preprocessing, all torchvision.transforms.v2.

Training batches go through two stages:

1. per sample, on the stored uint8 image (in DataLoader workers when the trial has
   them), the policy's random transforms, each image drawing its own parameters
   (v2 transforms applied to a batch tensor draw one set for the whole batch);
2. per batch, on the trial's device, `preprocessor`: resize (shorter side) and
   centre-crop to the input size, grayscale to RGB, float, the backbone's
   normalisation; then, for `cutmix_mixup` only, CutMix or MixUp on the batch.

Evaluation batches get stage 2's preprocessing only: they are never augmented.

Policies (registered in study/core/registry.py, built here):
- none: no augmentation.
- basic: random resized crop (scale 0.08-1, torchvision's defaults) to the input
  size and a horizontal flip.
- pspnet: as in the PSPNet paper (Zhao et al. 2017): random scale 0.5-2.0,
  random rotation within +-10 degrees, random crop back to the input size (zero
  padding where the scaled image is smaller), Gaussian blur (kernel 5, half the
  images), horizontal mirror.
- augmix: v2.AugMix with its defaults (severity 3, width 3).
- trivialaugment: v2.TrivialAugmentWide.
- cutmix_mixup: per batch, CutMix or MixUp (alpha 1) chosen at random, as in
  document 001; the targets become class probabilities and the loss is the
  cross-entropy against them. A mixed image has no single correct class, so
  train accuracy is not measured (reported as NaN) under this policy.

Policies other than basic run after the image is brought to the input size, so
their pixel sizes (blur kernel, crops) mean the same for every dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from study.core.registry import AUGMENTATIONS

PSPNET_SCALE = (0.5, 2.0)
PSPNET_DEGREES = 10
PSPNET_BLUR_KERNEL = 5
PSPNET_BLUR_PROBABILITY = 0.5


def preprocessor(img_size: int, mean, std, interpolation: str) -> v2.Transform:
    """uint8 batch (any size, 1 or 3 channels) -> normalised float RGB batch of img_size x img_size.

    Resizing runs on uint8 (torchvision's fast path on CPU) and is a no-op for
    batches already at the input size.
    """
    return v2.Compose(
        [
            v2.Resize(img_size, v2.InterpolationMode(interpolation), antialias=True),
            v2.CenterCrop(img_size),
            v2.RGB(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


@dataclass(frozen=True, kw_only=True)
class Policy:
    """An augmentation policy (study/core/registry.py AUGMENTATIONS): its per-sample part, (img_size, interpolation) ->
    transform of one uint8 image, and its per-batch part, num_classes -> transform of (images, labels); either may
    be None."""

    sample: Callable[[int, v2.InterpolationMode], v2.Transform] | None = None
    batch: Callable[[int], v2.Transform] | None = None


def _to_input_size(img_size: int, mode: v2.InterpolationMode) -> list[v2.Transform]:
    return [v2.Resize(img_size, mode, antialias=True), v2.CenterCrop(img_size)]


def _basic(img_size: int, mode: v2.InterpolationMode) -> v2.Transform:
    return v2.Compose([v2.RandomResizedCrop(img_size, interpolation=mode, antialias=True), v2.RandomHorizontalFlip()])


def _pspnet(img_size: int, mode: v2.InterpolationMode) -> v2.Transform:
    low, high = (round(img_size * scale) for scale in PSPNET_SCALE)
    return v2.Compose(
        [
            *_to_input_size(img_size, mode),
            v2.RandomResize(low, high + 1, interpolation=mode, antialias=True),
            v2.RandomRotation(PSPNET_DEGREES, interpolation=v2.InterpolationMode.BILINEAR),
            v2.RandomCrop(img_size, pad_if_needed=True),
            v2.RandomApply([v2.GaussianBlur(PSPNET_BLUR_KERNEL)], p=PSPNET_BLUR_PROBABILITY),
            v2.RandomHorizontalFlip(),
        ]
    )


def _cutmix_or_mixup(num_classes: int) -> v2.Transform:
    return v2.RandomChoice([v2.CutMix(num_classes=num_classes), v2.MixUp(num_classes=num_classes)])


NONE = Policy()
BASIC = Policy(sample=_basic)
PSPNET = Policy(sample=_pspnet)
AUGMIX = Policy(sample=lambda size, mode: v2.Compose([*_to_input_size(size, mode), v2.AugMix()]))
TRIVIAL_AUGMENT = Policy(sample=lambda size, mode: v2.Compose([*_to_input_size(size, mode), v2.TrivialAugmentWide()]))
CUTMIX_MIXUP = Policy(batch=_cutmix_or_mixup)


def sample_transform(policy: str, img_size: int, interpolation: str) -> v2.Transform | None:
    """The per-sample random transforms of `policy` (uint8 C x H x W -> uint8 C x img_size x img_size), or None."""
    sample = AUGMENTATIONS.get(policy).sample
    return sample(img_size, v2.InterpolationMode(interpolation)) if sample is not None else None


def batch_mix(policy: str, num_classes: int) -> v2.Transform | None:
    """The per-batch transform of `policy`: (images, int labels) -> (mixed images, class probabilities), or None."""
    batch = AUGMENTATIONS.get(policy).batch
    return batch(num_classes) if batch is not None else None
