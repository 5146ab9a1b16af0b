"""The Ray layer: the one package that imports Ray, written against Ray 2.60 (`ray.tune.report`, `tune.RunConfig`,
`tune.Tuner`, `Tuner.restore`, token authentication). Ray's API has changed several times; keeping it here keeps
each change in one package.

Modules: trainable (what runs in a trial's worker), cluster (starting Ray, resources, where Tune writes), search
(param_space, search algorithms, a dry run's planned configs), schedulers (early stopping over the pure rungs.py),
callbacks (exporting and showing results while the study runs), records (a finished trial's record), runner (the
Tuner, graceful stop, resume), disk (the study stopped while its disk still has room to save it).

This file is the layer's API for the command line (study/cli), which imports it once its input is known to be good:
the names below and nothing else. Modules inside study/tune import each other by submodule path.
"""

from study.tune.callbacks import Monitoring
from study.tune.cluster import (
    OWN_EXPERIMENT,
    RAY_DIR,
    Resources,
    check_fit,
    experiment_location,
    experiment_to_resume,
    recorded_experiment,
    start_ray,
    stop_leftover_processes,
    token_location,
)
from study.tune.disk import finished_trial_dirs
from study.tune.runner import GracefulStop, finished_before, restorable, resume_study, run_study
from study.tune.schedulers import scheduler_name
from study.tune.search import planned_configs

__all__ = [
    "OWN_EXPERIMENT",
    "RAY_DIR",
    "GracefulStop",
    "Monitoring",
    "Resources",
    "check_fit",
    "experiment_location",
    "experiment_to_resume",
    "finished_before",
    "finished_trial_dirs",
    "planned_configs",
    "recorded_experiment",
    "restorable",
    "resume_study",
    "run_study",
    "scheduler_name",
    "start_ray",
    "stop_leftover_processes",
    "token_location",
]
