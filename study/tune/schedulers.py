"""Early stopping: the space's trial scheduler as a Ray Tune scheduler, and the callback that records its decisions.

The space's `asha` (study/core/space.py; registered in study/core/registry.py SCHEDULERS): `objectives: pareto` is
`ParetoASHAScheduler`, a thin Ray adapter over the rungs and decision rule of study/tune/rungs.py (MO-ASHA: val_acc
against standalone training time), as Ray's own ASHA is a thin adapter over its `_Bracket`; `objectives: metric` is
Ray's ASHAScheduler on the space's `metric`; no `asha` is FIFO. Either ASHA says why it decided at every rung, and
`RungDecisions` writes that into the trial's report of that epoch (`rung_decision`), from which the results tables
derive each trial's `stop_reason`.

Ray saves callbacks' state with its experiment state, not schedulers': `RungDecisions` carries either ASHA's rungs
(`rung_state`), so that after --resume a trial reaching a rung is ranked among the results recorded before the stop
too. A trial that Ray runs again from its first epoch (an unfinished one after --resume, or a retry) is forgotten at
the rungs when Ray adds it again (`on_trial_add`): its new run is ranked and recorded once, with its new results.

Every scheduler is the study's own, FIFO too: Ray adds each trial to it before the trial's worker starts, the place
to keep a trial created after --resume in the experiment resumed (study/tune/cluster.py keep_in_experiment).
"""

from __future__ import annotations

import json
import math

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from study.core.metrics import RUNG_ACCURACY, RUNG_COST
from study.core.registry import SCHEDULERS
from study.core.space import REPEAT, Space
from study.tune.cluster import keep_in_experiment
from study.tune.rungs import ParetoRungs


def scheduler_name(space: Space) -> str:
    """The space's trial scheduler (study/core/registry.py SCHEDULERS)."""
    if not space.asha:
        return "fifo"
    return "pareto_asha" if space.asha["objectives"] == "pareto" else "asha"


def scheduler_for(space: Space) -> TrialScheduler:
    return SCHEDULERS.get(scheduler_name(space))(space)


def pareto_asha_scheduler(space: Space) -> ParetoASHAScheduler:
    settings = {key: space.asha[key] for key in ("grace_period", "reduction_factor")}
    return ParetoASHAScheduler(space.max_epochs, **settings)


def asha_scheduler(space: Space) -> ExplainedASHAScheduler:
    settings = {key: space.asha[key] for key in ("grace_period", "reduction_factor")}
    # multi-objective search: the Tuner has no metric, so ASHA carries the space's own
    metric = {"metric": space.metric, "mode": space.mode} if space.search == "optuna_mo" else {}
    return ExplainedASHAScheduler(space.max_epochs, **settings, **metric)


def fifo_scheduler(space: Space) -> StudyFIFOScheduler:
    return StudyFIFOScheduler()


def runs_from_its_first_epoch(trial) -> bool:
    """Ray adds a trial to the scheduler when it creates it, when --resume restores it and when it retries it after a
    failure: one that has not finished then runs from its first epoch (trials save no checkpoint mid-way)."""
    return trial.status not in (Trial.TERMINATED, Trial.ERROR)


class StudyFIFOScheduler(FIFOScheduler):
    """Ray's FIFO (no early stopping), keeping the trials created after --resume in the experiment resumed."""

    def on_trial_add(self, tune_controller, trial) -> None:
        keep_in_experiment(trial)


class ParetoASHAScheduler(FIFOScheduler):
    """Multi-objective asynchronous successive halving (study/tune/rungs.py) as a Ray Tune scheduler.

    Ray asks it after every report (one per epoch) whether the trial continues; a trial at max_epochs has
    completed and stops. It needs no metric from the Tuner: its objectives are fixed (val_acc, training time
    alone on a fresh node). With repeats it decides per configuration (study/tune/rungs.py).
    """

    def __init__(self, max_epochs: int, grace_period: int, reduction_factor: float):
        super().__init__()
        self.max_epochs = max_epochs
        self.rungs = ParetoRungs(grace_period, reduction_factor, max_epochs)
        self.decisions: dict[str, dict[int, str]] = {}  # trial id -> rung epoch -> reason

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # the Tuner's metric is the searcher's; the rungs rank on their own two objectives

    def on_trial_add(self, tune_controller, trial) -> None:
        keep_in_experiment(trial)
        if runs_from_its_first_epoch(trial):  # its earlier run's results, if any, would stand for its new run
            self.rungs.forget(trial.trial_id)
            self.decisions.pop(trial.trial_id, None)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        epoch = result["training_iteration"]
        if epoch >= self.max_epochs:
            return TrialScheduler.STOP
        decision = self.rungs.on_result(
            trial.trial_id,
            epoch,
            result.get(RUNG_ACCURACY, math.nan),
            result.get(RUNG_COST, math.nan),
            configuration_key(trial.config),
        )
        if decision is None:
            return TrialScheduler.CONTINUE
        self.decisions.setdefault(trial.trial_id, {})[epoch] = decision.reason()
        return TrialScheduler.CONTINUE if decision.continues else TrialScheduler.STOP

    def decision(self, trial_id: str, epoch: int) -> str:
        return self.decisions.get(trial_id, {}).get(epoch, "")

    def rung_state(self) -> dict:
        rungs = self.rungs
        return {
            "recorded": rungs.recorded,
            "decisions": self.decisions,
            "leaders": rungs.leaders,
            "followers": rungs.followers,
        }

    def restore_rungs(self, state: dict) -> None:
        self.rungs.recorded = state["recorded"]
        self.decisions = state["decisions"]
        # a study saved before repeats existed has no leaders: every trial was its own configuration
        if "leaders" in state:
            self.rungs.leaders = state["leaders"]
            self.rungs.followers = state["followers"]

    def debug_string(self) -> str:
        return "MO-ASHA rungs at epochs " + ", ".join(
            f"{epoch} ({len(self.rungs.recorded[epoch])} recorded)" for epoch in self.rungs.milestones
        )


def configuration_key(config: dict) -> str | None:
    """A trial's settings but its repeat index, as text: the repeats of one configuration share it. None without
    repeats (each trial is its own configuration)."""
    if REPEAT not in config:
        return None
    return json.dumps({key: value for key, value in config.items() if key != REPEAT}, sort_keys=True, default=str)


class ExplainedASHAScheduler(ASHAScheduler):
    """Ray's single-metric ASHA, saying why it stopped or passed a trial at each rung.

    The cutoff is read from Ray's own bracket (its rungs and `cutoff`) just before Ray decides with it.
    """

    def __init__(self, max_epochs: int, grace_period: int, reduction_factor: float, **metric):
        super().__init__(
            time_attr="training_iteration",
            max_t=max_epochs,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
            **metric,  # metric and mode: given here under optuna_mo, else by the Tuner (Ray refuses both)
        )
        self.decisions: dict[str, dict[int, str]] = {}

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        epoch, value = result.get("training_iteration"), result.get(self._metric)
        rung = None
        if epoch is not None and value is not None and epoch < self._max_t:
            bracket = self._trial_info[trial.trial_id]
            rung = next(((m, rec) for m, rec in bracket._rungs if epoch >= m), None)  # Ray's rungs, highest first
            if rung and trial.trial_id in rung[1]:
                rung = None
            cutoff = bracket.cutoff(rung[1]) if rung else None
            recorded = len(rung[1]) if rung else 0
        action = super().on_trial_result(tune_controller, trial, result)
        if rung:
            verb = "stopped at rung" if action == TrialScheduler.STOP else "passed rung"
            against = (
                "alone at the rung"
                if cutoff is None
                else f"the cutoff is {cutoff:.4f}, the {1 - 1 / self._reduction_factor:.0%} quantile of "
                f"{recorded} recorded"
            )
            self.decisions.setdefault(trial.trial_id, {})[int(epoch)] = (
                f"{verb} epoch {int(rung[0])}: {self._metric} {value:.4f} ({self._mode}), {against}"
            )
        return action

    def decision(self, trial_id: str, epoch: int) -> str:
        return self.decisions.get(trial_id, {}).get(epoch, "")

    def on_trial_add(self, tune_controller, trial) -> None:
        keep_in_experiment(trial)
        super().on_trial_add(tune_controller, trial)
        if runs_from_its_first_epoch(trial):  # its earlier run's results, if any, would stand for its new run
            for bracket in self._brackets:
                for _, recorded in bracket._rungs:
                    recorded.pop(trial.trial_id, None)
            self.decisions.pop(trial.trial_id, None)

    def rung_state(self) -> dict:
        """Ray's rungs (each bracket's recorded results per rung, highest rung first) and the decisions."""
        return {
            "brackets": [[recorded for _, recorded in bracket._rungs] for bracket in self._brackets],
            "decisions": self.decisions,
        }

    def restore_rungs(self, state: dict) -> None:
        for bracket, rungs in zip(self._brackets, state["brackets"], strict=True):
            for (_, recorded), saved in zip(bracket._rungs, rungs, strict=True):
                recorded.update(saved)
        self.decisions = state["decisions"]


class RungDecisions(tune.Callback):
    """Writes the scheduler's decision at this epoch into the trial's report (`rung_decision`, empty between
    rungs), so that Ray's result files, the exported tables and a resumed study all keep it. Ray passes the
    report to the callbacks after the scheduler has decided on it, and lets them change it in place."""

    def __init__(self, scheduler: TrialScheduler):
        self.scheduler = scheduler

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if type(self.scheduler) is FIFOScheduler:  # a Tuner pickled before FIFO was the study's: made so in place
            self.scheduler.__class__ = StudyFIFOScheduler

    def on_trial_result(self, iteration, trials, trial, result, **info):
        decision = getattr(self.scheduler, "decision", None)
        result["rung_decision"] = decision(trial.trial_id, result.get("training_iteration")) if decision else ""

    # Ray saves callbacks' state with the experiment, not the scheduler's: the rungs' records travel here, so that
    # after --resume a trial reaching a rung is ranked among the results recorded before the interruption too.
    def get_state(self) -> dict:
        rung_state = getattr(self.scheduler, "rung_state", None)
        return rung_state() if rung_state else {}

    def set_state(self, state: dict) -> None:
        if state:  # empty: FIFO, or single-metric ASHA saved before its rungs were
            self.scheduler.restore_rungs(state)
