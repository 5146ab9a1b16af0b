"""A bare PyTorch loop over unfreeze depths, one after another: the baseline the study is measured against.

    python benchmarks/bare_loop.py --data folder:PATH --depths 0 2 8 all --epochs 3 --out RESULTS.json

What a researcher writes without `study` (document 004's procedure): for each depth build the model
with its ImageNet weights and a new head, freeze all but the last K layers, train for the epochs,
evaluate on the validation split after every epoch. Every image goes through the whole network
every epoch; nothing is cached between epochs or depths, no process runs beside it. It uses the
study's own helpers only to get exactly the same data split, weights, head, frozen layers and batch
order (`load_data`, `create_backbone`, `plan_for`/`apply_freeze`, `preprocessor`, `train_loader`: a
plain shuffled DataLoader seeded with the trial seed) and AdamW with the study's default weight decay (none),
so that the two sides differ in how they train, not in what they train. With the same thread count and memory
format they reach the same accuracies, epoch by epoch (tests/test_benchmarks.py); with both cores and the
default memory format here against one core and channels_last in a trial, they differ by float rounding, which
training can amplify (BENCHMARKS.md, naive_vs_study).

--channels-last and --eval-test make it the same training as one study trial on CPU (channels_last
memory format, test evaluation each epoch): benchmarks/trial_overhead.py compares them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm.data
import torch
from torch import nn

from study.core.config import TrialConfig
from study.trial.augment import preprocessor
from study.trial.backbones import create_backbone
from study.trial.batching import train_loader
from study.trial.data import load_data
from study.trial.freeze import apply_freeze, plan_for
from study.trial.splits import ImageSet


def evaluate(model: nn.Module, data: ImageSet, prepare, batch_size: int) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            images, labels = data.batch(torch.arange(start, min(start + batch_size, len(data))))
            correct += (model(prepare(images)).argmax(1) == labels).sum().item()
    return correct / len(data)


def train_depth(splits, depth, args) -> dict:
    config = TrialConfig(backbone=args.backbone, unfreeze_depth=depth, img_size=args.img_size, seed=args.seed)
    backbone, _ = create_backbone(args.backbone, "imagenet", splits.num_classes, args.seed, args.img_size)
    model = apply_freeze(backbone, plan_for(backbone, config))
    format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=format)
    data_config = timm.data.resolve_data_config({}, model=backbone)
    preprocess = preprocessor(args.img_size, data_config["mean"], data_config["std"], data_config["interpolation"])
    prepare = lambda images: preprocess(images).contiguous(memory_format=format)
    # weight_decay spelled out: torch's AdamW decays every weight by 0.01 unless told, the study's default is none
    # (that default alone once put the two sides 1.8 points apart at depth 32, BENCHMARKS.md)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=args.lr, weight_decay=config.weight_decay)
    # a plain shuffled DataLoader, seeded as a study trial seeds its own: the same batches in the same order
    loader = train_loader(
        splits.train, args.batch_size, None, torch.Generator().manual_seed(args.seed), workers=0, pin_memory=False
    )
    epochs = []
    for epoch in range(1, args.epochs + 1):
        model.train()
        start = time.perf_counter()
        for images, labels in loader:
            loss = nn.functional.cross_entropy(model(prepare(images)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        train_s = time.perf_counter() - start
        val_acc = evaluate(model, splits.val, prepare, args.batch_size)
        test_acc = evaluate(model, splits.test, prepare, args.batch_size) if args.eval_test else None
        epochs.append({"epoch": epoch, "train_s": train_s, "val_acc": val_acc, "test_acc": test_acc})
        print(f"depth {depth} epoch {epoch}: {train_s:.1f} s, val acc {val_acc:.4f}", flush=True)
    return {
        "unfreeze_depth": depth,
        "epochs": epochs,
        "val_acc": epochs[-1]["val_acc"],
        "train_time_s": sum(e["train_s"] for e in epochs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--data-root")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument(
        "--depths", nargs="+", required=True, help="unfreeze depths (integers or 'all'), trained one after another"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, every core)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--eval-test", action="store_true")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the per-depth results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = load_data(args.data, 0, args.img_size, args.data_root)
    results = [train_depth(splits, depth if depth == "all" else int(depth), args) for depth in args.depths]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
