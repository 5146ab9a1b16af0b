"""A full disk during a study: the study stopped while there is room to save it whole.

Ray Tune copies its experiment directory (the experiment state that `--resume` restores, the searcher's and the
callbacks' state, each trial's files) from a staging directory on another disk to the results every second, and
its copy truncates each file first: a disk that fills during a copy leaves truncated files, which no `--resume`
can read unless a later copy writes them whole again. `DiskGuard` watches the free space of the disks holding the
results and Ray's experiment, and stops the study as Ctrl-C does (Tune's SIGUSR1 stop: Ray saves its state and
waits for the copy, the running trials stop and run again with --resume) once less is free than the study needs to
save what it holds (`reserve_for`). A reserve file it holds meanwhile is deleted at that moment, so Ray's last copy
fits, and rewrites whole what an earlier copy cut short, even when another process filled the disk at once.

Why not a filesystem that writes each of Ray's files beside its target and renames it (tried): Ray copies every
file of the experiment at each save, and through Python that cost 0.9-1.3 s per save at 1,000 trials against
0.08-0.16 s natively, every second, in the driver (benchmarks/many_trials.py: 1.89 trials/s instead of 3.86).

Ray's own log lines about copies that failed for want of space (a traceback each, every second) are left out: the
command's one line says it (study/cli/run/finish.py).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from ray import tune

MiB = 2**20
# Free space a study keeps beyond twice its rewritten files (reserve_for): what it writes between two checks, the
# first report page (about 5 MiB with Plotly inlined) and the files of the trials that finish.
RESERVE_FLOOR = 8 * MiB
# A file of the size of Ray's experiment state plus this, kept in Ray's experiment directory and deleted when the
# study stops for disk space: Ray's last save (and the tables) then fit even if another process took every free byte.
HELD = ".study-disk-reserve"
HELD_MARGIN = 4 * MiB
CHECK_PERIOD_S = 1.0  # as often as Ray saves its state (study/tune/runner.py CHECKPOINT_PERIOD_S)
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
# Where Ray logs a failed copy of its experiment directory (a traceback at every attempt) and Tune's stop.
RAY_SAVE_LOGGERS = ("ray.train._internal.syncer", "ray.tune.execution.experiment_state", "ray.tune.tune")


@dataclass(kw_only=True)
class LowDisk:
    """Why a study stopped for disk space: the directory whose disk ran short, what was free, what it needed."""

    directory: Path
    free: int  # bytes
    reserve: int  # bytes the study keeps free to save what it holds (reserve_for)


def free_bytes(directory: Path) -> int:
    """Bytes free to this user on the disk holding `directory`."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def rewritten_bytes(directories: list[Path]) -> int:
    """The files directly in `directories` (the results tables and report, Ray's experiment state), which the study
    rewrites as trials finish, each beside its previous version; the held reserve is none of them."""
    total = 0
    for directory in directories:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name == HELD or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    total += entry.stat().st_size
                except FileNotFoundError:  # a temporary file Ray renamed or removed between listing and stat
                    continue
    return total


def reserve_for(directories: list[Path]) -> int:
    """The free space the study keeps: RESERVE_FLOOR plus twice its rewritten files, which grow meanwhile."""
    return RESERVE_FLOOR + 2 * rewritten_bytes(directories)


def hold(path: Path, size: int) -> bool:
    """Grow the reserve file at `path` to `size` bytes of allocated disk; False when the disk has no room for it.
    A disk that cannot allocate in advance (another error) keeps no reserve: the free space alone guards it."""
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(handle, 0, size)
        finally:
            os.close(handle)
    except OSError as error:
        return error.errno not in FULL_DISK
    return True


def low_disk(directories: list[Path], held: Path | None = None, ray_failed: bool = False) -> LowDisk | None:
    """The disk that holds less than the study needs, or None. It needs reserve_for(directories) free and, with
    `held`, that reserve file grown to HELD_MARGIN plus the rewritten files beside it (Ray's experiment state).
    `ray_failed`: Ray could not write for want of space (a full quota, which the free space does not show), so the
    study stops whatever is free."""
    present = [directory for directory in directories if directory.is_dir()]
    if not present:
        return None
    reserve = reserve_for(present)
    lowest = min(present, key=free_bytes)
    short = ray_failed or free_bytes(lowest) < reserve
    if not short and held is not None:
        short = not hold(held, HELD_MARGIN + rewritten_bytes([held.parent]))
    return LowDisk(directory=lowest, free=free_bytes(lowest), reserve=reserve) if short else None


class RayDiskLines(logging.Filter):
    """Leaves out Ray's log records about a copy that failed for want of space (and remembers that one came) and,
    once the guard stopped the study, Tune's lines about its stop (they speak of a signal and of Tuner.restore)
    and about a copy that raced with Ray's own renaming of a staged file (the stop's save runs while the previous
    copy may not have ended; the save that follows copies the renamed file)."""

    seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        if (isinstance(error, OSError) and error.errno in FULL_DISK) or any(
            f"[Errno {number}]" in message  # the syncer logs its traceback as text
            for number in FULL_DISK
        ):
            self.seen = True
            return False
        if DiskGuard.tripped is None:
            return True
        raced = isinstance(error, FileNotFoundError) and "-tmp-" in str(error)
        return not (raced or message.startswith(("Stop signal received", "Experiment has been interrupted")))


RAY_DISK_LINES = RayDiskLines()


class DiskGuard(tune.Callback):
    """Stops the study, as Ctrl-C does, once a disk holding its results (`export.out`, study/tune/callbacks.py) or
    Ray's experiment has less free space than the study needs to save what it holds (low_disk), or Ray failed to
    write for want of space; the held reserve file is deleted first, so Ray's last save fits. Checked every
    `period_s` in Tune's loop (a statvfs and two directory listings).

    Ray pickles it with the Tuner, so a resumed study is guarded too; it reads the results directory from the
    ExportCallback it is given and Ray's experiment directory from the trials, both as they are after a resume.
    The stop is in `DiskGuard.tripped` (this process runs one study at a time) until `take_tripped`."""

    tripped: LowDisk | None = None

    def __init__(self, export, period_s: float = CHECK_PERIOD_S, clock=time.monotonic):
        self.export = export
        self.period_s = period_s
        self.clock = clock
        self._checked = -math.inf
        self._held: Path | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_checked": -math.inf, "_held": None}

    def setup(self, **info):
        for name in RAY_SAVE_LOGGERS:
            logging.getLogger(name).addFilter(RAY_DISK_LINES)
        RAY_DISK_LINES.seen = False
        DiskGuard.tripped = None

    def on_step_end(self, iteration, trials, **info):
        if DiskGuard.tripped is not None or self.clock() - self._checked < self.period_s:
            return
        self._checked = self.clock()
        directories = [Path(self.export.out)]
        if self.export.storage_scheme is None and trials:  # Ray's experiment, on a local disk
            directories.append(Path(trials[0].storage.experiment_fs_path))
            self._held = directories[-1] / HELD
        low = low_disk(directories, self._held, ray_failed=RAY_DISK_LINES.seen)
        tune_stop = signal.getsignal(signal.SIGUSR1)  # Tune's stop, installed while its loop runs
        if low is not None and callable(tune_stop):
            self.release()
            DiskGuard.tripped = low
            tune_stop(signal.SIGUSR1, None)

    def on_experiment_end(self, trials, **info):
        self.release()

    def release(self) -> None:
        if self._held is not None:
            self._held.unlink(missing_ok=True)

    @classmethod
    def take_tripped(cls) -> LowDisk | None:
        """Why the last study stopped for disk space (None: it did not), forgotten once read."""
        tripped, cls.tripped = cls.tripped, None
        return tripped


def finished_trial_dirs(experiment: str) -> int:
    """The trials of a local Ray experiment that finished or failed, as their own directories show (the last result
    Ray wrote is `done`, or an error.txt), read without Ray's experiment state, which may be missing or damaged."""
    if "://" in experiment or not Path(experiment).is_dir():
        return 0
    return sum(
        (trial / "error.txt").exists() or _last_result_done(trial / "result.json")
        for trial in Path(experiment).iterdir()
        if trial.is_dir()
    )


def _last_result_done(path: Path) -> bool:
    try:
        lines = path.read_text().splitlines()
        return bool(lines) and json.loads(lines[-1]).get("done") is True
    except (OSError, ValueError):  # no result yet, or one cut short
        return False
