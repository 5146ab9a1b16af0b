"""study/core/files.py: the one atomic write that results, decoded data and feature caches share."""

import os
from pathlib import Path

import pytest

import study
from study.core.files import atomic_write

# The modules that write a study's files, decoded images, feature caches, scores and merge results.
WRITERS = (
    "analysis/results.py",
    "trial/decode.py",  # also for trial/feature_cache.py (decode.save_cache)
    "trial/torchvision_sets.py",
    "ranking/candidates.py",
    "ranking/compare.py",
    "merging/outputs.py",
    "cli/run/orchestrate.py",
)


def test_an_atomic_write_publishes_a_whole_file_with_the_umask_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    target = tmp_path / "deep" / "table.csv"
    atomic_write(target, lambda p: Path(p).write_text("a,b\n"))
    assert target.read_text() == "a,b\n" and not list(target.parent.glob(".*.tmp"))
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask != 0o600  # not mkstemp's 0600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")

    def half_then_fail(path):
        Path(path).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    with pytest.raises(RuntimeError, match="no room"):
        atomic_write(
            target,
            lambda p: Path(p).write_text("new"),
            before_publish=lambda p: (_ for _ in ()).throw(RuntimeError("no room")),
        )
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_every_writer_writes_through_the_one_helper():
    """One implementation: no module but study/core/files.py keeps its own temporary-file-and-rename code or dumps
    JSON into a file of its own, and every module that writes results, data, caches or records calls it."""
    package = Path(study.__file__).parent
    helper = package / "core" / "files.py"
    callers = set()
    for path in sorted(package.rglob("*.py")):
        if path == helper:
            continue
        source = path.read_text()
        for own_write in ("mkstemp", "os.replace", "os.rename", "NamedTemporaryFile", "json.dump("):
            assert own_write not in source, f"{path.relative_to(package)} uses {own_write}"
        if "atomic_write(" in source or "write_json(" in source:
            callers.add(path.relative_to(package).as_posix())
    assert set(WRITERS) <= callers, set(WRITERS) - callers
