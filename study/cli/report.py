"""A study's report: `python -m study.report RESULTS_DIR` writes RESULTS_DIR/report.html.

The command line only: the page and its views are study/analysis/page.py and study/analysis/views/
(docs/results.md describes what the report shows). Any results directory works, also a partial one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from study.analysis.page import write_report
from study.core.config import StudyError


def latest_results_dir(root: str | Path = "results") -> Path:
    """The most recently written results directory under `root` (the default --out of study.run)."""
    candidates = [p.parent for p in Path(root).glob("*/trials.*")]
    if not candidates:
        raise StudyError(f"no results under {root}: run python -m study.run first, or name a results directory")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.report", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="a study's results directory (the --out of python -m study.run)")
    parser.add_argument(
        "--include-stopped",
        action="store_true",
        help="let trials stopped early by ASHA take part in the fronts (default: shown, not eligible)",
    )
    parser.add_argument("--out", type=Path, help="where to write the page (default: RESULTS_DIR/report.html)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path = write_report(args.results_dir, args.include_stopped, args.out)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Report: {path.resolve()}")
    return 0
