"""What several test files use: the repository's root, a front by brute force, `python -m` as a user runs it."""

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def brute_force_front(trials, accuracy: str = "val_acc", cost: str = "train_time_s") -> set[str]:
    """The trial ids no other trial dominates (higher or equal accuracy at lower or equal cost, better on one), by
    comparing every pair: an independent check of study.analysis.pareto, which writes the fronts."""
    rows = list(trials[["trial_id", accuracy, cost]].itertuples(index=False, name=None))
    return {
        trial
        for trial, acc, seconds in rows
        if not any(a >= acc and s <= seconds and (a > acc or s < seconds) for _, a, s in rows)
    }


def write_space(directory: Path, text: str) -> str:
    """A space file in `directory` from an indented YAML text; its path as the CLI and load_space take it."""
    path = directory / "space.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def history(val_accs, seconds_per_epoch=2.0, memory=800.0, start=1000.0):
    """A trial's per-epoch results as the trainable reports them, with the given validation accuracies."""
    return [
        {
            "epoch": n,
            "train_loss": 2.0 / n,
            "train_acc": acc,
            "val_loss": 1.0 - acc,
            "val_acc": acc,
            "test_loss": 1.0,
            "test_acc": acc - 0.02,
            "epoch_time_s": seconds_per_epoch,
            "train_time_s": seconds_per_epoch * n,
            "eval_time_s": 0.5,
            "images_per_s": 100.0,
            "peak_memory_mib": memory + n,
            "reported_at": start + 3 * n,
            "weights_used": "random",
            "num_layers": 49,
            "unfrozen_layers": 0,
            "trainable_params": int(memory * 100),
            "total_params": 3_000_000,
            "img_size_used": 32,
            "device_used": "cpu",
            "memory_measure": "process_peak_rss",
        }
        for n, acc in enumerate(val_accs, start=1)
    ]


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
