"""study/core/files.py: the one atomic write that results, decoded data and feature caches share."""

import os
from pathlib import Path

import pytest

from study.analysis import results
from study.core.files import atomic_write
from study.trial import data, features


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


def test_results_data_and_features_write_through_the_one_helper():
    """One implementation: none of the writers keeps its own temporary-file-and-rename code."""
    for module in (results, data, features):
        source = Path(module.__file__).read_text()
        assert "mkstemp" not in source and "os.replace" not in source, module.__name__
