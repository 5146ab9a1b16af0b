"""Merge two trial checkpoints by weight interpolation: `python -m study.merge CKPT_A CKPT_B --data NAME --out DIR`.

For every alpha of the sweep the merged model is (1 - alpha) * A + alpha * B,
tensor by tensor (the backbone; the heads too when A and B were trained on the
same classes). Before evaluation its BatchNorm statistics are recomputed on the
target's training images: interpolated running means and variances are not the
statistics of the interpolated network (averaging weights shrinks activation
variance, Jordan et al. 2022, "REPAIR"), and evaluating with them can turn a
sound merge into chance accuracy. `--bn-stats interpolate` skips this to show
the effect.

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
hardware). Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import math
import pickle
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import timm.data
import torch
from torch import nn

from study.core.config import DEVICES, StudyError, TrialConfig
from study.core.environment import hardware, package_versions
from study.core.files import atomic_write, write_json
from study.merging.align import permutation_spec, permute, weight_matching
from study.merging.similarity import ORDERS, conv_weight, filter_similarity, similarity_figures
from study.trial.augment import preprocessor
from study.trial.data import ImageSet, Splits, batches, load_data
from study.trial.models import (
    INSERTED_BN,
    apply_freeze,
    create_backbone,
    head_modules,
    in_head,
    plan_for,
    weight_layers,
)
from study.trial.train import CHECKPOINT_FILE, CHECKPOINT_FORMAT, pick_device

DEFAULT_ALPHAS = tuple(round(i / 10, 1) for i in range(11))
HEADS = ("keep", "probe")
PROBE_BATCH_SIZE = 64


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, torch.Tensor]  # the backbone's state dict, head included (timm keys)
    config: TrialConfig
    data: str
    classes: list[str]
    weights_used: str
    img_size: int

    def build(self) -> nn.Module:
        """The model in eval mode with this checkpoint's weights, rebuilt
        with the trial's surgery (head, inserted BN)."""
        model, _ = create_backbone(
            self.config.backbone, "random", len(self.classes), self.config.seed, self.img_size, self.config.head
        )
        model = apply_freeze(model, plan_for(model, self.config)).backbone
        try:
            model.load_state_dict(self.state, strict=True)
        except RuntimeError as error:
            first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
            raise StudyError(
                f"{self.path} does not fit timm's {self.config.backbone} ({first}): was it written by another "
                "version of the model?"
            ) from None
        return model.eval()

    def describe(self) -> dict:
        return {
            "path": str(self.path),
            "backbone": self.config.backbone,
            "data": self.data,
            "classes": self.classes,
            "weights_used": self.weights_used,
            "img_size": self.img_size,
            "config": self.config.to_dict(),
        }


def find_checkpoint_file(path: Path) -> Path:
    """PATH may be model.pt, a checkpoint directory holding it, or a trial directory (its latest checkpoint_*/)."""
    if path.is_file():
        return path
    if (path / CHECKPOINT_FILE).is_file():
        return path / CHECKPOINT_FILE
    saved = sorted(path.glob(f"checkpoint_*/{CHECKPOINT_FILE}"))
    if saved:
        return saved[-1]
    where = "does not exist" if not path.exists() else f"holds no {CHECKPOINT_FILE}"
    raise StudyError(
        f"checkpoint {path} {where}: pass a model.pt saved by a trial with save_checkpoint: true (trials.csv lists "
        "them)"
    )


CHECKPOINT_KEYS = ("state_dict", "config", "data", "classes", "weights_used", "img_size")


def load_checkpoint(path: Path) -> Checkpoint:
    file = find_checkpoint_file(path)
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise StudyError(
            f"{file} cannot be read as a checkpoint ({reason}): pass a model.pt saved by a trial with "
            "save_checkpoint: true"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise StudyError(
            f"{file} is not a study checkpoint (format {CHECKPOINT_FORMAT}): pass a model.pt saved by a trial with "
            "save_checkpoint: true"
        )
    missing = [key for key in CHECKPOINT_KEYS if key not in payload]
    if missing or not isinstance(payload["config"], dict) or not isinstance(payload["state_dict"], dict):
        problem = f"no {missing[0]!r}" if missing else "config or state_dict is no mapping"
        raise StudyError(
            f"{file} is a damaged study checkpoint ({problem}): save it again (a trial with save_checkpoint: true), "
            "or pass another model.pt"
        )
    config = TrialConfig.from_dict(payload["config"], where=str(file))
    return Checkpoint(
        file,
        payload["state_dict"],
        config,
        payload["data"],
        list(payload["classes"]),
        payload["weights_used"],
        payload["img_size"],
    )


def head_keys(model: nn.Module) -> set[str]:
    heads = head_modules(model)
    return {key for key in model.state_dict() if in_head(key, heads)}


def check_compatible(a: Checkpoint, b: Checkpoint, heads: set[str]) -> None:
    """Same backbone, same tensors of the same shapes; heads may differ in their number of classes."""
    if a.config.backbone != b.config.backbone:
        raise StudyError(
            f"A is a {a.config.backbone} checkpoint but B is {b.config.backbone}: merge two checkpoints of one backbone"
        )
    missing = sorted(set(a.state) ^ set(b.state))
    if missing:
        raise StudyError(
            f"A and B hold different tensors (first: '{missing[0]}'): merge two checkpoints of one architecture"
        )
    for key in a.state:
        if key not in heads and a.state[key].shape != b.state[key].shape:
            raise StudyError(
                f"tensor '{key}' is {tuple(a.state[key].shape)} in A but {tuple(b.state[key].shape)} in B: merge two "
                "checkpoints of one architecture"
            )


def interpolate(state_a: dict, state_b: dict, alpha: float, keys) -> dict:
    """(1 - alpha) * A + alpha * B for the floating tensors in `keys`; every other tensor is A's."""
    merged = dict(state_a)
    for key in keys:
        if state_a[key].is_floating_point():
            merged[key] = torch.lerp(state_a[key], state_b[key], alpha)  # exact at alpha 0 and 1
    return merged


def recompute_bn_stats(model: nn.Module, data: ImageSet, preprocess, device: torch.device, batch_size: int) -> int:
    """Replace every BatchNorm's running statistics by those of `model` itself on `data`; returns images used.

    Running statistics are reset and averaged cumulatively (momentum None) over
    forward passes in which only the BatchNorm layers are in train mode (dropout
    and drop-path stay off). Only full batches are used: PyTorch's cumulative
    average weighs every batch alike, so a small last batch would count too much.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    used = len(data) if len(data) <= batch_size else len(data) // batch_size * batch_size
    if used < 2:
        raise StudyError(
            f"BatchNorm statistics need at least 2 training images, the target has {len(data)}: use more data or "
            "--bn-stats interpolate"
        )
    momenta = [norm.momentum for norm in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        with torch.no_grad():
            for images, _ in batches(data.subset(range(used)), batch_size):
                model(preprocess(images.to(device)))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()
    return used


@torch.inference_mode()
def features(model: nn.Module, data: ImageSet, preprocess, device: torch.device, batch_size: int) -> torch.Tensor:
    """The pre-logits features (what the classifier reads) of every image, in order."""
    model.eval()
    parts = [
        model.forward_head(model.forward_features(preprocess(images.to(device))), pre_logits=True)
        for images, _ in batches(data, batch_size)
    ]
    return torch.cat(parts) if parts else torch.empty(0, model.num_features, device=device)


def fit_probe(
    train: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int, lr: float, seed: int
) -> nn.Linear:
    """A new linear head trained on frozen features: AdamW, batches of 64, seeded init and order."""
    torch.manual_seed(seed)
    head = nn.Linear(train.shape[1], num_classes).to(train.device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    labels = labels.to(train.device)
    for _ in range(epochs):
        for index in torch.randperm(len(train), generator=order).split(PROBE_BATCH_SIZE):
            loss = nn.functional.cross_entropy(head(train[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return head.eval()


@torch.inference_mode()
def scores(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy)."""
    if len(labels) == 0:
        return math.nan, math.nan
    logits = head(feats)
    labels = labels.to(logits.device)
    return nn.functional.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).sum().item() / len(labels)


@dataclass
class Target:
    data: Splits
    preprocess: object
    device: torch.device
    batch_size: int

    def evaluate(
        self, model: nn.Module, heads: dict[str, object], probe: tuple[int, float, int] | None
    ) -> dict[str, dict]:
        """Accuracy and loss on train/val/test for each head; `heads` maps a name to a module, or to None for the
        probe."""
        feats = {
            split: features(model, getattr(self.data, split), self.preprocess, self.device, self.batch_size)
            for split in ("train", "val", "test")
        }
        results = {}
        for name, head in heads.items():
            if head is None:
                epochs, lr, seed = probe
                head = fit_probe(feats["train"], self.data.train.labels, self.data.num_classes, epochs, lr, seed)
            row = {}
            for split in ("train", "val", "test"):
                row[f"{split}_loss"], row[f"{split}_acc"] = scores(head, feats[split], getattr(self.data, split).labels)
            results[name] = row
        return results


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_settings(args)
        alphas = parse_alphas(args.alphas)
        a, b = load_checkpoint(args.checkpoint_a), load_checkpoint(args.checkpoint_b)
        model_a, model_b = a.build(), b.build()
        heads_in_model = head_keys(model_a)
        check_compatible(a, b, heads_in_model)
        if args.align == "weights" and any(INSERTED_BN in key for key in a.state):
            # torch.fx does not trace forward pre-hooks, through which inserted BatchNorm acts: the spec would miss it.
            raise StudyError(
                f"{a.path}: --align weights does not support models with bn_insert=before_retrained_conv: use "
                "--align none"
            )
        layer = args.layer or first_conv(model_a)
        conv_weight(model_a, layer)
        data_name = args.data or a.data
        source = next(
            (c for c in (a, b) if c.data == data_name), a
        )  # its split and input size: no test image it trained on
        data = load_data(data_name, source.config.split_seed, source.img_size, source.config.data_root)
        heads, kept = choose_heads(args.head, a, b, data)
        device = pick_device(args.device)
        out = prepare_out(args.out)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    data_config = timm.data.resolve_data_config({}, model=model_a)
    preprocess = preprocessor(source.img_size, data_config["mean"], data_config["std"], data_config["interpolation"])
    target = Target(data, preprocess, device, args.batch_size)
    same_task = a.classes == b.classes
    head_owner = b if kept == "B's" else a  # whose head (and class count) the merged model carries
    print(f"A: {a.path} ({a.data}, {len(a.classes)} classes); B: {b.path} ({b.data}, {len(b.classes)} classes)")
    print(
        f"target: {data.name}, {len(data.train)}/{len(data.val)}/{len(data.test)} train/val/test images at "
        f"{source.img_size} px; "
        f"heads: {', '.join(describe_head(h, kept, args) for h in heads)}; BatchNorm statistics: {args.bn_stats}",
        flush=True,
    )

    record = {
        "command": sys.argv if argv is None else ["python", "-m", "study.merge", *argv],
        "checkpoint_a": a.describe(),
        "checkpoint_b": b.describe(),
        "target": {
            "data": data.name,
            "classes": data.classes,
            "split_seed": source.config.split_seed,
            "img_size": source.img_size,
            "images": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        },
        "heads": {h: describe_head(h, kept, args) for h in heads},
        "bn_stats": args.bn_stats,
        "alphas": alphas,
        "reference": reference_scores(target, {"A": model_a, "B": model_b}, (a, b)),
    }
    for name, result in record["reference"].items():
        print(
            f"{name} as trained, its own head and statistics: val acc {result['val_acc']:.4f}, test acc "
            f"{result['test_acc']:.4f}"
        )

    # Heads take part in matching and interpolation only if both were trained on the same classes.
    merged_keys = [k for k in a.state if same_task or k not in heads_in_model]
    states = {"none": b.state}
    if args.align == "weights":
        states["weights"], record["alignment"] = align(a, b, model_a, merged_keys, source.img_size, args.seed)
    table = sweep(a, states, alphas, merged_keys, head_owner, heads, target, args)

    similarity = filter_similarity(a.state[f"{layer}.weight"], b.state[f"{layer}.weight"], layer, args.threshold)
    record["similarity"] = similarity.summary()
    if "weights" in states:
        aligned = filter_similarity(
            a.state[f"{layer}.weight"], states["weights"][f"{layer}.weight"], layer, args.threshold
        ).summary()
        record["similarity"].update(
            aligned_raw_mean_diagonal=aligned["raw_mean_diagonal"],
            aligned_raw_share_above_threshold=aligned["raw_share_above_threshold"],
        )
    record.update(
        seconds=round(time.perf_counter() - started, 1),
        versions=package_versions(),
        hardware=hardware(),
        finished=datetime.now().isoformat(timespec="seconds"),
    )
    write_outputs(out, table, similarity, record, args.order)
    print_summary(out, table, record)
    return 0


def align(
    a: Checkpoint, b: Checkpoint, model_a: nn.Module, merged_keys: list[str], img_size: int, seed: int
) -> tuple[dict, dict]:
    """B's state permuted to match A (weight matching on the merged parameters), and what the alignment did."""
    started = time.perf_counter()
    spec = permutation_spec(model_a, torch.zeros(2, 3, img_size, img_size))
    parameters = {name for name, _ in model_a.named_parameters()} & set(merged_keys)
    perms = weight_matching(a.state, b.state, spec, parameters, seed=seed)
    moved = sum(int((perm != torch.arange(len(perm))).sum()) for perm in perms)
    channels = sum(group.size for group in spec.groups)
    share = spec.permuted_share(a.state, parameters)
    print(
        f"alignment: {spec.describe()}; {share:.1%} of the merged parameters in permutable tensors, {moved} of "
        f"{channels} channels moved",
        flush=True,
    )
    record = {
        "groups": len(spec.groups),
        "channels": channels,
        "channels_moved": moved,
        "permuted_parameter_share": share,
        "kept_in_place_by": dict(spec.fixed),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return (
        b.state if moved == 0 else permute(b.state, spec, perms)
    ), record  # the same object: sweep reuses its numbers


def sweep(
    a: Checkpoint,
    states: dict,
    alphas: list[float],
    merged_keys: list[str],
    head_owner: Checkpoint,
    heads: list[str],
    target: Target,
    args: argparse.Namespace,
) -> pd.DataFrame:
    """Evaluate (1 - alpha) * A + alpha * B for every B state (unaligned, aligned) and alpha: one row per head.

    A merge identical to one already evaluated (alpha 0 with A's head, or an alignment that moved nothing) is
    not evaluated again: every step is deterministic, so its numbers are the same.
    """
    rows, done = [], {}
    model = head_owner.build().to(target.device)
    head_keys_b = head_keys(model) if head_owner is not a else set()
    for align_mode, state_b in states.items():
        for alpha in alphas:
            key = (
                "A" if alpha == 0 and not head_keys_b else (id(state_b), alpha)
            )  # alpha 0 with A's head is A, whatever B
            note = " (the same model as above: not evaluated again)" if key in done else ""
            if key not in done:
                merged = interpolate(a.state, state_b, alpha, merged_keys)
                merged.update({k: state_b[k] for k in head_keys_b if k not in merged_keys})  # B's head, kept whole
                model.load_state_dict(merged)
                if args.bn_stats == "recompute":
                    recompute_bn_stats(model, target.data.train, target.preprocess, target.device, args.batch_size)
                heads_now = {head: model.get_classifier() if head == "keep" else None for head in heads}
                done[key] = target.evaluate(model, heads_now, (args.probe_epochs, args.probe_lr, args.seed))
            evaluated = done[key]
            for head, result in evaluated.items():
                rows.append({"align": align_mode, "alpha": alpha, "head": head, "bn_stats": args.bn_stats, **result})
            scores_now = "  ".join(
                f"{h}: val {r['val_acc']:.4f} test {r['test_acc']:.4f}" for h, r in evaluated.items()
            )
            print(f"  align={align_mode:<7} alpha={alpha:<4} {scores_now}{note}", flush=True)
    return pd.DataFrame(rows)


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


def reference_scores(target: Target, models: dict[str, nn.Module], checkpoints) -> dict[str, dict]:
    """A and B themselves on the target data, where their own head fits
    its classes: the ends of the sweep as trained."""
    results = {}
    for (name, model), ckpt in zip(models.items(), checkpoints):
        if ckpt.classes == target.data.classes:
            model.to(target.device)
            results[name] = target.evaluate(model, {"own": model.get_classifier()}, None)["own"]
            model.cpu()
    return results


def write_outputs(out: Path, table: pd.DataFrame, similarity, record: dict, order: str) -> None:
    atomic_write(out / "merge.csv", lambda p: table.to_csv(p, index=False))
    figure = merge_figure(table, record)
    atomic_write(out / "merge.html", lambda p: figure.write_html(p, include_plotlyjs=True, full_html=True))
    atomic_write(out / "similarity.csv", lambda p: similarity.table().to_csv(p, index=False))
    labels = (f"A ({record['checkpoint_a']['data']})", f"B ({record['checkpoint_b']['data']})")
    parts = [
        f.to_html(full_html=False, include_plotlyjs=i == 0)
        for i, f in enumerate(similarity_figures(similarity, order, labels))
    ]
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>filter similarity</title></head><body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
    atomic_write(out / "similarity.html", lambda p: Path(p).write_text(page))
    write_json(out / "merge.json", record)


def merge_figure(table: pd.DataFrame, record: dict) -> go.Figure:
    figure = go.Figure()
    for (align, head), part in table.groupby(["align", "head"], sort=False):
        for split, dash in (("val", "solid"), ("test", "dot")):
            figure.add_trace(
                go.Scatter(
                    x=part["alpha"],
                    y=part[f"{split}_acc"],
                    mode="lines+markers",
                    name=f"{split}: align {align}, head {head}",
                    line=dict(dash=dash),
                    hovertemplate=f"align {align}, head {head}<br>alpha %{{x}}<br>{split} acc "
                    f"%{{y:.4f}}<extra></extra>",
                )
            )
    a, b = record["checkpoint_a"], record["checkpoint_b"]
    figure.update_layout(
        title=f"(1 - alpha) * A + alpha * B on {record['target']['data']}: A trained on {a['data']}, B on {b['data']} "
        f"({a['backbone']}; BatchNorm statistics {record['bn_stats']})",
        xaxis_title="alpha (weight of B)",
        yaxis_title="accuracy",
        template="plotly_white",
        hovermode="closest",
    )
    return figure


def print_summary(out: Path, table: pd.DataFrame, record: dict) -> None:
    for split in ("val", "test"):
        pivot = table.pivot_table(index="alpha", columns=["align", "head"], values=f"{split}_acc", sort=False)
        print(
            f"\n{split} accuracy by alpha (columns: alignment, "
            f"head):\n{pivot.to_string(float_format=lambda v: f'{v:.4f}')}"
        )
    s = record["similarity"]
    line = (
        f"\nfilter similarity of {s['layer']} ({s['filters']} filters): mean diagonal raw "
        f"{s['raw_mean_diagonal']:.3f}, "
        f"greedy {s['greedy_mean_diagonal']:.3f}, optimal {s['optimal_mean_diagonal']:.3f}; above {s['threshold']}: "
        f"greedy {s['greedy_share_above_threshold']:.1%}, optimal {s['optimal_share_above_threshold']:.1%}"
    )
    if "aligned_raw_mean_diagonal" in s:
        line += f"; raw order after weight matching {s['aligned_raw_mean_diagonal']:.3f}"
    print(line)
    print(f"Finished in {record['seconds']:.0f} s. Results: {out.resolve()}")
