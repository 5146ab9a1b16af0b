"""The candidates of a ranking: each one's features, its scores, the ranked table, and the pre-screen of a space.

A candidate is a backbone with a weights source. Its pooled pre-logits features of the training and validation
splits come from the project's feature cache at the depth-0 cut (study/trial/feature_cache.py): the same files a
linear-probe trial of the same backbone, weights, data and input size reads, so scoring first makes such trials
cheaper, and a later ranking of the same data costs no forward pass. `rank_candidates` scores every candidate
(study/ranking/scores.py) into one table with its rank by each score (1 = best) and the seconds spent obtaining
the features (`feature_s`: building them, or reading them when the cache had them; `feature_cost_s`: what building
them took) and scoring them; `write_scores` writes it as scores.csv and scores.json. `prescreen` cuts a space's
backbone dimension to the top K before a study starts (`prescreen:` in a space, study/cli/run/orchestrate.py).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch

from study.core.config import TrialConfig
from study.core.environment import hardware, package_versions
from study.core.files import atomic_write, write_json
from study.core.space import Dimension, Space
from study.ranking.scores import KNN_K, PROBE_ALPHAS, SCORES, score_features
from study.trial.backbones import default_input_size
from study.trial.batching import batches
from study.trial.data import load_data
from study.trial.splits import Splits
from study.trial.train import build_trial

SCORES_FILE = "scores"  # .csv and .json
TABLE_COLUMNS = (
    "backbone",
    "weights",
    "weights_used",
    "feature_dim",
    "train_images",
    "val_images",
    *SCORES,
    *(f"rank_{score}" for score in SCORES),
    "feature_status",
    "feature_s",
    "feature_cost_s",
    "scoring_s",
    *(f"{score}_s" for score in SCORES),
)

Echo = Callable[[str], None]  # where progress lines go


def say(text: str) -> None:
    print(text, flush=True)


@dataclass(frozen=True, kw_only=True)
class Candidate:
    backbone: str
    weights: str  # imagenet, random, or a weights file

    @property
    def label(self) -> str:
        return f"{self.backbone} ({self.weights})"


# --- features through the feature cache ------------------------------------------------------------


@dataclass(kw_only=True)
class CandidateFeatures:
    """A candidate's pooled pre-logits features and labels of both splits, and how they were obtained."""

    train: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    weights_used: str
    img_size: int
    status: str  # built, reused, or "not cached (why)"
    seconds: float  # obtaining them: building them, or reading them when the cache had them
    cost_s: float  # what building them took


def probe_config(base: TrialConfig, backbone: str, weights: str) -> TrialConfig:
    """A linear-probe trial of this candidate: its features are what the depth-0 cut caches."""
    return base.replace(
        backbone=backbone,
        weights=weights,
        unfreeze_depth=0,
        unfreeze_unit="layer",
        bn_insert="none",
        train_bn_affine=False,
        frozen_bn="eval",
        augment="none",
        feature_cache=True,
    )


def candidate_features(config: TrialConfig, data: Splits) -> CandidateFeatures:
    """Pooled pre-logits features of the training and validation splits, and how they were obtained."""
    start = time.perf_counter()
    trial = build_trial(config, data)
    if trial.cache is None:  # e.g. over the cache's size bound: computed here, kept nowhere
        splits = {name: _uncached_features(trial, name) for name in ("train", "val")}
        status, cost = f"not cached ({trial.cache_off})", None
    else:
        cached = {name: trial.cache.split(name) for name in ("train", "val")}
        splits = {name: (part.features, part.labels) for name, part in cached.items()}
        status = "built" if any(part.status == "built" for part in cached.values()) else "reused"
        cost = sum(part.cost_s for part in cached.values())
    seconds = time.perf_counter() - start
    train, train_labels = splits["train"]
    val, val_labels = splits["val"]
    return CandidateFeatures(
        train=train,
        train_labels=train_labels,
        val=val,
        val_labels=val_labels,
        weights_used=trial.weights_used,
        img_size=trial.img_size,
        status=status,
        seconds=seconds,
        cost_s=seconds if cost is None else cost,
    )


@torch.inference_mode()
def _uncached_features(trial, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    backbone = trial.model.backbone.eval()
    outputs, labels = [], []
    for images, batch_labels in batches(getattr(trial.data, split), trial.eval_batch_size):
        with trial.autocast():
            outputs.append(backbone.forward_head(backbone.forward_features(trial.prepare(images)), pre_logits=True))
        labels.append(batch_labels)
    return torch.cat(outputs).float().cpu(), torch.cat(labels)


# --- ranking -------------------------------------------------------------------------------------


class Ranking(NamedTuple):
    table: pd.DataFrame  # one row per candidate: scores, ranks, feature and scoring seconds
    summary: dict  # the data, candidate count, total seconds per phase, and the scores' settings


def rank_candidates(candidates: list[Candidate], base: TrialConfig, echo: Echo = say) -> Ranking:
    """Score every candidate on `base`'s data; the table (one row each, ranks included) and a summary."""
    data_cache: dict[tuple, Splits] = {}  # candidates of one input size share the decoded data
    rows, data_s = [], 0.0
    started = time.perf_counter()
    for candidate in candidates:
        config = probe_config(base, candidate.backbone, candidate.weights)
        size = config.img_size or default_input_size(config.backbone)
        data_key = (config.data, config.split_seed, size, config.data_root, config.train_fraction)
        if data_key not in data_cache:
            loading = time.perf_counter()
            data_cache[data_key] = load_data(*data_key)
            data_s += time.perf_counter() - loading
        row = candidate_row(candidate, config, data_cache[data_key])
        rows.append(row)
        echo(
            f"  {candidate.label}: "
            + ", ".join(f"{name} {row[name]:.4f}" for name in SCORES)
            + f" (features {row['feature_status']} in {row['feature_s']:.1f} s, scored in {row['scoring_s']:.1f} s)"
        )
    table = with_ranks(pd.DataFrame(rows))
    summary = {
        "data": base.data,
        "candidates": len(candidates),
        "data_s": data_s,
        "feature_s": float(table["feature_s"].sum()),
        "scoring_s": float(table["scoring_s"].sum()),
        "total_s": time.perf_counter() - started,
        "knn_k": KNN_K,
        "probe_alphas": list(PROBE_ALPHAS),
    }
    return Ranking(table=table, summary=summary)


def candidate_row(candidate: Candidate, config: TrialConfig, data: Splits) -> dict:
    """One candidate's row of the table, before ranks: its features' shape and provenance, its scores, the seconds."""
    obtained = candidate_features(config, data)
    scored = score_features(obtained.train, obtained.train_labels, obtained.val, obtained.val_labels)
    return {
        "backbone": candidate.backbone,
        "weights": candidate.weights,
        "weights_used": obtained.weights_used,
        "img_size": obtained.img_size,
        "feature_dim": int(math.prod(obtained.train.shape[1:])),
        "train_images": len(obtained.train_labels),
        "val_images": len(obtained.val_labels),
        **scored.scores,
        "feature_status": obtained.status,
        "feature_s": obtained.seconds,
        "feature_cost_s": obtained.cost_s,
        "scoring_s": sum(scored.seconds.values()),
        **scored.seconds,
    }


def with_ranks(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    for score in SCORES:
        table[f"rank_{score}"] = table[score].rank(ascending=False, method="min").astype(int)
    return table[[c for c in (*TABLE_COLUMNS[:3], "img_size", *TABLE_COLUMNS[3:]) if c in table]]


def format_table(table: pd.DataFrame) -> str:
    shown = table.drop(columns=["weights_used", *(f"{s}_s" for s in SCORES)], errors="ignore")
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def write_scores(out: Path, table: pd.DataFrame, summary: dict, settings: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"{SCORES_FILE}.csv", lambda p: table.to_csv(p, index=False))
    record = {
        "settings": settings,
        "summary": summary,
        "scores": table.to_dict(orient="records"),
        "versions": package_versions(),
        "hardware": hardware(),
        "written": datetime.now().isoformat(timespec="seconds"),
    }
    write_json(out / f"{SCORES_FILE}.json", record)


def scores_record(table: pd.DataFrame, summary: dict) -> dict:
    """What study.json keeps of a ranking."""
    return {"summary": summary, "table": table.to_dict(orient="records")}


# --- prescreen: ranking the backbone dimension of a space ------------------------------------------


class Prescreened(NamedTuple):
    space: Space  # the backbone dimension cut to the kept backbones, no prescreen left to apply
    record: dict  # what study.json keeps under `prescreen`: the rule, the backbones, the kept ones, the ranking


def prescreen(space: Space, echo: Echo = say) -> Prescreened:
    """The space with its backbone dimension cut to the top `keep` by the prescreen's score, and the record."""
    rule = space.prescreen
    dimension = space.dimensions["backbone"]
    base = space.example_configs()[0]
    candidates = [Candidate(backbone=backbone, weights=base.weights) for backbone in dimension.values]
    echo(
        f"Pre-screen: scoring {len(candidates)} backbones on {base.data} ({base.weights} weights) to keep the top "
        f"{rule['keep']} by {rule['score']}"
    )
    table, summary = rank_candidates(candidates, base, echo)
    kept_set = set(table.nsmallest(rule["keep"], f"rank_{rule['score']}", keep="first")["backbone"])
    kept = [backbone for backbone in dimension.values if backbone in kept_set]
    table["kept"] = table["backbone"].isin(kept_set)
    echo(format_table(table))
    echo(
        f"Pre-screen kept {', '.join(kept)} ({rule['score']}); features {summary['feature_s']:.1f} s, scoring "
        f"{summary['scoring_s']:.1f} s, {summary['total_s']:.1f} s in all"
    )
    narrowed = dataclasses.replace(
        space,
        dimensions={**space.dimensions, "backbone": Dimension(kind=dimension.kind, values=kept)},
        prescreen=None,
    )
    record = {**rule, "backbones": list(dimension.values), "kept": kept, **scores_record(table, summary)}
    return Prescreened(space=narrowed, record=record)
