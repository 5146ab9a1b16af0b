"""Fetch a dataset into the data root, for machines without internet access.

`python -m study.data download NAME [--data-root DIR]` makes a torchvision dataset (study/trial/torchvision_sets.py)
readable from DIR: Debian's files where installed, else torchvision's download. Run it where the internet is
reachable, then copy DIR to the nodes; trials there find the files and never download.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from study.core.config import StudyError
from study.trial.data import default_data_root, resolve_data_root
from study.trial.torchvision_sets import TORCHVISION_SETS, ensure_downloaded


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    download = commands.add_parser("download", help="download (or copy Debian's files of) a torchvision dataset")
    download.add_argument("name", choices=sorted(TORCHVISION_SETS))
    download.add_argument("--data-root", type=Path, default=None, help=f"default: {default_data_root()}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = resolve_data_root(str(args.data_root) if args.data_root else None)
    try:
        ensure_downloaded(args.name, root)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.name} is in {root}")
    return 0
