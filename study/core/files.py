"""The file helpers every writer shares: atomic writes (results, decoded data, feature caches) and the data root's
inter-process locks.

An atomic write goes to a temporary file beside its target and is renamed into place once complete, so a reader
(another trial, a report, a resumed study) never sees half a file, and an interrupted write leaves the old file or
none. mkstemp creates files 0600; published files get the permissions the umask allows, so a shared results or data
directory stays readable by the user's group.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from study.core.config import StudyError, short_reason

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[str], None], before_publish: Callable[[str], None] | None = None) -> None:
    """`write(temporary_path)`, then rename the file to `path`; `before_publish(temporary_path)` runs in between
    (e.g. to make room for the finished file). Nothing is left behind when either raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        if before_publish is not None:
            before_publish(temporary)
        publish(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):  # the earlier version of `path` is still there, whole
            raise StudyError(
                f"out of disk space writing {path}: every file written before is kept as it was (the previous "
                f"{path.name}, if any, included); free space in {path.parent}, then run the same command with "
                "--resume if a study was running"
            ) from None
        raise
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict) -> None:
    """A JSON record (study.json, scores.json, merge.json), indented for people, written atomically."""
    atomic_write(path, lambda temporary: Path(temporary).write_text(json.dumps(data, indent=2, default=str) + "\n"))


def damaged(path: Path, error: BaseException, fix: str) -> StudyError:
    """One line for a file that cannot be read as what it should be: the file, what is wrong, what to do."""
    return StudyError(
        f"{path} is damaged or not what it should be ({type(error).__name__}: {short_reason(error)}): {fix}"
    )


def read_json(path: Path, fix: str = "restore it from a copy, or remove it") -> object:
    """A JSON file an earlier run wrote; damage (unreadable, not UTF-8, not JSON) is a StudyError. Missing: raises
    FileNotFoundError, which callers answer in their own words."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise damaged(path, error, fix) from None


def publish(temporary: str, path: Path) -> None:
    """Rename a finished file into place (readers never see half a file), readable as the umask allows."""
    os.chmod(temporary, 0o666 & ~_UMASK)
    os.replace(temporary, path)


@contextmanager
def data_lock(root: Path, name: str) -> Iterator[None]:
    """An inter-process lock in the data root: one process downloads or decodes, the others wait and reuse."""
    from filelock import FileLock

    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(root / f".{name}.lock"))
        lock.acquire()
    except OSError as error:
        raise StudyError(
            f"data root {root} is not writable ({error.strerror}): pass --data-root DIR on a writable disk"
        ) from None
    try:
        yield
    finally:
        lock.release()
