"""`python -m study.rank`: rank backbones before training (the command: study/cli/rank.py)."""

from study.cli.rank import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
