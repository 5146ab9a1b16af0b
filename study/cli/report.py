"""A study's report: `python -m study.report RESULTS_DIR` writes RESULTS_DIR/report.html; `--compare A B` prints
the paired comparison of two of its trials (study/analysis/uncertainty.py).

The command line only: the page and its views are study/analysis/page.py and study/analysis/views/
(docs/results.md describes what the report shows). Any results directory works, also a partial one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from study.analysis.page import REPORT_FILE, write_report
from study.analysis.repeats import trial_labels
from study.analysis.results import Results, load_results, split_outcomes
from study.analysis.uncertainty import SIGNIFICANCE, compare_paired, proportion_interval
from study.core.config import StudyError, closest_hint


def latest_results_dir(root: str | Path = "results") -> Path:
    """The most recently written results directory under `root` (the default --out of study.run)."""
    candidates = [p.parent for p in Path(root).glob("*/trials.*")]
    if not candidates:
        raise StudyError(f"no results under {root}: run python -m study.run first, or name a results directory")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def compare_trials(results: Results, trial_a: str, trial_b: str) -> str:
    """The paired comparison of two trials of a study, on each split whose outcomes both recorded, as text."""
    trials = results.trials.set_index("trial_id")
    for trial_id in (trial_a, trial_b):
        if trial_id not in trials.index:
            raise StudyError(
                f"no trial {trial_id} in {results.path}{closest_hint(trial_id, list(trials.index))}: pass two trial "
                "ids from its trials.csv"
            )
    labels = trial_labels(results.trials).set_axis(results.trials["trial_id"])
    lines = [f"A = {trial_a} ({labels[trial_a]}), B = {trial_b} ({labels[trial_b]})"]
    for split, name in (("val", "validation"), ("test", "test")):
        outcomes = split_outcomes(results.outcomes, split)
        if trial_a not in outcomes or trial_b not in outcomes:
            lines.append(
                f"{name}: no per-image outcomes of both trials (a failed trial, or results from before they "
                "were recorded)"
            )
            continue
        paired = compare_paired(outcomes[trial_a], outcomes[trial_b])
        accuracies = " vs ".join(
            f"{outcome.mean():.3f} [{interval.low:.3f}, {interval.high:.3f}]"
            for outcome in (outcomes[trial_a], outcomes[trial_b])
            for interval in [proportion_interval(int(outcome.sum()), outcome.size)]
        )
        verdict = "a significant difference" if paired.significant else "no significant difference"
        lines += [
            f"{name} ({paired.images} images): accuracy A vs B {accuracies}",
            f"  A right where B is wrong: {paired.only_a} images; B right where A is wrong: {paired.only_b}",
            f"  A - B: {paired.difference:+.3f} [{paired.low:+.3f}, {paired.high:+.3f}] (95%, paired); exact McNemar "
            f"p = {paired.p_value:.3g}: {verdict} at {SIGNIFICANCE:.0%}",
        ]
    return "\n".join(lines)


def unwritable(out: Path | None, results_dir: Path, error: OSError) -> str:
    """Why the page cannot be written where it goes (a read-only disk, a path under a file), and what to do."""
    page = out or results_dir / REPORT_FILE
    if out:
        what, fix = f"--out {out}", "choose a writable directory"
    else:
        what, fix = f"the report {page}", "pass --out PATH in a writable directory"
    existing = next(p for p in page.absolute().parents if p.exists())
    if not existing.is_dir():
        return f"{what} cannot be written: {existing} is a file, not a directory; {fix}"
    return f"{what} cannot be written in {existing} ({error.strerror or type(error).__name__}): {fix}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.report", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="a study's results directory (the --out of python -m study.run)")
    parser.add_argument(
        "--include-stopped",
        action="store_true",
        help="let trials stopped early by ASHA take part in the fronts (default: shown, not eligible)",
    )
    parser.add_argument("--out", type=Path, help="where to write the page (default: RESULTS_DIR/report.html)")
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("TRIAL_A", "TRIAL_B"),
        help="print the paired comparison of two trials (ids from trials.csv) on the same validation and test "
        "images instead of writing the page: accuracy difference with its 95%% interval, exact McNemar p-value",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.compare:
            print(compare_trials(load_results(args.results_dir), *args.compare))
            return 0
        path = write_report(args.results_dir, args.include_stopped, args.out)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the tables were read (load_results answers their errors): writing the page failed
        print(f"error: {unwritable(args.out, args.results_dir, error)}", file=sys.stderr)
        return 2
    print(f"Report: {path.resolve()}")
    return 0
