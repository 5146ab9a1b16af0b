"""Every mistake of the issue's list, through the real CLI: exit code 2, one line on stderr naming the problem and
the fix, no traceback, and nothing written (no results directory, or an existing one unchanged).

Each case runs in-process (`run.main`, fast); a representative subset, and the cases that need their own
environment (offline weights and data), also run as `python -m study.run` in fresh processes, started together.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from study.cli import run
from tests.cli.test_run import STUDY_RECORD
from tests.helpers import REPO

# `python -m study.run` with no network: every URL goes through a proxy that refuses (torchvision's downloads use
# urllib, which honours these), and the Hugging Face hub is off.
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "no_proxy": "",
}


@dataclass
class Case:
    name: str
    args: Callable[[Path], list[str]]  # the command line, given a scratch directory to create inputs in
    expected: tuple[str, ...]  # parts of the message: the problem and the fix
    env: dict = field(default_factory=dict)  # a case with its own environment runs in a subprocess only
    subprocess: bool = False  # also through `python -m study.run`
    starts_ray: bool = (
        False  # a case found once Ray runs: only through `python -m study.run`, after Ray's own log lines
    )
    out: Callable[[Path], Path] | None = None  # a --out the case gives itself (default: SCRATCH/study)


def space_file(text: str) -> Callable[[Path], list[str]]:
    def args(scratch: Path) -> list[str]:
        path = scratch / "space.yaml"
        path.write_text(textwrap.dedent(text))
        return ["--space", str(path)]

    return args


def smoke(*extra: str) -> Callable[[Path], list[str]]:
    return lambda scratch: ["--space", "smoke", *(part.replace("SCRATCH", str(scratch)) for part in extra)]


def flat_folder(scratch: Path) -> list[str]:
    from PIL import Image

    (scratch / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(scratch / "flat" / "image.png")
    return ["--space", "smoke", "--data", f"folder:{scratch / 'flat'}"]


def other_architecture(scratch: Path) -> list[str]:
    import timm

    torch.save(timm.create_model("test_resnet").state_dict(), scratch / "resnet.pth")
    return ["--space", "smoke", "--set", f"weights={scratch / 'resnet.pth'}"]


def existing_study(scratch: Path) -> Path:
    out = scratch / "finished"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({**STUDY_RECORD, "finished": "yesterday"}))
    (out / "trials.csv").write_text("trial_id,status\na,completed\n")
    return out


def foreign_study_json(scratch: Path) -> Path:
    """Someone's own directory that happens to hold a study.json."""
    out = scratch / "thesis-dir"
    (out / "thesis").mkdir(parents=True)
    (out / "study.json").write_text(json.dumps({"name": "my other tool"}))
    (out / "thesis" / "chapter1.tex").write_text("\\chapter{One}")
    (out / "notes.txt").write_text("my notes")
    return out


def linked_study(scratch: Path) -> Path:
    (scratch / "link").symlink_to(existing_study(scratch), target_is_directory=True)
    return scratch / "link"


def study_with_a_link(scratch: Path) -> Path:
    out = existing_study(scratch)
    (scratch / "precious.csv").write_text("mine")
    (out / "trials.csv").unlink()
    (out / "trials.csv").symlink_to(scratch / "precious.csv")
    return out


HELD_LOCKS = []  # directory handles this test process keeps locked, as a running study would


def locked_study(scratch: Path) -> Path:
    import fcntl

    out = existing_study(scratch)
    handle = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    HELD_LOCKS.append(handle)
    return out


def not_a_study(scratch: Path) -> Path:
    (scratch / "mine").mkdir()
    (scratch / "mine" / "notes.txt").write_text("my own files")
    return scratch / "mine"


def study_with_its_data_root(scratch: Path) -> Path:
    out = existing_study(scratch)
    (out / "ray" / "data").mkdir(parents=True)
    return out


def binary_space(scratch: Path) -> list[str]:
    (scratch / "space.yaml").write_bytes(bytes(range(256)) * 4)
    return ["--space", str(scratch / "space.yaml")]


def under_a_file(scratch: Path) -> Path:
    (scratch / "a-file").write_text("not a directory")
    return scratch / "a-file" / "study"


CASES = [
    Case(
        "unknown space",
        lambda s: ["--space", "unfreeze"],
        ("unknown space 'unfreeze' (did you mean 'unfreeze_depth'?): use one of ", "smoke, unfreeze_depth"),
        subprocess=True,
    ),
    Case(
        "space file missing",
        lambda s: ["--space", str(s / "missing.yaml")],
        ("missing.yaml does not exist: give a path to a .yaml file",),
    ),
    Case("invalid YAML", space_file("fixed: {lr: [1\n"), ("not valid YAML at line 2",), subprocess=True),
    Case(
        "unknown key in a space",
        space_file("dimension: {lr: {grid: [0.1]}}\n"),
        ("unknown key 'dimension' (did you mean 'dimensions'?)",),
    ),
    Case(
        "unknown setting in a space",
        space_file("fixed: {batchsize: 32}\n"),
        ("unknown setting 'fixed.batchsize' (did you mean 'batch_size'?)",),
    ),
    Case("wrong type", space_file("fixed: {batch_size: many}\n"), ("setting 'batch_size' must be int, got 'many'",)),
    Case("wrong type of a study key", space_file("num_samples: three\n"), ("'num_samples' must be int, got 'three'",)),
    Case(
        "empty log range",
        space_file("dimensions: {lr: {loguniform: [0, 1]}}\n"),
        ("loguniform needs low > 0 (a log scale), got [0, 1]",),
    ),
    Case(
        "empty integer range",
        space_file("dimensions: {batch_size: {randint: [5, 2]}}\n"),
        ("empty range [5, 2]: low must be below high",),
    ),
    Case(
        "unknown backbone", smoke("--backbone", "resnet5"), ("unknown backbone 'resnet5': close timm names: resnet50",)
    ),
    Case(
        "unknown dataset", smoke("--data", "mnist"), ("unknown dataset 'mnist': use one of digits, ", "or folder:PATH")
    ),
    Case(
        "folder missing",
        smoke("--data", "folder:SCRATCH/nowhere"),
        ("nowhere does not exist: give folder:PATH with train/ and val/ class subfolders",),
    ),
    Case(
        "folder without class subfolders",
        flat_folder,
        ("flat has no class folders: put each class's images in a subfolder",),
    ),
    Case(
        "unfreeze_depth beyond the model",
        smoke("--set", "unfreeze_depth=60"),
        ("unfreeze_depth=60 exceeds the 49 layers of tf_efficientnet_lite0: use 0..49 or 'all'",),
    ),
    Case(
        "bn_insert on a ViT",
        smoke(
            "--backbone", "vit_tiny_patch16_224", "--set", "weights=random", "--set", "bn_insert=before_retrained_conv"
        ),
        ("vit_tiny_patch16_224 has no conv layer after its input layer", "use bn_insert=none"),
    ),
    Case(
        "GPUs on a machine without",
        smoke("--gpus-per-trial", "1"),
        ("--gpus-per-trial 1 but this machine has no GPU that PyTorch can use", "leave the option out"),
        subprocess=True,
    ),
    Case("more than one GPU per trial", smoke("--gpus-per-trial", "2"), ("--gpus-per-trial 2 is outside 0..1",)),
    Case(
        "more CPUs per trial than the machine has",
        smoke("--cpus-per-trial", "64", "--no-dashboard"),
        ("a trial asks for 64 CPU but the largest node has", "lower --cpus-per-trial/--gpus-per-trial"),
        starts_ray=True,
    ),
    Case(
        "unreachable --address",
        smoke("--address", "127.0.0.1:1"),
        ("cannot reach Ray at 127.0.0.1:1 (Connection refused): start the cluster there",),
        subprocess=True,
    ),
    Case(
        "malformed --address",
        smoke("--address", "headnode"),
        ("--address headnode is not auto, HOST:PORT or ray://HOST:PORT",),
    ),
    Case(
        "--out holds a study",
        smoke(),
        (
            "already holds files: choose a new directory, continue an interrupted study with --resume",
            "or replace it with --overwrite",
        ),
        subprocess=True,
        out=existing_study,
    ),
    Case(
        "--overwrite of a directory that is no study",
        smoke("--overwrite"),
        ("holds files but no study.json: --overwrite replaces only a study's results directory",),
        out=not_a_study,
    ),
    Case(
        "--overwrite with bad input deletes nothing",
        smoke("--overwrite", "--set", "lr=0"),
        ("lr=0.0 must be positive",),
        out=existing_study,
    ),
    Case(
        "--overwrite of the study's own inputs",
        lambda s: ["--space", "smoke", "--data-root", str(s / "finished" / "ray" / "data"), "--overwrite"],
        ("--overwrite would delete", "ray/data, which this study reads"),
        out=study_with_its_data_root,
    ),
    Case(
        "--overwrite of a directory with a foreign study.json",
        smoke("--overwrite"),
        ("holds a study.json that python -m study.run did not write", "choose another --out"),
        out=foreign_study_json,
    ),
    Case(
        "--overwrite through a symlinked --out",
        smoke("--overwrite"),
        ("is a symbolic link: --overwrite never deletes through a link",),
        out=linked_study,
    ),
    Case(
        "--overwrite of a study holding a symlink",
        smoke("--overwrite"),
        ("--overwrite would delete", "trials.csv, a symbolic link (to", "remove it yourself"),
        out=study_with_a_link,
    ),
    Case(
        "--overwrite of a study another process uses",
        smoke("--overwrite"),
        ("is in use by another python -m study.run", "wait until it ends"),
        subprocess=True,
        out=locked_study,
    ),
    Case(
        "--overwrite with a negative --seed deletes nothing",
        smoke("--overwrite", "--seed", "-1"),
        ("--seed -1 is outside 0..4294967295",),
        out=existing_study,
    ),
    Case(
        "--overwrite with --storage under a file deletes nothing",
        smoke("--overwrite", "--storage", "SCRATCH/finished/trials.csv/ray"),
        ("--storage", "trials.csv is a file, not a directory; choose a writable directory"),
        out=existing_study,
    ),
    Case("negative --seed with --dry-run", smoke("--seed", "-1", "--dry-run"), ("--seed -1 is outside 0..",)),
    Case(
        "--cpus-per-trial nan",
        smoke("--cpus-per-trial", "nan"),
        ("--cpus-per-trial nan is not a finite number",),
        subprocess=True,
    ),
    Case("--gpus-per-trial inf", smoke("--gpus-per-trial", "inf"), ("--gpus-per-trial inf is not a finite number",)),
    Case("--set lr=.nan", smoke("--set", "lr=.nan"), ("lr=nan is not a finite number",)),
    Case("--set momentum=-1", smoke("--set", "momentum=-1"), ("momentum=-1.0 is outside [0, 1)",)),
    Case("--set seed=-1", smoke("--set", "seed=-1"), ("seed=-1 is outside 0..4294967295",)),
    Case(
        "NaN bound of a uniform range",
        space_file("dimensions: {lr: {uniform: [.nan, 0.01]}}\n"),
        ("dimensions.lr: uniform needs [low, high] finite numbers, got [nan, 0.01]",),
    ),
    Case(
        "infinite bound of a log range",
        space_file("dimensions: {lr: {loguniform: [1.0e-4, .inf]}}\n"),
        ("dimensions.lr: loguniform needs [low, high] finite numbers",),
    ),
    Case(
        "unresolvable --dashboard-host",
        smoke("--dashboard-host", "no-such-host.invalid"),
        ("--dashboard-host no-such-host.invalid does not resolve", "give an address of this machine"),
    ),
    Case(
        "--dashboard-host of another machine",
        smoke("--dashboard-host", "192.0.2.1"),
        ("--dashboard-host 192.0.2.1 cannot be listened on", "127.0.0.1"),
    ),
    Case(
        "unreachable --storage URI",
        smoke("--storage", "nosuchscheme://bucket/dir"),
        ("--storage nosuchscheme://bucket/dir cannot be reached", "leave --storage out"),
    ),
    Case("binary space file", binary_space, ("not a text file", "a space is YAML text")),
    Case(
        "non-string key in a space",
        space_file("fixed: {1: 2}\n"),
        ("the key 1 in fixed is not a name (int)",),
    ),
    Case(
        "YAML aliases that expand",
        space_file(
            "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nfixed: {data: [*c, *c, *c, *c, *c, *c, *c, *c, *c]}\n"
        ),
        ("not valid YAML at line 2: aliases (*name) are not allowed: write the value out",),
    ),
    Case(
        "--out under a file",
        smoke(),
        ("a-file is a file, not a directory; choose a writable directory",),
        subprocess=True,
        out=under_a_file,
    ),
    Case(
        "--out in /proc",
        smoke(),
        ("--out /proc/study-bad-input cannot be created in /proc", "choose a writable directory"),
        out=lambda s: Path("/proc/study-bad-input"),
    ),
    Case(
        "weights file missing",
        smoke("--set", "weights=SCRATCH/nope.pth"),
        ("nope.pth does not exist: give the path of a .pth/.pt/.safetensors state dict of tf_efficientnet_lite0",),
    ),
    Case(
        "weights file of another architecture",
        other_architecture,
        ("resnet.pth does not fit timm's tf_efficientnet_lite0", "give a state dict of tf_efficientnet_lite0"),
    ),
    Case(
        "offline without cached ImageNet weights",
        smoke("--backbone", "resnet18"),
        ("no ImageNet weights for 'resnet18'", "timm.create_model('resnet18', pretrained=True)"),
        env={**OFFLINE, "HF_HOME": "SCRATCH/hf"},
    ),
    Case(
        "offline without the dataset",
        smoke("--data", "cifar10", "--data-root", "SCRATCH/data"),
        ("dataset 'cifar10' is not in", "could not be downloaded", "python -m study.data download cifar10 --data-root"),
        env=OFFLINE,
    ),
    Case("zero learning rate", smoke("--set", "lr=0"), ("lr=0.0 must be positive",)),
    Case(
        "negative learning rate", space_file("dimensions: {lr: {grid: [0.01, -0.1]}}\n"), ("lr=-0.1 must be positive",)
    ),
    Case("zero batch size", smoke("--set", "batch_size=0"), ("batch_size=0 must be positive",)),
    Case(
        "negative batch size in a dimension",
        space_file("dimensions: {batch_size: {grid: [32, -8]}}\n"),
        ("batch_size=-8 must be positive",),
    ),
    Case(
        "train_fraction 0",
        smoke("--set", "train_fraction=0"),
        ("train_fraction=0.0 is outside (0, 1]: use e.g. 0.1 for a 10% subset",),
    ),
    Case("train_fraction above 1", smoke("--set", "train_fraction=1.5"), ("train_fraction=1.5 is outside (0, 1]",)),
    Case("--num-samples 0", smoke("--num-samples", "0"), ("--num-samples 0 must be at least 1",)),
    Case(
        "--max-failures negative",
        smoke("--max-failures", "-1"),
        ("--max-failures -1 is negative: use 0 (no retry) or the number of retries",),
    ),
    Case(
        "data_root in a space file",
        space_file("fixed: {data_root: /etc}\n"),
        ("'data_root' cannot be set in a space file", "pass --data-root DIR"),
    ),
    Case(
        "img_size beyond any backbone's",
        smoke("--set", "img_size=100000"),
        ("img_size=100000 is outside 8..4096", "or null for the backbone's default"),
    ),
    Case(
        "a batch larger than the machine's memory",
        smoke("--set", "img_size=4096", "--set", "batch_size=100000"),
        (
            "img_size=4096 with batch_size=100000: one batch of input images takes 23,438 GiB (uint8 and float32), "
            "more than this machine's",
            "lower img_size or batch_size",
        ),
    ),
]


def prepare(case: Case, scratch: Path) -> tuple[list[str], Path, dict | None]:
    """The case's full command line, its --out, and a snapshot of that --out if it exists (to check it is unchanged)."""
    scratch.mkdir(parents=True, exist_ok=True)
    out = case.out(scratch) if case.out else scratch / "study"
    args = [*case.args(scratch), "--out", str(out)]
    return args, out, snapshot(out)


def snapshot(directory: Path) -> dict | None:
    if not directory.is_dir():
        return None
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(directory.rglob("*"))
    }


def check(case: Case, code: int, stderr: str, out: Path, before: dict | None) -> None:
    assert code == 2, stderr
    *before_error, error = stderr.splitlines()
    ray_log = [line for line in before_error if re.match(r"\d{4}-\d\d-\d\d [\d:,]+\s+(INFO|WARNING) ", line)]
    assert before_error == (ray_log if case.starts_ray else []) and stderr.endswith("\n"), stderr
    assert "Traceback" not in stderr and error.startswith("error: "), stderr
    for part in case.expected:
        assert part in stderr, stderr
    assert snapshot(out) == before  # nothing written: no directory where there was none, an existing one unchanged


def skip_unless_applicable(case: Case) -> None:
    if case.name == "GPUs on a machine without" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")


@pytest.mark.parametrize("case", [c for c in CASES if not c.starts_ray and not c.env], ids=lambda c: c.name)
def test_bad_input_in_process(case, tmp_path, capsys):
    skip_unless_applicable(case)
    args, out, before = prepare(case, tmp_path)
    code = run.main(args)
    check(case, code, capsys.readouterr().err, out, before)


SUBPROCESS_CASES = [c for c in CASES if c.env or c.subprocess or c.starts_ray]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> dict:
    """The subprocess cases, started together (each process spends seconds importing torch and timm)."""
    started = {}
    for case in SUBPROCESS_CASES:
        scratch = tmp_path_factory.mktemp("bad-input")
        args, out, before = prepare(case, scratch)
        env = {**os.environ, **{key: value.replace("SCRATCH", str(scratch)) for key, value in case.env.items()}}
        process = subprocess.Popen(
            [sys.executable, "-m", "study.run", *args],
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        started[case.name] = (process, out, before)
    results = {}
    for name, (process, out, before) in started.items():
        _, stderr = process.communicate(timeout=300)
        results[name] = (process.returncode, stderr, out, before)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=lambda c: c.name)
def test_bad_input_through_the_cli(case, cli_runs):
    skip_unless_applicable(case)
    check(case, *cli_runs[case.name])


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into read-only directories: the cases under a file and in /proc cover this"
)
def test_out_in_a_read_only_directory(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert run.main(["--space", "smoke", "--out", str(locked / "study")]) == 2
    finally:
        locked.chmod(0o755)
    error = capsys.readouterr().err
    assert (
        "cannot be created in" in error
        and "(Permission denied): choose a writable directory" in error
        and error.count("\n") == 1
    )
    assert list(locked.iterdir()) == []


def finished_study(scratch: Path) -> Path:
    """A finished study's tables, as study.run writes them, to write a report from."""
    from study.analysis.results import trials_table, write_tables
    from tests.helpers import history

    out = scratch / "finished"
    out.mkdir()
    records = [
        {"trial_id": f"t{n}", "config": {"epochs": 2}, "history": history([0.5, 0.6 + n / 10]), "error": None}
        for n in range(2)
    ]
    write_tables(out, *trials_table([{**record, "max_epochs": 2} for record in records]))
    (out / "study.json").write_text(json.dumps({**STUDY_RECORD, "finished": "yesterday"}))
    return out


@pytest.mark.parametrize(
    "page, expected",
    [
        ("SCRATCH/a-file/report.html", "--out SCRATCH/a-file/report.html cannot be written: SCRATCH/a-file is a file"),
        ("/proc/study-report.html", "--out /proc/study-report.html cannot be written in /proc (No such file or"),
    ],
    ids=["under a file", "in /proc"],
)
def test_a_report_that_cannot_be_written_is_one_line_exit_2(page, expected, tmp_path, capsys):
    from study.cli import report

    results = finished_study(tmp_path)
    (tmp_path / "a-file").write_text("not a directory")
    page, expected = (text.replace("SCRATCH", str(tmp_path)) for text in (page, expected))
    before = snapshot(tmp_path)
    assert report.main([str(results), "--out", page]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {expected}") and error.endswith("choose a writable directory\n"), error
    assert error.count("\n") == 1 and snapshot(tmp_path) == before
