"""The one place that knows Ray Tune: the trainable, the Tuner, and reading its results back.

Ray's API has changed several times; this file is written against Ray 2.60
(`ray.tune.report`, `tune.RunConfig`, `tune.Tuner`). Nothing else imports Ray.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from study.config import StudyError, TrialConfig
from study.results import EPOCH_METRICS, TRIAL_INFO
from study.space import Space
from study.train import run_trial

RAY_DIR = "ray"  # under the study's results directory: Ray Tune's own experiment files
EXPERIMENT = "tune"


def trainable(config: dict) -> None:
    """Ray Tune function trainable: one report per epoch; ASHA may stop it between epochs.

    With save_checkpoint, the last epoch's report carries the final model as a Ray checkpoint, which Ray copies
    into the trial's directory under the results (ray/tune/TRIAL_ID/checkpoint_000000/model.pt). A trial that
    ASHA stops early never reaches its last epoch and saves none.
    """
    trial = TrialConfig.from_dict(config)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    with tempfile.TemporaryDirectory(prefix="study-checkpoint-") as directory:
        for metrics in run_trial(trial, checkpoint_dir=Path(directory) if trial.save_checkpoint else None):
            final = trial.save_checkpoint and metrics["epoch"] == trial.epochs
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory) if final else None)


def start_ray(address: str | None, dashboard: bool) -> str | None:
    """Join `address` (an existing cluster) or start a local Ray; returns the dashboard URL, if any."""
    try:
        if address:
            context = ray.init(address=address)
        else:
            # Ray's dashboard and job API have no authentication of their own: loopback only.
            context = ray.init(include_dashboard=dashboard, dashboard_host="127.0.0.1")
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as error:
        raise StudyError(f"cannot reach Ray at {address or 'a new local instance'}: {str(error).splitlines()[0]}: check --address (e.g. auto, or ray://HOST:10001)") from None
    url = context.dashboard_url
    return f"http://{url}" if url else None


def run_study(space: Space, out: Path, cpus_per_trial: float, gpus_per_trial: float, seed: int) -> list[dict]:
    """Run every trial of `space` with ASHA (if the space enables it); return one record per trial."""
    scheduler = (
        ASHAScheduler(time_attr="training_iteration", max_t=space.max_epochs, **space.asha)
        if space.asha
        else FIFOScheduler()
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
        param_space=space.param_space(),
        tune_config=tune.TuneConfig(
            metric=space.metric,
            mode=space.mode,
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=seed),
            num_samples=space.num_samples,
            trial_dirname_creator=lambda trial: trial.trial_id,
            reuse_actors=True,  # a trial starts in a warm process: no interpreter start and imports per trial
        ),
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str((out / RAY_DIR).resolve()), verbose=1),
    )
    return records_from(tuner.fit(), space.max_epochs)


def records_from(results: tune.ResultGrid, max_epochs: int) -> list[dict]:
    keys = (*EPOCH_METRICS, *TRIAL_INFO)
    records = []
    for result in results:
        history = result.metrics_dataframe
        rows = [] if history is None or history.empty else history[[k for k in keys if k in history]].to_dict("records")
        records.append(
            {
                "trial_id": Path(result.path).name,
                "config": result.config,
                "history": rows,
                "error": describe_error(result.error) if result.error else None,
                "checkpoint": result.checkpoint.path if result.checkpoint else None,
                "max_epochs": max_epochs,
            }
        )
    return sorted(records, key=lambda r: r["trial_id"])


def describe_error(error: BaseException) -> str:
    """Ray wraps a trial's exception; the user needs the original type and message, on one line."""
    cause = getattr(error, "cause", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}".rstrip(": ")
