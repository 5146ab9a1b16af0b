"""many_trials: how many cheap trials a study runs per second, where their time goes, and how that grows with N.

    python benchmarks/many_trials.py                    # full: studies of 100, 300 and 1,000 trials
    python benchmarks/many_trials.py --trials 100       # one size
    python benchmarks/many_trials.py --quick            # 20 trials, results to --work only

The study users run by the hundred: a linear probe on cached features (tf_efficientnet_lite0 with its real
ImageNet weights, the built-in digits at 32 px, 2 epochs, batch 128), the learning rate searched (random,
log-uniform 1e-4..1e-1), no ASHA, through `python -m study.run` as a user runs it (its own Ray, one CPU per
trial: two trials at a time on two cores; without the dashboard, a fixed start-up cost that fails to start in time
on an overloaded machine). From the trials table and study.json:
- trials per second: N over the trial phase (the first trial's start to the last trial's last report);
- where a trial's wall time goes (its start in the worker to its last report): data loading, model build with
  weights and freezing, the cache's cut check, training (what this trial spent, `study_train_time_s`: its
  `train_time_s` also charges the cached features it reused what building them cost), evaluation, and the rest
  (reports, Ray's per-iteration work in the worker);
- the driver's cost per trial: the slots' time in the trial phase not spent inside a trial, per trial
  ((phase x slots - sum of trial wall times) / N): Ray's scheduling, starting trials, the export callback, the
  experiment-state saves. Goals (GOALS, issue 25): >= 10 trials/s; at the largest N, the driver's cost per trial
  within 1.2x of the smallest N's.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import yaml
from common import REPO, Goal, environment, finish, load_average, save, verdicts

NAME = "many_trials"
GOALS = [
    Goal("trials_per_s", ">=", 10.0, "at least 10 cheap trials per second (the smallest study)"),
    Goal("driver_growth", "<=", 1.2, "the driver's cost per trial at the largest size within 1.2x of the smallest's"),
]
SIZES = (100, 300, 1000)
QUICK_SIZE = 20
SETUP = ("data_load_s", "model_build_s", "cut_check_s")
TRAINING = "study_train_time_s"  # spent by the trial in this study (train_time_s also counts reused features)


def space_file(path: Path) -> Path:
    space = {
        "description": f"{NAME} benchmark: linear probes on cached features, lr searched",
        "fixed": {
            "backbone": "tf_efficientnet_lite0",
            "weights": "imagenet",
            "data": "digits",
            "img_size": 32,
            "unfreeze_depth": 0,
            "optimizer": "adamw",
            "batch_size": 128,
        },
        "dimensions": {"lr": {"loguniform": [1e-4, 1e-1]}},
        "search": "random",
        "max_epochs": 2,
        "asha": False,
        "metric": "val_acc",
        "mode": "max",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def run_study(space: Path, trials: int, work: Path) -> dict:
    import subprocess
    import sys

    out = work / f"study-{trials}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "study.run", "--space", str(space), "--num-samples", str(trials)]
    command += ["--data-root", str(work / "data-root"), "--out", str(out), "--no-dashboard"]
    load_before = load_average()
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=environment(), cwd=REPO)
    wall = time.perf_counter() - start
    (work / f"study-{trials}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"the study of {trials} trials failed; its output is in {work / f'study-{trials}.log'}")
    table = pd.read_parquet(out / "trials.parquet")
    study = json.loads((out / "study.json").read_text())
    return summarise(table, study, trials, wall, load_before)


def summarise(table: pd.DataFrame, study: dict, trials: int, wall: float, load_before: list[float]) -> dict:
    phase = table["finished_at"].max() - table["started_at"].min()
    trial_wall = table["finished_at"] - table["started_at"]
    slots = min(trials, int(study["cluster"]["cpus"] // study["resources"]["cpus_per_trial"]))
    measured = table[[*SETUP, TRAINING, "eval_time_s"]].sum(axis=1)
    row = {
        "trials": trials,
        "completed": int((table["status"] == "completed").sum()),
        "process_wall_s": round(wall, 1),
        "study_wall_s": study.get("wall_time_s"),
        "trial_phase_s": round(phase, 2),
        "trials_per_s": round(trials / phase, 3),
        "slots": slots,
        "trial_wall_mean_s": round(trial_wall.mean(), 4),
        **{f"{key}_mean": round(table[key].mean(), 4) for key in (*SETUP, TRAINING, "eval_time_s")},
        "rest_in_trial_mean_s": round((trial_wall - measured).mean(), 4),
        "driver_per_trial_s": round((phase * slots - trial_wall.sum()) / trials, 4),
        "best_val_acc": round(table["val_acc"].max(), 4),
        "phases": study.get("phases"),
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    return row


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=list(SIZES), help="study sizes (trials)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SIZE} trials; results to --work only")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "study-benchmarks")
    args = parser.parse_args()
    sizes = [QUICK_SIZE] if args.quick else sorted(args.trials)
    work = args.work / NAME
    space = space_file(work / "space.yaml")
    rows = []
    for trials in sizes:
        rows.append(run_study(space, trials, work))
        row = rows[-1]
        print(
            f"{trials} trials: {row['trials_per_s']:.2f} trials/s over {row['trial_phase_s']:.1f} s; per trial "
            f"{row['trial_wall_mean_s']:.3f} s in the worker (data {row['data_load_s_mean']:.3f}, model "
            f"{row['model_build_s_mean']:.3f}, cut {row['cut_check_s_mean']:.3f}, training "
            f"{row[f'{TRAINING}_mean']:.3f}, evaluation {row['eval_time_s_mean']:.3f}, rest "
            f"{row['rest_in_trial_mean_s']:.3f}), driver {row['driver_per_trial_s']:.3f} s; load "
            f"{row['load_average_before']} -> {row['load_average_after']}",
            flush=True,
        )
    table = pd.DataFrame(rows)
    growth = table["driver_per_trial_s"].iloc[-1] / table["driver_per_trial_s"].iloc[0]
    measured = {"trials_per_s": table["trials_per_s"].iloc[0], "driver_growth": growth if len(rows) > 1 else math.nan}
    meta = {"sizes": sizes, "quick": args.quick, "goals": verdicts(GOALS, measured), "rows": rows}
    path = save(NAME, table.drop(columns=["phases"]), meta, args)
    print(f"table: {path}")
    finish(NAME, GOALS, measured)  # one size: growth is NaN, not judged as met


if __name__ == "__main__":
    main()
