"""Show what "layer", "block" and "unfreeze depth" mean for a backbone: `python -m study.layers BACKBONE`.

Prints the numbered weight layers (conv and linear modules in forward order)
with their block and stage (timm's parameter groups) and the parameters riding
with each, the head, `total params: N`, and the trainable parameter count at
every depth in layers (`trainable params at depth K: N`). Surgery settings
(`--set head=single_linear --set unfreeze_depth=1 --set bn_insert=before_retrained_conv`,
any trial setting) describe one configuration, for which it then prints
`trainable params: N`, `inserted BN layers: M` and what the settings did; with
`head_warmup_epochs` each training phase and its trainable parameters; with
`layer_lr_decay` below 1 the learning rate of each trained layer (`--set lr=...`).
"""

from __future__ import annotations

import argparse
import sys

from study.core.config import StudyError, TrialConfig, parse_assignment
from study.trial.backbones import default_input_size, structure_only
from study.trial.freeze import FreezePlan, Phase, phase_plans
from study.trial.heads import head_modules
from study.trial.layers import weight_layers

# The settings of one configuration that decide what it trains, echoed on its `configuration:` line.
SURGERY_SETTINGS = (
    "head",
    "unfreeze_depth",
    "unfreeze_unit",
    "bn_insert",
    "train_bn_affine",
    "frozen_bn",
    "train_bias",
    "head_warmup_epochs",
    "layer_lr_decay",
)


def describe(backbone: str, num_classes: int, settings: dict | None = None) -> str:
    """The printout: the numbered layers, the head and the counts at every depth, then what this configuration
    trains."""
    config = TrialConfig.from_dict({**(settings or {}), "backbone": backbone}, where="--set")
    size = config.img_size or default_input_size(backbone)
    model = structure_only(backbone, num_classes, config.head, size)  # meta device: no weights, no memory
    phases = phase_plans(model, config, weight_layers(model))
    plan = phases[-1].plan
    width = max(len(layer.name) for layer in plan.layers)
    lines = numbered_layers(backbone, num_classes, plan, width)
    lines.append(f"head: {', '.join(head_modules(model))} ({plan.head_params:,} params, always trained)")
    lines.append(f"total params: {plan.total_params}")
    lines += [
        f"trainable params at depth {depth}: {plan.trainable_params_at(depth)}" for depth in range(len(plan.layers) + 1)
    ]
    lines += configuration(config, phases)
    if config.layer_lr_decay < 1:
        lines += learning_rates(plan, config, width)
    return "\n".join(lines)


def numbered_layers(backbone: str, num_classes: int, plan: FreezePlan, width: int) -> list[str]:
    """A summary line, the table's header, and one row per weight layer: its number, name, kind, parameters, block,
    stage and the modules riding with it (BatchNorm, biases of other modules)."""
    blocks, stages = ({getattr(layer, unit) for layer in plan.layers} - {None} for unit in ("block", "stage"))
    lines = [
        f"{backbone}: {len(plan.layers)} layers (conv and linear modules in forward order), {len(blocks)} blocks, "
        f"{len(stages)} stages (timm's groups); depth K trains the last K layers (or blocks, stages) and the new "
        f"{num_classes}-class head",
        f"{'#':>4}  {'layer':<{width}}  {'kind':<6}  {'params':>11}  {'block':>5}  {'stage':>5}  riding with it",
    ]
    for layer in plan.layers:
        own = f"{layer.name}." if layer.name else ""
        riders = sorted({p.rpartition(".")[0] or p for p in layer.params if not p.startswith(own)} | set(layer.norms))
        block, stage = (str(number) if number else "-" for number in (layer.block, layer.stage))
        lines.append(
            f"{layer.index:>4}  {layer.name:<{width}}  {layer.kind:<6}  {layer.num_params:>11,}  {block:>5}  "
            f"{stage:>5}  {', '.join(riders)}"
        )
    return lines


def configuration(config: TrialConfig, phases: list[Phase]) -> list[str]:
    """What one configuration trains: its settings, trainable parameters, inserted BatchNorm, the effect of each
    setting, and each training phase where a head warm-up comes first."""
    plan = phases[-1].plan
    surgery = ", ".join(f"{key}={getattr(config, key)}" for key in SURGERY_SETTINGS)
    lines = [
        f"configuration: {surgery}",
        f"trainable params: {plan.trainable_params}",
        f"inserted BN layers: {len(plan.inserted_bn)}",
        f"effective: {plan.effective}",
    ]
    if len(phases) > 1:
        lines += [f"phase {phase.describe()}" for phase in phases]
    return lines


def learning_rates(plan: FreezePlan, config: TrialConfig, width: int) -> list[str]:
    """Each trained layer's learning rate, lr * layer_lr_decay ** (its unit's distance from the head)."""
    unit = config.unfreeze_unit
    lines = [
        f"learning rates (lr={config.lr:g} x layer_lr_decay={config.layer_lr_decay:g} ** distance from the head in "
        f"{unit}s): head {config.lr:.6g}"
    ]
    for layer in reversed(plan.trained_layers):
        number = plan.param_unit[f"{layer.name}.weight"]
        distance = plan.num_units - number + 1
        rate = config.lr * plan.lr_scale(f"{layer.name}.weight", config.layer_lr_decay)
        lines.append(f"{layer.index:>4}  {layer.name:<{width}}  {unit} {number}, distance {distance}: lr {rate:.6g}")
    extra = plan.bias_params + sorted(p for p in plan.trainable if p.rpartition(".")[0] in plan.affine_norms)
    if extra:
        rates = [config.lr * plan.lr_scale(name, config.layer_lr_decay) for name in extra]
        lines.append(
            f"frozen part's trained parameters (train_bias, train_bn_affine): {len(extra)} tensors at their layers' "
            f"{unit}s, lr {min(rates):.3g} to {max(rates):.3g}"
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.layers", description=__doc__.splitlines()[0])
    parser.add_argument("backbone", help="any timm model name")
    parser.add_argument("--num-classes", type=int, default=10, help="classes of the new head (default 10)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a trial setting, e.g. bn_insert=before_retrained_conv (repeatable)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.num_classes < 1:
            raise StudyError(f"--num-classes {args.num_classes} must be at least 1")
        print(describe(args.backbone, args.num_classes, dict(parse_assignment(text) for text in args.set)))
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
