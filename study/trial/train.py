"""One trial in plain PyTorch: build, freeze, train, evaluate, one report per epoch.

`run_trial` is a generator so the same loop serves Ray Tune (which reports each
epoch and may stop it early), tests and benchmarks. Training time counts only
the optimisation passes (CUDA synchronised before each clock read), with the
computing of cached training features where a trial does it (its first epoch);
evaluation is timed separately and never counts as training time.

Peak memory is measured over the training passes too, per trial: on CUDA the
caching allocator's peak (`torch.cuda.max_memory_allocated`), on CPU the
process's peak resident set size (Linux `VmHWM`). Both counters are reset before
every training pass, so a process that ran an earlier trial (Ray reusing an
actor, a notebook, a test session) does not pass its peak on to the next one.

Batches leave the data store as uint8 and are preprocessed on the trial's device
(study/trial/augment.py). Under `cutmix_mixup` the loss is the cross-entropy against
the mixed class probabilities, and train accuracy is NaN: a mixed image has no
single correct class.

Weight decay applies to weights only (timm's parameter groups): norm parameters
(inserted BatchNorm and a frozen part's trained affine included) and biases are
exempt, so a BatchNorm study does not also decay what it studies. `effective`
says how many trained tensors are decayed.

Speed. Where the frozen prefix of the network is deterministic, its output is
computed once and only the rest trains (study/trial/features.py: the feature cache;
its build is part of the first epoch and recorded as `cache_build_s`).
Convolutional models and their inputs are channels_last (faster on CUDA and, with
oneDNN, on CPU). On CUDA, forward passes run under autocast (`amp: true`, the
default: bfloat16 where the GPU has it, else float16 with a gradient scaler) and
cuDNN picks its fastest algorithms (`cudnn.benchmark`); CPU trials run in
float32. The inner loop never waits for the device: losses and counts stay there
until the epoch ends (the float16 gradient scaler's overflow check is the one
exception). Evaluation runs in batches under torch.inference_mode():
CUDA_EVAL_BATCH_SIZE on CUDA, the training batch size on CPU (larger batches
run slower there, out of the processor's caches).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import timm.data
import timm.optim
import torch
from torch import nn
from torchvision.transforms import v2

from study.core.config import StudyError, TrialConfig
from study.core.registry import LR_SCHEDULES, OPTIMIZERS
from study.trial.augment import batch_mix, preprocessor, sample_transform
from study.trial.data import Splits, batches, load_data, train_loader
from study.trial.features import FeatureCache, FeatureStore, family_key, find_cut, off_report, rows_loader
from study.trial.models import (
    FreezePlan,
    Phase,
    TransferModel,
    apply_freeze,
    create_backbone,
    default_input_size,
    phase_plans,
    weight_layers,
)

CUDA_EVAL_BATCH_SIZE = (
    256  # on CPU, evaluation uses the training batch size: larger batches leave the caches and run slower
)
PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
CHECKPOINT_FILE = "model.pt"
CHECKPOINT_FORMAT = 1
STEP_GAMMA = 0.1  # lr_schedule=step: the lr's factor at each third of a phase (after its warm-up)


@dataclass
class Trial:
    config: TrialConfig
    data: Splits
    model: TransferModel
    phases: list[Phase]  # the head warm-up (if any), then the trial's own plan
    phase: Phase  # the one training now
    preprocess: v2.Transform  # uint8 batch -> normalised float batch at the input size
    loader: torch.utils.data.DataLoader  # shuffled, per-sample augmented uint8 training batches
    mix: v2.Transform | None  # CutMix/MixUp on preprocessed batches
    optimizer: torch.optim.Optimizer  # a new one (and schedule) for each phase
    scheduler: torch.optim.lr_scheduler.LRScheduler  # stepped after every batch
    device: torch.device
    img_size: int
    weights_used: str
    channels_last: bool
    amp_dtype: torch.dtype | None  # autocast's dtype; None: float32
    scaler: torch.amp.GradScaler | None  # float16 only
    cache: FeatureCache | None  # the frozen prefix's features (study/trial/features.py)
    cache_off: str  # why there is no cache ("" when there is one)
    rows: torch.utils.data.DataLoader  # shuffled row positions for a cache: the image batches' order (one generator)
    data_config: dict  # timm's: preprocessing
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


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise StudyError(
            "device='cuda' but no CUDA GPU is visible to this trial: use device=auto or give trials GPUs "
            "(--gpus-per-trial)"
        )
    return torch.device("cuda" if setting != "cpu" and torch.cuda.is_available() else "cpu")


def build_trial(config: TrialConfig, data: Splits | None = None) -> Trial:
    device = pick_device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN time its algorithms once
    size = config.img_size or default_input_size(config.backbone)
    start = time.perf_counter()
    if data is None:
        data = load_data(config.data, config.split_seed, size, config.data_root, config.train_fraction)
    loaded = time.perf_counter()
    backbone, weights_used = create_backbone(
        config.backbone, config.weights, data.num_classes, config.seed, size, config.head
    )
    phases = phase_plans(backbone, config, weight_layers(backbone))
    model = apply_freeze(backbone, phases[0].plan).to(device)
    channels_last = all(p.dim() != 5 for p in model.parameters()) and any(
        isinstance(m, nn.Conv2d) for m in model.modules()
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = mixed_precision(config.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    data_config = timm.data.resolve_data_config({}, model=backbone)
    preprocess = preprocessor(size, data_config["mean"], data_config["std"], data_config["interpolation"])
    per_sample = sample_transform(config.augment, size, data_config["interpolation"])
    # one generator for images and cached rows: the same sampler draws the same batches from either, also when
    # a phase's cache differs from the previous phase's
    shuffle = torch.Generator().manual_seed(config.seed)
    workers = loader_workers(config.loader_workers, per_sample is not None, device)
    loader = train_loader(data.train, config.batch_size, per_sample, shuffle, workers, pin_memory=device.type == "cuda")
    rows = rows_loader(len(data.train), config.batch_size, shuffle, device.type == "cuda")
    mix = batch_mix(config.augment, data.num_classes)
    trial = Trial(
        config,
        data,
        model,
        phases,
        phases[0],
        preprocess,
        loader,
        mix,
        None,
        None,
        device,
        size,
        weights_used,
        channels_last,
        amp_dtype,
        scaler,
        cache=None,
        cache_off="",
        rows=rows,
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
    trial.cache, trial.cache_off = feature_cache(trial, trial.data_config)


def layer_lr_decay_groups(
    groups: list[dict], model: TransferModel, plan: FreezePlan, config: TrialConfig
) -> list[dict]:
    """timm's weight-decay groups split by learning rate: lr * layer_lr_decay ** (the parameter's unit's distance
    from the head, study/trial/models.py's numbering), the head at lr; each keeps its group's weight_decay."""
    names = {id(parameter): name for name, parameter in model.backbone.named_parameters()}
    split = []
    for group in groups:
        by_lr: dict[float, list[nn.Parameter]] = {}
        for parameter in group["params"]:
            rate = config.lr * plan.lr_scale(names[id(parameter)], config.layer_lr_decay)
            by_lr.setdefault(rate, []).append(parameter)
        split += [{**group, "params": params, "lr": rate} for rate, params in sorted(by_lr.items(), reverse=True)]
    return split


def lr_scheduler(
    optimizer: torch.optim.Optimizer, config: TrialConfig, epochs: int, batches_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """torch's schedulers over one phase of `epochs`, stepped per batch: a linear warm-up over the first
    `warmup_epochs` (batch t of W at lr * (t + 1) / (W + 1)), then constant, cosine (CosineAnnealingLR to 0 at the
    phase's end) or step (x STEP_GAMMA at one and two thirds of the batches after the warm-up). Every parameter
    group keeps its own lr's proportion (layer_lr_decay)."""
    total = epochs * batches_per_epoch
    warmup = round(config.warmup_epochs * batches_per_epoch)
    rest = total - warmup
    main = LR_SCHEDULES.get(config.lr_schedule)(optimizer, rest)
    if not warmup:
        return main
    schedules = torch.optim.lr_scheduler
    ramp = schedules.LinearLR(optimizer, start_factor=1 / (warmup + 1), total_iters=warmup)
    return schedules.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


# The schedules of study/core/registry.py LR_SCHEDULES: (optimizer, batches after the warm-up) -> torch's scheduler.
def constant_schedule(optimizer: torch.optim.Optimizer, batches: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def cosine_schedule(optimizer: torch.optim.Optimizer, batches: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=batches, eta_min=0.0)


def step_schedule(optimizer: torch.optim.Optimizer, batches: int) -> torch.optim.lr_scheduler.LRScheduler:
    milestones = [round(batches / 3), round(2 * batches / 3)]
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=STEP_GAMMA)


def mixed_precision(enabled: bool, device: torch.device) -> torch.dtype | None:
    """Autocast's dtype on CUDA (bfloat16 where supported: no gradient scaling needed), None for float32."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def feature_cache(trial: Trial, data_config: dict) -> tuple[FeatureCache | None, str]:
    """The current phase's frozen-prefix cache (study/trial/features.py), or None and why not."""
    config = trial.config
    if not config.feature_cache:
        return None, "feature_cache=false"
    if config.augment != "none":
        return None, f"augment={config.augment} changes the frozen prefix's input every epoch"
    # two random images from their own generator: the trial's random draws stay those of an uncached trial
    noise = torch.randint(
        0, 256, (2, *trial.data.train.store.shape[1:]), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    example = trial.prepare(noise)
    trial.model.eval()
    cut = find_cut(trial.model.backbone, trial.plan, example, trial.autocast)
    trial.model.train()
    if isinstance(cut, str):
        return None, cut
    needed = cut.bytes_per_image() * sum(len(part) for part in (trial.data.train, trial.data.val, trial.data.test))
    store = FeatureStore(config.data_root)
    if needed > store.budget:
        return (
            None,
            f"the features at {cut.name} would take {needed / 2**20:,.0f} MiB, over the cache's "
            f"{store.budget / 2**20:,.0f} MiB",
        )
    family = family_key(
        backbone=config.backbone,
        weights=trial.weights_used,
        head=config.head,
        img_size=trial.img_size,
        preprocess={key: data_config[key] for key in ("mean", "std", "interpolation")},
        device=trial.device.type,
        dtype=str(trial.amp_dtype),
        channels_last=trial.channels_last,
    )
    cache = FeatureCache(
        cut,
        store,
        family,
        trial.data,
        trial.prepare,
        trial.memory_format,
        trial.device,
        trial.autocast,
        trial.eval_batch_size,
    )
    return cache, ""


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
    train_time = 0.0
    peak_memory = math.nan
    for epoch in range(1, config.epochs + 1):
        phase = next(phase for phase in trial.phases if phase.first <= epoch <= phase.last)
        if phase is not trial.phase:
            start_phase(trial, phase)
        measurable = reset_peak_memory(trial.device)
        train_loss, train_acc, epoch_time = train_epoch(trial)
        train_time += epoch_time
        epoch_peak = peak_memory_mib(trial.device) if measurable else math.nan
        peak_memory = epoch_peak if math.isnan(peak_memory) else max(peak_memory, epoch_peak)
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"training loss became {train_loss} in epoch {epoch}: lower the learning rate (lr={config.lr})"
            )
        eval_start = clock(trial.device)
        val_loss, val_acc = evaluate(trial, "val")
        test_loss, test_acc = evaluate(trial, "test")
        eval_time = clock(trial.device) - eval_start
        if checkpoint_dir is not None and epoch == config.epochs:
            save_model(trial, checkpoint_dir)
        info = trial.info()
        yield {
            "epoch": epoch,
            "phase": phase.name,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "epoch_time_s": epoch_time,
            "train_time_s": train_time,
            # the time the same trial would take alone on a fresh node: reused features cost what they cost to build
            "standalone_train_time_s": train_time - info["cache_build_s"] + info["cache_cost_s"],
            "eval_time_s": eval_time,
            "images_per_s": len(trial.data.train) / epoch_time,
            "peak_memory_mib": peak_memory,
            "reported_at": time.time(),
            **info,
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
    return loss_sum.item() / count, accuracy, seconds


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


def make_optimizer(config: TrialConfig, model: nn.Module, plan: FreezePlan | None = None) -> torch.optim.Optimizer:
    """The trial's optimizer over the model's trained parameters. Weight decay applies to weights only: norm
    parameters (BatchNorm/LayerNorm gamma and beta, inserted BatchNorm included) and biases are exempt, as in timm
    (`param_groups_weight_decay`: every tensor of one dimension or named `.bias`), so a BatchNorm study does not
    also pull its affine parameters towards zero. With `plan`, each of timm's two groups is split by learning
    rate (`layer_lr_decay_groups`)."""
    groups = timm.optim.param_groups_weight_decay(model, config.weight_decay)
    if plan is not None:
        groups = layer_lr_decay_groups(groups, model, plan, config)
    return OPTIMIZERS.get(config.optimizer)(groups, config)


# The optimizers of study/core/registry.py OPTIMIZERS: (param_groups, config) -> optimizer; the groups carry weight
# decay.
def sgd(groups: list[dict], config: TrialConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)


def adam(groups: list[dict], config: TrialConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=config.lr)


def adamw(groups: list[dict], config: TrialConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=config.lr)


def weight_decay_summary(optimizer: torch.optim.Optimizer) -> str:
    """Which trained tensors the optimizer decays, in words (part of the results' `effective` column)."""
    counts = [0, 0]  # exempt, decayed
    rate = 0.0
    for group in optimizer.param_groups:
        counts[group["weight_decay"] > 0] += len(group["params"])
        rate = max(rate, group["weight_decay"])
    if not counts[1]:
        return "weight_decay none"
    return f"weight_decay {rate:g} on {counts[1]}/{sum(counts)} trained tensors (norm and bias exempt)"


@torch.inference_mode()
def evaluate(trial: Trial, split: str) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the split ("val", "test" or "train"), in eval mode, never augmented."""
    count = len(getattr(trial.data, split))
    if count == 0:
        return math.nan, math.nan
    trial.model.eval()
    loss_sum = torch.zeros((), device=trial.device)
    correct = torch.zeros((), device=trial.device, dtype=torch.long)
    for inputs, labels in evaluation_batches(trial, split):
        with trial.autocast():
            logits = trial.network(inputs)
        loss_sum += nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    return loss_sum.item() / count, correct.item() / count


def evaluation_batches(trial: Trial, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if trial.cache is not None:
        for features, labels in trial.cache.batches(split, trial.eval_batch_size):
            yield trial.memory_format(features), labels
        return
    for images, labels in batches(getattr(trial.data, split), trial.eval_batch_size):
        yield trial.prepare(images), labels.to(trial.device, non_blocking=True)
