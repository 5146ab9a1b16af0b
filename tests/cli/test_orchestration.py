"""Running studies as users do: dry runs, faults, the dashboard, a two-node Ray cluster, resume after a crash.

Everything runs on CPU. The cluster test declares logical GPUs (Ray's `--num-gpus` on a machine without one):
trials then get GPU ids, Ray packs them by `--gpus-per-trial`, and `--set device=cpu` makes them train on the CPU.
"""

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from study.cli import run
from study.tune.cluster import leftover_processes
from tests.helpers import REPO, run_module, write_space

RAY = Path(sys.executable).with_name("ray")


def test_offline_a_document_study_stops_before_ray_naming_the_weights_it_needs(tmp_path):
    out = tmp_path / "study"
    result = run_module(
        "study.run",
        "--space",
        "paper_004_unfreeze_k",
        "--out",
        str(out),
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert (
        "no ImageNet weights for 'mobilenetv2_100'" in result.stderr
        and "timm.create_model('mobilenetv2_100', pretrained=True)" in result.stderr
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--space", "smoke", "--gpus-per-trial", "2"],
            "--gpus-per-trial 2 is outside 0..1: a trial trains on one device",
        ),
        (["--space", "smoke", "--max-concurrent", "0"], "--max-concurrent 0 must be at least 1"),
        (["--space", "smoke", "--cpus-per-trial", "0"], "--cpus-per-trial 0 must be positive"),
        (["--space", "smoke", "--address", "auto", "--dashboard-host", "0.0.0.0"], "leave them out with --address"),
        (
            ["--space", "smoke", "--search", "optuna"],
            "search optuna samples every dimension (TPE), but 'unfreeze_depth' is a grid",
        ),
        (["--resume", "nowhere"], "nowhere/study.json does not exist"),
        (
            ["--resume", "nowhere", "--space", "smoke"],
            "--resume continues the study as nowhere/study.json records it: leave out --space",
        ),
    ],
)
def test_bad_orchestration_options_are_one_line_errors_before_ray(capsys, args, message):
    assert run.main(args) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


FAULTS = """
    fixed: {backbone: tf_efficientnet_lite0, data: digits, img_size: 32,
            optimizer: sgd, train_fraction: 0.3, unfreeze_depth: 2}
    dimensions:
      lr: {grid: [0.01, 1.0e+30]}    # 1e30: the weights overflow and the loss becomes NaN
      batch_size: {grid: [1, 64]}    # 1: BatchNorm of the trained 1x1 feature map cannot train on one image
      momentum: {uniform: [0.8, 0.95]}
    search: random
    max_epochs: 2
    asha: false
    """


@pytest.mark.slow
def test_faults_are_recorded_while_the_dashboard_answers_and_other_trials_finish(tmp_path, capsys):
    space = write_space(tmp_path, FAULTS)
    out = tmp_path / "study"
    token = secrets.token_hex(16)
    process = subprocess.Popen(
        [sys.executable, "-m", "study.run", "--space", str(space), "--out", str(out), "--seed", "5"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "RAY_AUTH_TOKEN": token},
    )
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Ray dashboard: "):
                break
        url = lines[-1].split()[2]
        assert (
            url.startswith("http://127.0.0.1:")
            and "the page asks for the token, which is in the RAY_AUTH_TOKEN environment variable" in lines[-1]
        )
        request = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["ray_version"].startswith("2.60")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/api/version", timeout=30)
        assert refused.value.code == 401
        assert process.poll() is None  # the study was still running
        rest, _ = process.communicate(timeout=600)
    finally:
        process.kill()
    output = "".join(lines) + rest
    assert process.returncode == 0, output[-3000:]

    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 4
    failed = trials[trials["status"] == "error"].set_index(["lr", "batch_size"])["error"]
    assert len(failed) == 3 and (trials["status"] == "completed").sum() == 1
    assert failed[(1e30, 64)].startswith("FloatingPointError: training loss became nan in epoch 1")
    for lr in (0.01, 1e30):
        assert failed[(lr, 1)].startswith("ValueError: Expected more than 1 value per channel when training")
    good = trials[trials["status"] == "completed"].iloc[0]
    assert (good["lr"], good["batch_size"], good["epochs_run"]) == (0.01, 64, 2) and 0 <= good["val_acc"] <= 1
    assert f"{good['trial_id']}" in output and output.count(" failed: ") == 3
    assert (trials["device_used"].dropna() == "cpu").all() and trials["hostname"].notna().any()

    # the dry run lists the trials the study ran: the same seeded draws
    assert run.main(["--space", str(space), "--seed", "5", "--dry-run"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if re.match(r"\s+\d+ ", line)]
    planned = [(float(lr), int(batch), float(momentum)) for _, lr, batch, momentum, *_ in rows]
    ran = list(trials.sort_values("trial_id")[["lr", "batch_size", "momentum"]].itertuples(index=False, name=None))
    assert [(lr, batch) for lr, batch, _ in planned] == [(lr, batch) for lr, batch, _ in ran]
    assert [m for *_, m in planned] == pytest.approx([m for *_, m in ran], abs=1e-6)  # printed to 6 digits

    study = json.loads((out / "study.json").read_text())
    assert study["search"] == {"algorithm": "random", "seed": 5} and study["trials"] == {"error": 3, "completed": 1}
    assert (
        study["command"][:3] == ["python", "-m", "study.run"]
        and study["space"]["dimensions"]["momentum"]["kind"] == "uniform"
    )


class LocalCluster:
    """Two `ray start --block` nodes on this machine (head and worker) with token authentication, each declaring
    `cpus` CPUs and one logical GPU; stopped by their own process ids (never `ray stop`, which stops every Ray
    on the machine). Its own temporary directory keeps it from becoming the cluster that a plain ray.init()
    elsewhere on the machine would join."""

    def __init__(self, cpus: int):
        self.temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
        node = ["--block", "--num-cpus", str(cpus), "--num-gpus", "1", "--disable-usage-stats"]
        self.nodes = [
            self._start(
                ["--head", "--port", "0", "--include-dashboard", "false", "--temp-dir", str(self.temp), *node], "head"
            )
        ]
        self.address = (self.temp / "ray_current_cluster").read_text().strip()
        self.nodes.append(self._start(["--address", self.address, *node], "worker"))

    def _start(self, args: list[str], name: str) -> subprocess.Popen:
        log = self.temp / f"{name}.log"
        process = subprocess.Popen(
            [str(RAY), "start", *args], stdout=log.open("w"), stderr=subprocess.STDOUT, env=self.env
        )
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start ({name}) failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        return process

    def stop(self) -> None:
        for process in reversed(self.nodes):
            process.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes on SIGTERM
        for process in self.nodes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.temp, ignore_errors=True)


MULTI_OBJECTIVE = """
    fixed: {backbone: tf_efficientnet_lite0, data: digits, img_size: 32,
            train_fraction: 0.3, unfreeze_depth: 2, batch_size: 64, device: cpu}
    dimensions:
      optimizer: {choice: [sgd, adamw]}
      lr: {loguniform: [1.0e-3, 1.0e-1]}
    search: optuna_mo
    num_samples: 8
    max_epochs: 2
    asha: {grace_period: 1, reduction_factor: 2}
    """


@pytest.mark.slow
def test_a_multi_objective_study_runs_on_a_two_node_cluster_packing_two_trials_per_gpu(tmp_path):
    space = write_space(tmp_path, MULTI_OBJECTIVE)
    out, storage = tmp_path / "study", tmp_path / "shared"
    cluster = LocalCluster(cpus=2)
    try:
        result = run_module(
            "study.run",
            "--space",
            str(space),
            "--out",
            str(out),
            "--address",
            cluster.address,
            "--storage",
            str(storage),
            "--cpus-per-trial",
            "1",
            "--gpus-per-trial",
            "0.5",
            "--seed",
            "1",
            env=cluster.env,
        )
    finally:
        cluster.stop()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 CPU and 0.5 GPU per trial; 2 node(s) with 4 CPU and 2 GPU" in result.stdout

    trials = pd.read_csv(out / "trials.csv")
    assert (
        len(trials) == 8
        and set(trials["status"]) <= {"completed", "stopped_early"}
        and (trials["status"] == "completed").any()
    )
    assert trials["node_id"].nunique() == 2  # trials ran on both nodes
    assert (trials["gpu_ids"].astype(str) == "0").all() and (trials["device_used"] == "cpu").all()
    assert set(trials["optimizer"]) <= {"sgd", "adamw"} and trials["lr"].between(1e-3, 1e-1).all()
    for _, on_node in trials.groupby("node_id"):  # two trials shared a node's one GPU at the same time
        starts, ends = on_node["started_at"].to_numpy(), on_node["finished_at"].to_numpy()
        overlapping = max(((starts <= t) & (ends > t)).sum() for t in starts)
        assert overlapping == 2

    study = json.loads((out / "study.json").read_text())
    assert study["cluster"]["nodes"] == 2 and study["resources"] == {
        "cpus_per_trial": 1.0,
        "gpus_per_trial": 0.5,
        "max_concurrent": None,
        "max_failures": 0,
    }
    assert study["search"] == {"algorithm": "optuna_mo", "seed": 1} and study["ray_experiment"].startswith(
        str(storage.resolve())
    )
    assert (Path(study["ray_experiment"]) / "tuner.pkl").exists() and not (out / "ray").exists()


RESUMABLE = """
    # no feature cache, 64 px: a trial lasts seconds, long enough to be killed mid-way
    fixed: {backbone: tf_efficientnet_lite0, data: digits, img_size: 64,
            train_fraction: 0.6, optimizer: adamw, unfreeze_depth: 2, feature_cache: false}
    dimensions:  # Ray's grid order: every batch size with lr 1e30, then every one with 0.003
      lr: {grid: [1.0e+30, 0.003]}    # 1e30: the loss becomes NaN in epoch 1 (an error trial)
      batch_size: {grid: [32, 48, 64]}
    max_epochs: 2
    asha: false
    """


@pytest.mark.slow
def test_a_study_killed_mid_way_resumes_without_losing_or_repeating_finished_trials(tmp_path):
    space = write_space(tmp_path, RESUMABLE)
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
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:  # one trial at a time: the three with lr 1e30 fail, then the first with lr 0.003 completes
        deadline = time.monotonic() + 300
        while not ((out / "trials.csv").exists() and len(pd.read_csv(out / "trials.csv")) >= 4):
            assert driver.poll() is None and time.monotonic() < deadline, (
                "the study ended or stalled before four trials finished"
            )
            time.sleep(0.2)
        time.sleep(2.5)  # past Ray's one-second experiment snapshot, while the fifth trial trains
        before = pd.read_csv(out / "trials.csv")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    killed_at = time.time()
    assert len(before) == 4 and "finished" not in json.loads((out / "study.json").read_text())
    # written while the study ran, after every finished trial: faults with their messages too
    assert (before["status"] == "error").sum() == 3 and (before["status"] == "completed").sum() == 1
    assert (
        before[before["status"] == "error"]["error"]
        .str.startswith("FloatingPointError: training loss became nan in epoch 1")
        .all()
    )

    # the resumed run exposes its dashboard on every interface: a warning says what that means
    result = run_module(
        "study.run", "--resume", str(out), "--dashboard-host", "0.0.0.0", env={"RAY_AUTH_TOKEN": secrets.token_hex(16)}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (
        "warning: the Ray dashboard listens on 0.0.0.0, reachable from other machines: Ray's dashboard and its job "
        "API run any code" in result.stdout
    )
    assert "its only protection is the Ray token, sent unencrypted over HTTP" in result.stdout
    # the fifth trial was training when the driver died, the sixth not created yet (one trial at a time)
    assert (
        "4 trial(s) finished before the interruption are kept; 1 unfinished trial(s) run again from their first epoch"
        in result.stdout
    )

    after = pd.read_csv(out / "trials.csv").set_index("trial_id")
    assert len(after) == 6 and after["status"].value_counts().to_dict() == {"error": 3, "completed": 3}
    kept = after.loc[before["trial_id"]]
    # not run again, errors included (a trial that failed before its first report has no start time)
    assert kept["started_at"].fillna(-1).tolist() == before["started_at"].fillna(-1).tolist()
    assert (
        kept["status"].tolist() == before["status"].tolist()
        and kept["error"].fillna("").tolist() == before["error"].fillna("").tolist()
    )
    resumed = after.drop(before["trial_id"])
    assert len(resumed) == 2 and (resumed["started_at"] > killed_at).all() and (resumed["status"] == "completed").all()
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert (
        sorted(epochs.groupby("trial_id")["epoch"].apply(list).tolist()) == [[1, 2]] * 3
    )  # no epoch of the killed run left
    completed = after[after["status"] == "completed"].sort_values("started_at")
    assert (
        completed["started_at"].to_numpy()[1:] >= completed["finished_at"].to_numpy()[:-1]
    ).all()  # --max-concurrent 1, resumed too

    study = json.loads((out / "study.json").read_text())
    assert (
        study["resumed"][0]["kept"] == 4
        and study["resumed"][0]["run_again"] == 1
        and study["trials"] == {"error": 3, "completed": 3}
    )
    # nothing of the killed driver's Ray session runs on (its agents can outlive it: --resume stops them)
    assert leftover_processes(str(Path(study["ray_logs"]).parent)) == []
    assert run.main(["--resume", str(out)]) == 2  # finished: nothing left to resume


def test_the_gpu_cluster_example_is_a_valid_ray_cluster_launcher_config():
    import copy

    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "examples" / "cluster-gpu.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))  # Ray's own schema and defaults, as `ray up` applies them
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["node_config"]["InstanceType"].startswith("g5.") and workers["max_workers"] >= 1
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2 and "--dashboard-host=127.0.0.1" in starts
    assert "study.run" in (REPO / "examples" / "cluster-gpu.yaml").read_text()


NODE_FAILURE = """
    # no feature cache, 64 px, three epochs: a trial lasts long enough for its node to be killed under it
    fixed: {backbone: tf_efficientnet_lite0, data: digits, img_size: 64, train_fraction: 0.6,
            optimizer: adamw, lr: 0.003, unfreeze_depth: 2, feature_cache: false, device: cpu}
    dimensions:
      batch_size: {grid: [32, 48, 64, 96]}
    max_epochs: 3
    asha: false
    """


def running_on_two_nodes(experiment: Path) -> dict[str, str]:
    """Trial id -> node id of the unfinished trials that have reported an epoch (Ray's result.json in each trial's
    directory)."""
    running = {}
    for results in experiment.glob("*/result.json"):
        reports = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        if reports and reports[-1]["epoch"] < 3:
            running[results.parent.name] = reports[-1]["node_id"]
    return running if len(set(running.values())) == 2 else {}


@pytest.mark.slow
@pytest.mark.parametrize("retries", [1, 0])
def test_a_worker_node_killed_mid_study_loses_no_finished_trial(tmp_path, retries):
    """Two one-CPU nodes, a trial training on each; the worker node's raylet is SIGKILLed. With --max-failures 1
    the trial it ran runs again on the head node and every trial completes; without, that trial is an error whose
    reason says its node or process was lost and how to retry, and the others complete. Either way the study
    finishes, no trial that finished is lost, and Ray's traceback stays out of the console."""
    import psutil

    space = write_space(tmp_path, NODE_FAILURE)
    out = tmp_path / "study"
    cluster = LocalCluster(cpus=1)
    try:
        command = ["--space", space, "--out", str(out), "--address", cluster.address, "--cpus-per-trial", "1"]
        command += ["--gpus-per-trial", "0", "--max-failures", str(retries)]
        driver = subprocess.Popen(
            [sys.executable, "-m", "study.run", *command],
            cwd=REPO,
            env=cluster.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 300
        while not (running := running_on_two_nodes(out / "ray" / "tune")):
            assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()
            time.sleep(0.2)
        (raylet,) = [p for p in psutil.Process(cluster.nodes[1].pid).children(recursive=True) if p.name() == "raylet"]
        raylet.kill()
        stdout, stderr = driver.communicate(timeout=600)
    finally:
        cluster.stop()
    assert driver.returncode == 0, stdout[-3000:] + stderr[-3000:]
    trials = pd.read_csv(out / "trials.csv").set_index("trial_id")
    assert len(trials) == 4 and "finished" in json.loads((out / "study.json").read_text())
    head_node = trials["node_id"].value_counts().index[0]
    (lost,) = [trial for trial, node in running.items() if node != head_node]
    assert "Trial task failed" not in stderr and "Traceback" not in stderr
    if retries:
        assert (trials["status"] == "completed").all() and (trials["node_id"] == head_node).all()
    else:
        assert trials.loc[lost, "status"] == "error"
        assert "the trial's worker process or its node was lost while it ran" in trials.loc[lost, "error"]
        assert "--max-failures N runs such a trial again" in stdout
        assert (trials.drop(index=lost)["status"] == "completed").all()
