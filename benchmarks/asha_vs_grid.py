"""asha_vs_grid: one grid run by `python -m study.run` three ways: every trial to the end, ASHA, multi-objective ASHA.

    python benchmarks/asha_vs_grid.py            # full: 2,400 training photos, 20 trials of up to 9 epochs
    python benchmarks/asha_vs_grid.py --quick    # 400 photos, 12 trials of up to 9 epochs

tf_efficientnet_lite0 (real ImageNet weights) on the CIFAR-10 photos at 64 px, AdamW, batch 64; the grid
crosses unfreeze depths with learning rates (DEPTHS x LRS), every trial has up to MAX_EPOCHS epochs. The same
space runs three times, each from an empty feature cache: `asha: false` (every trial to the end), ASHA on
validation accuracy alone (`objectives: metric`, Ray's ASHAScheduler) and multi-objective ASHA
(`objectives: pareto`, study/tune/rungs.py), both with grace 1 epoch and reduction factor 3.

Measured for each: trial-epochs (against the grid's), wall time, the best final validation accuracy of
completed trials, and the hypervolume of the accuracy-time front, of completed trials (the report's default
front) and with stopped trials on it, on training time (`train_time_s`, the main front: what each configuration
costs alone on a fresh node) and on what the study spent (`study_train_time_s`: features reused from the cache
cost nothing), all against one reference point: accuracy 0 and 1.1 x the
slowest completed trial of any of the three runs. Goal (GOALS): multi-objective ASHA keeps at least 95%
of the grid's hypervolume on completed trials (train_time_s) with at most 35% of its trial-epochs.
Headline: that hypervolume ratio.
"""

from __future__ import annotations

import json
import shutil
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
    study_wall_time,
    timed,
    verdicts,
    warm_images,
)

NAME = "asha_vs_grid"
DEPTHS = [8, 4, 2, 1, 0]  # deepest first: each stretch of the frozen network is computed once
LRS = [3e-4, 1e-3, 3e-3, 1e-2]
MAX_EPOCHS = 9
ASHA = {"grace_period": 1, "reduction_factor": 3}
# The headline's run before single-metric ASHA: on a loaded machine the last study is the likeliest to be cut short.
RUNS = {"grid": False, "mo_asha": {**ASHA, "objectives": "pareto"}, "asha": {**ASHA, "objectives": "metric"}}
COSTS = ("train_time_s", "study_train_time_s")
GOALS = [  # multi-objective ASHA against the grid
    Goal(
        "ratio",
        ">=",
        0.95,
        "multi-objective ASHA keeps at least 95% of the grid's hypervolume (completed, train_time_s)",
    ),
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


def hypervolume(trials: pd.DataFrame, cost: str, reference: float, include_stopped: bool) -> float:
    from study.analysis.pareto import hypervolume_history

    history = hypervolume_history(trials, cost=cost, include_stopped=include_stopped, reference_cost=reference)
    return float(history.history["hypervolume"].iloc[-1])


def main() -> None:
    parser = benchmark_parser(__doc__, "400 photos and 12 trials instead of 2,400 and 20")
    parser.add_argument(
        "--reuse",
        type=Path,
        help="a run directory of an earlier, interrupted run of this benchmark: its finished studies are kept (wall "
        "time: the one it measured, else its study.json's), the others run",
    )
    args = parser.parse_args()

    from study.analysis.pareto import REFERENCE_MARGIN

    per_class = 50 if args.quick else 300
    depths, lrs = (DEPTHS[1:], LRS[1:]) if args.quick else (DEPTHS, LRS)
    data = cifar_subset(args.archive, args.work, per_class, 20)
    data_root = args.work / "data-root"
    warm_images(data, data_root, 64)
    run = args.reuse or args.work / f"{NAME}-{time.strftime('%Y%m%d-%H%M%S')}"
    load_before = load_average()
    walls, trials, reused = {}, {}, []
    measured = run / "walls.json"
    for label, asha in RUNS.items():
        if "finished" in (json.loads(done.read_text()) if (done := run / label / "study.json").exists() else {}):
            known = json.loads(measured.read_text()) if measured.exists() else {}
            walls[label] = known.get(label) or study_wall_time(run / label)
            reused.append(label)
        else:
            shutil.rmtree(run / label, ignore_errors=True)  # what an interrupted study left: run it again whole
            forget_features(data_root)
            space = space_file(run / f"{label}.yaml", depths, lrs, asha)
            walls[label], _ = timed(study_command(space, data, data_root, run / label), run / f"{label}.log")
        measured.write_text(json.dumps(walls))
        trials[label] = read_trials(run / label)

    completed = pd.concat([t[t["status"] == "completed"] for t in trials.values()])
    references = {cost: float(REFERENCE_MARGIN * completed[cost].max()) for cost in COSTS}
    epochs = {label: int(t["epochs_run"].sum()) for label, t in trials.items()}
    per_run = {}
    for label, t in trials.items():
        volumes = {
            f"hypervolume_{cost}{suffix}": hypervolume(t, cost, references[cost], stopped)
            for cost in COSTS
            for suffix, stopped in (("", False), ("_with_stopped", True))
        }
        per_run[label] = {
            "trial_epochs": epochs[label],
            "trial_epoch_share": epochs[label] / epochs["grid"],
            "wall_s": round(walls[label], 1),
            "best_val_acc": float(t.loc[t["status"] == "completed", "val_acc"].max()),
            "trials": t["status"].value_counts().to_dict(),
            **volumes,
        }
    for numbers in per_run.values():
        for key in [k for k in numbers if k.startswith("hypervolume_")]:
            numbers[key.replace("hypervolume_", "hypervolume_ratio_")] = numbers[key] / per_run["grid"][key]
    mo = per_run["mo_asha"]
    ratio = mo["hypervolume_ratio_train_time_s"]
    measured = {
        "ratio": ratio,
        "trial_epoch_share": mo["trial_epoch_share"],
        "ratio_with_stopped": mo["hypervolume_ratio_train_time_s_with_stopped"],
    }
    met = all(verdict["met"] for verdict in verdicts(GOALS, measured))
    summary = {
        "runs": per_run,
        "reference_point": {"val_acc": 0.0, **references},
        "goal": "mo_asha: " + "; ".join(goal.what for goal in GOALS),
        "goal_met": met,
        "depths": depths,
        "lrs": lrs,
        "max_epochs": MAX_EPOCHS,
        "asha": ASHA,
        "train_images_per_class": per_class,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "quick": args.quick,
        "run": str(run),
        "reused_runs": reused,
    }
    columns = [
        "unfreeze_depth",
        "lr",
        "status",
        "epochs_run",
        "val_acc",
        "train_time_s",
        "study_train_time_s",
        "cache",
        "stop_reason",
    ]
    table = pd.concat([t[columns].assign(run=label) for label, t in trials.items()])
    summary["goals"] = verdicts(GOALS, measured)
    path = save(NAME, table, summary, args)  # --quick: a scratch directory, never benchmarks/results/
    print(table.drop(columns="stop_reason").to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"{'':40}" + "".join(f"{label:>12}" for label in per_run))
    rows = [
        ("trial-epochs", "trial_epochs", "{:.0f}"),
        ("share of the grid's", "trial_epoch_share", "{:.0%}"),
        ("wall (s)", "wall_s", "{:.1f}"),
        ("best val acc (completed)", "best_val_acc", "{:.4f}"),
        *(
            (f"HV {cost[:-2]}{suffix}", f"hypervolume_ratio_{cost}{suffix}", "{:.2f}")
            for cost in COSTS
            for suffix in ("", "_with_stopped")
        ),
    ]
    for name, key, form in rows:
        print(f"{name:40}" + "".join(f"{form.format(per_run[label][key]):>12}" for label in per_run))
    print(
        f"goal {summary['goal']}: {'met' if met else 'missed'} (hypervolume {ratio:.2f}, trial-epochs "
        f"{mo['trial_epoch_share']:.0%}); load average {load_before} -> {summary['load_average_after']}; table: {path}"
    )
    finish(NAME, GOALS, measured)


if __name__ == "__main__":
    main()
