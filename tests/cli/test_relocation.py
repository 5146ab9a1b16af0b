"""A results directory is self-contained: copied (`cp -a`), moved or mounted elsewhere, its study resumes there and
writes nowhere else. study.json records the Ray experiment relative to the directory, and the results tables go to
the directory resumed, not to the one the study's Tuner was pickled in.

Signals and resume in place are in tests/cli/test_faults.py; a driver killed mid-way in tests/cli/test_orchestration.py.
"""

import hashlib
import json
import pickle
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from study.tune.callbacks import ExportCallback
from study.tune.cluster import OWN_EXPERIMENT, experiment_to_resume, keep_in_experiment, recorded_experiment, resuming
from study.tune.runner import finished_before
from study.tune.schedulers import RungDecisions, StudyFIFOScheduler
from tests.cli.test_faults import CONCURRENT, finished_rows, start_study, stop, wait_until
from tests.helpers import run_module

# Four trials, two at a time, three epochs each, each saving its final model (the trials table lists where)
CHECKPOINTED = CONCURRENT.replace("batch_size: 64}", "batch_size: 64, save_checkpoint: true}")


def interrupted_study(tmp_path: Path) -> Path:
    """A study stopped by SIGTERM once a trial finished: the others are left to --resume."""
    assert CHECKPOINTED != CONCURRENT
    space = tmp_path / "space.yaml"
    space.write_text(CHECKPOINTED)
    out = tmp_path / "study"
    driver = start_study("--space", str(space), "--out", str(out), "--max-concurrent", "2")
    wait_until(driver, lambda: finished_rows(out) >= 1, "a trial finished")
    stdout, stderr = stop(driver, signal.SIGTERM)
    assert driver.returncode == 128 + signal.SIGTERM, stdout[-3000:] + stderr[-3000:]
    assert 1 <= finished_rows(out) < 4
    return out


def contents(directory: Path) -> dict[str, str]:
    """Every path under `directory` with its content's hash (a directory: "directory")."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        if path.is_file()
        else "directory"
        for path in sorted(directory.rglob("*"))
    }


def assert_finished_in(out: Path, result: subprocess.CompletedProcess) -> pd.DataFrame:
    """The study in `out` finished every trial, in its own tables and in its own Ray experiment."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 4 and (trials["status"] == "completed").all() and (trials["epochs_run"] == 3).all()
    assert finished_before(str(out / OWN_EXPERIMENT)) == (4, 0)
    # each trial's final model is in this directory, where the table says
    assert all(Path(path).is_relative_to(out.resolve()) and Path(path).exists() for path in trials["checkpoint"])
    study = json.loads((out / "study.json").read_text())
    assert "finished" in study and study["ray_experiment"] == OWN_EXPERIMENT
    return trials


@pytest.mark.slow
def test_a_copied_study_resumes_in_its_copy_and_leaves_the_original_byte_for_byte(tmp_path):
    original = interrupted_study(tmp_path)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(original), str(copy)], check=True)
    before = contents(original)

    result = run_module("study.run", "--resume", str(copy), "--no-dashboard")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert contents(original) == before  # its tables, report, study.json and Ray experiment untouched
    assert_finished_in(copy, result)


@pytest.mark.slow
def test_a_moved_study_that_recorded_its_experiment_as_an_absolute_path_resumes_from_its_own(tmp_path):
    """The previous version recorded the absolute path of the study's ray/tune: moved, that path is gone, and
    --resume said the study was interrupted before its first trial started (false) and advised --overwrite."""
    out = interrupted_study(tmp_path)
    record = json.loads((out / "study.json").read_text())
    record["ray_experiment"] = str((out / OWN_EXPERIMENT).resolve())  # as the previous version wrote it
    (out / "study.json").write_text(json.dumps(record))
    moved = tmp_path / "moved"
    subprocess.run(["mv", str(out), str(moved)], check=True)

    result = run_module("study.run", "--resume", str(moved), "--no-dashboard")
    assert_finished_in(moved, result)
    note = f"names the Ray experiment {out.resolve() / OWN_EXPERIMENT}, outside {moved} (the study was copied or moved)"
    assert note in result.stdout and not out.exists()


def test_the_experiment_to_resume_is_the_directorys_own_unless_it_was_recorded_elsewhere_under_storage(tmp_path):
    out = tmp_path / "moved"
    (out / OWN_EXPERIMENT).mkdir(parents=True)
    own = str((out / OWN_EXPERIMENT).resolve())
    assert recorded_experiment(str(tmp_path / "a" / OWN_EXPERIMENT), storage=None) == OWN_EXPERIMENT
    assert recorded_experiment("/nfs/runs/a-1", storage="/nfs/runs") == "/nfs/runs/a-1"
    assert experiment_to_resume(out, OWN_EXPERIMENT) == (own, None)
    assert experiment_to_resume(out, "s3://bucket/runs/a-1") == ("s3://bucket/runs/a-1", None)
    assert experiment_to_resume(out, "/nfs/runs/a-1") == ("/nfs/runs/a-1", None)  # --storage: where it is
    assert experiment_to_resume(out, own) == (own, None)  # the previous version's record, not moved
    elsewhere = str(tmp_path / "original" / OWN_EXPERIMENT)  # ... copied or moved: its own, and a note says so
    path, note = experiment_to_resume(out, elsewhere)
    assert path == own and note.startswith(f"note: {out / 'study.json'} names the Ray experiment {elsewhere}")
    (out / OWN_EXPERIMENT).rmdir()  # no experiment of its own (stopped before Tune started): the record stands
    assert experiment_to_resume(out, elsewhere) == (elsewhere, None)


def test_what_the_tuner_pickled_writes_into_the_study_resumed_not_the_one_it_was_pickled_in(tmp_path):
    """The callbacks, and the storage of the trials the restored searcher creates, were pickled in the original."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import FIFOScheduler

    callback = ExportCallback(tmp_path / "original", max_epochs=1)
    assert pickle.loads(pickle.dumps(callback)).out is None  # where the tables go is never pickled
    older = pickle.dumps(callback.__dict__)  # the previous version pickled `out` with the Tuner
    storage = StorageContext(storage_path=str(tmp_path / "original" / "ray"), experiment_dir_name="tune")
    new_trial = Trial("trainable", config={}, trial_id="t5", stub=True, storage=storage)
    copy = tmp_path / "copy"
    with resuming(copy, str(copy / OWN_EXPERIMENT)):
        resumed = pickle.loads(pickle.dumps(callback))
        from_older = ExportCallback.__new__(ExportCallback)
        from_older.__setstate__(pickle.loads(older))
        keep_in_experiment(new_trial)
    assert resumed.out == from_older.out == copy and callback.out == tmp_path / "original"
    assert new_trial.storage.experiment_fs_path == str(copy / OWN_EXPERIMENT)
    assert storage.experiment_fs_path == str(tmp_path / "original" / OWN_EXPERIMENT)  # the searcher's, unchanged
    # a Tuner pickled before FIFO was the study's has Ray's, which could not keep new trials in place: made the study's
    old_fifo = pickle.loads(pickle.dumps(RungDecisions(FIFOScheduler()))).scheduler
    assert isinstance(old_fifo, StudyFIFOScheduler)
