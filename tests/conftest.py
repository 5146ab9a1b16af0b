"""Fixtures shared by every test directory; plain helpers are in tests/helpers.py."""

import pytest
import torch

from study.trial.data import load_digits
from study.trial.splits import ImageSet, Splits
from tests.helpers import SmokeStudy, run_module


@pytest.fixture(scope="session")
def small_digits() -> Splits:
    """The real digits split, cut to a few hundred images so a trial takes seconds on 2 CPU cores."""
    full = load_digits(split_seed=0)
    cut = lambda part, n: ImageSet(store=part.images[:n], labels=part.labels[:n])
    return Splits(
        name=full.name, classes=full.classes, train=cut(full.train, 192), val=cut(full.val, 96), test=cut(full.test, 96)
    )


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory) -> SmokeStudy:
    """The smoke study run once through the CLI, as a user would; its results are shared (read-only: copy to change)."""
    out = tmp_path_factory.mktemp("smoke") / "results"
    mlflow = out.parent / "mlflow"
    result = run_module("study.run", "--space", "smoke", "--out", str(out), "--mlflow", str(mlflow))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return SmokeStudy(out, result, mlflow)
