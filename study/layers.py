"""Show what "layer" and "unfreeze depth" mean for a backbone: `python -m study.layers BACKBONE`.

Prints the numbered weight layers (conv and linear modules in forward order)
with the parameters riding with each, the head, `total params: N`, and the
trainable parameter count at every depth (`trainable params at depth K: N`).
"""

from __future__ import annotations

import argparse
import sys

from study.config import StudyError
from study.models import freeze_plan, head_module_name, structure_only


def describe(backbone: str, num_classes: int) -> str:
    model = structure_only(backbone, num_classes)  # meta device: no weights, no memory
    plan = freeze_plan(model, 0, backbone)
    width = max(len(layer.name) for layer in plan.layers)
    lines = [
        f"{backbone}: {len(plan.layers)} layers (conv and linear modules in forward order); "
        f"depth K trains the last K layers and the new {num_classes}-class head",
        f"{'#':>4}  {'layer':<{width}}  {'kind':<6}  {'params':>11}  riding with it",
    ]
    for layer in plan.layers:
        own = f"{layer.name}." if layer.name else ""
        riders = sorted({p.rpartition(".")[0] or p for p in layer.params if not p.startswith(own)})
        lines.append(f"{layer.index:>4}  {layer.name:<{width}}  {layer.kind:<6}  {layer.num_params:>11,}  {', '.join(riders)}")
    lines.append(f"head: {head_module_name(model)} ({plan.head_params:,} params, always trained)")
    lines.append(f"total params: {plan.total_params}")
    lines += [f"trainable params at depth {depth}: {plan.trainable_params_at(depth)}" for depth in range(len(plan.layers) + 1)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.layers", description=__doc__.splitlines()[0])
    parser.add_argument("backbone", help="any timm model name")
    parser.add_argument("--num-classes", type=int, default=10, help="classes of the new head (default 10)")
    args = parser.parse_args(argv)
    try:
        if args.num_classes < 1:
            raise StudyError(f"--num-classes {args.num_classes} must be at least 1")
        print(describe(args.backbone, args.num_classes))
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
