"""trial_overhead: one trial through `python -m study.run` against the same training as a bare PyTorch loop.

    python benchmarks/trial_overhead.py            # full: a trial of about a minute on 2 CPU cores
    python benchmarks/trial_overhead.py --quick    # about 15 s

Full fine-tuning of tf_efficientnet_lite0 (every layer trains, so nothing is cached and both sides do the
same work every epoch) on CIFAR-10 photos at 64 px, AdamW, batch 64, with every core:
- bare: benchmarks/bare_loop.py with channels_last and test evaluation every epoch, as a trial does on CPU;
- study: a one-trial space through `python -m study.run --cpus-per-trial CORES`, as a user runs it
  (its own local Ray instance with the dashboard, results, report), and again through a Ray instance that
  is already running (started by this script; the study joins it with `--address`, as on a cluster): the
  cost of Ray's start and stop, paid once per study rather than per trial, is then out of the study's time.

Wall times are whole processes, from their start to their exit. The bare loop and the study run alternately
--repeats times; the fastest run of each counts (on a shared machine the load changes from run to run).
Headline: the study's wall time over the bare loop's (own Ray instance). The table also holds the trial's own
times (training, evaluation).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
from common import (
    Goal,
    bare_command,
    benchmark_parser,
    cifar_subset,
    finish,
    load_average,
    read_trials,
    save,
    study_command,
    study_wall_time,
    timed,
    verdicts,
    warm_images,
)

NAME = "trial_overhead"
GOALS = [
    Goal("ratio", "<=", 1.25, "one trial through study.run with its own Ray: at most 1.25x the bare loop's wall time"),
    Goal("ratio_running_ray", "<=", 1.10, "on a running Ray (--address), at most 1.10x"),
]


def space_file(path: Path, epochs: int) -> Path:
    space = {
        "description": f"{NAME} benchmark: one trial",
        "fixed": {
            "backbone": "tf_efficientnet_lite0",
            "weights": "imagenet",
            "img_size": 64,
            "optimizer": "adamw",
            "lr": 1e-3,
            "batch_size": 64,
            "unfreeze_depth": "all",
        },
        "max_epochs": epochs,
        "asha": False,
        "metric": "val_acc",
        "mode": "max",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(space, indent=2))
    return path


def study_row(label: str, repeat: int, out: Path, wall_s: float) -> dict:
    trial = read_trials(out).iloc[0]
    return {
        "run": label,
        "repeat": repeat,
        "wall_s": wall_s,
        "study_json_wall_s": study_wall_time(out),
        "train_time_s": trial["train_time_s"],
        "eval_time_s": trial["eval_time_s"],
        "val_acc": trial["val_acc"],
        "load_average": load_average()[0],
    }


def main() -> None:
    parser = benchmark_parser(__doc__, "a trial of about 15 s instead of about a minute")
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="bare loop and study run alternately this often; the fastest of each counts",
    )
    args = parser.parse_args()
    cores = os.cpu_count()
    per_class, epochs = (50, 3) if args.quick else (200, 4)
    data = cifar_subset(args.archive, args.work, per_class, 20)
    data_root = args.work / "data-root"
    warm_images(data, data_root, 64)
    run = args.work / f"{NAME}-{time.strftime('%Y%m%d-%H%M%S')}"
    space = space_file(run / "space.yaml", epochs)
    load_before = load_average()

    # Alternating repeats, the fastest of each kept: on a shared machine the load changes between runs, and
    # the minimum is the closest to what each costs alone.
    rows = []
    for repeat in range(args.repeats):
        bare_out, study_out = run / f"bare-{repeat}.json", run / f"study-{repeat}"
        bare_s, _ = timed(
            bare_command(
                data,
                data_root,
                bare_out,
                depths=["all"],
                epochs=epochs,
                img_size=64,
                batch_size=64,
                lr=1e-3,
                channels_last=True,
                eval_test=True,
                threads=cores,
            ),
            run / f"bare-{repeat}.log",
        )
        bare = json.loads(bare_out.read_text())[0]
        rows.append(
            {
                "run": "bare loop",
                "repeat": repeat,
                "wall_s": bare_s,
                "train_time_s": bare["train_time_s"],
                "val_acc": bare["val_acc"],
                "load_average": load_average()[0],
            }
        )
        study_s, _ = timed(
            study_command(space, data, data_root, study_out, "--cpus-per-trial", str(cores)),
            run / f"study-{repeat}.log",
        )
        rows.append(study_row("study, own Ray", repeat, study_out, study_s))
    import ray

    address = ray.init(num_cpus=cores, include_dashboard=False).address_info[
        "gcs_address"
    ]  # this process's own instance
    try:
        warm_s, _ = timed(
            study_command(
                space, data, data_root, run / "study-warm-ray", "--cpus-per-trial", str(cores), "--address", address
            ),
            run / "study-warm-ray.log",
        )
    finally:
        ray.shutdown()
    rows.append(study_row("study, running Ray", 0, run / "study-warm-ray", warm_s))

    table = pd.DataFrame(rows)
    fastest = table.groupby("run")["wall_s"].min()
    table["ratio"] = table["wall_s"] / fastest["bare loop"]
    ratio = fastest["study, own Ray"] / fastest["bare loop"]
    measured = {"ratio": ratio, "ratio_running_ray": fastest["study, running Ray"] / fastest["bare loop"]}
    summary = {
        "ratio": ratio,
        "goals": verdicts(GOALS, measured),
        "ratio_running_ray": fastest["study, running Ray"] / fastest["bare loop"],
        "repeats": args.repeats,
        "epochs": epochs,
        "train_images_per_class": per_class,
        "cores": cores,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "quick": args.quick,
        "run": str(run),
    }
    path = save(NAME, table, summary, args)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"load average {load_before} -> {summary['load_average_after']}; table: {path}")
    print(f"fastest of {args.repeats}: bare loop {fastest['bare loop']:.1f} s, study {fastest['study, own Ray']:.1f} s")
    finish(NAME, GOALS, measured)


if __name__ == "__main__":
    main()
