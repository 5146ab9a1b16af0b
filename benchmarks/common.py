"""What the benchmarks share: real photos, the study and bare loops run as fresh processes, the machine, the tables.

Every benchmark times whole processes (`python -m study.run ...` against `python benchmarks/bare_loop.py ...`),
imports and start-up included, as a user would wait for them. Each writes its table to
benchmarks/results/NAME.csv and NAME.json (the settings, the machine, the load average before and after, each goal
and whether it was met); a `--quick` run writes them under its --work directory instead (WORK/quick-results), so it
never overwrites the committed full-run results.

Each benchmark writes its goals in the script (GOALS, a list of `Goal`) and ends with `finish`, which prints the
headline as the last line, every measured number beside its goal and the verdict:

    naive_vs_study: ratio=2.53 (goal >= 5: missed), accuracy_gap=0.008 (goal <= 0.01: met)

and exits non-zero when a goal marked `required` is missed (a number that makes the others meaningless, e.g. two
sides that no longer train to the same accuracy).
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
CIFAR_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"  # real CIFAR-10 photos as JPEG (an ImageFolder)
DEFAULT_WORK = Path(os.environ.get("TMPDIR", "/tmp")) / "study-benchmarks"
sys.path.insert(0, str(REPO))  # this checkout's `study`, here and (environment()) in the child processes


def benchmark_parser(doc: str, quick: str) -> argparse.ArgumentParser:
    """The options every CIFAR benchmark shares: --quick (described by `quick`), --archive, --work."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--archive", type=Path, default=CIFAR_ARCHIVE, help="the CIFAR-10 JPEG archive")
    parser.add_argument(
        "--work", type=Path, default=DEFAULT_WORK, help="scratch directory (data, data root, study results)"
    )
    return parser


def cifar_subset(archive: Path, work: Path, train_per_class: int, test_per_class: int) -> Path:
    """A class-balanced slice of the CIFAR-10 JPEGs as an ImageFolder (train/ and test/; val is carved from train)."""
    root = work / f"cifar10-{train_per_class}-{test_per_class}"
    if (root / ".complete").exists():
        return root
    if not archive.exists():
        sys.exit(
            f"{archive} is missing: pass --archive PATH to the CIFAR-10 JPEG archive (train/CLASS/*.jpg, "
            "test/CLASS/*.jpg)"
        )
    shutil.rmtree(root, ignore_errors=True)
    wanted = {"train": train_per_class, "test": test_per_class}
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(archive) as images:
        for member in images:
            parts = member.name.split("/")
            if (
                member.isfile()
                and len(parts) == 3
                and parts[0] in wanted
                and taken.get(tuple(parts[:2]), 0) < wanted[parts[0]]
            ):
                taken[tuple(parts[:2])] = taken.get(tuple(parts[:2]), 0) + 1
                (root / parts[0] / parts[1]).mkdir(parents=True, exist_ok=True)
                (root / member.name).write_bytes(images.extractfile(member).read())
    (root / ".complete").touch()
    return root


def environment() -> dict:
    """The environment of the child processes: this checkout's `study` first, as in the tests."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


def timed(command: list[str], log: Path) -> tuple[float, str]:
    """Run `command` in a fresh process; (wall seconds, its output). The output also goes to `log`."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=environment())
    seconds = time.perf_counter() - start
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit(
            f"{' '.join(command)} failed (exit {result.returncode}); its output is in "
            f"{log}:\n{(result.stdout + result.stderr)[-3000:]}"
        )
    return seconds, result.stdout


def study_command(space: Path, data: Path, data_root: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "study.run",
        "--space",
        str(space),
        "--data",
        f"folder:{data}",
        "--data-root",
        str(data_root),
        "--out",
        str(out),
        *extra,
    ]


def bare_command(data: Path, data_root: Path, out: Path, **settings) -> list[str]:
    command = [
        sys.executable,
        str(BENCHMARKS / "bare_loop.py"),
        "--data",
        f"folder:{data}",
        "--data-root",
        str(data_root),
        "--out",
        str(out),
    ]
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            command.append(flag)
        elif isinstance(value, (list, tuple)):
            command += [flag, *map(str, value)]
        elif value is not False and value is not None:
            command += [flag, str(value)]
    return command


def forget_features(data_root: Path) -> None:
    """An empty feature cache: every study starts cold (the decoded images stay: both sides load them the same way)."""
    from study.trial.feature_cache import CACHE_DIR

    shutil.rmtree(data_root / CACHE_DIR, ignore_errors=True)


def warm_images(data: Path, data_root: Path, img_size: int) -> None:
    """Decode the images into the node's cache before any timing, so that neither side pays for it."""
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from study.trial.data import load_data; load_data('folder:{data}', 0, {img_size}, '{data_root}')",
        ],
        check=True,
        cwd=REPO,
        env=environment(),
        capture_output=True,
    )


def machine() -> dict:
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def results_dir(args: argparse.Namespace) -> Path:
    """Where a run's tables go: benchmarks/results/ for a full run, WORK/quick-results for --quick."""
    return args.work / "quick-results" if args.quick else RESULTS


def save(name: str, table: pd.DataFrame, meta: dict, args: argparse.Namespace) -> Path:
    directory = results_dir(args)
    directory.mkdir(parents=True, exist_ok=True)
    table.to_csv(directory / f"{name}.csv", index=False)
    (directory / f"{name}.json").write_text(json.dumps({"machine": machine(), **meta}, indent=2, default=str) + "\n")
    return directory / f"{name}.csv"


COMPARISONS = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class Goal:
    """What a benchmark promises about one of its numbers: `measure` `op` `target` (op is >= or <=)."""

    measure: str
    op: str
    target: float
    what: str  # the promise in words
    required: bool = False  # missed: the benchmark exits non-zero

    def met(self, value: float) -> bool:
        return value == value and COMPARISONS[self.op](value, self.target)  # NaN never meets a goal


def verdicts(goals: list[Goal], measured: dict[str, float]) -> list[dict]:
    """Each goal with its measured value and `met`, as the JSON records them."""
    return [
        {
            "measure": goal.measure,
            "value": measured[goal.measure],
            "goal": f"{goal.op} {goal.target:g}",
            "what": goal.what,
            "met": bool(goal.met(measured[goal.measure])),  # numpy booleans are not JSON
            "required": goal.required,
        }
        for goal in goals
    ]


def headline(name: str, goals: list[Goal], measured: dict[str, float]) -> str:
    """`NAME: measure=value (goal OP target: met|missed), ...`: the goals' measures first, then the other numbers."""
    parts = [
        f"{v['measure']}={v['value']:.4g} (goal {v['goal']}: {'met' if v['met'] else 'missed'})"
        for v in verdicts(goals, measured)
    ]
    parts += [f"{key}={value:.4g}" for key, value in measured.items() if key not in {g.measure for g in goals}]
    return f"{name}: " + ", ".join(parts)


def finish(name: str, goals: list[Goal], measured: dict[str, float]) -> None:
    """Print the headline as the last line; exit 1 when a required goal is missed."""
    print(headline(name, goals, measured))
    missed = [goal for goal in goals if goal.required and not goal.met(measured[goal.measure])]
    if missed:
        sys.exit(f"{name}: required goal missed: " + "; ".join(g.what for g in missed))


def read_trials(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "trials.parquet")


def study_wall_time(out: Path) -> float:
    """The study's own wall time from study.json (Ray start to the end of its trials)."""
    return json.loads((out / "study.json").read_text())["wall_time_s"]
