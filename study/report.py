"""`python -m study.report`: (re)write a results directory's report (the command: study/cli/report.py)."""

from study.cli.report import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
