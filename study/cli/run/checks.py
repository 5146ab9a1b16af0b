"""The options checked before Ray starts: numbers, resources, the network and the stores a study writes to.

Each check answers in one line (a StudyError) what Ray would otherwise report late, at length or never: a GPU
asked of a machine without one, a dashboard host that is not this machine's (Ray retries for over a minute), an
--address nothing answers (Ray retries for a long time), a --storage URI without network (minutes), an MLflow
store that cannot be reached. Network checks give up after ADDRESS_TIMEOUT_S and STORAGE_TIMEOUT_S.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from study.cli.run.results_dir import check_writable
from study.core.config import StudyError, check_number

if TYPE_CHECKING:
    from study.watch.tracking import MlflowTracker

# The CLI's numbers: checked first (study/core/config.py check_number), before a dry run or anything else.
NUMBER_OPTIONS = (
    "seed",
    "num_samples",
    "max_epochs",
    "cpus_per_trial",
    "gpus_per_trial",
    "max_concurrent",
    "max_failures",
)
# An --address of HOST:PORT that nothing answers fails within this time, not after Ray's own connection retries.
ADDRESS_TIMEOUT_S = 5
# A --storage URI must answer within this time (a cloud store without network would stall Ray for minutes).
STORAGE_TIMEOUT_S = 20


def check_numbers(args: argparse.Namespace) -> None:
    for name in NUMBER_OPTIONS:
        if getattr(args, name) is not None:
            check_number(name, getattr(args, name), f"--{name.replace('_', '-')}")


def check_resource_options(args: argparse.Namespace) -> None:
    gpus = args.gpus_per_trial
    if args.address is None and gpus and not torch.cuda.is_available():
        raise StudyError(
            f"--gpus-per-trial {gpus:g} but this machine has no GPU that PyTorch can use (torch {torch.__version__}, "
            f"CUDA {torch.version.cuda or 'not built in'}): leave the option out to train on the CPU, or join a "
            "cluster with GPUs (--address)"
        )
    if args.address and (args.no_dashboard or args.dashboard_host not in ("127.0.0.1",)):
        raise StudyError(
            "--dashboard-host and --no-dashboard set up the local Ray that study starts; a cluster's dashboard is "
            "set by `ray start --head --dashboard-host`: leave them out with --address"
        )
    check_reachable(args.address)
    if args.address is None and not args.no_dashboard:
        check_dashboard_host(args.dashboard_host)


def check_dashboard_host(host: str) -> None:
    """The dashboard's host must resolve to an address of this machine (Ray would retry for over a minute)."""
    fix = "give an address of this machine: 127.0.0.1 (this machine only, the default) or 0.0.0.0 (every interface)"
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise StudyError(f"--dashboard-host {host} does not resolve ({error}): {fix}") from None
    try:
        with socket.socket(family, kind) as probe:
            probe.bind(address)
    except OSError as error:
        raise StudyError(f"--dashboard-host {host} cannot be listened on ({error.strerror}): {fix}") from None


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: other machines may reach it
        return False


def check_reachable(address: str | None) -> None:
    """An --address of HOST:PORT (or ray://HOST:PORT) must answer now: Ray itself retries for a long time."""
    if not address or address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise StudyError(
            f"--address {address} is not auto, HOST:PORT or ray://HOST:PORT: write e.g. --address 10.0.0.5:6379"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_TIMEOUT_S).close()
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise StudyError(
            f"cannot reach Ray at {address} ({reason}): start the cluster there (`ray start --head`) or fix "
            "--address (auto, HOST:6379 or ray://HOST:10001)"
        ) from None


def check_storage(storage: str | None) -> None:
    """--storage can be written (a path) or reached (a URI, through pyarrow's filesystems, as Ray Tune reaches it)."""
    if storage is None:
        return
    if "://" not in storage:
        path = Path(storage).expanduser().absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise StudyError(f"--storage {storage}: {existing} is a file, not a directory; choose a writable directory")
        check_writable(existing, f"--storage {storage}")
        return
    import pyarrow.fs

    outcome: list = []

    def probe():
        try:
            filesystem, path = pyarrow.fs.FileSystem.from_uri(storage)
            filesystem.get_file_info(path)
            outcome.append(None)
        except Exception as error:  # pyarrow raises its own kinds (ArrowInvalid, OSError) for each filesystem
            outcome.append(error)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(STORAGE_TIMEOUT_S)
    fix = "check the URI, the network and the credentials, or leave --storage out (DIR/ray on this machine)"
    if not outcome:
        raise StudyError(f"--storage {storage} did not answer within {STORAGE_TIMEOUT_S} s: {fix}")
    if outcome[0] is not None:
        reason = (str(outcome[0]).strip().splitlines() or [type(outcome[0]).__name__])[0][:160]
        raise StudyError(f"--storage {storage} cannot be reached ({reason}): {fix}")


def check_mlflow(args: argparse.Namespace, out: Path) -> MlflowTracker | None:
    """--mlflow: MLflow installed and its store reachable, before Ray starts (None without --mlflow)."""
    if args.mlflow is None:
        return None
    if args.address and args.address.startswith("ray://"):
        raise StudyError(
            "--mlflow logs from Tune's driver loop, which Ray Client (ray://) runs on the head node: join the cluster "
            "with --address HOST:6379 from a node, or leave out --mlflow"
        )
    from study.watch.tracking import MlflowTracker

    tracker = MlflowTracker(args.mlflow, out.resolve().name)
    tracker.check()
    return tracker
