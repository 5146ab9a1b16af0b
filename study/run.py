"""`python -m study.run`: run, resume or dry-run a study (the command: study/cli/run/)."""

from study.cli.run import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
