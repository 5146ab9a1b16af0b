"""Merge two trial checkpoints by weight interpolation: `python -m study.merge CKPT_A CKPT_B --data NAME --out DIR`.

The command of study/merging. Sweeps (1 - alpha) * A + alpha * B over --alphas with BatchNorm statistics
recomputed on the target's training images (study/merging/interpolation.py) and evaluates each merged model on
the target data (study/merging/evaluation.py).

Heads: `keep` evaluates with the head trained on the target's classes (A's or
B's; interpolated when both were trained on them); `probe` fits a new linear
head on the merged backbone's frozen features of the training split
(`--probe-epochs`, AdamW `--probe-lr`, seeded). Default: both when a checkpoint
was trained on the target's classes, else probe.

`--align weights` also merges after permuting B's channels to match A's
(study/merging/align.py, Git Re-Basin weight matching): merge.csv then holds both.

The filters of one conv layer (default: the first) are compared as in
document 002 (study/merging/similarity.py).

Writes DIR/merge.csv, merge.html, similarity.csv, similarity.html and
merge.json (inputs, settings, alignment coverage, summaries, versions,
hardware; study/merging/outputs.py). Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import timm.data
import torch
from torch import nn

from study.core.config import DEVICES, StudyError
from study.core.environment import hardware, package_versions
from study.merging.checkpoints import Checkpoint, check_compatible, head_keys, load_checkpoint
from study.merging.evaluation import ProbeSettings, Target, reference_scores
from study.merging.interpolation import match_b_to_a, sweep
from study.merging.outputs import print_summary, write_outputs
from study.merging.similarity import ORDERS, FilterSimilarity, conv_weight, filter_similarity
from study.trial.augment import preprocessor
from study.trial.data import load_data
from study.trial.device import pick_device
from study.trial.freeze import INSERTED_BN
from study.trial.layers import weight_layers
from study.trial.splits import Splits

DEFAULT_ALPHAS = tuple(round(i / 10, 1) for i in range(11))
HEADS = ("keep", "probe")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.merge", description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkpoint_a", type=Path, metavar="CKPT_A", help="model.pt, its directory, or a trial directory"
    )
    parser.add_argument("checkpoint_b", type=Path, metavar="CKPT_B", help="a checkpoint of the same backbone")
    parser.add_argument("--data", help="target dataset (digits or folder:PATH); default: A's training data")
    parser.add_argument("--out", type=Path, help="output directory (default: results/merge-TIMESTAMP)")
    parser.add_argument(
        "--alphas",
        default=",".join(map(str, DEFAULT_ALPHAS)),
        help="comma-separated weights of B (default 0,0.1,...,1)",
    )
    parser.add_argument(
        "--align", choices=("none", "weights"), default="none", help="weights: also merge after weight matching B to A"
    )
    parser.add_argument(
        "--head",
        choices=HEADS,
        nargs="+",
        help="keep: the head trained on the target's classes; probe: a new linear head (default: both if possible, "
        "else probe)",
    )
    parser.add_argument("--probe-epochs", type=int, default=10, help="epochs of the linear probe (default 10)")
    parser.add_argument(
        "--probe-lr", type=float, default=1e-3, help="AdamW learning rate of the linear probe (default 1e-3)"
    )
    parser.add_argument(
        "--bn-stats",
        choices=("recompute", "interpolate"),
        default="recompute",
        help="BatchNorm statistics of merged models (default recompute)",
    )
    parser.add_argument("--layer", help="conv layer for the filter similarity (default: the first conv)")
    parser.add_argument(
        "--order", choices=ORDERS, default="greedy", help="reordering shown in similarity.html (both are summarised)"
    )
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="binarisation threshold of the similarity (default 0.5)"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--seed", type=int, default=0, help="probe and weight-matching seed (default 0)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def parse_alphas(text: str) -> list[float]:
    try:
        alphas = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise StudyError(
            f"--alphas {text!r} is not a comma-separated list of numbers: write e.g. --alphas 0,0.5,1"
        ) from None
    if not alphas or not all(math.isfinite(a) for a in alphas):
        raise StudyError(f"--alphas {text!r} holds no finite number: write e.g. --alphas 0,0.5,1")
    return alphas


def check_settings(args: argparse.Namespace) -> None:
    if args.probe_epochs < 1:
        raise StudyError(f"--probe-epochs {args.probe_epochs} must be at least 1")
    if not args.probe_lr > 0:
        raise StudyError(f"--probe-lr {args.probe_lr} must be positive")
    if not -1 <= args.threshold <= 1:
        raise StudyError(f"--threshold {args.threshold} is not a cosine similarity: use a value in [-1, 1]")
    if args.batch_size < 2:
        raise StudyError(f"--batch-size {args.batch_size} must be at least 2 (BatchNorm statistics need batches)")


def prepare_out(out: Path | None) -> Path:
    out = out or Path("results") / f"merge-{datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StudyError(f"--out {out} already holds files: choose a new directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StudyError(f"--out {out} cannot be created ({error.strerror}): choose a writable directory") from None
    return out


def choose_heads(
    requested: list[str] | None, a: Checkpoint, b: Checkpoint, data: Splits
) -> tuple[list[str], str | None]:
    """The heads to evaluate and, for `keep`, a description of the kept head."""
    trained = [name for name, ckpt in (("A", a), ("B", b)) if ckpt.classes == data.classes]
    kept = None if not trained else "interpolated from A and B" if len(trained) == 2 else f"{trained[0]}'s"
    heads = requested or (["keep", "probe"] if kept else ["probe"])
    if "keep" in heads and not kept:
        raise StudyError(
            f"--head keep needs a checkpoint trained on the target's classes ({len(data.classes)}: "
            f"{', '.join(data.classes[:4])}...), "
            f"but A has {len(a.classes)} and B {len(b.classes)} others: use --head probe"
        )
    return list(dict.fromkeys(heads)), kept


@dataclass(kw_only=True)
class MergeInputs:
    """A merge's inputs, each checked before anything is computed: bad input costs one line and exit code 2."""

    a: Checkpoint
    b: Checkpoint
    model_a: nn.Module
    model_b: nn.Module
    heads_in_model: set[str]  # the head's tensors in A's state dict
    layer: str  # the conv layer whose filters are compared
    alphas: list[float]
    source: Checkpoint  # whose split and input size the target takes: no test image it trained on
    data: Splits
    heads: list[str]  # keep, probe
    kept: str | None  # whose head `keep` evaluates with
    device: torch.device
    out: Path


def check_inputs(args: argparse.Namespace) -> MergeInputs:
    check_settings(args)
    alphas = parse_alphas(args.alphas)
    a, b = load_checkpoint(args.checkpoint_a), load_checkpoint(args.checkpoint_b)
    model_a, model_b = a.build(), b.build()
    heads_in_model = head_keys(model_a)
    check_compatible(a, b, heads_in_model)
    if args.align == "weights" and any(INSERTED_BN in key for key in a.state):
        # torch.fx does not trace forward pre-hooks, through which inserted BatchNorm acts: the spec would miss it.
        raise StudyError(
            f"{a.path}: --align weights does not support models with bn_insert=before_retrained_conv: use --align none"
        )
    layer = args.layer or first_conv(model_a)
    conv_weight(model_a, layer)
    data_name = args.data or a.data
    # the target's split and input size are those of a checkpoint trained on it: no test image it trained on
    source = next((c for c in (a, b) if c.data == data_name), a)
    data = load_data(data_name, source.config.split_seed, source.img_size, source.config.data_root)
    heads, kept = choose_heads(args.head, a, b, data)
    device = pick_device(args.device)
    out = prepare_out(args.out)
    return MergeInputs(
        a=a,
        b=b,
        model_a=model_a,
        model_b=model_b,
        heads_in_model=heads_in_model,
        layer=layer,
        alphas=alphas,
        source=source,
        data=data,
        heads=heads,
        kept=kept,
        device=device,
        out=out,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        inputs = check_inputs(args)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    a, b = inputs.a, inputs.b
    target = target_of(inputs, args.batch_size)
    print_inputs(inputs, args)
    record = start_record(inputs, target, args, argv)
    print_reference(record["reference"])

    # Heads take part in matching and interpolation only if both were trained on the same classes.
    merged_keys = [k for k in a.state if a.classes == b.classes or k not in inputs.heads_in_model]
    states = {"none": b.state}
    if args.align == "weights":
        states["weights"], record["alignment"] = match_b_to_a(
            a, b, inputs.model_a, merged_keys, inputs.source.img_size, args.seed
        )
    table = sweep(
        a,
        states,
        alphas=inputs.alphas,
        merged_keys=merged_keys,
        head_owner=b if inputs.kept == "B's" else a,  # whose head (and class count) the merged model carries
        heads=inputs.heads,
        target=target,
        bn_stats=args.bn_stats,
        probe=ProbeSettings(epochs=args.probe_epochs, lr=args.probe_lr, seed=args.seed),
    )

    layer = inputs.layer
    similarity = filter_similarity(a.state[f"{layer}.weight"], b.state[f"{layer}.weight"], layer, args.threshold)
    record["similarity"] = similarity_record(similarity, a, states, args.threshold)
    record.update(
        seconds=round(time.perf_counter() - started, 1),
        versions=package_versions(),
        hardware=hardware(),
        finished=datetime.now().isoformat(timespec="seconds"),
    )
    write_outputs(inputs.out, table, similarity, record, args.order)
    print_summary(inputs.out, table, record)
    return 0


def target_of(inputs: MergeInputs, batch_size: int) -> Target:
    """The target data with the preprocessing A's model expects."""
    data_config = timm.data.resolve_data_config({}, model=inputs.model_a)
    preprocess = preprocessor(
        inputs.source.img_size, data_config["mean"], data_config["std"], data_config["interpolation"]
    )
    return Target(data=inputs.data, preprocess=preprocess, device=inputs.device, batch_size=batch_size)


def print_inputs(inputs: MergeInputs, args: argparse.Namespace) -> None:
    a, b, data = inputs.a, inputs.b, inputs.data
    print(f"A: {a.path} ({a.data}, {len(a.classes)} classes); B: {b.path} ({b.data}, {len(b.classes)} classes)")
    print(
        f"target: {data.name}, {len(data.train)}/{len(data.val)}/{len(data.test)} train/val/test images at "
        f"{inputs.source.img_size} px; "
        f"heads: {', '.join(describe_head(h, inputs.kept, args) for h in inputs.heads)}; BatchNorm statistics: "
        f"{args.bn_stats}",
        flush=True,
    )


def print_reference(reference: dict[str, dict]) -> None:
    for name, result in reference.items():
        print(
            f"{name} as trained, its own head and statistics: val acc {result['val_acc']:.4f}, test acc "
            f"{result['test_acc']:.4f}"
        )


def similarity_record(similarity: FilterSimilarity, a: Checkpoint, states: dict[str, dict], threshold: float) -> dict:
    """What merge.json keeps of the filter similarity; with --align weights, B's raw order after matching too."""
    summary = similarity.summary()
    if "weights" in states:
        layer = similarity.layer
        aligned = filter_similarity(
            a.state[f"{layer}.weight"], states["weights"][f"{layer}.weight"], layer, threshold
        ).summary()
        summary.update(
            aligned_raw_mean_diagonal=aligned["raw_mean_diagonal"],
            aligned_raw_share_above_threshold=aligned["raw_share_above_threshold"],
        )
    return summary


def start_record(inputs: MergeInputs, target: Target, args: argparse.Namespace, argv: list[str] | None) -> dict:
    """merge.json before the sweep: the command, both checkpoints, the target, the settings, A and B as trained."""
    data = inputs.data
    return {
        "command": sys.argv if argv is None else ["python", "-m", "study.merge", *argv],
        "checkpoint_a": inputs.a.describe(),
        "checkpoint_b": inputs.b.describe(),
        "target": {
            "data": data.name,
            "classes": data.classes,
            "split_seed": inputs.source.config.split_seed,
            "img_size": inputs.source.img_size,
            "images": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        },
        "heads": {h: describe_head(h, inputs.kept, args) for h in inputs.heads},
        "bn_stats": args.bn_stats,
        "alphas": inputs.alphas,
        "reference": reference_scores(target, {"A": inputs.model_a, "B": inputs.model_b}, (inputs.a, inputs.b)),
    }


def first_conv(model: nn.Module) -> str:
    convs = [layer.name for layer in weight_layers(model) if layer.kind == "conv"]
    if not convs:
        raise StudyError(f"{type(model).__name__} has no conv layer to compare filters of: pass --layer")
    return convs[0]


def describe_head(head: str, kept: str | None, args: argparse.Namespace) -> str:
    if head == "keep":
        return f"kept: {kept} head (trained on the target's classes)"
    return (
        f"linear probe: a new head fitted on frozen features of the training split, {args.probe_epochs} epochs, "
        f"AdamW lr {args.probe_lr}"
    )
