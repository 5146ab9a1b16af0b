"""The merged models of the sweep: (1 - alpha) * A + alpha * B, with BatchNorm statistics of their own.

For every alpha of the sweep the merged model is (1 - alpha) * A + alpha * B, tensor by tensor (the backbone; the
heads too when A and B were trained on the same classes). Before evaluation its BatchNorm statistics are recomputed
on the target's training images: interpolated running means and variances are not the statistics of the
interpolated network (averaging weights shrinks activation variance, Jordan et al. 2022, "REPAIR"), and evaluating
with them can turn a sound merge into chance accuracy. `--bn-stats interpolate` skips this to show the effect.
`--align weights` also sweeps B with its channels permuted to match A's (`match_b_to_a`: Git Re-Basin weight
matching, study/merging/align.py).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import pandas as pd
import torch
from torch import nn

from study.core.config import StudyError
from study.merging.align import permutation_spec, permute, weight_matching
from study.merging.checkpoints import Checkpoint, head_keys
from study.merging.evaluation import ProbeSettings, Target
from study.trial.batching import batches
from study.trial.splits import ImageSet


def interpolate(state_a: dict, state_b: dict, alpha: float, keys) -> dict:
    """(1 - alpha) * A + alpha * B for the floating tensors in `keys`; every other tensor is A's."""
    merged = dict(state_a)
    for key in keys:
        if state_a[key].is_floating_point():
            merged[key] = torch.lerp(state_a[key], state_b[key], alpha)  # exact at alpha 0 and 1
    return merged


def recompute_bn_stats(model: nn.Module, data: ImageSet, preprocess, device: torch.device, batch_size: int) -> int:
    """Replace every BatchNorm's running statistics by those of `model` itself on `data`; returns images used.

    Running statistics are reset and averaged cumulatively (momentum None) over
    forward passes in which only the BatchNorm layers are in train mode (dropout
    and drop-path stay off). Only full batches are used: PyTorch's cumulative
    average weighs every batch alike, so a small last batch would count too much.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    used = len(data) if len(data) <= batch_size else len(data) // batch_size * batch_size
    if used < 2:
        raise StudyError(
            f"BatchNorm statistics need at least 2 training images, the target has {len(data)}: use more data or "
            "--bn-stats interpolate"
        )
    momenta = [norm.momentum for norm in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        with torch.no_grad():
            for images, _ in batches(data.subset(range(used)), batch_size):
                model(preprocess(images.to(device)))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()
    return used


class Alignment(NamedTuple):
    state: dict  # B's state dict, permuted to match A; B's own object when nothing moved
    record: dict  # what merge.json keeps under `alignment`: groups, channels moved, coverage, seconds


def match_b_to_a(
    a: Checkpoint, b: Checkpoint, model_a: nn.Module, merged_keys: list[str], img_size: int, seed: int
) -> Alignment:
    """B's state permuted to match A (weight matching on the merged parameters), and what the alignment did."""
    started = time.perf_counter()
    spec = permutation_spec(model_a, torch.zeros(2, 3, img_size, img_size))
    parameters = {name for name, _ in model_a.named_parameters()} & set(merged_keys)
    perms = weight_matching(a.state, b.state, spec, parameters, seed=seed)
    moved = sum(int((perm != torch.arange(len(perm))).sum()) for perm in perms)
    channels = sum(group.size for group in spec.groups)
    share = spec.permuted_share(a.state, parameters)
    print(
        f"alignment: {spec.describe()}; {share:.1%} of the merged parameters in permutable tensors, {moved} of "
        f"{channels} channels moved",
        flush=True,
    )
    record = {
        "groups": len(spec.groups),
        "channels": channels,
        "channels_moved": moved,
        "permuted_parameter_share": share,
        "kept_in_place_by": dict(spec.fixed),
        "seconds": round(time.perf_counter() - started, 2),
    }
    # B's own object when nothing moved: sweep then reuses the numbers of the unaligned merges
    return Alignment(state=b.state if moved == 0 else permute(b.state, spec, perms), record=record)


def sweep(
    a: Checkpoint,
    states: dict[str, dict],
    *,
    alphas: list[float],
    merged_keys: list[str],
    head_owner: Checkpoint,
    heads: list[str],
    target: Target,
    bn_stats: str,
    probe: ProbeSettings,
) -> pd.DataFrame:
    """Evaluate (1 - alpha) * A + alpha * B for every B state (unaligned, aligned) and alpha: one row per head.

    A merge identical to one already evaluated (alpha 0 with A's head, or an alignment that moved nothing) is
    not evaluated again: every step is deterministic, so its numbers are the same.
    """
    rows, done = [], {}
    model = head_owner.build().to(target.device)
    head_keys_b = head_keys(model) if head_owner is not a else set()
    for align_mode, state_b in states.items():
        for alpha in alphas:
            key = (
                "A" if alpha == 0 and not head_keys_b else (id(state_b), alpha)
            )  # alpha 0 with A's head is A, whatever B
            note = " (the same model as above: not evaluated again)" if key in done else ""
            if key not in done:
                merged = interpolate(a.state, state_b, alpha, merged_keys)
                merged.update({k: state_b[k] for k in head_keys_b if k not in merged_keys})  # B's head, kept whole
                model.load_state_dict(merged)
                if bn_stats == "recompute":
                    recompute_bn_stats(model, target.data.train, target.preprocess, target.device, target.batch_size)
                heads_now = {head: model.get_classifier() if head == "keep" else None for head in heads}
                done[key] = target.evaluate(model, heads_now, probe)
            evaluated = done[key]
            for head, result in evaluated.items():
                rows.append({"align": align_mode, "alpha": alpha, "head": head, "bn_stats": bn_stats, **result})
            scores_now = "  ".join(
                f"{h}: val {r['val_acc']:.4f} test {r['test_acc']:.4f}" for h, r in evaluated.items()
            )
            print(f"  align={align_mode:<7} alpha={alpha:<4} {scores_now}{note}", flush=True)
    return pd.DataFrame(rows)
