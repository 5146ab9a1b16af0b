"""The driver imports what a phase needs when it needs it: no Plotly before the export, no Optuna for a grid."""

import json
import pickle
import subprocess
import sys

import pytest

from tests.helpers import REPO


def imported_after(code: str) -> set[str]:
    probe = f"import sys; {code}; print(' '.join(m for m in ('plotly', 'optuna') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stdout.split())


def test_the_driver_and_the_ray_layer_import_neither_plotly_nor_optuna_until_they_are_needed():
    assert imported_after("import study.cli.run, study.tune, study.analysis.results, study.trial.train") == set()
    assert imported_after("import study.analysis.page") == {"plotly"}


def test_the_optuna_searcher_class_pickles_by_name_as_rays_experiment_state_needs():
    from study.tune import search

    searcher_class = search.FullBudgetOptunaSearch
    assert pickle.loads(pickle.dumps(searcher_class)) is searcher_class
    assert searcher_class.__module__ == "study.tune.search" and searcher_class.__qualname__ == "FullBudgetOptunaSearch"


@pytest.mark.slow
def test_study_json_records_where_the_studys_time_went(smoke_study):
    phases = json.loads((smoke_study.out / "study.json").read_text())["phases"]
    names = ("imports", "preflight", "ray_import", "ray_start", "first_trial_start", "trials", "export")
    assert set(phases) == set(names)
    assert all(isinstance(phases[name], float) and phases[name] >= 0 for name in names), phases
    assert phases["trials"] > phases["first_trial_start"] > 0
