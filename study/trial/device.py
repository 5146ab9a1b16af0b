"""Where a trial runs and how it is measured there: the device, its clock, peak memory, precision, memory format.

Training time counts only the optimisation passes; `clock` synchronises CUDA before each read, so a pass is timed
when its work is done, not when it was queued.

Peak memory is measured over the training passes, per trial: on CUDA the caching allocator's peak
(`torch.cuda.max_memory_allocated`), on CPU the process's peak resident set size (Linux `VmHWM`). Both counters are
reset before every training pass, so a process that ran an earlier trial (Ray reusing an actor, a notebook, a test
session) does not pass its peak on to the next one; where a counter cannot be reset the peak is NaN, not guessed.

On CUDA, forward passes run under autocast (`amp: true`, the default: bfloat16 where the GPU has it, else float16
with a gradient scaler); CPU trials run in float32. Convolutional models and their inputs are channels_last (faster
on CUDA and, with oneDNN, on CPU).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import nn

from study.core.config import StudyError

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise StudyError(
            "device='cuda' but no CUDA GPU is visible to this trial: use device=auto or give trials GPUs "
            "(--gpus-per-trial)"
        )
    return torch.device("cuda" if setting != "cpu" and torch.cuda.is_available() else "cpu")


def mixed_precision(enabled: bool, device: torch.device) -> torch.dtype | None:
    """Autocast's dtype on CUDA (bfloat16 where supported: no gradient scaling needed), None for float32."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def wants_channels_last(model: nn.Module) -> bool:
    """Whether the model runs channels_last: it has 2-D convolutions and no 5-D parameter (a 3-D convolution's,
    which channels_last cannot lay out)."""
    return all(p.dim() != 5 for p in model.parameters()) and any(isinstance(m, nn.Conv2d) for m in model.modules())


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def memory_measure(device: torch.device) -> str:
    """What `peak_memory_mib` measures on this device, named in the results so the two are never mixed up."""
    return "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss"


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak; False where the platform cannot (the peak is then reported as NaN, not guessed)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        # Linux: writing 5 resets the process's high-water mark (VmHWM) to its current RSS (see proc(5)).
        PROC_CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory since the last `reset_peak_memory`, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in PROC_STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return math.nan
