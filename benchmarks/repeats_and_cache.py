"""repeats_and_cache: what repeats cost, and whether the front depends on what the feature cache held.

    python benchmarks/repeats_and_cache.py           # the default study (unfreeze_depth): about 6 minutes on 2 cores
    python benchmarks/repeats_and_cache.py --quick   # the smoke study: about 2 minutes

The README's default study (`python -m study.run --space unfreeze_depth`, offline: real EfficientNet-Lite0 weights
on scikit-learn's digits) run as a user runs it, in fresh processes:
- cold: on an empty data root (no cached features);
- warm: the same command again on that data root (every frozen prefix's features cached by the cold run);
- repeats: `--repeats 3` on another empty data root: every configuration three times with its own trial seed.

Headline: the wall time of `--repeats 3` over that of the cold single run (goal at most 3.3x: the repeats of a
configuration share its cached features, so three repeats cost less than three studies). Beside it, the front of
the warm run against the cold run's: the same members (required: the front's time is what a configuration costs
alone on a fresh node, whatever the cache held) with times within timing noise (the largest ratio between a
member's two times), and what the warm run actually spent training (study_train_time_s) against the cold run.
"""

from __future__ import annotations

import shutil
import sys

import pandas as pd
from common import Goal, benchmark_parser, finish, load_average, save, timed, verdicts

NAME = "repeats_and_cache"
REPEATS = 3
GOALS = [
    Goal("repeats_ratio", "<=", 3.3, f"--repeats {REPEATS} costs at most 3.3x the wall time of one run of each"),
    Goal("front_identical", ">=", 1.0, "a warm cache gives the cold run's front members", required=True),
    Goal("front_time_ratio", "<=", 1.5, "each front member's time warm vs cold within 1.5x (timing noise)"),
]


def study(space: str, out, data_root, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "study.run",
        "--space",
        space,
        "--out",
        str(out),
        "--data-root",
        str(data_root),
        *extra,
    ]


def main() -> None:
    parser = benchmark_parser(__doc__, "the smoke study instead of the default one (a couple of minutes)")
    args = parser.parse_args()
    space = "smoke" if args.quick else "unfreeze_depth"
    work = args.work / NAME
    shutil.rmtree(work, ignore_errors=True)
    load_before = load_average()
    runs = {
        "cold": study(space, work / "cold", work / "root"),
        "warm": study(space, work / "warm", work / "root"),
        "repeats": study(space, work / "repeats", work / "root_repeats", "--repeats", str(REPEATS)),
    }
    walls, fronts, trials = {}, {}, {}
    for name, command in runs.items():
        walls[name], _ = timed(command, work / f"{name}.log")
        fronts[name] = pd.read_csv(work / name / "pareto.csv")
        trials[name] = pd.read_csv(work / name / "trials.csv")
        print(f"{name}: {walls[name]:.1f} s, {len(trials[name])} trials", flush=True)
    cold, warm = (fronts[name].set_index("unfreeze_depth") for name in ("cold", "warm"))
    identical = list(cold.index) == list(warm.index)
    ratios = (warm["train_time_s"] / cold["train_time_s"]) if identical else pd.Series([float("nan")])
    measured = {
        "repeats_ratio": walls["repeats"] / walls["cold"],
        "front_identical": float(identical),
        "front_time_ratio": float(ratios.map(lambda r: max(r, 1 / r)).max()),
        "warm_spent_share": trials["warm"]["study_train_time_s"].sum() / trials["cold"]["study_train_time_s"].sum(),
        "cold_s": walls["cold"],
        "warm_s": walls["warm"],
        "repeats_s": walls["repeats"],
    }
    table = pd.concat(
        [
            frame.assign(run=name)[
                [
                    "run",
                    *[c for c in ("configuration", "repeats", "unfreeze_depth") if c in frame],
                    "val_acc",
                    *[c for c in ("val_acc_low", "val_acc_high", "val_acc_std") if c in frame],
                    "train_time_s",
                    "study_train_time_s",
                ]
            ]
            for name, frame in fronts.items()
        ]
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    save(
        NAME,
        table,
        {
            "space": space,
            "repeats": REPEATS,
            "wall_s": walls,
            "load_average": {"before": load_before, "after": load_average()},
            "goals": verdicts(GOALS, measured),
            "measured": measured,
        },
        args,
    )
    finish(NAME, GOALS, measured)


if __name__ == "__main__":
    main()
