"""`python -m study.merge`: interpolate two trials' weights (the command: study/cli/merge.py)."""

from study.cli.merge import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
