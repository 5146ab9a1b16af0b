"""Nothing lost: Ctrl-C exports the finished trials, failing trials are retried (--max-failures) and recorded,
out of memory is a trial error with a clear message; and the security defaults hold in the package's source.

Raising and NaN trials, and a driver killed mid-way, are in tests/test_orchestration.py.
"""

import ast
import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from conftest import REPO, run_module

from study import train
from study.config import TrialConfig
from study.tuning import describe_error

SMALL = (
    "fixed: {backbone: tf_efficientnet_lite0, data: digits, img_size: 32, train_fraction: 0.3, optimizer: adamw, "
    "lr: 0.003, batch_size: 64}\n"
)


def test_ctrl_c_exports_the_finished_trials_and_the_study_resumes(tmp_path):
    space = tmp_path / "space.yaml"
    # six trials one at a time, two epochs each: Ctrl-C comes while later trials wait and one trains
    space.write_text(SMALL + "dimensions: {unfreeze_depth: {grid: [0, 1, 2, 3, 4, 5]}}\nmax_epochs: 2\nasha: false\n")
    out = tmp_path / "study"
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "study.run",
            "--space",
            str(space),
            "--out",
            str(out),
            "--max-concurrent",
            "1",
            "--no-dashboard",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not ((out / "trials.csv").exists() and len(pd.read_csv(out / "trials.csv")) >= 1):
            assert driver.poll() is None and time.monotonic() < deadline, (
                "the study ended or stalled before a trial finished"
            )
            time.sleep(0.2)
        driver.send_signal(signal.SIGINT)  # what Ctrl-C sends
        stdout, stderr = driver.communicate(timeout=180)
    finally:
        driver.kill()
    assert driver.returncode == 130, stdout[-3000:] + stderr[-3000:]
    assert f"continue the study with: python -m study.run --resume {out}" in stderr and "Traceback" not in stderr

    trials = pd.read_csv(out / "trials.csv")
    # finished trials only: none that Ctrl-C cut short (it would show as stopped after epoch 1)
    assert 1 <= len(trials) < 6 and (trials["status"] == "completed").all()
    assert (trials["epochs_run"] == 2).all() and trials["val_acc"].between(0, 1).all()
    assert (out / "pareto.csv").exists() and (out / "pareto.html").exists() and (out / "report.html").exists()
    study = json.loads((out / "study.json").read_text())
    assert "finished" not in study and len(study["interrupted"]) == 1 and sum(study["trials"].values()) == len(trials)

    result = run_module("study.run", "--resume", str(out), "--no-dashboard")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    after = pd.read_csv(out / "trials.csv").set_index("trial_id")
    assert len(after) == 6 and (after["status"] == "completed").all()
    assert after.loc[trials["trial_id"], "started_at"].tolist() == trials["started_at"].tolist()  # kept, not run again
    assert sorted(after["unfreeze_depth"].astype(int)) == [0, 1, 2, 3, 4, 5]
    assert "finished" in json.loads((out / "study.json").read_text())


def test_a_failing_trial_is_retried_then_recorded_and_overwrite_replaces_a_study(tmp_path):
    space = tmp_path / "space.yaml"
    # device=cuda in a trial Ray gives no GPU (--gpus-per-trial 0) raises in the trial, on any machine
    space.write_text(SMALL + "dimensions: {device: {grid: [cpu, cuda]}}\nmax_epochs: 1\nasha: false\n")
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.json").write_text("{}")
    (out / "old-result.txt").write_text("from the study being replaced")
    result = run_module(
        "study.run",
        "--space",
        str(space),
        "--out",
        str(out),
        "--overwrite",
        "--max-failures",
        "2",
        "--gpus-per-trial",
        "0",
        "--no-dashboard",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 retries of a failing trial" in result.stdout and not (out / "old-result.txt").exists()

    trials = pd.read_csv(out / "trials.csv").set_index("status")
    assert sorted(trials.index) == ["completed", "error"] and trials.loc["completed", "device_used"] == "cpu"
    assert trials.loc["error", "error"].startswith("StudyError: device=cuda but Ray gave this trial no GPU")
    # Ray's record of the failed trial: the first run and two retries
    errors = (out / "ray" / "tune" / trials.loc["error", "trial_id"] / "error.txt").read_text()
    assert [line.split(" (")[0] for line in errors.splitlines() if line.startswith("Failure #")] == [
        "Failure # 1",
        "Failure # 2",
        "Failure # 3",
    ]
    study = json.loads((out / "study.json").read_text())
    assert study["resources"]["max_failures"] == 2 and study["trials"] == {"completed": 1, "error": 1}


@pytest.mark.parametrize(
    "error",
    [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), MemoryError()],
    ids=["cuda", "host"],
)
def test_out_of_memory_ends_the_trial_with_what_to_change(small_digits, monkeypatch, error):
    def out_of_memory(trial):
        raise error

    monkeypatch.setattr(train, "train_epoch", out_of_memory)
    config = TrialConfig(img_size=32, epochs=1, batch_size=48, weights="random", device="cpu", feature_cache=False)
    with pytest.raises(MemoryError) as raised:
        list(train.run_trial(config, small_digits))
    message = describe_error(raised.value)  # what trials.csv records for the trial (study/tuning.py)
    assert message.startswith(f"MemoryError: out of memory ({type(error).__name__}")
    assert "lower batch_size (now 48) or img_size, or run fewer trials at once" in message and "\n" not in message
    assert raised.value.__cause__ is error


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_the_package_loads_only_weights_and_safe_yaml_and_evaluates_no_input():
    sources = {path.name: ast.parse(path.read_text()) for path in sorted((REPO / "study").glob("*.py"))}
    torch_loads = yaml_loads = 0
    for name, tree in sources.items():
        for call, function in calls(tree):
            keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
            assert function not in ("eval", "exec", "compile", "__import__", "yaml.unsafe_load", "yaml.full_load"), (
                f"{name}: {ast.unparse(call)}"
            )
            assert not function.endswith(("pickle.loads", "marshal.loads")), f"{name}: {ast.unparse(call)}"
            if function == "torch.load":
                torch_loads += 1
                assert keywords.get("weights_only") == "True", f"{name}: {ast.unparse(call)}"
            if (
                function.endswith("load_state_dict") and "weights_only" in keywords
            ):  # timm's loader: weights_only=True by default
                assert keywords["weights_only"] == "True", f"{name}: {ast.unparse(call)}"
            if function == "yaml.load":
                yaml_loads += 1
                assert keywords.get("Loader") == "YamlLoader", (
                    f"{name}: {ast.unparse(call)}"
                )  # a yaml.SafeLoader subclass
            if function.endswith("pickle.load"):  # Ray's own error file of a trial, written by the same driver
                assert (name, function) == ("tuning.py", "cloudpickle.load"), f"{name}: {ast.unparse(call)}"
    assert torch_loads >= 3 and yaml_loads == 1  # the checks above looked at the real calls

    import yaml

    from study.config import YamlLoader

    assert issubclass(YamlLoader, yaml.SafeLoader)
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.load("!!python/object/apply:os.system ['true']", Loader=YamlLoader)
