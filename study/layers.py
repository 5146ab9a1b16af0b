"""`python -m study.layers`: what each unfreeze depth and surgery setting trains (the command: study/cli/layers.py)."""

from study.cli.layers import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
