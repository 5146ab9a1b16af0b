"""Misuse and damage found once a study's input is past the CLI's checks: image folders with link loops, a training
batch of one with BatchNorm, mixed-size folders that outgrow memory once resized, damaged files read by report,
merge and --resume, out of disk space, a study directory used by two processes.

The CLI's one-line errors before Ray starts are in tests/cli/test_bad_input.py; signals in tests/cli/test_faults.py;
what --overwrite deletes in tests/cli/test_run.py.
"""

import fcntl
import json
import os

import pandas as pd
import pytest
import torch
from PIL import Image

from study.analysis.results import load_results
from study.cli import report, run
from study.core.config import StudyError, TrialConfig
from study.core.files import atomic_write
from study.merging import checkpoints
from study.trial import decode
from study.trial.batching import drops_last_batch
from study.trial.folders import scan_folder
from study.trial.train import run_trial
from tests.cli.test_run import STUDY_RECORD


def image(path, size=(12, 12), colour=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (colour, colour, colour)).save(path)


def test_a_link_loop_in_a_class_folder_labels_no_other_class_and_says_what_it_skipped(tmp_path, capsys):
    root = tmp_path / "pets"
    for split, count in (("train", 3), ("val", 2)):
        for label in ("cat", "dog"):
            for i in range(count):
                image(root / split / label / f"{i}.png")
    (root / "train" / "cat" / "loop").symlink_to("..", target_is_directory=True)  # train/cat/loop -> train/
    (root / "train" / "cat" / "again").symlink_to(".", target_is_directory=True)  # back into the class folder
    (root / "train" / "dog" / "stolen.png").symlink_to(root / "train" / "cat" / "0.png")  # a cat labelled dog
    folders = scan_folder(root)
    train = folders["train"]
    labels = [train.classes[label] for _, label in train.samples]
    assert labels.count("cat") == 3 and labels.count("dog") == 3, train.samples
    assert all(
        os.path.realpath(path).startswith(str(root / "train" / train.classes[label])) for path, label in train.samples
    )
    note = capsys.readouterr().out
    assert "skipped 3 link(s) that lead out of their class folder or back into it" in note and "loop" in note


def test_a_last_training_batch_of_one_is_dropped_so_batchnorm_trains(small_digits):
    # 192 training images in batches of 191: the last batch would hold one image, which BatchNorm cannot normalise
    assert len(small_digits.train) % 191 == 1 and drops_last_batch(192, 191)
    assert not drops_last_batch(192, 64) and not drops_last_batch(1, 4)
    config = TrialConfig(
        img_size=32,
        epochs=1,
        batch_size=191,
        weights="random",
        device="cpu",
        unfreeze_depth="all",
        feature_cache=False,
    )
    (metrics,) = list(run_trial(config, small_digits))
    assert metrics["epoch"] == 1 and 0 <= metrics["train_acc"] <= 1
    cached = config.replace(unfreeze_depth=1, feature_cache=True)  # the feature cache's batches: the same rule
    (metrics,) = list(run_trial(cached, small_digits))
    assert metrics["epoch"] == 1


def test_the_memory_check_counts_images_as_resized_in_a_folder_of_mixed_sizes(tmp_path, monkeypatch):
    for i, size in enumerate(((10, 10), (12, 9), (9, 14))):
        image(tmp_path / "mixed" / "a" / f"{i}.png", size)
        image(tmp_path / "mixed" / "b" / f"{i}.png", size)
    folder = scan_folder(tmp_path / "mixed")["all"]
    decoded = 6 * 3 * 14 * 14  # at most what the small images take as decoded
    resized = 6 * 3 * 64 * 64  # what they take at img_size 64
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    monkeypatch.setattr(decode, "MEMORY_SHARE", (decoded + resized) / 2 / physical)
    describe = lambda index: folder.samples[index][0]
    with pytest.raises(StudyError, match="6 images at 64 px do not fit in half of this node's memory once decoded"):
        decode.decode_files(folder, folder.classes, 64, "mixed", describe)
    assert decode.decode_files(folder, folder.classes, 16, "mixed", describe)["images"].shape == (6, 3, 16, 16)


def one_line(text: str) -> str:
    assert text.count("\n") == 1 and "Traceback" not in text, text
    return text


def results_dir(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    trials = pd.DataFrame({"trial_id": ["a", "b"], "status": ["completed"] * 2, "val_acc": [0.5, 0.6]})
    trials.to_csv(out / "trials.csv", index=False)
    (out / "study.json").write_text(json.dumps(STUDY_RECORD))
    return out, trials


@pytest.mark.parametrize(
    "damage", ["empty trials.csv", "truncated trials.parquet", "garbage epochs.parquet", "csv that is binary"]
)
def test_report_answers_a_damaged_table_in_one_line(tmp_path, capsys, damage):
    out, trials = results_dir(tmp_path)
    if damage == "empty trials.csv":
        (out / "trials.csv").write_text("")
        damaged = "trials.csv"
    elif damage == "truncated trials.parquet":
        trials.to_parquet(out / "trials.parquet", index=False)
        (out / "trials.parquet").write_bytes((out / "trials.parquet").read_bytes()[:100])
        damaged = "trials.parquet"
    elif damage == "garbage epochs.parquet":
        (out / "epochs.parquet").write_text("not parquet")
        damaged = "epochs.parquet"
    else:
        (out / "trials.csv").write_bytes(bytes(range(256)) * 8)
        damaged = "trials.csv"
    assert report.main([str(out)]) == 2
    error = one_line(capsys.readouterr().err)
    assert f"{out / damaged} is damaged or not what it should be" in error and "restore it from a copy" in error


def test_report_reads_past_a_study_json_that_is_no_record(tmp_path):
    out, _ = results_dir(tmp_path)
    (out / "study.json").write_text("[1, 2]")
    results = load_results(out)
    assert results.study == {} and any("holds a list, not a study's record" in note for note in results.notes)
    (out / "study.json").write_bytes(b"\xff\xfe")
    assert any("study.json is unreadable" in note for note in load_results(out).notes)


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"ray_experiment": ', "is damaged or not what it should be (JSONDecodeError"),
        ("[1, 2, 3]", "records no Ray experiment"),
        ('{"ray_experiment": "/x", "space": []}', "lacks what a study records (command, space, resources"),
        (
            json.dumps({**STUDY_RECORD, "space": {"name": "x", "dimensions": {"lr": [1]}}, "resources": {}}),
            "its space is damaged",
        ),
    ],
    ids=["not json", "a list", "lacks keys", "damaged space"],
)
def test_resume_answers_a_damaged_study_json_in_one_line(tmp_path, capsys, content, expected):
    (tmp_path / "study.json").write_text(content)
    assert run.main(["--resume", str(tmp_path)]) == 2
    assert expected in one_line(capsys.readouterr().err)


def test_merge_answers_a_checkpoint_of_a_foreign_structure_in_one_line(tmp_path, capsys):
    torch.save({"format": checkpoints.CHECKPOINT_FORMAT, "state_dict": {}}, tmp_path / "model.pt")
    with pytest.raises(StudyError, match="model.pt is a damaged study checkpoint \\(no 'config'\\)"):
        checkpoints.load_checkpoint(tmp_path / "model.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(StudyError, match="is not a study checkpoint"):
        checkpoints.load_checkpoint(tmp_path / "list.pt")


def test_out_of_disk_space_keeps_the_file_written_before_and_says_so(tmp_path):
    table = tmp_path / "trials.csv"
    table.write_text("trial_id\nkept\n")

    def write_to_a_full_disk(path):
        with open("/dev/full", "w") as full:  # the kernel's always-full device: a real ENOSPC
            full.write("x" * 100_000)
            full.flush()

    with pytest.raises(StudyError, match="out of disk space writing .*trials.csv: every file written before is kept"):
        atomic_write(table, write_to_a_full_disk)
    assert table.read_text() == "trial_id\nkept\n" and sorted(p.name for p in tmp_path.iterdir()) == ["trials.csv"]


def test_a_study_directory_in_use_is_refused_to_a_second_resume(tmp_path, capsys):
    (tmp_path / "study.json").write_text(json.dumps({**STUDY_RECORD, "resources": {}}))
    handle = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # what a running study holds
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert run.main(["--resume", str(tmp_path)]) == 2
    finally:
        os.close(handle)
    assert "is in use by another python -m study.run" in one_line(capsys.readouterr().err)
