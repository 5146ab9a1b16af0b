"""The rungs of asynchronous successive halving and a Pareto-aware rule for them (MO-ASHA), in plain Python.

After Schmucker et al. 2021, "Multi-objective Asynchronous Successive Halving" (arXiv:2106.12639). Rungs sit
as in ASHA at grace_period x reduction_factor^k epochs, those below max_epochs (a trial that reaches
max_epochs has completed; no rung lies at or beyond it). When a trial reaches a rung it is ranked among every
result recorded at that rung so far, itself included (n results):

1. non-dominated sorting on (val_acc maximised, train_time_s minimised, both as of that rung):
   front 1 holds the results nothing dominates, front 2 those only front 1 dominates, and so on; a result
   without a number (NaN accuracy or cost) cannot be compared and sits in a last front of its own;
2. within one front, larger crowding distance first (NSGA-II: the gap between a result's neighbours on
   each objective, over the front's range; the front's two ends have an infinite distance, so the most
   accurate and the cheapest results of a front come first). Results with the same values share their
   distance;
3. remaining ties: higher accuracy, then lower cost; exactly equal results: the one recorded earlier first.

The trial continues if its rank is within the top ceil(n / reduction_factor) (so a trial alone at a rung,
or one that dominates every recorded result, always continues), and stops otherwise. The rank is the
trial's position in that order, computed from its own values against the recorded ones; it never depends
on the order in which the recorded results are listed (Syne Tune's moasha.py read the sort's list of
positions as if it were each result's rank, which can stop a trial that dominates all earlier ones).

Which cost: `train_time_s`, the time the configuration takes alone on a fresh node (reused cached features
charged what they cost to build), the report's front's own axis. What the study actually spent
(`study_train_time_s`) charges the shared features to whichever trial happened to build them first, and
nothing when an earlier study left them in the cache, so on it the same configuration could pass a rung in
one run and be stopped in the next.

Repeats (a space's `repeats: N`): the rungs decide on configurations, not on seeds. The first repeat of a
configuration to reach a rung is ranked there among the other configurations' first arrivals; its later repeats
follow that decision at that rung and are not recorded (a configuration counts once). So a configuration's repeats
complete or stop together, and the spread over repeats is never that of the luckier seeds that survived a rung.

A trial run again from its first epoch (one a --resume or a retry runs again under its trial id) is forgotten
first (`forget`): the rungs then hold its new run's results only, each ranked as it arrives. Kept, its earlier run's
record would stand for the new run and pass it through every rung it passed before, whatever its new results.
(A repeat that followed its earlier decision keeps that decision: its configuration's repeats then can differ.)

A decision depends only on the results recorded at that rung when the trial arrives: with one trial at a
time (`--max-concurrent 1`) the arrival order, and so every decision, repeats; with trials running
concurrently the arrival order, and so the decisions, can differ between runs, as in any asynchronous
scheduler (Ray's ASHA included).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from study.analysis.pareto import non_dominated
from study.core.metrics import RUNG_ACCURACY, RUNG_COST


def milestones(grace_period: int, reduction_factor: float, max_epochs: int) -> list[int]:
    """The rungs' epochs: grace_period x reduction_factor^k rounded up to a whole epoch, below max_epochs."""
    epochs: list[int] = []
    k = 0
    while (epoch := math.ceil(grace_period * reduction_factor**k - 1e-9)) < max_epochs:
        if not epochs or epoch > epochs[-1]:
            epochs.append(epoch)
        k += 1
    return epochs


def fronts(points: np.ndarray) -> np.ndarray:
    """Non-dominated sorting: each row's front (1 = nothing dominates it), columns (accuracy max, cost min);
    rows with a NaN get the last front, after every comparable row."""
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    front = np.zeros(len(points), dtype=int)
    remaining = np.flatnonzero(~np.isnan(points).any(axis=1))
    number = 0
    while remaining.size:
        number += 1
        top = non_dominated(points[remaining], [True, False])
        front[remaining[top]] = number
        remaining = remaining[~top]
    front[front == 0] = number + 1
    return front


def crowding(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row among `points` (one front, no NaN): the sum over objectives of the
    gap between the nearest distinct values on either side, over the objective's range; the ends get infinity.
    Equal values share one distance, so the result does not depend on the rows' order."""
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    distance = np.zeros(len(points))
    for column in points.T:
        values = np.unique(column)
        if len(values) == 1:
            continue  # every row equal on this objective: it separates nothing
        spread = values[-1] - values[0]
        position = np.searchsorted(values, column)
        ends = (position == 0) | (position == len(values) - 1)
        gaps = np.zeros(len(column))
        inner = ~ends
        gaps[inner] = (values[position[inner] + 1] - values[position[inner] - 1]) / spread
        distance += np.where(ends, np.inf, gaps)
    return distance


@dataclass(frozen=True, kw_only=True)
class Decision:
    epoch: int  # the rung
    rank: int  # 1-based position of the trial among the rung's results
    of: int  # results at the rung, the trial's included
    front: int
    fronts: int
    top: int  # how many continue: ceil(of / reduction_factor)
    objectives: str  # what the rung compared, e.g. "val_acc x train_time_s"
    follows: str = ""  # the trial id of the configuration's repeat whose decision this one follows ("": its own)

    @property
    def continues(self) -> bool:
        return self.rank <= self.top

    def reason(self) -> str:
        verb = "passed rung" if self.continues else "stopped at rung"
        if self.follows:
            return (
                f"{verb} epoch {self.epoch} with its configuration's first repeat there, {self.follows} (rank "
                f"{self.rank} of {self.of}, front {self.front} of {self.fronts}, on {self.objectives}; the top "
                f"{self.top} continued)"
            )
        return (
            f"{verb} epoch {self.epoch}: rank {self.rank} of {self.of}, front {self.front} of {self.fronts}, on "
            f"{self.objectives}; the top {self.top} continue"
        )


def decide(point: tuple[float, float], recorded: list[tuple[float, float]], reduction_factor: float, epoch: int):
    """The decision for a trial arriving at a rung with `point` (accuracy, cost), among the `recorded` points
    of the trials that reached the rung before it (module docstring)."""
    points = np.array([*recorded, point], dtype=float).reshape(-1, 2)
    me = len(points) - 1
    front = fronts(points)
    same = np.flatnonzero(front == front[me])
    distance = np.zeros(len(points))
    if not np.isnan(points[me]).any():
        distance[same] = crowding(points[same])

    def key(i: int) -> tuple:
        accuracy, cost = points[i]
        return (front[i], -distance[i], -np.nan_to_num(accuracy, nan=-np.inf), np.nan_to_num(cost, nan=np.inf))

    mine = key(me)
    ahead = sum(bool(key(i) <= mine) for i in range(me))  # exactly equal results recorded earlier come first
    return Decision(
        epoch=epoch,
        rank=ahead + 1,
        of=len(points),
        front=int(front[me]),
        fronts=int(front.max()),
        top=max(1, math.ceil(len(points) / reduction_factor)),
        objectives=f"{RUNG_ACCURACY} x {RUNG_COST}",
    )


class ParetoRungs:
    """The rungs' records and decisions of one study: `on_result` for every epoch a trial reports."""

    def __init__(self, grace_period: int, reduction_factor: float, max_epochs: int):
        self.reduction_factor = reduction_factor
        self.milestones = milestones(grace_period, reduction_factor, max_epochs)
        self.recorded: dict[int, dict[str, tuple[float, float]]] = {epoch: {} for epoch in self.milestones}
        # rung epoch -> configuration -> the decision its first repeat there got (repeats follow it)
        self.leaders: dict[int, dict[str, Decision]] = {epoch: {} for epoch in self.milestones}
        self.followers: dict[int, set[str]] = {epoch: set() for epoch in self.milestones}

    def on_result(
        self, trial_id: str, epoch: int, accuracy: float, cost: float, configuration: str | None = None
    ) -> Decision | None:
        """The decision when this report brings the trial to a rung it has not reached before, else None.
        `configuration` names the trial's settings but its repeat index, for a study with repeats."""
        reached = [m for m in self.milestones if epoch >= m]
        if not reached or trial_id in self.recorded[reached[-1]] or trial_id in self.followers[reached[-1]]:
            return None
        milestone = reached[-1]
        leader = self.leaders[milestone].get(configuration) if configuration is not None else None
        if leader is not None:
            self.followers[milestone].add(trial_id)
            return leader
        rung = self.recorded[milestone]
        decision = decide((accuracy, cost), list(rung.values()), self.reduction_factor, milestone)
        rung[trial_id] = (accuracy, cost)
        if configuration is not None:
            self.leaders[milestone][configuration] = dataclasses.replace(decision, follows=trial_id)
        return decision

    def forget(self, trial_id: str) -> None:
        """Drop what the trial recorded, led or followed at every rung: it runs again from its first epoch (after
        --resume, or retried), and its new run is ranked where it arrives and recorded once, with its new results.
        Repeats that followed its earlier decision keep theirs."""
        for milestone in self.milestones:
            self.recorded[milestone].pop(trial_id, None)
            self.followers[milestone].discard(trial_id)
            led = [key for key, decision in self.leaders[milestone].items() if decision.follows == trial_id]
            for configuration in led:
                del self.leaders[milestone][configuration]
