"""One trial in plain PyTorch: build, freeze, train, evaluate, one report per epoch.

`run_trial` is a generator so the same loop serves Ray Tune (which reports each
epoch and may stop it early), tests and benchmarks. Training time counts only
the optimisation passes (CUDA synchronised before each clock read); evaluation
is timed separately and never counts as training time.

Peak memory is measured over the training passes too, per trial: on CUDA the
caching allocator's peak (`torch.cuda.max_memory_allocated`), on CPU the
process's peak resident set size (Linux `VmHWM`). Both counters are reset before
every training pass, so a process that ran an earlier trial (Ray reusing an
actor, a notebook, a test session) does not pass its peak on to the next one.

Batches leave the data store as uint8 and are preprocessed on the trial's device
(study/augment.py). Under `cutmix_mixup` the loss is the cross-entropy against
the mixed class probabilities, and train accuracy is NaN: a mixed image has no
single correct class.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import timm.data
import torch
from torch import nn
from torchvision.transforms import v2

from study.augment import batch_mix, preprocessor, sample_transform
from study.config import StudyError, TrialConfig
from study.data import ImageSet, Splits, batches, load_data, train_loader
from study.models import FreezePlan, TransferModel, apply_freeze, create_backbone, default_input_size, plan_for

EVAL_BATCH_SIZE = 256
PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
CHECKPOINT_FILE = "model.pt"
CHECKPOINT_FORMAT = 1


@dataclass
class Trial:
    config: TrialConfig
    data: Splits
    model: TransferModel
    plan: FreezePlan
    preprocess: v2.Transform  # uint8 batch -> normalised float batch at the input size
    loader: torch.utils.data.DataLoader  # shuffled, per-sample augmented uint8 training batches
    mix: v2.Transform | None  # CutMix/MixUp on preprocessed batches
    optimizer: torch.optim.Optimizer
    device: torch.device
    img_size: int
    weights_used: str

    def info(self) -> dict:
        """What a trial is, beside what it measures: reported with every epoch."""
        return {
            "weights_used": self.weights_used,
            "num_layers": len(self.plan.layers),
            "unfrozen_layers": self.plan.depth,
            "trainable_params": self.plan.trainable_params,
            "total_params": self.plan.total_params,
            "inserted_bn": len(self.plan.inserted_bn),
            "effective": self.plan.effective,
            "img_size": self.img_size,
            "device": self.device.type,
            "memory_measure": memory_measure(self.device),
            "loader_workers": self.loader.num_workers,
            **self.data.info(),
        }


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise StudyError("device='cuda' but no CUDA GPU is visible to this trial: use device=auto or give trials GPUs (--gpus-per-trial)")
    return torch.device("cuda" if setting != "cpu" and torch.cuda.is_available() else "cpu")


def build_trial(config: TrialConfig, data: Splits | None = None) -> Trial:
    device = pick_device(config.device)
    size = config.img_size or default_input_size(config.backbone)
    if data is None:
        data = load_data(config.data, config.split_seed, size, config.data_root, config.train_fraction)
    backbone, weights_used = create_backbone(config.backbone, config.weights, data.num_classes, config.seed, size, config.head)
    plan = plan_for(backbone, config)
    model = apply_freeze(backbone, plan).to(device)
    data_config = timm.data.resolve_data_config({}, model=backbone)
    preprocess = preprocessor(size, data_config["mean"], data_config["std"], data_config["interpolation"])
    per_sample = sample_transform(config.augment, size, data_config["interpolation"])
    shuffle = torch.Generator().manual_seed(config.seed)
    workers = loader_workers(config.loader_workers, per_sample is not None, device)
    loader = train_loader(data.train, config.batch_size, per_sample, shuffle, workers, pin_memory=device.type == "cuda")
    optimizer = make_optimizer(config, [p for p in model.parameters() if p.requires_grad])
    mix = batch_mix(config.augment, data.num_classes)
    return Trial(config, data, model, plan, preprocess, loader, mix, optimizer, device, size, weights_used)


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
    """
    trial = build_trial(config, data)
    train_time = 0.0
    peak_memory = math.nan
    for epoch in range(1, config.epochs + 1):
        measurable = reset_peak_memory(trial.device)
        train_loss, train_acc, epoch_time = train_epoch(trial)
        train_time += epoch_time
        epoch_peak = peak_memory_mib(trial.device) if measurable else math.nan
        peak_memory = epoch_peak if math.isnan(peak_memory) else max(peak_memory, epoch_peak)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training loss became {train_loss} in epoch {epoch}: lower the learning rate (lr={config.lr})")
        eval_start = clock(trial.device)
        val_loss, val_acc = evaluate(trial, trial.data.val)
        test_loss, test_acc = evaluate(trial, trial.data.test)
        eval_time = clock(trial.device) - eval_start
        if checkpoint_dir is not None and epoch == config.epochs:
            save_model(trial, checkpoint_dir)
        yield {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "epoch_time_s": epoch_time,
            "train_time_s": train_time,
            "eval_time_s": eval_time,
            "images_per_s": len(trial.data.train) / epoch_time,
            "peak_memory_mib": peak_memory,
            "reported_at": time.time(),
            **trial.info(),
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


def train_epoch(trial: Trial) -> tuple[float, float, float]:
    """One pass over the training split: (mean loss, accuracy, seconds). Metrics stay on the device until the end.

    Accuracy is NaN under CutMix/MixUp (see the module docstring).
    """
    model, device = trial.model, trial.device
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    start = clock(device)
    for images, labels in trial.loader:
        images = trial.preprocess(images.to(device, non_blocking=True))
        labels = labels.to(device, non_blocking=True)
        targets = labels
        if trial.mix is not None:
            images, targets = trial.mix(images, labels)  # targets: class probabilities
        logits = model(images)
        loss = nn.functional.cross_entropy(logits, targets)
        trial.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trial.optimizer.step()
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
    seconds = clock(device) - start
    count = len(trial.data.train)
    accuracy = correct.item() / count if trial.mix is None else math.nan
    return loss_sum.item() / count, accuracy, seconds


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def memory_measure(device: torch.device) -> str:
    """What `peak_memory_mib` measures on this device, named in the results so the two are never mixed up."""
    return "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss"


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak; False where the platform cannot (the peak is then reported as NaN, not guessed)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        # Linux: writing 5 resets the process's high-water mark (VmHWM) to its current RSS (see proc(5)).
        PROC_CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory since the last `reset_peak_memory`, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in PROC_STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return math.nan


def make_optimizer(config: TrialConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


@torch.inference_mode()
def evaluate(trial: Trial, data: ImageSet) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over `data`, in eval mode."""
    if len(data) == 0:
        return math.nan, math.nan
    trial.model.eval()
    loss_sum = torch.zeros((), device=trial.device)
    correct = torch.zeros((), device=trial.device, dtype=torch.long)
    for images, labels in batches(data, EVAL_BATCH_SIZE):
        images = trial.preprocess(images.to(trial.device, non_blocking=True))
        labels = labels.to(trial.device, non_blocking=True)
        logits = trial.model(images)
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    return loss_sum.item() / len(data), correct.item() / len(data)
