"""A full disk during a study, piece by piece on a real small disk (a tmpfs): the guard's decision to stop, its
reserve file, Ray's log lines about full disks left out, and what a damaged experiment's trial directories still
say. The whole study on a filling disk is tests/cli/test_full_disk.py."""

import contextlib
import errno
import json
import logging
import os
import pickle
import signal
import subprocess
from types import SimpleNamespace

import pytest

from study.tune import disk
from study.tune.disk import HELD, HELD_MARGIN, RESERVE_FLOOR, DiskGuard, MiB, low_disk, reserve_for
from tests.helpers import REPO


@contextlib.contextmanager
def mounted_tmpfs(path, size_mib: int):
    """A tmpfs of `size_mib` at `path` (created), unmounted on exit; skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"a small real disk needs `mount -t tmpfs` (root): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(directory, leave_bytes: int = 0):
    """Take the disk's free space but `leave_bytes`, as another process would (every byte: until ENOSPC)."""
    with open(directory / "filler", "ab") as filler:
        if leave_bytes:
            os.posix_fallocate(filler.fileno(), 0, disk.free_bytes(directory) - leave_bytes)
            return
        with contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * MiB)
                filler.flush()


@pytest.fixture
def small_disk(tmp_path):
    with mounted_tmpfs(tmp_path / "disk", 32) as mounted:
        yield mounted


def test_the_guard_asks_for_its_reserve_free_and_a_held_file_beside_rays_state(small_disk, monkeypatch):
    results, experiment = small_disk / "out", small_disk / "out" / "ray" / "tune"
    experiment.mkdir(parents=True)
    (results / "trials.csv").write_bytes(b"x" * MiB)
    (experiment / "experiment_state.json").write_bytes(b"x" * (2 * MiB))
    (experiment / "trial_0").mkdir()  # a trial's directory: new files, covered by the floor
    (experiment / "trial_0" / "result.json").write_bytes(b"x" * (5 * MiB))
    assert reserve_for([results, experiment]) == RESERVE_FLOOR + 2 * 3 * MiB

    held = experiment / HELD
    assert low_disk([results, experiment], held) is None
    assert held.stat().st_size == HELD_MARGIN + 2 * MiB  # Ray's state, with room to spare, for the last save
    assert reserve_for([results, experiment]) == RESERVE_FLOOR + 2 * 3 * MiB  # the held file is not rewritten

    low = low_disk([results, experiment], held, ray_failed=True)  # a full quota: statvfs shows room, Ray failed
    assert low is not None and low.reserve == RESERVE_FLOOR + 6 * MiB

    fill(small_disk, leave_bytes=RESERVE_FLOOR + 6 * MiB)
    assert low_disk([results, experiment], held) is None
    (small_disk / "filler").unlink()
    fill(small_disk, leave_bytes=RESERVE_FLOOR + 6 * MiB - 4096)  # a page less than the reserve
    low = low_disk([results, experiment], held)
    assert low is not None and low.free == RESERVE_FLOOR + 6 * MiB - 4096 and low.directory in (results, experiment)
    (small_disk / "filler").unlink()

    def over_quota(handle, offset, size):  # the user's quota is spent: the disk shows room, nothing can be allocated
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    held.unlink()
    monkeypatch.setattr(os, "posix_fallocate", over_quota)
    assert low_disk([results, experiment]) is None
    assert low_disk([results, experiment], held) is not None


class TuneStop:
    """Tune's SIGUSR1 handler while its loop runs: asks the loop to stop."""

    def __init__(self):
        self.calls = 0

    def __call__(self, signum, frame):
        self.calls += 1


@pytest.fixture
def tune_stop():
    handler = TuneStop()
    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        yield handler
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_the_guard_stops_tune_once_when_the_disk_runs_short_and_gives_back_its_reserve(small_disk, tune_stop):
    results, experiment = small_disk / "out", small_disk / "out" / "ray" / "tune"
    experiment.mkdir(parents=True)
    now = [0.0]
    guard = DiskGuard(SimpleNamespace(out=results, storage_scheme=None), period_s=1.0, clock=lambda: now[0])
    trials = [SimpleNamespace(storage=SimpleNamespace(experiment_fs_path=str(experiment)))]
    guard.setup()
    guard.on_step_end(0, trials)
    assert tune_stop.calls == 0 and (experiment / HELD).stat().st_size == HELD_MARGIN

    fill(small_disk)  # another process takes every free byte
    now[0] = 0.5
    guard.on_step_end(1, trials)
    assert tune_stop.calls == 0  # checked once a period
    now[0] = 1.0
    guard.on_step_end(2, trials)
    assert tune_stop.calls == 1 and not (experiment / HELD).exists()
    assert disk.free_bytes(small_disk) >= HELD_MARGIN  # Ray's last save has the reserve's room
    now[0] = 5.0
    guard.on_step_end(3, trials)
    assert tune_stop.calls == 1
    low = DiskGuard.take_tripped()
    assert low.free < MiB and low.reserve == RESERVE_FLOOR and DiskGuard.take_tripped() is None

    # pickled with the Tuner: nothing of this process's run (clock, held file) comes back on --resume
    restored = pickle.loads(pickle.dumps(DiskGuard(SimpleNamespace(out=results, storage_scheme=None))))
    assert restored._held is None and restored.export.out == results


def test_a_guard_before_tunes_loop_or_for_remote_storage_watches_the_results_alone(small_disk, tune_stop):
    results = small_disk / "out"
    results.mkdir()
    guard = DiskGuard(SimpleNamespace(out=results, storage_scheme="s3"), period_s=0.0)
    guard.setup()
    guard.on_step_end(0, [SimpleNamespace(storage=SimpleNamespace(experiment_fs_path="bucket/tune"))])
    assert tune_stop.calls == 0 and sorted(p.name for p in results.iterdir()) == []  # no reserve on a remote store
    fill(small_disk, leave_bytes=RESERVE_FLOOR - MiB)
    guard.on_step_end(1, [])
    assert tune_stop.calls == 1 and DiskGuard.take_tripped().directory == results


def record(logger: str, message: str, error: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error else None
    return logging.getLogger(logger).makeRecord(logger, logging.ERROR, __file__, 1, message, (), exc_info)


def test_rays_lines_about_a_full_disk_are_left_out_and_noted(tune_stop):
    lines = disk.RayDiskLines()
    DiskGuard.tripped = None
    full = OSError(errno.ENOSPC, "No space left on device")
    assert not lines.filter(record("ray.tune.execution.experiment_state", "Saving experiment state failed", full))
    assert lines.seen
    syncer = "Last sync command failed with the following error:\nOSError: [Errno 28] Error writing bytes to file"
    assert not disk.RayDiskLines().filter(record("ray.train._internal.syncer", syncer))
    assert lines.filter(record("ray.tune.execution.experiment_state", "Saving failed", PermissionError(13, "no")))
    stop = "Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run."
    raced = FileNotFoundError(2, "Failed to open local file 'driver_artifacts/.1-tmp-basic-variant-state.json'")
    assert lines.filter(record("ray.tune.tune", stop))  # Ctrl-C: Ray's own lines, as before
    assert lines.filter(record("ray.tune.execution.experiment_state", "Saving failed", raced))
    DiskGuard.tripped = disk.LowDisk(directory=REPO, free=0, reserve=RESERVE_FLOOR)
    try:
        assert not lines.filter(record("ray.tune.tune", stop))  # the study's own line says why it stopped
        assert not lines.filter(record("ray.tune.execution.experiment_state", "Saving failed", raced))
    finally:
        DiskGuard.tripped = None


def test_finished_trials_are_counted_from_their_directories_without_rays_state(tmp_path):
    experiment = tmp_path / "tune"
    for trial, lines in (("done", [False, True]), ("running", [False]), ("stopped_early", [True]), ("new", [])):
        (experiment / trial).mkdir(parents=True)
        (experiment / trial / "result.json").write_text("".join(json.dumps({"done": d}) + "\n" for d in lines))
    (experiment / "failed").mkdir()
    (experiment / "failed" / "error.txt").write_text("Failure # 1")
    (experiment / "cut").mkdir()
    (experiment / "cut" / "result.json").write_text('{"done": tr')  # written on a full disk by Ray's own copy
    (experiment / "experiment_state-x.json").write_text("{")
    assert disk.finished_trial_dirs(str(experiment)) == 3
    assert disk.finished_trial_dirs(str(tmp_path / "none")) == 0 and disk.finished_trial_dirs("s3://b/tune") == 0
