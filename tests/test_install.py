"""An installed `study` is whole: a wheel built from this checkout carries the named search spaces (issue 13)."""

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED_SPACES = sorted(path.name for path in (REPO / "search_spaces").glob("*.yaml"))


def build_wheel(out: Path) -> Path:
    # From a copy of the source (an in-tree build leaves build/ behind, whose stale files a later build would ship);
    # offline: no build isolation (it would fetch setuptools), no dependencies (the wheel alone is under test).
    source = out / "source"
    skipped = shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "notebooks")
    shutil.copytree(REPO, source, ignore=skipped)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = out.glob("study-*.whl")
    return wheel


@pytest.mark.slow
def test_a_wheel_installed_in_a_fresh_environment_runs_a_named_space_outside_the_repository(tmp_path):
    wheel = build_wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        packed = sorted(Path(name).name for name in archive.namelist() if name.startswith("search_spaces/"))
    assert set(SHIPPED_SPACES) <= set(packed), f"the wheel lacks spaces: {set(SHIPPED_SPACES) - set(packed)}"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    with zipfile.ZipFile(wheel) as archive:  # a wheel is installed by unpacking it into site-packages
        archive.extractall(site)
    # The dependencies (torch, Ray...) come from this environment, read as a plain directory: its .pth files, the
    # editable install of this checkout among them, are not processed, so only the wheel provides `study`.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no PYTHONPATH: nothing points at this checkout
    run = lambda *args: subprocess.run([str(python), *args], cwd=outside, capture_output=True, text=True, env=clean)
    where = run("-c", "import study, search_spaces; print(study.__file__); print(search_spaces.__file__)")
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(site)) for line in where.stdout.split()), f"not the wheel's: {where.stdout}"
    result = run("-m", "study.run", "--space", "smoke", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke" in result.stdout and "trial" in result.stdout, result.stdout
