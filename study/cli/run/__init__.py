"""Run a study: `python -m study.run --space unfreeze_depth`.

Everything a user can get wrong is checked before Ray starts (one line on
stderr, exit code 2); then Ray Tune runs the trials (on this machine, or on a
Ray cluster with --address), and the results directory receives
trials.csv/.parquet, epochs.parquet and pareto.csv (rewritten as trials
finish, at most once a second), pareto.html, study.json (resolved space, command line,
versions, hardware, resources, seed) and report.html (study/analysis/page.py).
`--resume DIR` continues an interrupted study; `--dry-run` lists the trials
without running them. Ctrl-C stops the study gracefully: the finished trials
are exported (tables, Pareto front, report) and the exit status is 130.

One module per job, in the order a study meets them:
  parser.py       the command line and the space it resolves to (--help's description is its first line)
  checks.py       numbers, resources, --address, --dashboard-host, --storage, --mlflow: one-line errors before Ray
  preflight.py    every trial's model and data tried before Ray starts; --dry-run's list of trials
  results_dir.py  --out kept safe: never another study's results or a user's files, one process at a time
  orchestrate.py  main: a new study or --resume, from the checks through Ray to the trials' end
  finish.py       the end: the export, study.json completed or marked interrupted, the summary, the exit code
"""

from study.cli.run.orchestrate import main
from study.cli.run.parser import build_parser

__all__ = ["build_parser", "main"]
