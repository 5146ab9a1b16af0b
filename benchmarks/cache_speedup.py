"""cache_speedup: epoch time with the frozen-prefix feature cache against without it, at depth 0 and shallow depths.

    python benchmarks/cache_speedup.py            # full: 2,400 training photos, 5 epochs
    python benchmarks/cache_speedup.py --quick    # 400 photos, 3 epochs

One process, no Ray: `study.trial.train.run_trial` on the CIFAR-10 photos at 64 px (tf_efficientnet_lite0, real
ImageNet weights, AdamW, batch 64; --img-size changes the size), on the CPU or the GPU, each depth of DEPTHS
once with `feature_cache: true` (from an empty cache) and once with `false`, with every core. Epoch time is
training only (the cached trial's first epoch includes computing the features); evaluation time is listed
beside. Headline: at depth 0, the uncached epoch time over the cached one, averaged over the second epoch on.

Before the table, the process is warmed up by one untimed epoch (a process's first forward passes pay one-time
costs, oneDNN's or cuDNN's kernel set-up among them, which the first trial would carry alone), and building the
depth-0 features of the training split (from an empty cache) is timed against one uncached forward pass of the
whole network over the same images, alternately BUILD_REPEATS times, the fastest of each: goal BUILD_GOAL.
"""

from __future__ import annotations

import pandas as pd
from common import Goal, benchmark_parser, cifar_subset, finish, forget_features, load_average, save, verdicts

NAME = "cache_speedup"
DEPTHS = [0, 2, 8]
GOALS = [Goal("ratio", ">=", 10.0, "cached epochs at depth 0 at least 10x faster than uncached ones")]
BUILD_REPEATS = 3
BUILD_GOAL = 1.1  # building the features costs at most this much of one uncached forward pass over the same images


def build_vs_forward(config, splits, data_root) -> dict:
    """Seconds to build the training split's features against one uncached forward pass over it (module doc)."""
    import time

    from study.trial.train import build_trial, evaluate

    uncached = build_trial(config.replace(feature_cache=False), splits)
    builds, passes = [], []
    for _ in range(BUILD_REPEATS):
        forget_features(data_root)
        builds.append(build_trial(config, splits).cache.split("train").build_s)
        start = time.perf_counter()
        evaluate(uncached, "train")  # inference mode, the same batches, every image through the whole network
        passes.append(time.perf_counter() - start)
    ratio = min(builds) / min(passes)
    return {"build_s": builds, "forward_s": passes, "ratio": ratio, "goal": BUILD_GOAL, "met": ratio <= BUILD_GOAL}


def main() -> None:
    parser = benchmark_parser(__doc__, "400 training photos and 3 epochs instead of 2,400 and 5")
    parser.add_argument("--img-size", type=int, default=64)
    args = parser.parse_args()

    from study.core.config import TrialConfig
    from study.trial.data import load_data
    from study.trial.train import run_trial

    per_class, epochs = (50, 3) if args.quick else (300, 5)
    data = cifar_subset(args.archive, args.work, per_class, 20)
    data_root = args.work / "data-root"
    splits = load_data(f"folder:{data}", 0, args.img_size, str(data_root))
    load_before = load_average()
    base = TrialConfig(
        data=f"folder:{data}", data_root=str(data_root), img_size=args.img_size, lr=1e-3, batch_size=64, epochs=1
    )
    for _ in run_trial(base.replace(feature_cache=False), splits):  # warm-up (module docstring), not timed
        pass
    build = build_vs_forward(base, splits, data_root)
    print(
        f"building the depth-0 features: {min(build['build_s']):.3f} s, one uncached forward pass "
        f"{min(build['forward_s']):.3f} s (fastest of {BUILD_REPEATS}): {build['ratio']:.2f}x, goal <= {BUILD_GOAL}: "
        f"{'met' if build['met'] else 'missed'}",
        flush=True,
    )
    rows = []
    for depth in DEPTHS:
        for cached in (True, False):
            forget_features(data_root)
            config = TrialConfig(
                data=f"folder:{data}",
                data_root=str(data_root),
                img_size=args.img_size,
                unfreeze_depth=depth,
                lr=1e-3,
                batch_size=64,
                epochs=epochs,
                feature_cache=cached,
            )
            for report in run_trial(config, splits):
                rows.append(
                    {
                        "unfreeze_depth": depth,
                        "cached": cached,
                        "epoch": report["epoch"],
                        "epoch_time_s": report["epoch_time_s"],
                        "eval_time_s": report["eval_time_s"],
                        "cache_build_s": report["cache_build_s"] if report["epoch"] == 1 else 0.0,
                        "val_acc": report["val_acc"],
                        "cache": report["cache"],
                        "cache_note": report["cache_note"],
                    }
                )
                print(
                    f"depth {depth} {'cached' if cached else 'uncached'} epoch {report['epoch']}: "
                    f"{report['epoch_time_s']:.3f} s",
                    flush=True,
                )
    table = pd.DataFrame(rows)
    later = table[table["epoch"] >= 2].groupby(["unfreeze_depth", "cached"])["epoch_time_s"].mean().unstack()
    first = table[table["epoch"] == 1].groupby(["unfreeze_depth", "cached"])["epoch_time_s"].mean().unstack()
    speedups = pd.DataFrame(
        {
            "uncached_epoch_s": later[False],
            "cached_epoch_s": later[True],
            "speedup_from_epoch_2": later[False] / later[True],
            "first_epoch_uncached_s": first[False],
            "first_epoch_cached_s": first[True],
        }
    )
    ratio = float(speedups.loc[0, "speedup_from_epoch_2"])
    measured = {"ratio": ratio}
    summary = {
        "speedups": speedups.reset_index().to_dict("records"),
        "epochs": epochs,
        "train_images": len(splits.train),
        "img_size": args.img_size,
        "device": report["device_used"],
        "amp": report["amp_dtype"],
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "quick": args.quick,
        "goals": verdicts(GOALS, measured),
        "build_vs_forward": build,
    }
    path = save(NAME, table.drop(columns=["cache_note"]), summary, args)
    print(speedups.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"load average {load_before} -> {summary['load_average_after']}; table: {path}")
    finish(NAME, GOALS, measured)


if __name__ == "__main__":
    main()
