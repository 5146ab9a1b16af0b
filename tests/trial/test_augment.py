"""Augmentation policies: shapes, value ranges, label formats, per-sample randomness, and training through them."""

import math

import pytest
import timm.data
import torch

from study.core.config import TrialConfig
from study.core.registry import AUGMENTATIONS
from study.trial.augment import batch_mix, preprocessor, sample_transform
from study.trial.batching import batches, train_loader
from study.trial.splits import ImageSet, Splits
from study.trial.train import build_trial, evaluate, run_trial, train_epoch

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PER_SAMPLE = [p for p in AUGMENTATIONS.names() if sample_transform(p, 32, "bicubic") is not None]


def photos(count: int = 48, size: int = 40) -> ImageSet:
    """RGB images with structure (smooth gradients plus noise), 10 classes."""
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, size)
    base = torch.stack(
        [ramp[None, :].expand(size, size), ramp[:, None].expand(size, size), ramp.flip(0)[None, :].expand(size, size)]
    )
    images = (base * 200 + torch.rand(count, 3, size, size, generator=generator) * 55).to(torch.uint8)
    return ImageSet(store=images, labels=torch.arange(count) % 10)


@pytest.fixture(params=["digits", "photos"])
def images(request, small_digits) -> ImageSet:
    return small_digits.train if request.param == "digits" else photos()


@pytest.mark.parametrize("policy", AUGMENTATIONS.names())
def test_every_policy_gives_normalised_rgb_batches_at_the_input_size_with_the_right_labels(policy, images):
    per_sample = sample_transform(policy, 32, "bicubic")
    loader = train_loader(images, 16, per_sample, torch.Generator().manual_seed(0), workers=0, pin_memory=False)
    raw, labels = next(iter(loader))
    assert raw.dtype == torch.uint8 and len(raw) == 16
    channels = images.store.shape[1]
    assert raw.shape[1:] == ((channels, 32, 32) if per_sample else images.store.shape[1:])

    batch = preprocessor(32, MEAN, STD, "bicubic")(raw)
    low, high = ((0 - torch.tensor(MEAN)) / torch.tensor(STD)), ((1 - torch.tensor(MEAN)) / torch.tensor(STD))
    assert batch.shape == (16, 3, 32, 32) and batch.dtype == torch.float32  # grayscale became RGB
    assert (batch >= low[:, None, None] - 1e-5).all() and (batch <= high[:, None, None] + 1e-5).all()

    mix = batch_mix(policy, num_classes=10)
    if mix is None:
        assert labels.dtype == torch.int64 and labels.shape == (16,) and labels.min() >= 0 and labels.max() < 10
        return
    mixed, targets = mix(batch, labels)
    assert (
        mixed.shape == batch.shape
        and (mixed >= low[:, None, None] - 1e-5).all()
        and (mixed <= high[:, None, None] + 1e-5).all()
    )
    assert targets.shape == (16, 10) and targets.dtype == torch.float32 and (targets >= 0).all()
    assert torch.allclose(targets.sum(1), torch.ones(16))
    assert (targets.max(1).values < 1).any() and not torch.equal(mixed, batch)  # really mixed


@pytest.mark.parametrize("policy", PER_SAMPLE)
def test_per_sample_policies_draw_their_parameters_for_each_image(policy):
    same = ImageSet(store=photos(1).store.expand(16, -1, -1, -1), labels=torch.zeros(16, dtype=torch.int64))
    raw, _ = next(
        iter(
            train_loader(same, 16, sample_transform(policy, 32, "bicubic"), torch.Generator().manual_seed(0), 0, False)
        )
    )
    distinct = {image.numpy().tobytes() for image in raw}
    assert len(distinct) >= 8  # one image, sixteen different augmentations


def test_evaluation_is_never_augmented(small_digits):
    plain = build_trial(TrialConfig(img_size=32, seed=3), small_digits)
    augmented = build_trial(TrialConfig(img_size=32, seed=3, augment="pspnet"), small_digits)
    for first, second in ((plain, augmented), (augmented, augmented)):
        a, b = evaluate(first, "val"), evaluate(second, "val")
        assert (a.loss, a.accuracy) == (b.loss, b.accuracy) and (a.correct == b.correct).all()
    stored = torch.cat([images for images, _ in batches(small_digits.val, 40)])
    assert torch.equal(stored, small_digits.val.images)


@pytest.mark.parametrize("policy", AUGMENTATIONS.names())
def test_every_policy_trains(policy, small_digits):
    few = lambda part: part.subset(range(48))
    data = Splits(
        name=small_digits.name,
        classes=small_digits.classes,
        train=few(small_digits.train),
        val=few(small_digits.val),
        test=few(small_digits.test),
    )
    (report,) = run_trial(
        TrialConfig(augment=policy, img_size=32, epochs=1, unfreeze_depth=1, lr=0.01, batch_size=16), data
    )
    assert math.isfinite(report["train_loss"]) and report["train_loss"] > 0 and 0 <= report["val_acc"] <= 1
    if policy == "cutmix_mixup":
        assert math.isnan(report["train_acc"])  # mixed images have no single correct class
    else:
        assert 0 <= report["train_acc"] <= 1


def test_cutmix_mixup_soft_targets_train_the_model_through_the_loss(small_digits):
    trial = build_trial(TrialConfig(augment="cutmix_mixup", img_size=32, unfreeze_depth=0, lr=0.01), small_digits)
    head = trial.model.backbone.get_classifier()
    before = head.weight.detach().clone()
    losses = [train_epoch(trial)[0] for _ in range(3)]
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    assert not torch.equal(head.weight, before)


def test_loader_workers_give_the_same_batches_as_the_trial_process(small_digits):
    config = TrialConfig(
        img_size=32, epochs=1, unfreeze_depth=0, lr=0.01, feature_cache=False
    )  # image batches every epoch
    (in_process,) = run_trial(config, small_digits)
    (in_workers,) = run_trial(config.replace(loader_workers=2), small_digits)
    assert in_workers["loader_workers_used"] == 2 and in_process["loader_workers_used"] == 0
    assert in_workers["train_loss"] == in_process["train_loss"] and in_workers["val_loss"] == in_process["val_loss"]


def test_input_size_and_normalisation_come_from_the_backbone_unless_img_size_overrides(small_digits):
    trial = build_trial(TrialConfig(), small_digits)
    expected = timm.data.resolve_data_config({}, model=trial.model.backbone)
    assert trial.img_size == expected["input_size"][-1] == 224
    normalize = trial.preprocess.transforms[-1]
    assert tuple(normalize.mean) == expected["mean"] and tuple(normalize.std) == expected["std"]
    resized = build_trial(TrialConfig(img_size=48), small_digits)
    images, _ = next(batches(small_digits.val, 4))
    assert resized.img_size == 48 and resized.preprocess(images).shape == (4, 3, 48, 48)
