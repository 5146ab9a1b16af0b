"""Every number a trial reports, declared once: its name, unit, direction and where it is shown.

A trial (study/trial/train.py) reports a dict per epoch; the Ray layer (study/tune) adds where the trial ran and
the early-stopping decision; the tables (study/analysis/results.py), the console, MLflow and the report read the
same names. Each of those reads the groups below instead of keeping a list of its own, so adding a metric means
declaring it here and measuring it in the code that produces it (docs/architecture.md, "How to add a metric").

Groups (`Metric.reported_by`):
- `epoch`: measured every epoch (study/trial/train.py `train_epochs`); every one is a column of epochs.parquet.
- `trial`: what the trial is and resolved its settings to, the same every epoch (`Trial.info`).
- `placement`: where and when the trial ran, added inside Ray's worker (study/tune/trainable.py).
- `scheduler`: the early-stopping decision at an epoch, added by the scheduler's callback (study/tune).
- `outcome`: which validation and test images the trial classified correctly at that epoch (study/core/outcomes.py);
  the tables keep the final epoch's in outcomes.parquet, not in trials.csv or epochs.parquet.

FINAL_METRICS: the epoch metrics whose last value is copied into trials.csv beside the settings. `direction`
says which way is better for a metric a user optimises or plots (`max`, `min`), None for information.
`front_cost`: the short name of a cost the report draws a Pareto front against (accuracy is always the other
objective); `label`: its axis title.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ACCURACY",
    "EPOCH_METRICS",
    "FINAL_METRICS",
    "FRONT_COSTS",
    "MAIN_COST",
    "METRICS",
    "MULTI_OBJECTIVE",
    "OUTCOMES",
    "PLACEMENT_INFO",
    "REPORT_KEYS",
    "RUNG_ACCURACY",
    "RUNG_COST",
    "SCHEDULER_INFO",
    "SCHEDULER_METRICS",
    "SUMMARY_MEASURES",
    "TRIAL_INFO",
    "Metric",
]


@dataclass(frozen=True, kw_only=True)
class Metric:
    name: str
    reported_by: str  # epoch, trial, placement, scheduler or outcome (module docstring)
    unit: str = ""
    direction: str | None = None  # max, min, or None (information)
    front_cost: str | None = None  # the short name of a front drawn against this cost
    label: str = ""  # an axis title, where the report plots it
    description: str = ""

    def __post_init__(self) -> None:
        if self.reported_by not in GROUPS:
            raise ValueError(f"metric {self.name}: reported_by must be one of {', '.join(GROUPS)}")
        if self.direction not in (None, "max", "min"):
            raise ValueError(f"metric {self.name}: direction must be max, min or None")


GROUPS = ("epoch", "trial", "placement", "scheduler", "outcome")

_EPOCH = (
    Metric(name="epoch", reported_by="epoch", unit="epochs", description="the epoch just finished, from 1"),
    Metric(name="phase", reported_by="epoch", description="head_warmup or main (study/trial/freeze.py)"),
    Metric(name="train_loss", reported_by="epoch", direction="min", description="mean training loss"),
    Metric(name="train_acc", reported_by="epoch", unit="fraction", direction="max"),
    Metric(name="val_loss", reported_by="epoch", direction="min"),
    Metric(name="val_acc", reported_by="epoch", unit="fraction", direction="max", description="the objective"),
    Metric(name="test_loss", reported_by="epoch", direction="min"),
    Metric(
        name="test_acc",
        reported_by="epoch",
        unit="fraction",
        direction="max",
        description="reported, never used to choose",
    ),
    Metric(
        name="epoch_time_s", reported_by="epoch", unit="s", description="this epoch's training, evaluation excluded"
    ),
    Metric(
        name="train_time_s",
        reported_by="epoch",
        unit="s",
        direction="min",
        front_cost="time",
        label="training time (s, alone on a fresh node, evaluation excluded)",
        description="training time so far, evaluation excluded, as the configuration costs alone on a fresh node: "
        "features it reused from a cache count what building them cost (study_train_time_s: what this study spent)",
    ),
    Metric(
        name="study_train_time_s",
        reported_by="epoch",
        unit="s",
        description="what this study spent training the trial so far: features an earlier trial or study cached cost "
        "nothing here",
    ),
    Metric(name="eval_time_s", reported_by="epoch", unit="s"),
    Metric(name="images_per_s", reported_by="epoch", unit="images/s", direction="max"),
    Metric(
        name="peak_memory_mib",
        reported_by="epoch",
        unit="MiB",
        direction="min",
        front_cost="memory",
        label="peak memory during training (MiB)",
    ),
    Metric(name="reported_at", reported_by="epoch", unit="s since the epoch (Unix time)"),
)
_TRIAL = (
    Metric(name="weights_used", reported_by="trial", description="the weights the backbone was built with"),
    Metric(name="num_layers", reported_by="trial", unit="layers"),
    Metric(name="unfrozen_layers", reported_by="trial", unit="layers"),
    Metric(
        name="trainable_params",
        reported_by="trial",
        unit="parameters",
        direction="min",
        front_cost="params",
        label="trainable parameters",
    ),
    Metric(name="total_params", reported_by="trial", unit="parameters"),
    Metric(name="inserted_bn", reported_by="trial", unit="layers"),
    Metric(name="effective", reported_by="trial", description="what the trial's settings came to (optimizer groups)"),
    Metric(name="img_size_used", reported_by="trial", unit="px"),
    Metric(name="device_used", reported_by="trial"),
    Metric(name="memory_measure", reported_by="trial"),
    Metric(name="amp_dtype", reported_by="trial"),
    Metric(name="channels_last", reported_by="trial"),
    Metric(name="cache", reported_by="trial", description="the feature cache: built, reused or off"),
    Metric(name="cache_cut", reported_by="trial"),
    Metric(name="cache_note", reported_by="trial"),
    Metric(name="cache_build_s", reported_by="trial", unit="s"),
    Metric(name="cache_cost_s", reported_by="trial", unit="s"),
    Metric(name="cache_device", reported_by="trial"),
    Metric(name="data_load_s", reported_by="trial", unit="s"),
    Metric(name="model_build_s", reported_by="trial", unit="s"),
    Metric(name="cut_check_s", reported_by="trial", unit="s"),
    Metric(name="loader_workers_used", reported_by="trial", unit="processes"),
    Metric(name="train_images", reported_by="trial", unit="images"),
    Metric(name="val_images", reported_by="trial", unit="images"),
    Metric(name="test_images", reported_by="trial", unit="images"),
    Metric(name="skipped_images", reported_by="trial", unit="images"),
    Metric(name="data_splits", reported_by="trial", description="the split's fingerprint"),
)
_PLACEMENT = (
    *(
        Metric(name=name, reported_by="placement")
        for name in ("node_id", "node_ip", "hostname", "gpu_ids", "gpu_name", "started_at")
    ),
    Metric(
        name="cpu_share",
        reported_by="placement",
        unit="CPUs",
        description="the CPUs Ray gave the trial while it was timed (its torch threads)",
    ),
    Metric(name="gpu_share", reported_by="placement", unit="GPUs", description="the GPU fraction Ray gave the trial"),
)
_SCHEDULER = (
    Metric(
        name="rung_decision",
        reported_by="scheduler",
        description="'passed rung epoch 2: ...' or 'stopped at rung epoch 2: ...', empty between rungs",
    ),
)

_OUTCOME = tuple(
    Metric(
        name=f"{split}_correct",
        reported_by="outcome",
        description=f"which {split} images the trial classified correctly, a bit per image (study/core/outcomes.py)",
    )
    for split in ("val", "test")
)

METRICS: dict[str, Metric] = {metric.name: metric for metric in (*_EPOCH, *_TRIAL, *_PLACEMENT, *_SCHEDULER, *_OUTCOME)}


def _names(reported_by: str) -> tuple[str, ...]:
    return tuple(name for name, metric in METRICS.items() if metric.reported_by == reported_by)


EPOCH_METRICS = _names("epoch")
TRIAL_INFO = _names("trial")
PLACEMENT_INFO = _names("placement")
SCHEDULER_INFO = _names("scheduler")
OUTCOMES = _names("outcome")
REPORT_KEYS = (*EPOCH_METRICS, *TRIAL_INFO, *PLACEMENT_INFO, *SCHEDULER_INFO, *OUTCOMES)
# Copied from the last epoch into the trials table beside the settings, in this column order.
FINAL_METRICS = (
    "val_acc",
    "val_loss",
    "train_acc",
    "train_loss",
    "test_acc",
    "test_loss",
    "train_time_s",
    "study_train_time_s",
    "peak_memory_mib",
)

ACCURACY = "val_acc"  # the objective every front, rung and recommendation maximises
MAIN_COST = "train_time_s"  # the cost of the main front
# The costs the report draws a front against, main first: {name: axis title}.
FRONT_COSTS = {name: METRICS[name].label for name in (MAIN_COST, "trainable_params", "peak_memory_mib")}
# optuna_mo's two objectives, and the pair the main front is drawn over.
MULTI_OBJECTIVE = {ACCURACY: "max", MAIN_COST: "min"}
# Multi-objective ASHA ranks trials at a rung on the front's own axes: MAIN_COST is the time the trial takes alone on
# a fresh node, so a trial that reused cached features is not ranked as cheaper than it is (study/tune/rungs.py).
RUNG_ACCURACY = ACCURACY
RUNG_COST = MAIN_COST
# What single-metric ASHA and Optuna may optimise (a space's `metric`), each with its better direction.
SCHEDULER_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")
# The measures the report's tables show beside the settings; efficiency, epochs_run and best_val_acc are derived
# by the trials table (study/analysis/results.py), not reported.
SUMMARY_MEASURES = (
    "val_acc",
    "test_acc",
    "train_time_s",
    "efficiency",
    "trainable_params",
    "peak_memory_mib",
    "epochs_run",
    "best_val_acc",
)
