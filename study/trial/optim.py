"""What a training phase optimises with: the optimizer, its parameter groups and its learning-rate schedule.

Weight decay applies to weights only (timm's parameter groups): norm parameters (inserted BatchNorm and a frozen
part's trained affine included) and biases are exempt, so a BatchNorm study does not also decay what it studies.
`weight_decay_summary` says how many trained tensors are decayed (part of the results' `effective` column).

With `layer_lr_decay` below 1, each group is split by learning rate: lr * layer_lr_decay ** (the parameter's unit's
distance from the head, study/trial/freeze.py's plan), the head at lr.

Schedules are torch's, stepped after every batch, over one phase: a new optimizer and schedule for each phase
(study/trial/train.py `start_phase`), with a linear warm-up over the phase's first `warmup_epochs`.

The optimizers and schedules by name are those of study/core/registry.py (OPTIMIZERS, LR_SCHEDULES), which names
the implementations below.
"""

from __future__ import annotations

import timm.optim
import torch
from torch import nn

from study.core.config import TrialConfig
from study.core.registry import LR_SCHEDULES, OPTIMIZERS
from study.trial.freeze import FreezePlan, TransferModel

STEP_GAMMA = 0.1  # lr_schedule=step: the lr's factor at each third of a phase (after its warm-up)


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


def layer_lr_decay_groups(
    groups: list[dict], model: TransferModel, plan: FreezePlan, config: TrialConfig
) -> list[dict]:
    """timm's weight-decay groups split by learning rate: lr * layer_lr_decay ** (the parameter's unit's distance
    from the head, study/trial/layers.py's numbering), the head at lr; each keeps its group's weight_decay."""
    names = {id(parameter): name for name, parameter in model.backbone.named_parameters()}
    split = []
    for group in groups:
        by_lr: dict[float, list[nn.Parameter]] = {}
        for parameter in group["params"]:
            rate = config.lr * plan.lr_scale(names[id(parameter)], config.layer_lr_decay)
            by_lr.setdefault(rate, []).append(parameter)
        split += [{**group, "params": params, "lr": rate} for rate, params in sorted(by_lr.items(), reverse=True)]
    return split


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
