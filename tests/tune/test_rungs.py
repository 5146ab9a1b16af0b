"""Multi-objective ASHA's rungs and decisions (study/tune/rungs.py) on scripted results: no training, no Ray."""

import itertools
import math

import numpy as np
import pytest

from study.tune.rungs import ParetoRungs, crowding, decide, fronts, milestones

NAN = math.nan
# Each dominates the next: more accurate and cheaper (accuracy, cost).
CHAIN = [(0.9, 1.0), (0.8, 2.0), (0.7, 3.0), (0.6, 4.0), (0.5, 5.0)]


def feed(rungs: ParetoRungs, points, epoch=1) -> list[str]:
    return [rungs.on_result(f"t{i}", epoch, *point).reason() for i, point in enumerate(points)]


def test_rungs_sit_where_asha_puts_them_and_never_at_or_beyond_max_epochs():
    assert milestones(1, 3, 9) == [1, 3]  # 9 is the budget: a trial there has completed
    assert milestones(2, 2, 5) == [2, 4]
    assert milestones(1, 2.5, 20) == [1, 3, 7, 16]  # rounded up to whole epochs
    assert milestones(1, 1.2, 4) == [1, 2, 3]  # no rung twice
    assert milestones(2, 2, 2) == []  # grace period at the budget: no rung at all
    rungs = ParetoRungs(2, 2, 2)
    assert rungs.on_result("t0", 2, 0.5, 1.0) is None  # nothing to decide beyond the rungs


def test_non_dominated_sorting_with_nan_last():
    points = np.array([[0.9, 3.0], [0.5, 1.0], [0.5, 2.0], [NAN, 0.1], [0.4, 3.0], [0.7, NAN]])
    assert fronts(points).tolist() == [1, 1, 2, 4, 3, 4]


def test_crowding_gives_the_ends_infinity_and_ignores_row_order():
    points = np.array([[0.9, 4.0], [0.8, 2.0], [0.7, 1.5], [0.5, 1.0]])
    distance = crowding(points)
    assert np.isinf(distance[[0, 3]]).all() and np.isfinite(distance[[1, 2]]).all()
    assert distance[1] == pytest.approx((0.9 - 0.7) / 0.4 + (4.0 - 1.5) / 3.0)
    order = [2, 0, 3, 1]
    assert crowding(points[order]).tolist() == distance[order].tolist()


@pytest.mark.parametrize("arrival", range(len(CHAIN)))
def test_a_decision_does_not_depend_on_the_order_of_the_recorded_results(arrival):
    """Syne Tune's flaw: the sort's list of positions read as ranks makes the answer depend on the list's order."""
    others = [p for i, p in enumerate(CHAIN) if i != arrival]
    decisions = {decide(CHAIN[arrival], list(order), 2, 1) for order in itertools.permutations(others)}
    assert len(decisions) == 1
    (decision,) = decisions
    assert (decision.rank, decision.front, decision.fronts, decision.top) == (arrival + 1, arrival + 1, 5, 3)


def test_a_dominance_chain_in_either_order_follows_dominance():
    # Worst first: every arrival dominates all recorded ones, so every one continues (rank 1, front 1).
    worst_first = feed(ParetoRungs(1, 2, 9), CHAIN[::-1])
    assert all(reason.startswith("passed rung epoch 1: rank 1 of") for reason in worst_first)
    # Best first: every arrival is dominated by all recorded ones and last; only the first continues.
    best_first = feed(ParetoRungs(1, 2, 9), CHAIN)
    assert best_first == [
        "passed rung epoch 1: rank 1 of 1, front 1 of 1, on val_acc x train_time_s; the top 1 continue",
        "stopped at rung epoch 1: rank 2 of 2, front 2 of 2, on val_acc x train_time_s; the top 1 continue",
        "stopped at rung epoch 1: rank 3 of 3, front 3 of 3, on val_acc x train_time_s; the top 2 continue",
        "stopped at rung epoch 1: rank 4 of 4, front 4 of 4, on val_acc x train_time_s; the top 2 continue",
        "stopped at rung epoch 1: rank 5 of 5, front 5 of 5, on val_acc x train_time_s; the top 3 continue",
    ]


def test_a_trial_that_dominates_every_recorded_one_always_continues():
    rng = np.random.default_rng(0)
    for _ in range(200):
        recorded = [(float(a), float(c)) for a, c in zip(rng.uniform(0.1, 0.8, 12), rng.uniform(1.0, 10.0, 12))]
        best = (max(a for a, _ in recorded) + 0.01, min(c for _, c in recorded) - 0.5)
        for eta in (2, 3, 4):
            assert decide(best, recorded, eta, 1).continues


def test_a_cheap_non_dominated_trial_continues_where_accuracy_alone_would_stop_it():
    recorded = [(0.80, 10.0), (0.78, 9.0), (0.75, 8.0)]
    cheap = decide((0.40, 0.5), recorded, 2, 1)  # the least accurate, but nothing is cheaper
    assert cheap.front == 1 and cheap.rank <= cheap.top and cheap.continues
    dominated = decide((0.70, 9.5), recorded, 2, 1)
    assert dominated.front == 2 and not dominated.continues


def test_ties_within_a_front_go_to_the_ends_then_to_earlier_arrivals():
    # One front of four: the two ends (most accurate, cheapest) have infinite crowding distance and come first,
    # then the more isolated of the two inner results (crowding 1.58 against 1.17).
    ends = [(0.9, 4.0), (0.5, 1.0)]
    isolated = decide((0.7, 2.0), [*ends, (0.8, 3.5)], 2, 1)
    assert (isolated.front, isolated.rank, isolated.top) == (1, 3, 2) and not isolated.continues
    assert decide((0.8, 3.5), [*ends, (0.7, 2.0)], 2, 1).rank == 4
    assert decide((0.9, 4.0), [(0.5, 1.0), (0.8, 3.5), (0.7, 2.0)], 2, 1).continues
    # A result equal to a recorded one ranks after it, whichever order the others came in.
    twin = decide((0.5, 1.0), [(0.5, 1.0), (0.9, 4.0)], 2, 1)
    assert (twin.front, twin.rank) == (1, 3)
    assert decide((0.5, 1.0), [(0.9, 4.0), (0.5, 1.0)], 2, 1) == twin


def test_nan_accuracy_ranks_last_but_a_trial_alone_at_a_rung_continues():
    lonely = ParetoRungs(1, 2, 9)
    assert lonely.on_result("nan", 1, NAN, 1.0).continues  # nothing to compare with
    diverged = decide((NAN, 0.1), [(0.2, 5.0), (0.3, 6.0), (0.1, 7.0)], 2, 1)
    assert (diverged.rank, diverged.front, diverged.fronts) == (4, 3, 3) and not diverged.continues
    # A recorded NaN never beats a number.
    assert decide((0.1, 9.0), [(NAN, 0.1)], 2, 1).rank == 1


def test_each_rung_decides_once_per_trial_and_keeps_its_own_records():
    rungs = ParetoRungs(1, 3, 9)  # rungs at epochs 1 and 3
    assert rungs.on_result("a", 1, 0.5, 1.0).epoch == 1
    assert rungs.on_result("a", 2, 0.6, 2.0) is None  # between rungs
    assert rungs.on_result("a", 3, 0.7, 3.0).reason().startswith("passed rung epoch 3: rank 1 of 1")
    assert rungs.on_result("a", 3, 0.7, 3.0) is None  # a repeated report is not a second arrival
    assert rungs.on_result("b", 1, 0.4, 1.5).reason().startswith("stopped at rung epoch 1: rank 2 of 2")
    assert rungs.recorded == {1: {"a": (0.5, 1.0), "b": (0.4, 1.5)}, 3: {"a": (0.7, 3.0)}}


def test_repeats_of_a_configuration_follow_its_first_repeats_decision():
    """With repeats the rungs decide per configuration: the first repeat to arrive is ranked among the other
    configurations' first arrivals; the later repeats get its decision, whatever their own numbers, and are not
    recorded (a configuration counts once at a rung)."""
    rungs = ParetoRungs(1, 2, 9)
    first = rungs.on_result("a0", 1, 0.9, 1.0, configuration="a")
    assert first.continues and not first.follows
    stopped = rungs.on_result("b0", 1, 0.5, 2.0, configuration="b")  # dominated by a: stopped
    assert not stopped.continues
    better_seed = rungs.on_result("b1", 1, 0.95, 0.5, configuration="b")  # would dominate everything alone
    assert not better_seed.continues and better_seed.follows == "b0"
    assert better_seed.reason().startswith("stopped at rung epoch 1 with its configuration's first repeat there, b0")
    assert rungs.on_result("a1", 1, 0.1, 9.0, configuration="a").continues
    assert rungs.on_result("b1", 1, 0.95, 0.5, configuration="b") is None  # a repeated report is not a new arrival
    assert set(rungs.recorded[1]) == {"a0", "b0"}
    # without a configuration each trial is ranked on its own numbers, as in a study without repeats
    assert rungs.on_result("c", 1, 0.95, 0.5).continues


def test_a_trial_run_again_is_forgotten_and_ranked_again_on_its_new_results():
    """A trial Ray runs again from its first epoch (after --resume, or a retry) keeps its trial id: its earlier
    run's record must not stand for the new run, which would then pass every rung it passed before."""
    rungs = ParetoRungs(1, 2, 4)  # rungs at epochs 1 and 2
    assert rungs.on_result("again", 1, 0.6, 5.0).reason().startswith("passed rung epoch 1: rank 1 of 1")
    assert rungs.on_result("again", 2, 0.7, 6.0).continues
    feed(rungs, [(0.8, 1.0), (0.5, 9.0)])  # t0 dominates it, t1 is dominated by both
    rungs.forget("again")
    assert rungs.recorded == {1: {"t0": (0.8, 1.0), "t1": (0.5, 9.0)}, 2: {}}
    new_run = rungs.on_result("again", 1, 0.4, 9.5)  # now dominated by both
    assert new_run.reason().startswith("stopped at rung epoch 1: rank 3 of 3")
    assert rungs.recorded[1] == {"t0": (0.8, 1.0), "t1": (0.5, 9.0), "again": (0.4, 9.5)}  # once, its new result


def test_a_repeat_run_again_gives_up_its_configurations_lead_and_follows_or_leads_anew():
    rungs = ParetoRungs(1, 2, 9)
    rungs.on_result("a0", 1, 0.9, 1.0, configuration="a")
    assert rungs.on_result("a1", 1, 0.1, 9.0, configuration="a").follows == "a0"
    rungs.forget("a1")  # a follower run again follows its configuration's lead again
    assert rungs.followers[1] == set() and rungs.on_result("a1", 1, 0.1, 9.0, configuration="a").follows == "a0"
    rungs.on_result("b0", 1, 0.5, 2.0, configuration="b")
    rungs.forget("a0")  # the lead's own result is gone: its new run is ranked, and leads
    again = rungs.on_result("a0", 1, 0.4, 3.0, configuration="a")
    assert not again.follows and again.of == 2 and set(rungs.recorded[1]) == {"a0", "b0"}
    assert rungs.leaders[1]["a"].follows == "a0" and rungs.recorded[1]["a0"] == (0.4, 3.0)
