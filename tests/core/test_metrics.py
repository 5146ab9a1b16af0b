"""study/core/metrics.py: the one declaration of what a trial reports, which the tables, console and report read."""

import pytest

from study.core.config import FIELD_TYPES, TrialConfig
from study.core.metrics import (
    EPOCH_METRICS,
    FINAL_METRICS,
    FRONT_COSTS,
    METRICS,
    MULTI_OBJECTIVE,
    OUTCOMES,
    PLACEMENT_INFO,
    REPORT_KEYS,
    SCHEDULER_INFO,
    TRIAL_INFO,
    Metric,
)
from study.trial.train import run_trial


def test_a_trial_reports_exactly_the_declared_epoch_and_trial_metrics(small_digits):
    """A metric measured but not declared would never reach a table; one declared but not measured is an empty
    column. Both fail here: adding a metric is declaring it and measuring it."""
    (report,) = run_trial(TrialConfig(unfreeze_depth=1, img_size=32, epochs=1, lr=0.01), small_digits)
    assert set(report) == set(EPOCH_METRICS) | set(TRIAL_INFO) | set(OUTCOMES)


def test_the_groups_partition_the_declared_metrics_and_no_metric_is_a_setting():
    groups = (EPOCH_METRICS, TRIAL_INFO, PLACEMENT_INFO, SCHEDULER_INFO, OUTCOMES)
    assert sum(len(group) for group in groups) == len(METRICS) == len(REPORT_KEYS)
    assert set(REPORT_KEYS) == set(METRICS)
    assert not set(METRICS) & set(FIELD_TYPES)
    assert set(FINAL_METRICS) <= set(EPOCH_METRICS)
    assert set(MULTI_OBJECTIVE) <= set(METRICS) and set(FRONT_COSTS) <= set(METRICS)
    assert all(METRICS[name].direction == "min" and METRICS[name].front_cost for name in FRONT_COSTS)


def test_a_metric_must_name_its_group_and_a_direction_that_exists():
    with pytest.raises(ValueError, match="reported_by"):
        Metric(name="x", reported_by="sometimes")
    with pytest.raises(ValueError, match="direction"):
        Metric(name="x", reported_by="epoch", direction="up")
