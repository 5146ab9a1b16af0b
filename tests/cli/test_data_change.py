"""The data a study uses is decided once, before Ray starts, and every trial uses exactly that or fails saying why:
the issue's probe of a folder whose class images were replaced after the first trial of a study."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.helpers import REPO, run_module

# Four one-epoch trials on a folder, one at a time (--max-concurrent 1): a signal after the first leaves the rest.
SPACE = """
fixed: {{backbone: tf_efficientnet_lite0, data: 'folder:{folder}', img_size: 32, batch_size: 8, lr: 0.003}}
dimensions: {{unfreeze_depth: {{grid: [0, 1, 2, 3]}}}}
search: grid
max_epochs: 1
asha: false
"""


def write_images(root: Path, shade: int) -> None:
    """Two classes of 16x16 PNGs in train/ and val/; another `shade` rewrites every file under the same name."""
    for split, count in (("train", 8), ("val", 4)):
        for label, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.full((16, 16, 3), (shade + 90 * label + 7 * i) % 256, dtype=np.uint8)
                pixels[:8, :8] = 255 - pixels[0, 0]
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def finished_rows(out: Path) -> int:
    try:
        return len(pd.read_csv(out / "trials.csv"))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


@pytest.mark.slow
def test_images_replaced_after_the_first_trial_fail_every_later_trial_and_a_new_study_takes_them(tmp_path):
    folder, out, data_root = tmp_path / "pets", tmp_path / "study", tmp_path / "data"
    write_images(folder, shade=0)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(folder=folder))
    command = ["--space", str(space), "--data-root", str(data_root), "--no-dashboard"]
    driver = subprocess.Popen(
        [sys.executable, "-m", "study.run", *command, "--out", str(out), "--max-concurrent", "1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 400
        while finished_rows(out) < 1:
            assert driver.poll() is None, "the study ended before a trial finished: " + "".join(driver.communicate())
            assert time.monotonic() < deadline, "the study stalled before its first trial finished"
            time.sleep(0.1)
        driver.send_signal(signal.SIGTERM)
        stdout, stderr = driver.communicate(timeout=180)
    finally:
        driver.kill()
    assert driver.returncode == 128 + signal.SIGTERM, stdout[-3000:] + stderr[-3000:]
    decided = json.loads((out / "study.json").read_text())["data_fingerprints"][f"folder:{folder}"]
    kept = pd.read_csv(out / "trials.csv", dtype={"data_fingerprint": str})
    assert len(kept) < 4 and (kept["status"] == "completed").all() and (kept["data_fingerprint"] == decided).all()

    write_images(folder, shade=100)  # the class images replaced: the same names, count and sizes, other pixels
    resumed = run_module("study.run", "--resume", str(out), "--no-dashboard")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]  # the kept trial succeeded
    trials = pd.read_csv(out / "trials.csv", dtype={"data_fingerprint": str}).set_index("trial_id")
    assert len(trials) == 4 and (trials.loc[kept["trial_id"], "status"] == "completed").all()
    later = trials.drop(index=kept["trial_id"])
    assert (later["status"] == "error").all() and (trials["data_fingerprint"] == decided).all()
    for error in later["error"]:
        assert error.startswith(f"StudyError: data folder {folder}: its files changed after the study started"), error
        assert error.endswith(
            f"the study decided on {decided}): restore the files as they were, or start a new study on them"
        )

    again = run_module("study.run", *command, "--out", str(tmp_path / "again"), "--set", "unfreeze_depth=0")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    now = json.loads((tmp_path / "again" / "study.json").read_text())["data_fingerprints"][f"folder:{folder}"]
    new = pd.read_csv(tmp_path / "again" / "trials.csv", dtype={"data_fingerprint": str})
    assert now != decided and new["status"].tolist() == ["completed"] and new["data_fingerprint"].tolist() == [now]
