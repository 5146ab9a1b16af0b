"""Datasets through the real loaders: torchvision's classes on files
in the official formats, folders, the node cache."""

import gzip
import hashlib
import io
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image

from study.cli.data import main as data_main
from study.core.config import StudyError, TrialConfig
from study.trial import torchvision_sets
from study.trial.data import load_data, load_digits
from study.trial.train import run_trial
from tests.helpers import REPO

CIFAR_JPEGS = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_image(path: Path, size: tuple[int, int], color: tuple[int, int, int], kind: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8) + np.array(color, dtype=np.uint8)
    pixels[: size[1] // 2, : size[0] // 2] = 255 - pixels[0, 0]  # a corner of another colour: not a flat image
    Image.fromarray(pixels).save(path, kind)


def make_folder(root: Path, splits=("train", "val"), classes=("cat", "dog"), per_class=6, size=(12, 12)) -> Path:
    for split in splits:
        for label, name in enumerate(classes):
            for i in range(per_class):
                write_image(root / split / name / f"{i}.png", size, (40 * label + i, 80, 120))
    return root


# --- the embedded default -----------------------------------------------------------------


def test_digits_splits_are_stratified_seeded_and_described():
    splits = load_digits(split_seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1077, 360, 360)
    assert splits.train.store.shape[1:] == (1, 8, 8) and splits.train.store.dtype == torch.uint8
    rows = torch.cat([splits.train.rows, splits.val.rows, splits.test.rows])
    assert sorted(rows.tolist()) == list(range(1797))  # disjoint and complete
    for part in (splits.train, splits.val, splits.test):
        assert torch.bincount(part.labels, minlength=10).min() >= 0.09 * len(part)  # every class, in proportion
    again, other = load_digits(split_seed=0), load_digits(split_seed=1)
    assert torch.equal(again.val.rows, splits.val.rows) and not torch.equal(other.val.rows, splits.val.rows)
    assert splits.info() == {
        "train_images": 1077,
        "val_images": 360,
        "test_images": 360,
        "skipped_images": 0,
        "data_splits": "train/val/test 60%/20%/20% of 1797 images, stratified (split_seed 0)",
    }


def test_train_fraction_keeps_a_stratified_seeded_subset_of_the_training_split():
    full = load_digits(split_seed=0)
    tenth = load_data("digits", 0, 8, train_fraction=0.1)
    assert len(tenth.train) == 108 and set(tenth.train.rows.tolist()) <= set(full.train.rows.tolist())
    assert torch.bincount(tenth.train.labels, minlength=10).min() >= 10
    assert torch.equal(tenth.val.rows, full.val.rows) and torch.equal(tenth.test.rows, full.test.rows)
    assert torch.equal(load_data("digits", 0, 8, train_fraction=0.1).train.rows, tenth.train.rows)
    assert "train: a 10% stratified subset (split_seed 0)" in tenth.description
    with pytest.raises(StudyError, match=r"train_fraction=0.002: cannot take 0.2% of 1077 images stratified by class"):
        load_data("digits", 0, 8, train_fraction=0.002)


def test_unknown_dataset_names_the_valid_ones():
    with pytest.raises(
        StudyError, match="unknown dataset 'mnist': use one of digits, cifar10, cifar100, stl10, fashion_mnist"
    ):
        load_data("mnist", 0, 32)


# --- torchvision's classes on files in the official formats ---------------------------------


def write_cifar10(root: Path, per_batch: int, monkeypatch) -> np.ndarray:
    """A tiny CIFAR-10 in the official python format (pickled dicts, 3072-byte rows: R, G, B planes of 32x32).

    torchvision checks each file's MD5 against the real dataset's, so the test points it at these files' MD5s.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    rows = {}
    for name in files:
        labels = [i % 10 for i in range(per_batch)]
        rows[name] = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batch = {
            "batch_label": name,
            "labels": labels,
            "data": rows[name],
            "filenames": [f"{name}_{i}.png" for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": CIFAR_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}, protocol=2)
    )
    md5 = lambda name: hashlib.md5((folder / name).read_bytes()).hexdigest()
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "train_list", [[n, md5(n)] for n in files[:5]])
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(
        torchvision.datasets.CIFAR10,
        "meta",
        {"filename": "batches.meta", "key": "label_names", "md5": md5("batches.meta")},
    )
    return np.concatenate([rows[n] for n in files[:5]]), rows["test_batch"]


def test_cifar10_python_batches_load_through_torchvision_and_then_from_the_node_cache(tmp_path, monkeypatch, capsys):
    train_rows, test_rows = write_cifar10(tmp_path, per_batch=20, monkeypatch=monkeypatch)
    splits = load_data("cifar10", 0, 224, str(tmp_path))
    assert splits.classes == CIFAR_CLASSES
    assert (len(splits.train), len(splits.val), len(splits.test)) == (80, 20, 20)
    assert splits.train.store.shape == (100, 3, 32, 32)  # kept at 32 px: resized per batch
    assert torch.equal(splits.train.store.reshape(100, 3072), torch.from_numpy(train_rows))  # planes land as channels
    assert torch.equal(splits.test.images.reshape(20, 3072), torch.from_numpy(test_rows))
    assert (
        splits.description
        == "val: 20% of the dataset's train split, stratified (split_seed 0); test: the dataset's own"
    )
    assert "decoding cifar10-train" in capsys.readouterr().out

    for batch in (tmp_path / "cifar-10-batches-py").iterdir():
        batch.unlink()  # the second load reads the node's cache only, memory-mapped
    cached = load_data("cifar10", 0, 224, str(tmp_path))
    assert "decoding" not in capsys.readouterr().out
    assert torch.equal(cached.train.images, splits.train.images) and torch.equal(cached.val.labels, splits.val.labels)
    assert sorted(p.name for p in (tmp_path / "decoded-v1").glob("*.pt")) == ["cifar10-test.pt", "cifar10-train.pt"]


def idx_file(array: np.ndarray) -> bytes:
    """The IDX format of MNIST and Fashion-MNIST: magic (0, 0, type 0x08 = uint8, dims), big-endian sizes, data."""
    return struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def test_fashion_mnist_reads_debians_gzipped_idx_files(tmp_path, monkeypatch, capsys):
    debian = tmp_path / "debian" / "fashion-mnist"
    debian.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, count in (("train", 50), ("t10k", 10)):
        arrays[prefix] = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), np.arange(count, dtype=np.uint8) % 10
        (debian / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_file(arrays[prefix][0])))
        (debian / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_file(arrays[prefix][1])))
    monkeypatch.setattr(torchvision_sets, "DEBIAN_FASHION_MNIST", debian)
    splits = load_data("fashion_mnist", 0, 32, str(tmp_path / "root"))
    assert "using Debian's dataset-fashion-mnist files" in capsys.readouterr().out
    assert splits.classes[0] == "T-shirt/top" and splits.train.store.shape == (50, 1, 28, 28)
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(arrays["t10k"][0]))
    assert torch.equal(splits.test.labels, torch.from_numpy(arrays["t10k"][1]).long())
    assert (len(splits.train), len(splits.val)) == (40, 10)


def test_an_absent_dataset_offline_is_one_line_naming_it_the_directory_and_the_fetch_command(
    tmp_path, monkeypatch, capsys
):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)  # the real download code runs, without a network
    with pytest.raises(StudyError) as error:
        load_data("cifar10", 0, 32, str(tmp_path))
    message = str(error.value)
    assert (
        message.startswith(f"dataset 'cifar10' is not in {tmp_path} and could not be downloaded")
        and "\n" not in message
    )
    assert f"`python -m study.data download cifar10 --data-root {tmp_path}`" in message
    assert data_main(["download", "stl10", "--data-root", str(tmp_path)]) == 2
    assert "dataset 'stl10' is not in" in capsys.readouterr().err


# --- folders --------------------------------------------------------------------------------


def test_folder_with_train_and_val_loads_decoded_images_and_has_no_test_split(tmp_path):
    root = make_folder(tmp_path / "pets")
    splits = load_data(f"folder:{root}", 0, 32, str(tmp_path / "cache"))
    assert splits.classes == ["cat", "dog"] and (len(splits.train), len(splits.val), len(splits.test)) == (12, 12, 0)
    assert splits.train.store.shape == (12, 3, 12, 12)  # one common size below the input size: kept as it is
    expected = torch.from_numpy(np.array(Image.open(root / "train" / "dog" / "3.png"))).permute(2, 0, 1)
    assert torch.equal(splits.train.images[6 + 3], expected)
    assert splits.train.labels.tolist() == [0] * 6 + [1] * 6
    assert splits.description == "train/val: the dataset's own; test: none (metrics NaN)"


def test_folder_images_of_mixed_sizes_are_resized_and_centre_cropped_once(tmp_path):
    root = tmp_path / "flowers"
    for i, size in enumerate([(40, 30), (64, 64), (20, 50), (33, 33)]):
        for name in ("rose", "tulip"):
            write_image(root / "train" / name / f"{i}.jpg", size, (10 * i, 50, 90), kind="JPEG")
            write_image(root / "test" / name / f"{i}.jpg", size, (10 * i, 50, 90), kind="JPEG")
    splits = load_data(f"folder:{root}", 0, 24, str(tmp_path / "cache"))
    assert splits.train.store.shape == (8, 3, 24, 24) and splits.test.store.shape == (8, 3, 24, 24)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 8)  # val carved from train, per class


def test_a_single_folder_of_classes_is_split_by_seed(tmp_path):
    root = tmp_path / "shapes"
    for name in ("a", "b", "c"):
        for i in range(10):
            write_image(root / name / f"{i}.png", (8, 8), (i * 20, 0, 0))
    splits = load_data(f"folder:{root}", 3, 16, str(tmp_path / "cache"))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 6, 6)
    assert torch.bincount(splits.test.labels).tolist() == [2, 2, 2]
    assert "split_seed 3" in splits.description


def test_unreadable_images_are_skipped_with_a_printed_count_and_recorded(tmp_path, capsys):
    root = make_folder(tmp_path / "pets")
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"not an image at all")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(good, "JPEG")
    (root / "train" / "dog" / "truncated.jpg").write_bytes(good.getvalue()[:300])
    splits = load_data(f"folder:{root}", 0, 32, str(tmp_path / "cache"))
    printed = capsys.readouterr().out
    assert (
        f"{root / 'train'}: skipped 2 unreadable image file(s)" in printed
        and "broken.jpg (UnidentifiedImageError" in printed
    )
    assert "truncated.jpg (OSError" in printed
    assert len(splits.train) == 12 and splits.skipped == 2 and splits.info()["skipped_images"] == 2
    load_data(f"folder:{root}", 0, 32, str(tmp_path / "cache"))  # from the cache: the count is printed again
    assert "skipped 2 unreadable image file(s)" in capsys.readouterr().out


def test_a_class_whose_every_image_is_unreadable_is_an_error(tmp_path):
    root = make_folder(tmp_path / "pets", per_class=3)
    for file in (root / "val" / "dog").iterdir():
        file.write_bytes(b"\x89PNG garbage")
    with pytest.raises(StudyError, match=r"val: class\(es\) dog have no readable image .*: replace the broken files"):
        load_data(f"folder:{root}", 0, 32, str(tmp_path / "cache"))


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = make_folder(tmp_path / "pets")
    (root / "val" / "bird").mkdir()
    (root / "train" / "bird").mkdir()
    (root / "train" / "bird" / "notes.txt").write_text("no images here")
    with pytest.raises(
        StudyError, match=r"train: class folder\(s\) bird hold no image files: add images or remove the folder"
    ):
        load_data(f"folder:{root}", 0, 32, str(tmp_path / "cache"))


def test_class_sets_differing_between_train_and_val_are_an_error_naming_them(tmp_path):
    root = make_folder(tmp_path / "pets")
    make_folder(root, splits=("val",), classes=("bird",))
    with pytest.raises(
        StudyError,
        match=r"val has other class folders than .*train \(val/ adds \['bird'\]\): use the same class folders",
    ):
        load_data(f"folder:{root}", 0, 32, str(tmp_path / "cache"))


def test_a_folder_without_class_folders_or_a_missing_folder_is_an_error(tmp_path):
    with pytest.raises(StudyError, match="does not exist"):
        load_data(f"folder:{tmp_path / 'nothing'}", 0, 32, str(tmp_path / "cache"))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(StudyError, match="has no class folders"):
        load_data(f"folder:{tmp_path / 'flat'}", 0, 32, str(tmp_path / "cache"))


def test_a_changed_folder_is_decoded_again_and_an_unchanged_one_never(tmp_path, capsys):
    root = make_folder(tmp_path / "pets")
    cache = str(tmp_path / "cache")
    load_data(f"folder:{root}", 0, 32, cache)
    assert capsys.readouterr().out.count("decoding") == 2
    load_data(f"folder:{root}", 0, 32, cache)
    assert "decoding" not in capsys.readouterr().out
    write_image(root / "val" / "cat" / "new.png", (12, 12), (1, 2, 3))
    assert len(load_data(f"folder:{root}", 0, 32, cache).val) == 13
    assert capsys.readouterr().out.count("decoding") == 1  # val only


def test_processes_loading_at_once_decode_once_under_the_lock(tmp_path):
    root = make_folder(tmp_path / "pets", per_class=20)
    script = f"from study.trial.data import load_data; load_data('folder:{root}', 0, 32, '{tmp_path / 'cache'}')"
    runs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO) for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert "".join(outputs).count("decoding") == 2  # train and val, once each


def test_a_damaged_cache_file_is_decoded_again(tmp_path, capsys):
    root = make_folder(tmp_path / "pets")
    load_data(f"folder:{root}", 0, 32, str(tmp_path / "cache"))
    for file in (tmp_path / "cache" / "decoded-v1").glob("*.pt"):
        file.write_bytes(file.read_bytes()[:100])
    splits = load_data(f"folder:{root}", 0, 32, str(tmp_path / "cache"))
    assert "is unreadable" in capsys.readouterr().out and len(splits.train) == 12


def test_a_folder_changed_after_its_study_started_is_refused_before_anything_is_decoded(tmp_path, capsys):
    """The issue's probe: images replaced between two trials of a study. A trial demands the fingerprint its study
    decided on (TrialConfig.data_fingerprint) and refuses the folder before decoding or reusing anything."""
    root = make_folder(tmp_path / "pets")
    cache = tmp_path / "cache"
    decided = load_data(f"folder:{root}", 0, 32, str(cache)).fingerprint
    assert re.fullmatch(r"[0-9a-f]{16}", decided)
    assert load_data(f"folder:{root}", 0, 32, str(cache), expected_fingerprint=decided).fingerprint == decided
    assert load_digits(split_seed=0).fingerprint == ""  # digits ships with scikit-learn: nothing to check
    cached_files = sorted(cache.rglob("*"))
    capsys.readouterr()

    write_image(root / "train" / "dog" / "3.png", (12, 12), (200, 10, 10))  # same name and size, other pixels
    config = TrialConfig(
        data=f"folder:{root}", data_root=str(cache), data_fingerprint=decided, img_size=32, device="cpu"
    )
    for load in (
        lambda: load_data(f"folder:{root}", 0, 32, str(cache), expected_fingerprint=decided),
        lambda: next(run_trial(config)),  # a trial passes its config's fingerprint
    ):
        with pytest.raises(StudyError) as raised:
            load()
        found = re.search(r"\(fingerprint ([0-9a-f]{16}), ", str(raised.value))
        assert found and found[1] != decided
        assert str(raised.value) == (
            f"data folder {root}: its files changed after the study started (fingerprint {found[1]}, the study "
            f"decided on {decided}): restore the files as they were, or start a new study on them"
        )
    assert "decoding" not in capsys.readouterr().out and sorted(cache.rglob("*")) == cached_files  # nothing decoded

    assert load_data(f"folder:{root}", 0, 32, str(cache)).fingerprint == found[1]  # a new study decides on the new
    write_image(root / "train" / "dog" / "3.png", (12, 12), (40 + 3, 80, 120))  # the file restored as it was
    assert load_data(f"folder:{root}", 0, 32, str(cache), expected_fingerprint=decided).fingerprint == decided


@pytest.fixture(scope="module")
def cifar_jpegs(tmp_path_factory) -> Path:
    """A slice of the real CIFAR-10 JPEGs (30 per class for train, 10 for test)."""
    if not CIFAR_JPEGS.exists():
        pytest.skip(f"{CIFAR_JPEGS} is missing (the shared test data); the CIFAR-10 JPEG tests need it")
    root = tmp_path_factory.mktemp("cifar10-jpg")
    wanted = {"train": 30, "test": 10}
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR_JPEGS) as archive:
        for member in archive:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and taken.get(tuple(parts[:2]), 0) < wanted[parts[0]]:
                taken[tuple(parts[:2])] = taken.get(tuple(parts[:2]), 0) + 1
                (root / parts[0] / parts[1]).mkdir(parents=True, exist_ok=True)
                (root / member.name).write_bytes(archive.extractfile(member).read())
    return root


def test_cifar10_jpegs_load_through_image_folder(cifar_jpegs, tmp_path):
    splits = load_data(f"folder:{cifar_jpegs}", 0, 224, str(tmp_path))
    assert splits.classes == CIFAR_CLASSES
    assert (len(splits.train), len(splits.val), len(splits.test)) == (240, 60, 100)
    assert splits.train.store.shape == (300, 3, 32, 32)  # real 32 px photos, kept at their size
    first = sorted((cifar_jpegs / "train" / "airplane").iterdir())[0]
    assert torch.equal(
        splits.train.store[0], torch.from_numpy(np.array(Image.open(first).convert("RGB"))).permute(2, 0, 1)
    )
    assert splits.train.store.float().std() > 30  # photos, not blank


def test_a_file_rewritten_with_the_same_name_size_and_modification_time_is_decoded_again(tmp_path):
    """Reproducible archives and some package stores keep modification times: only the bytes tell the change."""
    root = make_folder(tmp_path / "pets")
    cache = str(tmp_path / "cache")
    rewritten = root / "train" / "dog" / "3.png"
    before = load_data(f"folder:{root}", 0, 32, cache).train.images[6 + 3]
    stat = rewritten.stat()
    pixels = np.array(Image.open(rewritten))
    Image.fromarray(255 - pixels).save(rewritten, "PNG")  # the negative: PNG's size for a two-colour image is the same
    os.utime(rewritten, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert rewritten.stat().st_size == stat.st_size and rewritten.stat().st_mtime_ns == stat.st_mtime_ns
    after = load_data(f"folder:{root}", 0, 32, cache).train.images[6 + 3]
    assert torch.equal(after, 255 - before)


def test_entries_that_are_not_regular_files_are_skipped_counted_and_never_opened(tmp_path):
    """Opening a FIFO blocks until something writes to it: decoding (or fingerprinting) one would wait forever. The
    load runs in its own process group, killed with its decoding workers if it hangs, so a regression fails."""
    import signal
    import socket

    root = make_folder(tmp_path / "pets")
    os.mkfifo(root / "train" / "cat" / "fifo.png")
    (root / "train" / "dog" / "gone.png").symlink_to(root / "train" / "dog" / "deleted.png")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(root / "val" / "cat" / "socket.png"))
        script = (
            f"from study.trial.data import load_data; s = load_data('folder:{root}', 0, 32, '{tmp_path / 'cache'}'); "
            "print('loaded', len(s.train), len(s.val), s.skipped)"
        )
        process = subprocess.Popen(
            [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            printed = process.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            pytest.fail("loading a folder holding a FIFO hung")
    assert process.returncode == 0 and "loaded 12 12 3" in printed, printed
    fifo, socket_file = root / "train" / "cat" / "fifo.png", root / "val" / "cat" / "socket.png"
    assert (
        f"note: {root / 'train'}: skipped 2 entries that are not regular files (e.g. {fifo}, a FIFO): only regular "
        "files are read as images; skipped_images counts them" in printed
    ), printed
    assert f"skipped 1 entry that is not a regular file (e.g. {socket_file}, a socket)" in printed


def torch_save_on_a_full_disk(obj, file, *args, **kwargs):
    """What torch.save raises when the disk fills up under it: its C++ zip writer's error, not an OSError."""
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 960 vs 854")


def test_decoded_images_that_cannot_be_cached_are_kept_in_memory_with_a_note_saying_why(tmp_path, monkeypatch, capsys):
    root = make_folder(tmp_path / "pets")
    expected = load_data(f"folder:{root}", 0, 32, str(tmp_path / "writable"))
    capsys.readouterr()

    monkeypatch.setattr(torch, "save", torch_save_on_a_full_disk)
    full = tmp_path / "full" / "decoded-v1"
    splits = load_data(f"folder:{root}", 0, 32, str(full.parent))
    printed = capsys.readouterr().out
    assert torch.equal(splits.train.images, expected.train.images)
    assert torch.equal(splits.val.labels, expected.val.labels)
    assert printed.count("note: the decoded images are kept in this process's memory") == 2  # train and val
    assert f": torch.save failed in {full}: [enforce fail at inline_container.cc:672]" in printed
    assert not list(full.glob("*.pt*")) and not list(full.glob(".*.tmp"))  # nothing half-written left behind

    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=0))  # the disk really is full
    load_data(f"folder:{root}", 0, 32, str(full.parent))
    printed = capsys.readouterr().out
    assert re.search(rf": out of disk space in {re.escape(str(full))}: [0-9.]+ MiB needed, 0.0 MiB free;", printed)

    unwritable = tmp_path / "unwritable"
    unwritable.mkdir()
    (unwritable / "decoded-v1").write_text("a file where the cache directory should be")
    splits = load_data(f"folder:{root}", 0, 32, str(unwritable))
    assert torch.equal(splits.train.images, expected.train.images)
    assert f": {unwritable / 'decoded-v1'} cannot be written (File exists); every trial" in capsys.readouterr().out
