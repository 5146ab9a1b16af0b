"""The order of a study's steps, new or resumed: check, start or join Ray, record, run the trials, then finish.

Everything a user can get wrong is checked before anything is written (one line on stderr, exit code 2); the
results directory is created only once Ray has started or been joined. Ray is imported only once the input is
known to be good (`from study import tune`). SIGTERM ends the driver as Ctrl-C does; what a study does once its
trials stop, interrupted or not, is in finish.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from study.cli.run.checks import check_mlflow, check_numbers, check_resource_options, check_storage, loopback
from study.cli.run.finish import exit_code, finish, interrupted, stopped_for_disk_space
from study.cli.run.parser import STUDY_OPTIONS, parse_args, resolve_space
from study.cli.run.preflight import dry_run, preflight
from study.cli.run.results_dir import check_out, create_out, is_study_record, lock_study
from study.core.config import StudyError, TrialConfig
from study.core.environment import hardware, package_versions
from study.core.files import read_json, write_json
from study.core.space import Space

if TYPE_CHECKING:
    from study.tune.cluster import Cluster, Resources
    from study.watch.tracking import MlflowTracker


def fail(error: StudyError) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 2


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc: its start in clock ticks after boot), else None."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round(uptime - ticks / os.sysconf("SC_CLK_TCK"), 2)


class Phases(dict):
    """Where a study's wall time went, recorded in study.json's `phases` (seconds): imports (the process's start
    to the command line parsed), preflight (the input checked), ray_import, ray_start, first_trial_start (Ray
    started to the first trial running in its worker), trials (Tune's run), export (tables, front, report); with
    a `prescreen:` space, prescreen (the backbones scored before Ray starts)."""

    @contextlib.contextmanager
    def timed(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self[phase] = round(time.perf_counter() - start, 2)


def main(argv: list[str] | None = None) -> int:
    phases = Phases(imports=process_age())
    args = parse_args(argv)
    command = ["python", "-m", "study.run", *(sys.argv[1:] if argv is None else argv)]
    stop_on_sigterm()
    try:
        if args.resume is not None:
            return resume(args, command)
        return start_new_study(args, command, phases)
    except KeyboardInterrupt as stop:  # a signal before the study's results directory exists: nothing to record
        print("\ninterrupted before the study started: nothing was written", file=sys.stderr)
        return exit_code(stop)
    finally:  # the study is recorded: a further Ctrl-C must not break Ray's shutdown at exit (a crash in its C++)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def stop_on_sigterm() -> None:
    """SIGTERM ends the driver as Ctrl-C does (KeyboardInterrupt), not at once: again after Ray starts, whose core
    worker installs its own handler (a C++ stack dump). Inside Tune's loop tune.GracefulStop takes over."""

    def stop(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)


@dataclasses.dataclass(kw_only=True)
class CheckedStudy:
    """A new study's input once every check before Ray has passed."""

    space: Space  # with a `prescreen:` space, only the backbones the prescreen kept
    seed: int
    out: Path
    mlflow: MlflowTracker | None
    screened: dict | None  # the prescreen's record, with a `prescreen:` space
    data_fingerprints: dict[str, str]  # the data every trial must find, by data name (preflight)


def start_new_study(args: argparse.Namespace, command: list[str], phases: Phases | None = None) -> int:
    """A new study. Everything that can fail is checked before anything is written: the input, the resources, the
    results directory, then Ray (started or joined); the results directory is created last."""
    phases = Phases() if phases is None else phases
    try:
        check_numbers(args)
        space = resolve_space(args)
        seed = 0 if args.seed is None else args.seed
        if args.dry_run:
            dry_run(space, seed)
            return 0
        study = check_before_ray(args, space, seed, phases)
    except StudyError as error:
        return fail(error)

    with phases.timed("ray_import"):
        from study import tune  # Ray is imported only once the input is known to be good

    location = tune.experiment_location(study.out, args.storage)
    experiment = f"{location.storage.rstrip('/')}/{location.name}"
    started = time.perf_counter()
    try:
        with phases.timed("ray_start"):
            cluster = start_ray_and_announce(args, study.out, experiment)
        ray_started = time.time()
        resources = tune.Resources(
            cpus_per_trial=args.cpus_per_trial or 1.0,
            gpus_per_trial=args.gpus_per_trial if args.gpus_per_trial is not None else float(cluster.gpus > 0),
            max_concurrent=args.max_concurrent,
            max_failures=args.max_failures or 0,
        )
        warning = tune.check_fit(
            cluster, resources.cpus_per_trial, resources.gpus_per_trial, joined=args.address is not None
        )
        create_out(study.out, args.overwrite)
    except StudyError as error:
        return fail(error)
    if warning:
        print(warning)
    recorded = tune.recorded_experiment(experiment, args.storage)
    record = new_study_record(args, command, study, resources, cluster, recorded, phases)
    write_json(study.out / "study.json", record)
    print_start(study, resources, cluster)
    try:
        with phases.timed("trials"):
            monitoring = tune.Monitoring(verbose=args.verbose, mlflow=args.mlflow)
            outcome = tune.run_study(
                study.space,
                study.out,
                location.storage,
                location.name,
                resources,
                study.seed,
                cluster,
                monitoring,
                data_fingerprints=study.data_fingerprints,
            )
        phases["first_trial_start"] = first_trial_start(outcome.records, ray_started)
        if outcome.low_disk is not None:
            return stopped_for_disk_space(study.out, record, outcome)
        return finish(study.out, study.space, record, outcome, started)
    except KeyboardInterrupt as stop:
        return interrupted(study.out, record, exit_code(stop))
    except StudyError as error:  # out of disk space writing the results: what was written is kept
        return fail(error)


def check_before_ray(args: argparse.Namespace, space: Space, seed: int, phases: Phases) -> CheckedStudy:
    """The resources, every trial's model and data, the results directory, --storage and --mlflow, checked in this
    process; with a `prescreen:` space, the backbones ranked (plain PyTorch, no Ray)."""
    with phases.timed("preflight"):
        check_resource_options(args)
        data_fingerprints = preflight(space)
        out = check_out(args.out, space, args.overwrite)
        check_storage(args.storage)
        mlflow = check_mlflow(args, out)
    screened = None
    if space.prescreen is not None:  # before Ray: the ranking is plain PyTorch in this process
        from study.ranking.candidates import prescreen

        with phases.timed("prescreen"):
            prescreened = prescreen(space)
        space, screened = prescreened.space, prescreened.record
    return CheckedStudy(
        space=space, seed=seed, out=out, mlflow=mlflow, screened=screened, data_fingerprints=data_fingerprints
    )


def new_study_record(
    args: argparse.Namespace,
    command: list[str],
    study: CheckedStudy,
    resources: Resources,
    cluster: Cluster,
    ray_experiment: str,
    phases: Phases,
) -> dict:
    """study.json as a new study starts: what --resume and the report read back."""
    space = study.space
    record = {
        "space": dataclasses.asdict(space),
        "command": command,
        "search": {"algorithm": space.search, "seed": study.seed},
        "seed": study.seed,
        "trial_seed": dataclasses.asdict(space.dimensions["seed"])
        if "seed" in space.dimensions
        else space.fixed.get("seed", TrialConfig.seed),
        "resources": dataclasses.asdict(resources),
        "data_fingerprints": study.data_fingerprints,
        "cluster": {
            "address": args.address,
            "nodes": cluster.nodes,
            "cpus": cluster.cpus,
            "gpus": cluster.gpus,
            "ray_client": cluster.client,
        },
        "ray_experiment": ray_experiment,
        "dashboard": cluster.dashboard_url,
        "ray_logs": cluster.log_dir,
        "monitoring": {"verbose": args.verbose, "mlflow": study.mlflow and study.mlflow.uri},
        "versions": package_versions(),
        "hardware": hardware(),
        "started": datetime.now().isoformat(timespec="seconds"),
        "phases": phases,
    }
    if study.screened is not None:
        record["prescreen"] = study.screened
    return record


def print_start(study: CheckedStudy, resources: Resources, cluster: Cluster) -> None:
    space = study.space
    print(
        f"Study {space.name}: search {space.search} (seed {study.seed}), up to {space.max_epochs} epochs per trial; "
        f"{resources.cpus_per_trial:g} CPU and {resources.gpus_per_trial:g} GPU per trial"
        f"{f', at most {resources.max_concurrent} at once' if resources.max_concurrent else ''}"
        f"{f', {resources.max_failures} retries of a failing trial' if resources.max_failures else ''}; "
        f"{cluster.nodes} node(s) with {cluster.cpus:g} CPU and {cluster.gpus:g} GPU. Results: {study.out.resolve()}",
        flush=True,
    )


def first_trial_start(records: list[dict], ray_started: float) -> float | None:
    """Seconds from Ray started to the first trial running in its worker (None: no trial reported)."""
    first = min((h["started_at"] for r in records for h in r["history"] if "started_at" in h), default=None)
    return round(first - ray_started, 2) if first is not None else None


def start_ray_and_announce(args: argparse.Namespace, out: Path, experiment: str) -> Cluster:
    """Start or join Ray and say where to watch the study: Ray's logs, its dashboard, the report, TensorBoard."""
    from study import tune

    exposed = args.address is None and not args.no_dashboard and not loopback(args.dashboard_host)
    cluster = tune.start_ray(args.address, None if args.no_dashboard else args.dashboard_host, args.verbose)
    stop_on_sigterm()
    from study.analysis.page import REPORT_FILE

    if cluster.log_dir:
        print(f"Ray's logs: {cluster.log_dir}", flush=True)
    print(f"Report: {(out / REPORT_FILE).resolve()} (rewritten as trials finish)", flush=True)
    print(f"TensorBoard: tensorboard --logdir {experiment}", flush=True)
    if args.mlflow:
        from study.watch.tracking import store

        print(f"MLflow: experiment {out.resolve().name} in {store(args.mlflow).tracking_uri}", flush=True)
    announce_dashboard(cluster, args.dashboard_host, exposed)
    if cluster.client:
        print(
            "note: through Ray Client (ray://), Tune runs on the head node: the results tables are written at the "
            "end only, not after every trial"
        )
    return cluster


def announce_dashboard(cluster: Cluster, host: str, exposed: bool) -> None:
    """Where the Ray dashboard is and how it authenticates; a warning where other machines can reach it."""
    from study import tune

    if cluster.dashboard_url:
        if cluster.token_auth:
            how = (
                f"Ray token authentication is on: the page asks for the token, which is in {tune.token_location()} "
                f"(`ray get-auth-token` prints it); API clients send the header 'Authorization: Bearer TOKEN'"
            )
        else:
            how = "no authentication (RAY_AUTH_MODE=disabled)"
        print(f"Ray dashboard: {cluster.dashboard_url} ({how})", flush=True)
    if exposed:
        protection = (
            "its only protection is the Ray token, sent unencrypted over HTTP"
            if cluster.token_auth
            else "with RAY_AUTH_MODE=disabled it has no authentication at all"
        )
        print(
            f"warning: the Ray dashboard listens on {host}, reachable from other machines: Ray's "
            "dashboard and "
            f"its job API run any code they are sent on this machine, and {protection}; expose it only on a trusted "
            f"network, or keep the default 127.0.0.1 and use an SSH tunnel (ssh -L 8265:127.0.0.1:8265 THIS_HOST)",
            flush=True,
        )


def resume(args: argparse.Namespace, command: list[str]) -> int:
    """Continue the interrupted study in args.resume with its recorded space, resources and Ray experiment."""
    out = args.resume
    try:
        record = read_resumable(args)
        space = recorded_space(out, record)
        # As the study started (Ray restores its display and trackers); before these options: Ray's output.
        monitoring = record.get("monitoring", {"verbose": True})
        args.verbose, args.mlflow = monitoring.get("verbose", False), monitoring.get("mlflow")
        check_resource_options(args)
    except StudyError as error:
        return fail(error)
    from study import tune

    stop_left_behind(record)
    experiment, note = tune.experiment_to_resume(out, record["ray_experiment"])
    if note:
        print(note, flush=True)
        record["ray_experiment"] = tune.OWN_EXPERIMENT  # from now on the study resumes from its own wherever it is
    started = time.perf_counter()
    try:
        if not tune.restorable(experiment):
            raise StudyError(not_restorable(out, experiment, tune.finished_trial_dirs(experiment)))
        cluster = start_ray_and_announce(args, out, experiment)
        resources = tune.Resources(**record["resources"])  # max_failures included
        warning = tune.check_fit(
            cluster, resources.cpus_per_trial, resources.gpus_per_trial, joined=args.address is not None
        )
    except StudyError as error:
        return fail(error)
    if warning:
        print(warning)
    before = tune.finished_before(experiment)
    print(
        f"Resuming {out.resolve()}: {before.finished} trial(s) finished before the interruption are kept; "
        f"{before.unfinished} unfinished "
        f"trial(s) run again from their first epoch; the trials not started yet follow.",
        flush=True,
    )
    record.setdefault("resumed", []).append(
        {
            "at": datetime.now().isoformat(timespec="seconds"),
            "command": command,
            "kept": before.finished,
            "run_again": before.unfinished,
            "address": args.address,
            "dashboard": cluster.dashboard_url,
            "ray_logs": cluster.log_dir,
        }
    )
    write_json(out / "study.json", record)
    try:
        outcome = tune.resume_study(experiment, out, space, resources, args.verbose)
        if outcome.low_disk is not None:
            return stopped_for_disk_space(out, record, outcome)
        return finish(out, space, record, outcome, started)
    except KeyboardInterrupt as stop:
        return interrupted(out, record, exit_code(stop))
    except StudyError as error:  # out of disk space writing the results: what was written is kept
        return fail(error)


def stop_left_behind(record: dict) -> None:
    """A driver killed with SIGKILL can leave its local Ray's agents running (dashboard, runtime env: parent 1,
    listening on their ports): stop those of the study's own sessions (its start's and each resume's), never
    `ray stop`'s every Ray of the user; a joined cluster (--address) is not the study's to stop. The study's lock
    (held by a running driver) guarantees that no session of it is in use."""
    from study import tune

    runs = [record, *record.get("resumed", [])]
    for run in runs:
        if run.get("address") or run.get("cluster", {}).get("address") or not run.get("ray_logs"):
            continue
        session = str(Path(run["ray_logs"]).parent)
        stopped = tune.stop_leftover_processes(session)
        if stopped:
            print(f"note: stopped {stopped} Ray process(es) an interrupted driver left running (Ray session {session})")


def not_restorable(out: Path, experiment: str, finished_dirs: int) -> str:
    """Why --resume cannot continue the study, and what to do that deletes no finished trial: --overwrite only
    when none finished (neither the tables nor Ray's trial directories hold one)."""
    tables = out / "trials.csv"
    if not finished_dirs and not tables.exists():
        return (
            f"{experiment} holds no Ray Tune experiment state: the study was interrupted before its first trial "
            f"started; start it again with --out {out} --overwrite (or a new --out)"
        )
    return (
        f"{experiment} holds no readable Ray Tune experiment state (missing, or damaged, e.g. by a full disk), "
        f"yet trials finished ({finished_dirs} in Ray's trial directories"
        f"{f', and {tables}' if tables.exists() else ''}): --resume cannot continue it; keep {out} as it is "
        "(--overwrite would delete those results) and run the study again with a new --out"
    )


def read_resumable(args: argparse.Namespace) -> dict:
    """The study.json of the study to resume, once nothing contradicts it: no option that defines a study given
    again, no other process in the directory, the study not finished."""
    out = args.resume
    given = [f"--{name.replace('_', '-')}" for name in STUDY_OPTIONS if getattr(args, name) not in (None, False, [])]
    if given:
        raise StudyError(f"--resume continues the study as {out / 'study.json'} records it: leave out {given[0]}")
    if out.is_dir():
        lock_study(out)
    record = read_study(out)
    if "finished" in record:
        raise StudyError(
            f"the study in {out} finished at {record['finished']}: nothing to resume (start a new one with "
            "another --out)"
        )
    return record


def read_study(out: Path) -> dict:
    path = out / "study.json"
    try:
        record = read_json(
            path, "--resume needs the study.json its study wrote; start the study again with --overwrite"
        )
    except FileNotFoundError:
        raise StudyError(
            f"{path} does not exist: --resume takes the results directory (--out) of a study started by python -m "
            "study.run"
        ) from None
    if not isinstance(record, dict) or "ray_experiment" not in record:
        raise StudyError(
            f"{path} records no Ray experiment (a study from an older version, or no study.json of study.run): it "
            "cannot be resumed"
        )
    if not is_study_record(record) or not isinstance(record.get("resources"), dict):
        raise StudyError(
            f"{path} lacks what a study records (command, space, resources, ray_experiment): it was changed or not "
            "written by study.run; start the study again with --overwrite"
        )
    return record


def recorded_space(out: Path, record: dict) -> Space:
    try:
        return Space.from_record(record["space"])
    except (TypeError, KeyError, AttributeError) as error:
        raise StudyError(
            f"{out / 'study.json'}: its space is damaged ({type(error).__name__}: {error}): start the study again "
            "with --overwrite"
        ) from None
