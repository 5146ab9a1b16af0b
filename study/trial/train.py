"""One trial in plain PyTorch: build, freeze, train, evaluate, one report per epoch.

`run_trial` is a generator so the same loop serves Ray Tune (which reports each
epoch and may stop it early), tests and benchmarks. Training time counts only
the optimisation passes (CUDA synchronised before each clock read,
study/trial/device.py), with the computing of cached training features where a
trial does it (its first epoch); evaluation is timed separately and never
counts as training time. Peak memory is measured over the training passes,
per trial (study/trial/device.py).

Batches leave the data store as uint8 and are preprocessed on the trial's device
(study/trial/augment.py). Under `cutmix_mixup` the loss is the cross-entropy against
the mixed class probabilities, and train accuracy is NaN: a mixed image has no
single correct class.

Each training phase (a head warm-up, then the trial's own plan) gets its own
optimizer and learning-rate schedule (study/trial/optim.py: weight decay on
weights only, layer-wise learning rates) and its own feature cache.

Speed. Where the frozen prefix of the network is deterministic, its output is
computed once and only the rest trains (study/trial/feature_cache.py; its build
is part of the first epoch and recorded as `cache_build_s`). Convolutional
models and their inputs are channels_last, and on CUDA forward passes run under
autocast (study/trial/device.py); cuDNN picks its fastest algorithms
(`cudnn.benchmark`). The inner loop never waits for the device: losses and
counts stay there until the epoch ends (the float16 gradient scaler's overflow
check is the one exception). Evaluation runs in batches under
torch.inference_mode(): CUDA_EVAL_BATCH_SIZE on CUDA, the training batch size on
CPU (larger batches run slower there, out of the processor's caches).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import timm.data
import torch
from torch import nn
from torchvision.transforms import v2

from study.core.config import TrialConfig
from study.core.metrics import ACCURACY, MAIN_COST
from study.core.outcomes import encode
from study.trial.augment import batch_mix, preprocessor, sample_transform
from study.trial.backbones import create_backbone, default_input_size
from study.trial.batching import batches, train_loader
from study.trial.cut import find_cut
from study.trial.data import load_data
from study.trial.device import (
    clock,
    memory_measure,
    mixed_precision,
    peak_memory_mib,
    pick_device,
    reset_peak_memory,
    wants_channels_last,
)
from study.trial.feature_cache import FeatureCache, FeatureStore, family_key, off_report, rows_loader
from study.trial.freeze import FreezePlan, Phase, TransferModel, apply_freeze, phase_plans
from study.trial.layers import weight_layers
from study.trial.optim import lr_scheduler, make_optimizer, weight_decay_summary
from study.trial.splits import Splits

CUDA_EVAL_BATCH_SIZE = (
    256  # on CPU, evaluation uses the training batch size: larger batches leave the caches and run slower
)
CHECKPOINT_FILE = "model.pt"
CHECKPOINT_FORMAT = 1


@dataclass(kw_only=True)
class Trial:
    config: TrialConfig
    data: Splits
    model: TransferModel
    phases: list[Phase]  # the head warm-up (if any), then the trial's own plan
    phase: Phase  # the one training now
    preprocess: v2.Transform  # uint8 batch -> normalised float batch at the input size
    loader: torch.utils.data.DataLoader  # shuffled, per-sample augmented uint8 training batches
    mix: v2.Transform | None  # CutMix/MixUp on preprocessed batches
    rows: torch.utils.data.DataLoader  # shuffled row positions for a cache: the image batches' order (one generator)
    device: torch.device
    img_size: int
    weights_used: str
    channels_last: bool
    amp_dtype: torch.dtype | None  # autocast's dtype; None: float32
    scaler: torch.amp.GradScaler | None  # float16 only
    data_config: dict  # timm's: preprocessing
    # start_phase gives each phase these: a new optimizer, its schedule (stepped after every batch) and its cache
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    cache: FeatureCache | None = None  # the frozen prefix's features (study/trial/feature_cache.py)
    cache_off: str = ""  # why there is no cache ("" when there is one)
    earlier_caches: list[tuple[Phase, dict]] = dataclasses.field(default_factory=list)  # phases done: cache report
    # seconds of set-up (data_load_s, model_build_s: backbone, weights, freezing; cut_check_s: the first phase's
    # optimizer and finding and checking its cache's cut): where a cheap trial's time goes besides training
    # (benchmarks/many_trials.py)
    setup: dict = dataclasses.field(default_factory=dict)

    @property
    def plan(self) -> FreezePlan:
        return self.phase.plan

    @property
    def network(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """What a batch goes through: the suffix on cached features, else the whole model on images."""
        return self.cache.suffix if self.cache is not None else self.model

    @property
    def eval_batch_size(self) -> int:
        return CUDA_EVAL_BATCH_SIZE if self.device.type == "cuda" else self.config.batch_size

    def autocast(self) -> contextlib.AbstractContextManager:
        return (
            torch.autocast(self.device.type, self.amp_dtype) if self.amp_dtype is not None else contextlib.nullcontext()
        )

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the model's input on the device (preprocessed; channels_last for a convolutional model)."""
        return self.memory_format(self.preprocess(images.to(self.device, non_blocking=True)))

    def memory_format(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last and batch.dim() == 4 else batch

    def info(self) -> dict:
        """What a trial is, beside what it measures: reported with every epoch (the current phase's plan). What a
        setting resolved to (`img_size_used`, `device_used`, `amp_dtype`, `loader_workers_used`) is named apart from
        the setting, so the trials table keeps both."""
        return {
            "weights_used": self.weights_used,
            "num_layers": len(self.plan.layers),
            "unfrozen_layers": self.plan.depth,
            "trainable_params": self.plan.trainable_params,
            "total_params": self.plan.total_params,
            "inserted_bn": len(self.plan.inserted_bn),
            "effective": f"{self.plan.effective}; {weight_decay_summary(self.optimizer)}",
            "img_size_used": self.img_size,
            "device_used": self.device.type,
            "memory_measure": memory_measure(self.device),
            "loader_workers_used": 0 if self.cache is not None else self.loader.num_workers,
            "amp_dtype": str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype is not None else "off",
            "channels_last": self.channels_last,
            **self.cache_report(),
            **self.data.info(),
            **self.setup,
        }

    def cache_report(self) -> dict:
        """The cache of the current phase; with a head warm-up before it, its build times and cost added and its
        note in front."""
        report = self.cache.report() if self.cache is not None else off_report(self.cache_off)
        if not self.earlier_caches:
            return report
        notes = [f"epochs {p.first}-{p.last} ({p.name}): {r['cache_note']}" for p, r in self.earlier_caches]
        notes.append(f"epochs {self.phase.first}-{self.phase.last} ({self.phase.name}): {report['cache_note']}")
        return {
            **report,
            "cache_note": "; ".join(notes),
            **{
                key: report[key] + sum(r[key] for _, r in self.earlier_caches)
                for key in ("cache_build_s", "cache_cost_s")
            },
        }


class TrainingInputs(NamedTuple):
    """How training batches reach the network: images through `loader`, or a cache's rows in the same order."""

    preprocess: v2.Transform
    loader: torch.utils.data.DataLoader
    rows: torch.utils.data.DataLoader
    mix: v2.Transform | None


class PhaseCache(NamedTuple):
    cache: FeatureCache | None
    off_reason: str  # why there is no cache ("" when there is one): the trial's cache_note


class EpochTraining(NamedTuple):
    loss: float  # mean over the training split
    accuracy: float  # NaN under CutMix/MixUp
    seconds: float  # the timed pass (a cache's build included)


class Evaluation(NamedTuple):
    loss: float  # mean cross-entropy; NaN for an empty split
    accuracy: float
    correct: np.ndarray  # bool per image of the split, in its order: the per-image outcomes (study/core/outcomes.py)


def build_trial(config: TrialConfig, data: Splits | None = None) -> Trial:
    device = pick_device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN time its algorithms once
    size = config.img_size or default_input_size(config.backbone)
    start = time.perf_counter()
    if data is None:
        data = load_data(
            config.data, config.split_seed, size, config.data_root, config.train_fraction, config.data_fingerprint
        )
    loaded = time.perf_counter()
    backbone, weights_used = create_backbone(
        config.backbone, config.weights, data.num_classes, config.trial_seed, size, config.head
    )
    phases = phase_plans(backbone, config, weight_layers(backbone))
    model = apply_freeze(backbone, phases[0].plan).to(device)
    channels_last = wants_channels_last(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = mixed_precision(config.amp, device)
    data_config = timm.data.resolve_data_config({}, model=backbone)
    inputs = training_inputs(config, data, size, data_config, device)
    trial = Trial(
        config=config,
        data=data,
        model=model,
        phases=phases,
        phase=phases[0],
        preprocess=inputs.preprocess,
        loader=inputs.loader,
        mix=inputs.mix,
        rows=inputs.rows,
        device=device,
        img_size=size,
        weights_used=weights_used,
        channels_last=channels_last,
        amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None,
        data_config=data_config,
    )
    built = time.perf_counter()
    start_phase(trial, phases[0])
    trial.setup = {
        "data_load_s": loaded - start,
        "model_build_s": built - loaded,
        "cut_check_s": time.perf_counter() - built,
    }
    return trial


def training_inputs(
    config: TrialConfig, data: Splits, size: int, data_config: dict, device: torch.device
) -> TrainingInputs:
    """The preprocessing, the shuffled image batches (augmented per sample), a cache's rows in their order, and the
    per-batch mix of the trial's augmentation policy."""
    preprocess = preprocessor(size, data_config["mean"], data_config["std"], data_config["interpolation"])
    per_sample = sample_transform(config.augment, size, data_config["interpolation"])
    # one generator for images and cached rows: the same sampler draws the same batches from either, also when
    # a phase's cache differs from the previous phase's
    shuffle = torch.Generator().manual_seed(config.trial_seed)
    workers = loader_workers(config.loader_workers, per_sample is not None, device)
    pin_memory = device.type == "cuda"
    return TrainingInputs(
        preprocess=preprocess,
        loader=train_loader(data.train, config.batch_size, per_sample, shuffle, workers, pin_memory=pin_memory),
        rows=rows_loader(len(data.train), config.batch_size, shuffle, pin_memory),
        mix=batch_mix(config.augment, data.num_classes),
    )


def start_phase(trial: Trial, phase: Phase) -> None:
    """Freeze as the phase's plan says (the head warm-up's surgery-free model gets the trial's surgery now), and
    give it a new optimizer, learning-rate schedule and feature cache (its own cut, or none)."""
    if phase is not trial.phase:
        trial.earlier_caches.append((trial.phase, trial.cache_report()))
        trial.phase = phase
        trial.model = apply_freeze(trial.model.backbone, phase.plan).to(trial.device)
        trial.cache = None
    trial.optimizer = make_optimizer(trial.config, trial.model, phase.plan)
    trial.scheduler = lr_scheduler(trial.optimizer, trial.config, phase.epochs, len(trial.rows))
    trial.cache, trial.cache_off = feature_cache(trial)


def feature_cache(trial: Trial) -> PhaseCache:
    """The current phase's frozen-prefix cache (study/trial/feature_cache.py), or None and why not."""
    config = trial.config
    if not config.feature_cache:
        return PhaseCache(cache=None, off_reason="feature_cache=false")
    if config.augment != "none":
        return PhaseCache(
            cache=None, off_reason=f"augment={config.augment} changes the frozen prefix's input every epoch"
        )
    # two random images from their own generator: the trial's random draws stay those of an uncached trial
    noise = torch.randint(
        0, 256, (2, *trial.data.train.store.shape[1:]), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    example = trial.prepare(noise)
    trial.model.eval()
    search = find_cut(trial.model.backbone, trial.plan, example, trial.autocast)
    trial.model.train()
    if search.cut is None:
        return PhaseCache(cache=None, off_reason=search.reason)
    cut = search.cut
    needed = cut.bytes_per_image() * sum(len(part) for part in (trial.data.train, trial.data.val, trial.data.test))
    store = FeatureStore(config.data_root)
    if needed > store.budget:
        return PhaseCache(
            cache=None,
            off_reason=f"the features at {cut.name} would take {needed / 2**20:,.0f} MiB, over the cache's "
            f"{store.budget / 2**20:,.0f} MiB",
        )
    family = family_key(
        backbone=config.backbone,
        weights=trial.weights_used,
        # random weights are drawn from the trial seed: another seed is another prefix
        init_seed=config.trial_seed if trial.weights_used == "random" else None,
        head=config.head,
        img_size=trial.img_size,
        preprocess={key: trial.data_config[key] for key in ("mean", "std", "interpolation")},
        device=trial.device.type,
        dtype=str(trial.amp_dtype),
        channels_last=trial.channels_last,
    )
    cache = FeatureCache(
        cut=cut,
        store=store,
        family=family,
        data=trial.data,
        prepare=trial.prepare,
        memory_format=trial.memory_format,
        device=trial.device,
        autocast=trial.autocast,
        batch_size=trial.eval_batch_size,
    )
    return PhaseCache(cache=cache, off_reason="")


def loader_workers(setting: int | None, per_sample: bool, device: torch.device) -> int:
    """DataLoader workers: the setting, else the trial's CPU share (torch's thread count, set from Ray's
    assignment) when there is per-sample work to overlap with a GPU; else none, as gathering a batch
    from memory costs less than passing it between processes, and on a CPU trial the model already
    uses every core of the share."""
    if setting is not None:
        return setting
    return torch.get_num_threads() if per_sample and device.type == "cuda" else 0


def run_trial(config: TrialConfig, data: Splits | None = None, checkpoint_dir: Path | None = None) -> Iterator[dict]:
    """Train `config` for config.epochs epochs, yielding the metrics of each.

    With `checkpoint_dir`, the final model is saved there (`save_model`) before the last epoch's metrics are yielded.
    Running out of memory (GPU or host) raises MemoryError with one line saying what to change.
    """
    try:
        yield from train_epochs(config, data, checkpoint_dir)
    except (torch.OutOfMemoryError, MemoryError) as error:
        raise MemoryError(out_of_memory_message(config, error)) from error


def out_of_memory_message(config: TrialConfig, error: BaseException) -> str:
    first = (str(error).strip().splitlines() or [""])[0]
    detail = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return (
        f"out of memory ({detail}): lower batch_size (now {config.batch_size}) or img_size, "
        f"or run fewer trials at once on a device (--max-concurrent, or a larger --gpus-per-trial share)"
    )


def train_epochs(config: TrialConfig, data: Splits | None, checkpoint_dir: Path | None) -> Iterator[dict]:
    trial = build_trial(config, data)
    study_train_time = 0.0
    peak_memory = math.nan
    for epoch in range(1, config.epochs + 1):
        phase = next(phase for phase in trial.phases if phase.first <= epoch <= phase.last)
        if phase is not trial.phase:
            start_phase(trial, phase)
        measurable = reset_peak_memory(trial.device)
        train_loss, train_acc, epoch_time = train_epoch(trial)
        study_train_time += epoch_time
        epoch_peak = peak_memory_mib(trial.device) if measurable else math.nan
        peak_memory = epoch_peak if math.isnan(peak_memory) else max(peak_memory, epoch_peak)
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"training loss became {train_loss} in epoch {epoch}: lower the learning rate (lr={config.lr})"
            )
        eval_start = clock(trial.device)
        val = evaluate(trial, "val")
        test = evaluate(trial, "test")
        eval_time = clock(trial.device) - eval_start
        if checkpoint_dir is not None and epoch == config.epochs:
            save_model(trial, checkpoint_dir)
        info = trial.info()
        yield {
            "epoch": epoch,
            "phase": phase.name,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val.loss,
            ACCURACY: val.accuracy,
            "test_loss": test.loss,
            "test_acc": test.accuracy,
            "epoch_time_s": epoch_time,
            # The configuration's time is what it takes alone on a fresh node: features reused from a cache count
            # what building them cost, so the front does not depend on what an earlier trial or study cached.
            MAIN_COST: study_train_time - info["cache_build_s"] + info["cache_cost_s"],
            "study_train_time_s": study_train_time,
            "eval_time_s": eval_time,
            "images_per_s": len(trial.data.train) / epoch_time,
            "peak_memory_mib": peak_memory,
            "reported_at": time.time(),
            **info,
            "val_correct": encode(val.correct),
            "test_correct": encode(test.correct),
        }


def save_model(trial: Trial, directory: Path) -> Path:
    """Write the trial's model to DIRECTORY/model.pt: one torch.save file of tensors and plain values only, so that
    `torch.load(..., weights_only=True)` reads it. The state dict is the backbone's (timm's own keys, new head
    included); beside it, what `python -m study.merge` needs to rebuild and judge it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "state_dict": {key: value.detach().cpu() for key, value in trial.model.backbone.state_dict().items()},
            "config": trial.config.to_dict(),
            "data": trial.data.name,
            "classes": list(trial.data.classes),
            "weights_used": trial.weights_used,
            "img_size": trial.img_size,
        },
        path,
    )
    return path


def train_epoch(trial: Trial) -> EpochTraining:
    """One pass over the training split. Metrics stay on the device until the end.

    With a feature cache, the first call computes (or reads) the training split's features, inside the timed pass.
    Accuracy is NaN under CutMix/MixUp (see the module docstring).
    """
    model, device = trial.model, trial.device
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    start = clock(device)
    for inputs, labels in training_batches(trial):
        targets = labels
        if trial.mix is not None:
            inputs, targets = trial.mix(inputs, labels)  # targets: class probabilities
        with trial.autocast():
            logits = trial.network(inputs)
            loss = nn.functional.cross_entropy(logits, targets)
        trial.optimizer.zero_grad(set_to_none=True)
        if trial.scaler is not None:
            trial.scaler.scale(loss).backward()
            trial.scaler.step(trial.optimizer)
            trial.scaler.update()
        else:
            loss.backward()
            trial.optimizer.step()
        trial.scheduler.step()
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
    seconds = clock(device) - start
    count = len(trial.data.train)
    accuracy = correct.item() / count if trial.mix is None else math.nan
    return EpochTraining(loss=loss_sum.item() / count, accuracy=accuracy, seconds=seconds)


def training_batches(trial: Trial) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(network input, labels) on the device, in the loader's shuffled order: cached features or preprocessed images."""
    if trial.cache is None:
        for images, labels in trial.loader:
            yield trial.prepare(images), labels.to(trial.device, non_blocking=True)
        return
    cached = trial.cache.split("train")
    for rows in trial.rows:
        features, labels = cached.batch(rows, trial.device)
        yield trial.memory_format(features), labels


@torch.inference_mode()
def evaluate(trial: Trial, split: str) -> Evaluation:
    """Mean cross-entropy and accuracy over the split ("val", "test" or "train"), in eval mode, never augmented."""
    count = len(getattr(trial.data, split))
    if count == 0:
        return Evaluation(loss=math.nan, accuracy=math.nan, correct=np.zeros(0, dtype=bool))
    trial.model.eval()
    loss_sum = torch.zeros((), device=trial.device)
    correct = []
    for inputs, labels in evaluation_batches(trial, split):
        with trial.autocast():
            logits = trial.network(inputs)
        loss_sum += nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        correct.append(logits.argmax(1) == labels)
    outcomes = torch.cat(correct).cpu().numpy()
    return Evaluation(loss=loss_sum.item() / count, accuracy=int(outcomes.sum()) / count, correct=outcomes)


def evaluation_batches(trial: Trial, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if trial.cache is not None:
        for features, labels in trial.cache.batches(split, trial.eval_batch_size):
            yield trial.memory_format(features), labels
        return
    for images, labels in batches(getattr(trial.data, split), trial.eval_batch_size):
        yield trial.prepare(images), labels.to(trial.device, non_blocking=True)
