"""`python -m study.data`: fetch a dataset for offline use (the command: study/cli/data.py)."""

from study.cli.data import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
