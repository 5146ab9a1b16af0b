import json

import pandas as pd
import pytest

from tests.helpers import brute_force_front, run_module


@pytest.mark.parametrize(
    "args, message",
    [
        (["--space", "unfreeze"], "unknown space 'unfreeze' (did you mean 'unfreeze_depth'?)"),
        (["--space", "smoke", "--set", "lr=0"], "lr=0.0 must be positive"),
        (["--space", "smoke", "--set", "learning_rate=0.1"], "unknown setting 'learning_rate'"),
        (["--space", "smoke", "--backbone", "resnet5"], "unknown backbone 'resnet5'"),
        (["--space", "smoke", "--data", "mnist"], "unknown dataset 'mnist'"),
        (["--space", "smoke", "--set", "unfreeze_depth=60"], "unfreeze_depth=60 exceeds the 49 layers"),
        (["--space", "smoke", "--num-samples", "0"], "--num-samples 0 must be at least 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "study"
    result = run_module("study.run", *args, "--out", str(out))
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_smoke_study_through_ray_exports_consistent_results(smoke_study):
    out, result = smoke_study.out, smoke_study.result
    assert "Ray dashboard: http://127.0.0.1:" in result.stdout
    assert "Pareto front" in result.stdout and str(out.resolve()) in result.stdout

    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 3 and set(trials["status"]) <= {"completed", "stopped_early"}
    assert sorted(trials["unfreeze_depth"].astype(str)) == ["0", "2", "all"]
    assert sorted(trials["unfrozen_layers"]) == [0, 2, 49]
    assert (trials["epochs_run"] >= 1).all() and (trials["epochs_run"] <= 2).all()
    assert trials[trials["status"] == "completed"]["epochs_run"].eq(2).all()
    assert trials["val_acc"].between(0, 1).all() and (trials["train_time_s"] > 0).all()
    stored = pd.read_parquet(out / "trials.parquet")
    assert (
        stored.columns.tolist() == trials.columns.tolist() and stored["val_acc"].tolist() == trials["val_acc"].tolist()
    )

    epochs = pd.read_parquet(out / "epochs.parquet")
    assert len(epochs) == trials["epochs_run"].sum()
    last = epochs.sort_values("epoch").groupby("trial_id").last()
    assert last.loc[trials["trial_id"], "val_acc"].tolist() == pytest.approx(trials["val_acc"].tolist())

    front = pd.read_csv(out / "pareto.csv")
    completed = trials[trials["status"] == "completed"]  # stopped trials take no part by default
    assert set(front["trial_id"]) == brute_force_front(completed) and len(front) == front["trial_id"].nunique()
    html = (out / "pareto.html").read_text()
    assert "Pareto front" in html and all(t in html for t in trials["trial_id"])

    study = json.loads((out / "study.json").read_text())
    assert study["space"]["name"] == "smoke" and study["versions"]["ray"].startswith("2.60")
    assert study["hardware"]["cpu_count"] >= 1 and study["seed"] == 0 and study["wall_time_s"] > 0
    assert f"Report: {(out / 'report.html').resolve()}" in result.stdout


@pytest.mark.slow
def test_a_study_on_folder_data_runs_end_to_end(tmp_path):
    from PIL import Image

    root = tmp_path / "shapes"
    for split, count in (("train", 8), ("val", 4)):
        for label, name in enumerate(("circle", "square", "star")):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.effect_noise((16, 16), 20 + 30 * label).convert("RGB").save(root / split / name / f"{i}.png")
    (root / "train" / "star" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    space = tmp_path / "folder.yaml"
    space.write_text(
        "fixed: {backbone: tf_efficientnet_lite0, img_size: 32, lr: 0.01, batch_size: 16, unfreeze_depth: 0}\n"
        "dimensions: {augment: {grid: [none, cutmix_mixup]}}\nmax_epochs: 1\nasha: false\n"
    )
    out, cache = tmp_path / "study", tmp_path / "cache"
    # relative paths, as a user types them: trials run in other working directories
    result = run_module(
        "study.run",
        "--space",
        "folder.yaml",
        "--data",
        "folder:shapes",
        "--data-root",
        "cache",
        "--out",
        "study",
        "--no-dashboard",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{root / 'train'}: skipped 1 unreadable image file(s)" in result.stdout
    trials = pd.read_csv(out / "trials.csv").set_index("augment")
    assert sorted(trials.index) == ["cutmix_mixup", "none"] and (trials["status"] == "completed").all()
    assert (
        (trials["train_images"] == 24).all()
        and (trials["val_images"] == 12).all()
        and (trials["test_images"] == 0).all()
    )
    assert (trials["skipped_images"] == 1).all() and (trials["data_root"] == str(cache)).all()
    assert trials.loc["none", "data_splits"] == "train/val: the dataset's own; test: none (metrics NaN)"
    assert pd.isna(trials.loc["cutmix_mixup", "train_acc"]) and 0 <= trials.loc["none", "train_acc"] <= 1
    assert trials["val_acc"].between(0, 1).all() and trials["test_acc"].isna().all()
    assert len(list((cache / "decoded-v1").glob("folder-shapes-*-32px.pt"))) == 2
    assert result.stdout.count("decoding folder-shapes-") == 2  # train and val, once, before the trials


def test_repeats_from_the_command_line_replace_the_space_s_and_the_dry_run_counts_them(tmp_path, capsys):
    from study.cli import run

    assert run.main(["--space", "smoke", "--repeats", "2", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "search grid, seed 0, 6 trials;" in printed  # 3 depths x 2 repeats
    listed = [line.split() for line in printed.splitlines() if line.strip()[:1].isdigit()]
    assert sorted(row[1] for row in listed) == ["0", "0", "2", "2", "all", "all"]
    for args, message in [
        (["--space", "smoke", "--repeats", "0"], "--repeats 0 is outside 1..1000"),
        (["--space", "smoke", "--repeats", "1001"], "--repeats 1001 is outside 1..1000"),
        (["--space", "smoke", "--repeats", "-1"], "--repeats -1 is outside 1..1000"),
        (["--space", "optimizer", "--repeats", "2"], "optimizer.yaml: repeats=2 needs search grid or random"),
    ]:
        assert run.main([*args, "--out", str(tmp_path / "study")]) == 2
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1, error
    assert not (tmp_path / "study").exists()
