"""Image folders (`data: folder:PATH`): finding the images, checking the layout, fingerprinting for the cache.

PATH is an ImageFolder root with train/ (and optionally val/, test/) class subfolders, or a single folder of class
subfolders (split later, study/trial/splits.py). Files are found by torchvision's ImageFolder, with links followed
only inside their class folder; each split is decoded once per node (study/trial/decode.py) under a key that
changes whenever a file is added, removed, renamed or rewritten.

Bad data in folders:
- a file that cannot be decoded is skipped; the count and the first files are printed (at every load) and
  `skipped_images` is recorded with the trial;
- a class folder without images, or whose images are all unreadable: error;
- train/, val/ and test/ with different class folders: error naming them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from study.core.config import StudyError
from study.trial.decode import cached, decode_files, from_cache
from study.trial.splits import SourceParts


def contained_files(class_dir: str, is_valid_file: Callable[[str], bool]) -> tuple[list[str], list[str]]:
    """(the image files of a class folder, the links skipped). Links are followed only within the class folder, and
    each directory and file once: a link out of it (e.g. `cat/loop -> ..`) would label other classes' images as this
    class, and a link back into it would count its images again."""
    base = os.path.realpath(class_dir)
    inside = lambda real: real == base or real.startswith(base + os.sep)
    files, skipped, seen_dirs, seen_files = [], [], {base}, set()
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
            seen_files.add(real)
            files.append(path)
    return files, skipped


def image_folder(path: Path):
    """torchvision's ImageFolder of `path`, its files found by contained_files; `skipped_links` lists the rest."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    class ContainedImageFolder(ImageFolder):
        def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
            valid = is_valid_file or (lambda name: has_file_allowed_extension(name, extensions or IMG_EXTENSIONS))
            self.skipped_links, samples = [], []
            root = os.path.realpath(directory)
            for target in sorted(class_to_idx):
                class_dir = os.path.join(directory, target)
                if root.startswith(os.path.realpath(class_dir) + os.sep) or os.path.realpath(class_dir) == root:
                    self.skipped_links.append(class_dir)  # a class folder that is a link to the root or above it
                    continue
                files, skipped = contained_files(class_dir, valid)
                samples += [(file, class_to_idx[target]) for file in files]
                self.skipped_links += skipped
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


def load_folder(root: Path, data_root: Path, img_size: int) -> SourceParts:
    parts, skipped = {}, 0
    folders = scan_folder(root)
    for split, folder in folders.items():
        key = f"folder-{re.sub(r'[^A-Za-z0-9_.-]', '_', root.name)}-{folder_fingerprint(folder)}-{split}-{img_size}px"
        where = str(root if split == "all" else root / split)
        decoded = cached(
            data_root,
            key,
            functools.partial(
                decode_files, folder, folder.classes, img_size, where, lambda index, s=folder.samples: s[index][0]
            ),
        )
        parts[split], _, count = from_cache(decoded, where)
        skipped += count
    return SourceParts(parts=parts, classes=next(iter(folders.values())).classes, skipped=skipped)


def folder_fingerprint(folder) -> str:
    """Changes when any file is added, removed, renamed, or rewritten: a stale cache is never used."""
    digest = hashlib.sha1(f"{folder.root}|{folder.classes}".encode())
    for path, label in folder.samples:
        stat = os.stat(path)
        digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
