"""Running a study on Ray Tune: the Tuner, a graceful stop on Ctrl-C or SIGTERM, resume, and which trials finished.

A study's outcome is one record per trial that finished or failed (study/tune/records.py), how many trials did
neither, and the signal that stopped it. Which trials finished is read from Ray's saved experiment state whenever a
signal stopped the study: Ray's returned results count the trials it stopped as terminated, yet they are no results.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import NamedTuple

from ray import tune
from ray.tune.logger import TBXLoggerCallback
from ray.tune.schedulers import TrialScheduler

from study.core.space import Space
from study.tune.callbacks import ExportCallback, Monitoring, WatchCallback
from study.tune.cluster import Cluster, Resources, resuming, slots
from study.tune.disk import DiskGuard, LowDisk
from study.tune.records import records_from
from study.tune.schedulers import RungDecisions, scheduler_for
from study.tune.search import param_space, search_algorithm, trial_count
from study.tune.trainable import trainable
from study.watch.tracking import MlflowTracker

# How often Ray saves the experiment state (trial statuses, searcher, ExportCallback): a trial that finished
# less than this before the driver died is not in the saved state and runs again on --resume (never lost).
# Ray's default ("auto") is 10 s or more; the state of a study is small, so saving it every second costs little.
CHECKPOINT_PERIOD_S = "1"


class StudyOutcome(NamedTuple):
    """What a run or resume of a study ended with."""

    records: list[dict]  # one per trial that finished or failed (study/analysis/results.py trials_table)
    unfinished: int  # trials that did neither: they run with --resume
    stopped_by: int | None  # the signal that stopped the study, or None
    low_disk: LowDisk | None = None  # the study stopped for disk space (study/tune/disk.py DiskGuard), or None


class TrialCounts(NamedTuple):
    """The trials of Ray's saved state of an interrupted experiment."""

    finished: int  # finished or failed: kept as they are on --resume
    unfinished: int  # run again from their first epoch on --resume


def run_study(
    space: Space,
    out: Path,
    storage: str,
    name: str,
    resources: Resources,
    seed: int,
    cluster: Cluster,
    monitoring: Monitoring | None = None,
    data_fingerprints: dict[str, str] | None = None,
) -> StudyOutcome:
    """Run every trial of `space`, each demanding its data's fingerprint in `data_fingerprints` (preflight's, by
    data name; a resumed study keeps them: Ray restores the param_space).

    Ctrl-C or SIGTERM (GracefulStop): Ray Tune stops the running trials, saves its experiment state and returns;
    the trials it stopped are unfinished (they run again with --resume), not results. A second signal raises
    KeyboardInterrupt at once."""
    monitoring = monitoring or Monitoring()
    _ray_settings(monitoring.verbose or cluster.client)
    scheme = storage.split("://")[0] if "://" in storage else None
    scheduler = scheduler_for(space)
    callbacks, watch = _callbacks(space, out, scheme, scheduler, cluster, monitoring)
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources.per_trial()),
        param_space=param_space(space, data_fingerprints),
        tune_config=_tune_config(space, seed, scheduler, resources, cluster),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            verbose=0 if watch and watch.console_on else 1,
            failure_config=tune.FailureConfig(max_failures=resources.max_failures),
            callbacks=callbacks,
        ),
    )
    with GracefulStop() as stop:
        results = fit(tuner)
    return _outcome(results, f"{storage.rstrip('/')}/{name}", space, scheme, stop.signum, DiskGuard.take_tripped())


def _callbacks(
    space: Space, out: Path, scheme: str | None, scheduler: TrialScheduler, cluster: Cluster, monitoring: Monitoring
) -> tuple[list[tune.Callback], WatchCallback | None]:
    """The Tuner's callbacks, in the order Ray calls them, and the one that shows the study (None: Ray's output)."""
    # Event files for TensorBoard in each trial's directory (RESULTS/ray/tune/TRIAL_ID), per epoch; explicit, so a
    # missing tensorboardX is an error, not a warning in Ray's output.
    # RungDecisions first: it writes the scheduler's decision into the report the others read.
    callbacks: list[tune.Callback] = [RungDecisions(scheduler), TBXLoggerCallback()]
    # Ray Client runs Tune's loop on the head node, whose disk is not this machine's: tables at the end only, and
    # Ray's own output (the head's console is not this one).
    if cluster.client:
        return callbacks, None
    export = ExportCallback(out, space.max_epochs, scheme)
    watch = WatchCallback(
        export,
        trial_count(space),
        list(space.dimensions),
        console=not monitoring.verbose,
        mlflow=MlflowTracker(monitoring.mlflow, out.resolve().name) if monitoring.mlflow else None,
    )
    return [*callbacks, export, watch, DiskGuard(export)], watch


def _tune_config(
    space: Space, seed: int, scheduler: TrialScheduler, resources: Resources, cluster: Cluster
) -> tune.TuneConfig:
    single = space.search != "optuna_mo"  # multi-objective: the searcher and the scheduler carry their own metrics
    return tune.TuneConfig(
        metric=space.metric if single else None,
        mode=space.mode if single else None,
        scheduler=scheduler,
        search_alg=search_algorithm(space, seed, resources.max_concurrent),
        num_samples=space.num_samples,
        max_concurrent_trials=None
        if space.search in ("grid", "random")
        else resources.max_concurrent or slots(cluster, resources),
        trial_dirname_creator=_trial_dirname,
        reuse_actors=True,  # a trial starts in a warm process: no interpreter start and imports per trial
    )


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _ray_settings(verbose: bool = True) -> None:
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", CHECKPOINT_PERIOD_S)
    if not verbose:
        # Ray's newer console engine prints its experiment box and paths even at verbose=0; the legacy one, at
        # verbose=0, prints nothing.
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        for name in RAY_FAILURE_LOGGERS:
            if _said_by_the_console not in logging.getLogger(name).filters:
                logging.getLogger(name).addFilter(_said_by_the_console)


# Where Ray logs a failed trial's traceback and, at the end, the list of failed trials: the compact console already
# gives each failed trial its one-line reason and the study's end counts them; the traceback stays in the trial's
# directory (error.txt), and --verbose shows Ray's own lines.
RAY_FAILURE_LOGGERS = ("ray.tune.execution.tune_controller", "ray.tune.tune")


def _said_by_the_console(record: logging.LogRecord) -> bool:
    message = str(record.msg)
    return not (message.startswith("Trial task failed for trial") or message.startswith("Trials did not complete"))


def fit(tuner: tune.Tuner) -> tune.ResultGrid:
    """tuner.fit(), the live console closed whatever happens (a terminal is never left under a live display) and
    the live report's page being drawn written (the final report follows, and must not be replaced by it)."""
    try:
        return tuner.fit()
    finally:
        if WatchCallback.active is not None:
            WatchCallback.active.close()
            WatchCallback.active = None


class GracefulStop(contextlib.AbstractContextManager):
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler, `kill`) during Tuner.fit stop the study gracefully: the first one
    asks Tune to stop (the handler Ray Tune installs for SIGUSR1, which saves the experiment state, stops the trials
    and returns); a second one, or one before Tune's loop started, raises KeyboardInterrupt at once.

    Ray Tune's own SIGINT handler is turned off (TUNE_DISABLE_SIGINT_HANDLER) so both signals take one path, and
    ours replace the C++ handlers Ray's core worker installs (a stack dump on SIGTERM)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.signum: int | None = None
        self.previous = {sig: signal.getsignal(sig) for sig in (*self.SIGNALS, signal.SIGUSR1)}
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until Tune installs its handler: nothing to stop yet
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if self.signum is not None or not callable(tune_stop):
            raise KeyboardInterrupt(signal.Signals(signum).name)
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping the study (running trials are not results: they run again "
            "with --resume); send it again to stop at once",
            flush=True,
        )
        tune_stop(signum, frame)

    def __exit__(self, *exc_info):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        return False


def restorable(experiment: str) -> bool:
    """Ray can continue the experiment: its Tuner and a saved experiment state (a study stopped while Tune was
    starting has the first without the second)."""
    if not tune.Tuner.can_restore(experiment):
        return False
    with _quiet_about_unfinished_trials():
        try:
            tune.ExperimentAnalysis(experiment)
        except (ValueError, FileNotFoundError):
            return False
    return True


def resume_study(experiment: str, out: Path, space: Space, resources: Resources, verbose: bool = True) -> StudyOutcome:
    """Continue an interrupted study from Ray's experiment directory: finished and failed trials are kept as
    they are, unfinished ones run again from their first epoch (trials save no checkpoints mid-way). They and the
    trials not started yet demand the data fingerprints the study started with (in the param_space Ray restores).
    `verbose`: the study started with Ray's own output (its saved Tuner shows it again). The results tables go to
    `out`, the directory resumed, whatever directory the saved Tuner was pickled in."""
    _ray_settings(verbose)
    scheme = experiment.split("://")[0] if "://" in experiment else None
    with resuming(out, experiment):  # not where the Tuner was pickled: a study copied or moved resumes in place
        with _quiet_about_unfinished_trials():
            tuner = tune.Tuner.restore(
                experiment,
                tune.with_resources(trainable, resources.per_trial()),
                resume_unfinished=True,
                resume_errored=False,
                restart_errored=False,
            )
        with GracefulStop() as stop:
            results = fit(tuner)
    return _outcome(results, experiment, space, scheme, stop.signum, DiskGuard.take_tripped())


def finished_before(experiment: str) -> TrialCounts:
    """The finished (or failed) and unfinished trials in Ray's saved state of an interrupted experiment."""
    with _quiet_about_unfinished_trials():
        statuses = [trial.status for trial in tune.ExperimentAnalysis(experiment).trials]
    done = sum(status in ("TERMINATED", "ERROR") for status in statuses)
    return TrialCounts(finished=done, unfinished=len(statuses) - done)


def _outcome(
    results: tune.ResultGrid,
    experiment: str,
    space: Space,
    scheme: str | None,
    stopped_by: int | None,
    low_disk: LowDisk | None = None,
) -> StudyOutcome:
    """The records of the trials that finished or failed, and how many of the study's trials did neither.

    A study stopped by a signal (`stopped_by`) or for disk space (`low_disk`) is judged by the state Ray saved when
    the stop came, before it stopped the running trials: Ray's returned results count the trials it stopped as
    terminated, yet they are no results (they run again with --resume). Trials not created yet (the variant
    generator creates the next one when a slot frees) are in neither."""
    total = trial_count(space)
    if stopped_by is None and low_disk is None and results.num_terminated + results.num_errors == total == len(results):
        return StudyOutcome(records=records_from(results, space.max_epochs, scheme), unfinished=0, stopped_by=None)
    records = records_from(results, space.max_epochs, scheme, keep=_saved_done_trials(experiment))
    return StudyOutcome(records=records, unfinished=total - len(records), stopped_by=stopped_by, low_disk=low_disk)


def _saved_done_trials(experiment: str) -> set[str]:
    """The ids of the trials that finished or failed in Ray's saved experiment state (none if it saved none yet)."""
    with _quiet_about_unfinished_trials():
        try:
            trials = tune.ExperimentAnalysis(experiment).trials
        except (ValueError, FileNotFoundError):  # stopped before Ray saved any state: nothing finished
            return set()
    return {trial.trial_id for trial in trials if trial.status in ("TERMINATED", "ERROR")}


@contextlib.contextmanager
def _quiet_about_unfinished_trials():
    """Reading an interrupted experiment, Ray warns about every trial that never reported: expected here."""
    analysis = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = analysis.level
    analysis.setLevel(logging.ERROR)
    try:
        yield
    finally:
        analysis.setLevel(level)
