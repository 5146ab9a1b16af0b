import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from study.data import ImageSet, Splits, load_digits

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def small_digits() -> Splits:
    """The real digits split, cut to a few hundred images so a trial takes seconds on 2 CPU cores."""
    full = load_digits(split_seed=0)
    cut = lambda part, n: ImageSet(part.images[:n], part.labels[:n])
    return Splits(full.name, full.classes, cut(full.train, 192), cut(full.val, 96), cut(full.test, 96))


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


def brute_force_front(trials, accuracy: str = "val_acc", cost: str = "train_time_s") -> set[str]:
    """The trial ids no other trial dominates (higher or equal accuracy at lower or equal cost, better on one), by
    comparing every pair: an independent check of study.pareto, which writes the fronts."""
    rows = list(trials[["trial_id", accuracy, cost]].itertuples(index=False, name=None))
    return {
        trial
        for trial, acc, seconds in rows
        if not any(a >= acc and s <= seconds and (a > acc or s < seconds) for _, a, s in rows)
    }


def run_module(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None):
    """Run `python -m ...` as a user would, in a fresh process (`env` adds to the environment)."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        timeout=timeout,
        env={**os.environ, **env} if env else None,
    )


@dataclass
class SmokeStudy:
    out: Path
    result: subprocess.CompletedProcess
    mlflow: Path  # the MLflow store (a directory) it logged to


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory) -> SmokeStudy:
    """The smoke study run once through the CLI, as a user would; its results are shared (read-only: copy to change)."""
    out = tmp_path_factory.mktemp("smoke") / "results"
    mlflow = out.parent / "mlflow"
    result = run_module("study.run", "--space", "smoke", "--out", str(out), "--mlflow", str(mlflow))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return SmokeStudy(out, result, mlflow)
