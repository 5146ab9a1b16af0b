"""A full disk during a study (issue 27): the study stops with one line, every trial that finished is kept (in Ray's
saved state and in the tables alike), and once there is room again `--resume` runs the rest. On a real small disk
(a tmpfs, mounted as root: skipped where mounting is not allowed) that another process fills mid-study.

The pieces (the guard's decision, its reserve file, Ray's log lines) are tests/tune/test_disk.py.
"""

import json
import re
import subprocess

import pandas as pd
import pytest

from study.tune.disk import HELD
from tests.cli.test_faults import finished_rows, start_study, wait_until
from tests.helpers import run_module
from tests.tune.test_disk import fill, mounted_tmpfs


def saved_finished_trials(experiment) -> set[str]:
    """The trials Ray's saved experiment state holds as finished or failed."""
    from ray import tune

    return {t.trial_id for t in tune.ExperimentAnalysis(str(experiment)).trials if t.status in ("TERMINATED", "ERROR")}


@pytest.mark.slow
def test_a_disk_filled_mid_study_stops_it_keeping_every_finished_trial_and_resume_runs_the_rest(tmp_path):
    with mounted_tmpfs(tmp_path / "disk", 64) as disk:
        out, experiment = disk / "out", disk / "out" / "ray" / "tune"
        driver = start_study("--space", "smoke", "--out", str(out))
        try:
            wait_until(driver, lambda: finished_rows(out) >= 1, "a trial finished")
            fill(disk)  # another process takes every free byte while the study runs
            stdout, stderr = driver.communicate(timeout=300)
        finally:
            driver.kill()
        assert driver.returncode == 2, stdout[-3000:] + stderr[-3000:]
        stopped = re.findall(
            r"error: the disk holding \S+ has \d+\.\d MiB free, less than the \d+ MiB a study keeps to save its "
            r"results: the study stopped, its (\d) finished trial\(s\) kept, (\d) to run; free space, then continue "
            rf"it with: python -m study\.run --resume {re.escape(str(out))}\n",
            stderr,
        )
        assert len(stopped) == 1, stderr[-3000:]
        # one line from the study, no traceback of Ray's failed copies (one a second until the stop)
        assert "Traceback" not in stderr and "experiment_state.py" not in stderr and "syncer.py" not in stderr, stderr

        trials = pd.read_csv(out / "trials.csv")
        kept = saved_finished_trials(experiment)
        assert set(trials["trial_id"]) == kept and len(kept) >= 1, (trials.to_string(), kept)
        assert stopped[0] == (str(len(kept)), str(3 - len(kept)))
        study = json.loads((out / "study.json").read_text())
        assert study["interrupted_by"] == ["low disk space"] and "finished" not in study
        assert not (experiment / HELD).exists()  # the reserve went to Ray's last save

        subprocess.run(["mount", "-o", "remount,size=128m", str(disk)], check=True)  # room again
        result = run_module("study.run", "--resume", str(out), "--no-dashboard")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert f"{len(kept)} trial(s) finished before the interruption are kept" in result.stdout
        after = pd.read_csv(out / "trials.csv").set_index("trial_id")
        assert len(after) == 3 and sorted(after["unfreeze_depth"].astype(str)) == ["0", "2", "all"]
        before = trials.set_index("trial_id")["started_at"]
        assert after.loc[before.index, "started_at"].tolist() == before.tolist()  # kept, not run again
        assert "finished" in json.loads((out / "study.json").read_text()) and not (experiment / HELD).exists()


@pytest.mark.slow
def test_resume_of_a_study_whose_ray_state_a_full_disk_cut_short_never_advises_deleting_its_trials(
    smoke_study, tmp_path, capsys
):
    from study.cli import run

    out = tmp_path / "study"
    subprocess.run(["cp", "-a", str(smoke_study.out), str(out)], check=True)
    record = json.loads((out / "study.json").read_text())
    record.pop("finished")  # as an earlier version left it: stopped by a full disk, not finished
    (out / "study.json").write_text(json.dumps(record))
    (state,) = (out / "ray" / "tune").glob("experiment_state-*.json")
    state.write_bytes(state.read_bytes()[:4096])  # Ray's own copy onto a full disk stops mid-file
    files = sorted(p.relative_to(out) for p in out.rglob("*"))

    assert run.main(["--resume", str(out), "--no-dashboard"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error, error
    assert "yet trials finished (3 in Ray's trial directories, and" in error and "interrupted before" not in error
    assert "keep" in error and "--overwrite would delete those results" in error and "a new --out" in error
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == files
