"""What runs inside a trial's Ray worker: the function trainable, and the device and exit hook it sets up.

Ray pickles `trainable` by module path into the experiment state (and ships the driver's `study` package to a
cluster's workers), so a resumed study finds it here. Everything else in study/tune runs in the driver.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray import tune

from study.core.config import StudyError, TrialConfig
from study.trial.train import run_trial


def trial_device(setting: str, gpu_ids: list[str], cuda_available: bool) -> str:
    """The device a trial trains on: the one Ray's resources give it, never a GPU it was not given.

    Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a trial without GPUs, so on a GPU node such a trial
    would still see every GPU: `auto` follows Ray's assignment (`gpu_ids`), not what CUDA shows.
    """
    if setting == "cpu":
        return "cpu"
    if gpu_ids and not cuda_available:
        raise StudyError(
            f"Ray gave this trial GPU {','.join(gpu_ids)} but PyTorch cannot use CUDA on this node (a CPU-only torch "
            "build, or no driver): fix the node, or run with --set device=cpu"
        )
    if setting == "cuda" and not gpu_ids:
        raise StudyError(
            "device=cuda but Ray gave this trial no GPU: give trials GPUs with --gpus-per-trial (e.g. 1, or 0.25 to "
            "pack four per GPU)"
        )
    return "cuda" if gpu_ids else "cpu"


def quiet_exit(unraisable) -> None:
    """sys.unraisablehook of a trial's worker: Ray stops a worker (at a study's end, on Ctrl-C) with SIGTERM, whose
    handler raises SystemExit wherever the worker is, a garbage-collection callback included; Python reports an
    exception there as "Exception ignored in ..." with a traceback, which Ray forwards to the driver's console.
    That exit is intended: drop it; report anything else as Python would."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, SystemExit):
        return
    sys.__unraisablehook__(unraisable)


def trainable(config: dict) -> None:
    """Ray Tune function trainable: one report per epoch; ASHA may stop it between epochs.

    Every report also says where the trial ran (node, GPU) and when it started. With save_checkpoint, the last
    epoch's report carries the final model as a Ray checkpoint, which Ray copies into the trial's directory
    (ray/tune/TRIAL_ID/checkpoint_000000/model.pt). A trial that ASHA stops early never reaches its last epoch
    and saves none.
    """
    started = time.time()
    sys.unraisablehook = quiet_exit  # per process: every trial of a warm worker sets the same hook
    context = ray.get_runtime_context()
    assigned = context.get_assigned_resources()
    cpus = assigned.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    gpu_ids = [str(i) for i in context.get_accelerator_ids().get("GPU", [])]
    trial = TrialConfig.from_dict(config)
    device = trial_device(trial.device, gpu_ids, torch.cuda.is_available())
    trial = trial.replace(device=device)
    placement = {
        "node_id": context.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
        "gpu_ids": ",".join(gpu_ids),
        "gpu_name": torch.cuda.get_device_name() if device == "cuda" else "",
        "started_at": started,
        # the share the trial was timed with: two trials on a node's cores each train at about half speed
        "cpu_share": cpus,
        "gpu_share": assigned.get("GPU", 0.0),
    }
    with tempfile.TemporaryDirectory(prefix="study-checkpoint-") as directory:
        for metrics in run_trial(trial, checkpoint_dir=Path(directory) if trial.save_checkpoint else None):
            final = trial.save_checkpoint and metrics["epoch"] == trial.epochs
            tune.report(
                {**metrics, **placement}, checkpoint=tune.Checkpoint.from_directory(directory) if final else None
            )
