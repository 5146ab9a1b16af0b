"""The results directory (--out) kept safe: a study never loses another study's results or a user's files.

check_out runs before Ray starts and creates nothing; create_out runs after, once everything else checked out.
--overwrite deletes only what a study writes (STUDY_FILES, STUDY_FOLDERS, STUDY_TEMPORARY), only in a directory
whose study.json a study wrote, never through a symbolic link and never a file the new study reads. A directory
is used by one process at a time (lock_study): a study and its --resume cannot both write it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from study.core.config import WEIGHT_SOURCES, StudyError
from study.core.files import read_json
from study.core.space import Space

# What a study writes into its results directory, and all that --overwrite deletes there (anything else is kept):
# study.json, the tables and pages (study/analysis/results.py, study/analysis/page.py), Ray Tune's experiment
# (tune.RAY_DIR, without --storage), and atomic_write's temporary files of a write that was cut short.
STUDY_FILES = (
    "study.json",
    "trials.csv",
    "trials.parquet",
    "epochs.parquet",
    "pareto.csv",
    "pareto.html",
    "report.html",
)
STUDY_FOLDERS = ("ray",)
STUDY_TEMPORARY = ".*.tmp"


def check_out(out: Path | None, space: Space, overwrite: bool) -> Path:
    """The results directory, checked before Ray starts and created only after (create_out): it can be written,
    no other process uses it (lock_study), and it holds no study that would be lost (unless --overwrite, which
    replaces only what a study wrote, in a directory whose study.json a study wrote)."""
    out = out or Path("results") / f"{space.name}-{datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and not out.is_dir():
        raise StudyError(f"--out {out} is a file: choose a directory")
    if out.is_dir() and any(out.iterdir()):
        check_replaceable(out, space, overwrite)
    if out.is_dir():
        lock_study(out)
    existing = next(path for path in (out.absolute(), *out.absolute().parents) if path.exists())
    if not existing.is_dir():
        raise StudyError(
            f"--out {out} cannot be created: {existing} is a file, not a directory; choose a writable directory"
        )
    check_writable(existing, f"--out {out}")
    return out


def check_replaceable(out: Path, space: Space, overwrite: bool) -> None:
    """A results directory that holds files: refused unless --overwrite, and then only a study's own directory,
    without links, holding nothing the new study reads."""
    if not overwrite:
        raise StudyError(
            f"--out {out} already holds files: choose a new directory, continue an interrupted study with "
            f"--resume {out}, or replace it with --overwrite"
        )
    if out.is_symlink():
        raise StudyError(
            f"--out {out} is a symbolic link: --overwrite never deletes through a link; give the directory it "
            f"points to ({out.resolve()})"
        )
    if not (out / "study.json").is_file():
        raise StudyError(
            f"--out {out} holds files but no study.json: --overwrite replaces only a study's results directory; "
            "choose another --out"
        )
    if not is_study_record(read_json(out / "study.json")):
        raise StudyError(
            f"--out {out} holds a study.json that python -m study.run did not write (no command, space and "
            "ray_experiment): --overwrite replaces only a study's results directory; choose another --out"
        )
    written = study_written(out)
    links = [path for path in written if path.is_symlink()]
    if links:
        raise StudyError(
            f"--overwrite would delete {links[0]}, a symbolic link (to {os.readlink(links[0])}): a study writes "
            "no links; remove it yourself or choose another --out"
        )
    inside = [
        path for path in input_paths(space) if any(path.resolve().is_relative_to(old.resolve()) for old in written)
    ]
    if inside:
        raise StudyError(
            f"--overwrite would delete {inside[0]}, which this study reads: move it out of {out}, or choose "
            "another --out"
        )


def check_writable(directory: Path, what: str) -> None:
    """The real test of writability (os.access says yes to root in /proc): a directory made and removed at once."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".study-write-test-", dir=directory))
    except OSError as error:
        raise StudyError(
            f"{what} cannot be created in {directory} ({error.strerror}): choose a writable directory"
        ) from None


def study_written(out: Path) -> list[Path]:
    named = [out / name for name in (*STUDY_FILES, *STUDY_FOLDERS)]
    return [path for path in named if path.exists() or path.is_symlink()] + sorted(out.glob(STUDY_TEMPORARY))


def is_study_record(record) -> bool:
    """A study.json that study.run wrote: a mapping with the command, space and Ray experiment it records."""
    return (
        isinstance(record, dict)
        and isinstance(record.get("command"), list)
        and record["command"][:3] == ["python", "-m", "study.run"]
        and isinstance(record.get("space"), dict)
        and isinstance(record.get("ray_experiment"), str)
    )


# The locks this process holds: a study directory is used by one process at a time (a study or its --resume).
_LOCKS: dict[Path, int] = {}


def lock_study(out: Path) -> None:
    """Lock the results directory for the rest of this process (flock on the directory itself: nothing is written,
    and the lock ends with the process however it ends)."""
    key = out.resolve()
    if key in _LOCKS:
        return
    handle = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise StudyError(
            f"{out} is in use by another python -m study.run (a study or a --resume of it runs now): wait until it "
            "ends, or stop it with Ctrl-C first"
        ) from None
    _LOCKS[key] = handle


def input_paths(space: Space) -> list[Path]:
    """The files and folders a study reads (space file, weights files, folder data) and its data root."""
    values = [*space.fixed.items(), *((key, value) for key, d in space.dimensions.items() for value in d.values)]
    paths = [Path(space.source)]
    for key, value in values:
        if (
            key == "weights"
            and isinstance(value, str)
            and value not in WEIGHT_SOURCES
            or key == "data_root"
            and isinstance(value, str)
        ):
            paths.append(Path(value))
        elif key == "data" and isinstance(value, str) and value.startswith("folder:"):
            paths.append(Path(value.removeprefix("folder:")))
    return paths


def create_out(out: Path, overwrite: bool) -> None:
    """Create (and lock) the results directory; with --overwrite, delete what the old study wrote there, and only that
    (check_out made sure it is a study's directory, without links)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StudyError(f"--out {out} cannot be created ({error.strerror}): choose a writable directory") from None
    lock_study(out)
    if not overwrite:
        if (out / "study.json").exists():  # another process started a study there since check_out
            raise StudyError(f"--out {out} holds a study now: choose a new directory")
        return
    for path in study_written(out):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    kept = sorted(path.name for path in out.iterdir())
    if kept:
        print(f"note: --overwrite kept what no study writes in {out}: {', '.join(kept[:5])}{' ...' * (len(kept) > 5)}")
