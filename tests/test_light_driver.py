"""The driver imports what a phase needs when it needs it: no Plotly before the export, no Optuna for a grid."""

import pickle
import subprocess
import sys

from conftest import REPO


def imported_after(code: str) -> set[str]:
    probe = f"import sys; {code}; print(' '.join(m for m in ('plotly', 'optuna') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stdout.split())


def test_the_driver_and_the_ray_layer_import_neither_plotly_nor_optuna_until_they_are_needed():
    assert imported_after("import study.run, study.tuning, study.results, study.train") == set()
    assert imported_after("import study.report") == {"plotly"}


def test_the_optuna_searcher_class_pickles_by_name_as_rays_experiment_state_needs():
    from study import tuning

    searcher_class = tuning.FullBudgetOptunaSearch
    assert pickle.loads(pickle.dumps(searcher_class)) is searcher_class
    assert searcher_class.__module__ == "study.tuning" and searcher_class.__qualname__ == "FullBudgetOptunaSearch"
