"""Image folders (`data: folder:PATH`): finding the images, checking the layout, fingerprinting for the cache.

PATH is an ImageFolder root with train/ (and optionally val/, test/) class subfolders, or a single folder of class
subfolders (split later, study/trial/splits.py). Files are found by torchvision's ImageFolder, with links followed
only inside their class folder; each split is decoded once per node (study/trial/decode.py) under a key that
changes whenever a file is added, removed, renamed or rewritten (the files' bytes are hashed). The splits' digests
make the folder's fingerprint, which a study decides on before its trials start (TrialConfig.data_fingerprint): a
trial refuses the folder once its files changed.

Bad data in folders:
- a file that cannot be decoded is skipped; the count and the first files are printed (at every load) and
  `skipped_images` is recorded with the trial;
- an entry with an image's name that is no regular file (a FIFO, whose opening waits forever for a writer; a socket,
  a device, a link to nothing) is never opened: it is skipped with a note and counted in `skipped_images`;
- a class folder without images, or whose images are all unreadable: error;
- train/, val/ and test/ with different class folders: error naming them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from study.core.config import StudyError
from study.trial.decode import cached, decode_files, from_cache
from study.trial.splits import SourceParts


class ClassFiles(NamedTuple):
    """A class folder's image files, the links skipped, and the entries skipped as no regular file (path, kind)."""

    files: list[str]
    skipped_links: list[str]
    not_regular: list[tuple[str, str]]


def not_regular_kind(path: str) -> str | None:
    """What an entry is if not a regular file (links followed), without opening it: opening a FIFO blocks until
    something writes to it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:  # a link to nothing, or a loop of links
        return f"a link that leads nowhere ({error.strerror})"
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a device", stat.S_ISBLK: "a device"}
    return next((kind for test, kind in kinds.items() if test(mode)), "not a regular file")


def contained_files(class_dir: str, is_valid_file: Callable[[str], bool]) -> ClassFiles:
    """The image files of a class folder, and what was skipped. Links are followed only within the class folder, and
    each directory and file once: a link out of it (e.g. `cat/loop -> ..`) would label other classes' images as this
    class, and a link back into it would count its images again. Entries that are no regular file are never opened."""
    base = os.path.realpath(class_dir)
    inside = lambda real: real == base or real.startswith(base + os.sep)
    files, skipped, not_regular, seen_dirs, seen_files = [], [], [], {base}, set()
    for directory, dirnames, filenames in os.walk(class_dir, followlinks=True):
        for name in list(dirnames):
            real = os.path.realpath(os.path.join(directory, name))
            if not inside(real) or real in seen_dirs:
                dirnames.remove(name)
                skipped.append(os.path.join(directory, name))
            seen_dirs.add(real)
        for name in sorted(filenames):
            path = os.path.join(directory, name)
            if not is_valid_file(path):
                continue
            real = os.path.realpath(path)
            if not inside(real) or real in seen_files:
                skipped.append(path)
                continue
            kind = not_regular_kind(path)
            if kind:
                not_regular.append((path, kind))
                continue
            seen_files.add(real)
            files.append(path)
    return ClassFiles(files=files, skipped_links=skipped, not_regular=not_regular)


def image_folder(path: Path):
    """torchvision's ImageFolder of `path`, its files found by contained_files; `skipped_links` and `not_regular`
    list the rest."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    class ContainedImageFolder(ImageFolder):
        def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
            valid = is_valid_file or (lambda name: has_file_allowed_extension(name, extensions or IMG_EXTENSIONS))
            self.skipped_links, self.not_regular, samples = [], [], []
            root = os.path.realpath(directory)
            for target in sorted(class_to_idx):
                class_dir = os.path.join(directory, target)
                if root.startswith(os.path.realpath(class_dir) + os.sep) or os.path.realpath(class_dir) == root:
                    self.skipped_links.append(class_dir)  # a class folder that is a link to the root or above it
                    continue
                found = contained_files(class_dir, valid)
                samples += [(file, class_to_idx[target]) for file in found.files]
                self.skipped_links += found.skipped_links
                self.not_regular += found.not_regular
            return samples

    return ContainedImageFolder(str(path), allow_empty=True)


def scan_folder(root: Path) -> dict:
    """The ImageFolders of `root` by split (`all` for a single folder of classes); layout errors are StudyErrors."""
    if not root.is_dir():
        raise StudyError(
            f"data folder {root} does not exist: give folder:PATH with train/ and val/ class subfolders, or class "
            "subfolders"
        )
    splits = (
        {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
        if (root / "train").is_dir()
        else {"all": root}
    )
    folders = {}
    for split, path in splits.items():
        try:
            folder = image_folder(path)
        except FileNotFoundError:
            raise StudyError(
                f"{path} has no class folders: put each class's images in a subfolder named after the class"
            ) from None
        if folder.skipped_links:
            print(
                f"note: {path}: skipped {len(folder.skipped_links)} link(s) that lead out of their class folder or "
                f"back into it (e.g. {folder.skipped_links[0]}): images are read from inside their class folder "
                "only, each once",
                flush=True,
            )
        if folder.not_regular:
            count, (first, kind) = len(folder.not_regular), folder.not_regular[0]
            entries = (
                "1 entry that is not a regular file" if count == 1 else f"{count} entries that are not regular files"
            )
            print(
                f"note: {path}: skipped {entries} (e.g. {first}, {kind}): only regular files are read as images; "
                "skipped_images counts them",
                flush=True,
            )
        counts = np.bincount(folder.targets, minlength=len(folder.classes))
        empty = [c for c, n in zip(folder.classes, counts) if n == 0]
        if empty:
            raise StudyError(
                f"{path}: class folder(s) {', '.join(empty)} hold no image files: add images or remove the folder(s)"
            )
        folders[split] = folder
    reference = next(iter(folders))
    for split, folder in folders.items():
        if folder.classes != folders[reference].classes:
            have, want = set(folder.classes), set(folders[reference].classes)
            differences = [
                f"{label} {sorted(names)}" for label, names in (("lacks", want - have), ("adds", have - want)) if names
            ]
            raise StudyError(
                f"{splits[split]} has other class folders than {splits[reference]} ({split}/ "
                f"{'; '.join(differences)}): "
                f"use the same class folders in every split"
            )
    return folders


def load_folder(root: Path, data_root: Path, img_size: int, expected_fingerprint: str = "") -> SourceParts:
    """The folder's splits, each decoded once per node. `expected_fingerprint` (unless ""): the folder's fingerprint
    as its study found it before the trials started; a folder whose files changed since is refused before any of it
    is decoded or read from the cache, so a trial never trains on other images than the study's other trials."""
    folders = scan_folder(root)
    fingerprints = {split: folder_fingerprint(folder) for split, folder in folders.items()}
    fingerprint = source_fingerprint(fingerprints)
    if expected_fingerprint and fingerprint != expected_fingerprint:
        raise StudyError(
            f"data folder {root}: its files changed after the study started (fingerprint {fingerprint}, the study "
            f"decided on {expected_fingerprint}): restore the files as they were, or start a new study on them"
        )
    parts, skipped = {}, 0
    for split, folder in folders.items():
        key = f"folder-{re.sub(r'[^A-Za-z0-9_.-]', '_', root.name)}-{fingerprints[split]}-{split}-{img_size}px"
        where = str(root if split == "all" else root / split)
        decoded = cached(
            data_root,
            key,
            functools.partial(
                decode_files, folder, folder.classes, img_size, where, lambda index, s=folder.samples: s[index][0]
            ),
        )
        parts[split], _, count = from_cache(decoded, where)
        skipped += count + len(folder.not_regular)
    return SourceParts(
        parts=parts, classes=next(iter(folders.values())).classes, skipped=skipped, fingerprint=fingerprint
    )


def source_fingerprint(split_fingerprints: dict[str, str]) -> str:
    """The whole folder's fingerprint, from its splits' (no second pass over the files)."""
    lines = "".join(f"{split}={fingerprint}\n" for split, fingerprint in sorted(split_fingerprints.items()))
    return hashlib.blake2b(lines.encode(), digest_size=8).hexdigest()


def folder_fingerprint(folder) -> str:
    """A digest of every file's path, label and bytes: it changes when any file is added, removed, renamed or
    rewritten, also with the same size and modification time (reproducible archives and some package stores keep
    mtimes), so a stale cache is never used. Reading the bytes costs about a second per 10,000 small JPEGs
    (docs/data.md)."""
    digest = hashlib.blake2b(f"{folder.root}|{folder.classes}".encode(), digest_size=8)
    for path, label in folder.samples:
        try:
            content = Path(path).read_bytes()
        except OSError as error:  # decoding skips and reports the file; whether it can be read is part of the folder
            content = f"unreadable: {error.strerror}".encode()
        digest.update(f"{path}|{label}|{len(content)}\n".encode())  # the length: files never run into each other
        digest.update(content)
    return digest.hexdigest()
