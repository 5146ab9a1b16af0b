"""asha_vs_grid: one grid run by `python -m study.run` with ASHA and without, compared on what each found.

    python benchmarks/asha_vs_grid.py            # full: 2,400 training photos, 20 trials of up to 9 epochs
    python benchmarks/asha_vs_grid.py --quick    # 400 photos, 12 trials of up to 9 epochs

tf_efficientnet_lite0 (real ImageNet weights) on the CIFAR-10 photos at 64 px, AdamW, batch 64; the grid
crosses unfreeze depths with learning rates (DEPTHS x LRS), every trial has up to MAX_EPOCHS epochs. The same
space runs twice, each from an empty feature cache: `asha: false` (every trial to the end) and ASHA
(grace 1 epoch, reduction factor 3, on validation accuracy).

Measured: the share of the grid's trial-epochs that ASHA ran; the best final validation accuracy of each;
and the hypervolume of each accuracy-time front (completed trials, the report's default) against the
same reference point (accuracy 0, 1.1 x the slowest completed trial of either run), on training time
(`train_time_s`, the main front) and on standalone training time (`standalone_train_time_s`: feature
builds charged to every trial that used them, so that which trial happened to build first does not
matter). Headline: ASHA's hypervolume over the grid's, on training time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
from common import (
    Goal,
    benchmark_parser,
    cifar_subset,
    finish,
    forget_features,
    load_average,
    read_trials,
    save,
    study_command,
    timed,
    verdicts,
    warm_images,
)

NAME = "asha_vs_grid"
DEPTHS = [8, 4, 2, 1, 0]  # deepest first: each stretch of the frozen network is computed once
LRS = [3e-4, 1e-3, 3e-3, 1e-2]
MAX_EPOCHS = 9
ASHA = {"grace_period": 1, "reduction_factor": 3}
GOALS = [
    Goal("ratio", ">=", 0.95, "ASHA's front keeps at least 95% of the grid's hypervolume (training time)"),
    Goal("trial_epoch_share", "<=", 0.35, "with at most 35% of the grid's trial-epochs"),
]


def space_file(path: Path, depths: list, lrs: list, asha: dict | bool) -> Path:
    space = {
        "description": f"{NAME} benchmark",
        "fixed": {
            "backbone": "tf_efficientnet_lite0",
            "weights": "imagenet",
            "img_size": 64,
            "optimizer": "adamw",
            "batch_size": 64,
        },
        "dimensions": {"unfreeze_depth": {"grid": depths}, "lr": {"grid": lrs}},
        "max_epochs": MAX_EPOCHS,
        "asha": asha,
        "metric": "val_acc",
        "mode": "max",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(space, indent=2))
    return path


def main() -> None:
    parser = benchmark_parser(__doc__, "400 photos and 12 trials instead of 2,400 and 20")
    args = parser.parse_args()

    from study.pareto import REFERENCE_MARGIN, hypervolume_history

    per_class = 50 if args.quick else 300
    depths, lrs = (DEPTHS[1:], LRS[1:]) if args.quick else (DEPTHS, LRS)
    data = cifar_subset(args.archive, args.work, per_class, 20)
    data_root = args.work / "data-root"
    warm_images(data, data_root, 64)
    run = args.work / f"{NAME}-{time.strftime('%Y%m%d-%H%M%S')}"
    load_before = load_average()
    walls, trials = {}, {}
    for label, asha in (("grid", False), ("asha", ASHA)):
        forget_features(data_root)
        space = space_file(run / f"{label}.yaml", depths, lrs, asha)
        walls[label], _ = timed(study_command(space, data, data_root, run / label), run / f"{label}.log")
        trials[label] = read_trials(run / label)

    completed = pd.concat([t[t["status"] == "completed"] for t in trials.values()])
    summary = {"wall_s": {k: round(v, 1) for k, v in walls.items()}}
    for cost in ("train_time_s", "standalone_train_time_s"):
        reference = REFERENCE_MARGIN * completed[cost].max()
        volumes = {
            label: float(hypervolume_history(t, cost=cost, reference_cost=reference).history["hypervolume"].iloc[-1])
            for label, t in trials.items()
        }
        summary[f"hypervolume_{cost}"] = volumes
        summary[f"hypervolume_ratio_{cost}"] = volumes["asha"] / volumes["grid"]
    # A trial ASHA stopped is a real model at a shorter budget: with stopped trials on the front (the report's
    # --include-stopped), ASHA's cheap early points count. Not the headline: the default front is completed trials.
    reference = REFERENCE_MARGIN * completed["train_time_s"].max()
    with_stopped = (
        hypervolume_history(trials["asha"], include_stopped=True, reference_cost=reference)
        .history["hypervolume"]
        .iloc[-1]
    )
    summary["hypervolume_ratio_including_stopped"] = float(with_stopped) / summary["hypervolume_train_time_s"]["grid"]
    epochs = {label: int(t["epochs_run"].sum()) for label, t in trials.items()}
    summary.update(
        trial_epochs=epochs,
        trial_epoch_share=epochs["asha"] / epochs["grid"],
        best_val_acc={label: float(t.loc[t["status"] == "completed", "val_acc"].max()) for label, t in trials.items()},
        trials={label: t["status"].value_counts().to_dict() for label, t in trials.items()},
        depths=depths,
        lrs=lrs,
        max_epochs=MAX_EPOCHS,
        asha=ASHA,
        train_images_per_class=per_class,
        load_average_before=load_before,
        load_average_after=load_average(),
        quick=args.quick,
        run=str(run),
    )
    columns = [
        "unfreeze_depth",
        "lr",
        "status",
        "epochs_run",
        "val_acc",
        "train_time_s",
        "standalone_train_time_s",
        "cache",
    ]
    table = pd.concat([t[columns].assign(run=label) for label, t in trials.items()])
    measured = {
        "ratio": summary["hypervolume_ratio_train_time_s"],
        "trial_epoch_share": summary["trial_epoch_share"],
        "ratio_including_stopped": summary["hypervolume_ratio_including_stopped"],
    }
    summary["goals"] = verdicts(GOALS, measured)
    path = save(NAME, table, summary, args)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(
        f"ASHA ran {epochs['asha']} of the grid's {epochs['grid']} trial-epochs ({summary['trial_epoch_share']:.0%}); "
        f"best val acc {summary['best_val_acc']['asha']:.4f} vs {summary['best_val_acc']['grid']:.4f}; hypervolume "
        f"{summary['hypervolume_train_time_s']['asha']:.4f} vs {summary['hypervolume_train_time_s']['grid']:.4f} "
        f"(standalone time: {summary['hypervolume_ratio_standalone_train_time_s']:.2f}; ASHA's stopped trials "
        "included: "
        f"{summary['hypervolume_ratio_including_stopped']:.2f}); wall {walls['asha']:.0f} s vs {walls['grid']:.0f} s; "
        f"load average {load_before} -> {summary['load_average_after']}; table: {path}"
    )
    finish(NAME, GOALS, measured)


if __name__ == "__main__":
    main()
