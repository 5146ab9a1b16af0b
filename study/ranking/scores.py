"""Rank backbones before training: `python -m study.rank --data DATA --backbones A,B,...`.

For each candidate (a backbone with a weights source) the pooled pre-logits features of the training and
validation splits are taken from the project's feature cache at the depth-0 cut (study/trial/features.py): the
same files a linear-probe trial of the same backbone, weights, data and input size reads, so scoring first
makes such trials cheaper, and a later ranking of the same data costs no forward pass. Three scores, each
higher-is-better:

- `logme`: LogME (You, Liu, Wang, Long, ICML 2021, "LogME: Practical Assessment of Pre-trained Models for
  Transfer Learning"). For each class c, the one-hot target y_c is modelled as y = F w + noise, w ~ N(0, 1/alpha I),
  noise ~ N(0, 1/beta I), F the n x D training features. The log marginal evidence log p(y | F, alpha, beta) is
  maximised over alpha and beta by the paper's fixed-point iteration (Algorithm 1: gamma = sum beta s^2 /
  (alpha + beta s^2), alpha = gamma / m'm, beta = (n - gamma) / |F m - y|^2), divided by n and averaged over
  the classes. One SVD of F per candidate (through the eigendecomposition of the smaller Gram matrix) serves every class
  and every iteration. The evidence depends on the
  features through F F' only up to the prior's scale, so its maximum is unchanged by permuting samples, by
  scaling the features, and by duplicating the whole feature vector ([F, F] F' = 2 F F'), but not by
  duplicating some columns (that re-weights them). Training split only; it sees no validation label.
- `knn`: validation accuracy of a k-nearest-neighbour classifier on the training features, cosine similarity,
  k = KNN_K; each query takes the class most frequent among its k neighbours, ties going to the class with the
  larger summed similarity.
- `probe`: validation accuracy of a linear probe fitted in closed form: ridge regression on one-hot targets
  (scikit-learn's RidgeClassifierCV) of standardised features, its penalty chosen among PROBE_ALPHAS by
  leave-one-out on the training split (computed exactly from one decomposition).

Prints and writes DIR/scores.csv and DIR/scores.json: per candidate the three scores and its rank by each
(1 = best), feature dimension, image counts, the seconds spent obtaining the features (`feature_s`: building
them, or reading them when the cache had them; `feature_cost_s`: what building them took) and the seconds
spent scoring, per score. `--compare RESULTS_DIR` scores the backbones a finished study searched, on that
study's data and settings, writes the scores into RESULTS_DIR (scores.csv/json, study.json's `scores`),
prints each score against the best validation accuracy the study reached (Kendall tau per score) and
rewrites the report. Plain PyTorch, NumPy and scikit-learn: no Ray.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from study.core.config import FIELD_TYPES, WEIGHT_SOURCES, StudyError, TrialConfig, parse_assignment, weights_source
from study.core.environment import hardware, package_versions
from study.core.registry import TRANSFER_SCORES
from study.trial.data import Splits, load_data
from study.trial.models import default_input_size

SCORES = {option.name: option.description for option in TRANSFER_SCORES}  # study/core/registry.py
KNN_K = 10
PROBE_ALPHAS = tuple(10.0**e for e in range(-2, 5))
LOGME_MAX_ITERATIONS = 1000
RANK_TOLERANCE = 1e-10  # relative: smaller singular values are rounding errors of zero
LOGME_TOLERANCE = 1e-7  # relative change of alpha and beta between iterations at convergence
SCORES_FILE = "scores"  # .csv and .json
# What a candidate's features depend on besides backbone and weights: the base config's values are used.
FEATURE_SETTINGS = ("data", "data_root", "img_size", "split_seed", "train_fraction", "head", "device", "amp")
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


def say(text: str) -> None:
    print(text, flush=True)


# --- the scores ---------------------------------------------------------------------------------


@dataclass
class Spectrum:
    """What LogME needs of the features, from one SVD: singular values and the targets in the left basis."""

    singular: np.ndarray  # F's r <= min(n, D) non-zero singular values
    projected: np.ndarray  # U' Y: r x classes
    target_norms: np.ndarray  # |y_c|^2 per class
    samples: int
    dim: int

    @classmethod
    def of(cls, features: np.ndarray, labels: np.ndarray) -> Spectrum:
        """F's singular values and U'Y from the eigendecomposition of the smaller Gram matrix (F F' or F'F): the
        SVD at a fraction of its cost. Singular values below RANK_TOLERANCE of the largest count as zero."""
        features = np.asarray(features, dtype=np.float64)
        targets = one_hot(labels)
        samples, dim = features.shape
        if samples <= dim:
            eigenvalues, left = np.linalg.eigh(features @ features.T)
        else:
            eigenvalues, right = np.linalg.eigh(features.T @ features)
        kept = eigenvalues > RANK_TOLERANCE**2 * max(eigenvalues.max(), 0.0)
        singular = np.sqrt(eigenvalues[kept])
        if samples <= dim:
            projected = left[:, kept].T @ targets
        else:  # U = F V / s
            projected = (right[:, kept].T @ (features.T @ targets)) / singular[:, None]
        return cls(singular, projected, (targets**2).sum(0), samples, dim)


def one_hot(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    return (labels[:, None] == np.unique(labels)[None, :]).astype(np.float64)


def _fit_terms(spectrum: Spectrum, alpha: np.ndarray, beta: np.ndarray):
    """gamma, m'm and |F m - y|^2 per class at the posterior mean m = beta (alpha I + beta F'F)^-1 F' y."""
    s2 = spectrum.singular[:, None] ** 2
    shrink = alpha + beta * s2  # eigenvalues of alpha I + beta F'F along F's right singular vectors
    z = spectrum.projected
    gamma = (beta * s2 / shrink).sum(0)
    mean_norm = ((beta * spectrum.singular[:, None] * z / shrink) ** 2).sum(0)
    residual = ((alpha * z / shrink) ** 2).sum(0) + spectrum.target_norms - (z**2).sum(0)
    return gamma, mean_norm, np.maximum(residual, 0.0), shrink


def evidence(spectrum: Spectrum, alpha, beta) -> np.ndarray:
    """log p(y_c | F, alpha, beta) per class (the paper's equation for the evidence, in the SVD basis)."""
    alpha = np.broadcast_to(np.asarray(alpha, dtype=np.float64), spectrum.target_norms.shape)
    beta = np.broadcast_to(np.asarray(beta, dtype=np.float64), spectrum.target_norms.shape)
    n, d = spectrum.samples, spectrum.dim
    _, mean_norm, residual, shrink = _fit_terms(spectrum, alpha, beta)
    log_det = np.log(shrink).sum(0) + (d - len(spectrum.singular)) * np.log(alpha)  # log |alpha I + beta F'F|
    return (
        n / 2 * np.log(beta)
        + d / 2 * np.log(alpha)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * residual
        - alpha / 2 * mean_norm
        - log_det / 2
    )


def maximise_evidence(spectrum: Spectrum) -> tuple[np.ndarray, np.ndarray]:
    """The paper's fixed-point iteration for alpha and beta, every class at once, from alpha = beta = 1."""
    classes = spectrum.target_norms.shape
    alpha, beta = np.ones(classes), np.ones(classes)
    tiny = np.finfo(np.float64).tiny
    for _ in range(LOGME_MAX_ITERATIONS):
        gamma, mean_norm, residual, _ = _fit_terms(spectrum, alpha, beta)
        new_alpha = gamma / np.maximum(mean_norm, tiny)
        new_beta = (spectrum.samples - gamma) / np.maximum(residual, tiny)
        converged = np.all(np.abs(new_alpha - alpha) <= LOGME_TOLERANCE * alpha) and np.all(
            np.abs(new_beta - beta) <= LOGME_TOLERANCE * beta
        )
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    return alpha, beta


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of features (n x D) for labels (n): the maximised evidence per image, averaged over classes."""
    spectrum = Spectrum.of(features, labels)
    alpha, beta = maximise_evidence(spectrum)
    return float(np.mean(evidence(spectrum, alpha, beta)) / spectrum.samples)


def knn_accuracy(
    train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor, k: int = KNN_K
) -> float:
    """Validation accuracy of the cosine k-NN classifier (module docstring)."""
    train = torch.nn.functional.normalize(train.double(), dim=1)
    val = torch.nn.functional.normalize(val.double(), dim=1)
    k = min(k, len(train))
    classes = int(max(train_labels.max(), val_labels.max())) + 1
    correct = 0
    for start in range(0, len(val), 1024):
        similarity, neighbours = (val[start : start + 1024] @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(similarity), classes, dtype=torch.float64)
        votes.scatter_add_(1, train_labels[neighbours], torch.ones_like(similarity))
        summed = torch.zeros_like(votes).scatter_add_(1, train_labels[neighbours], similarity)
        # a summed similarity is at most k: scaled below one vote it decides ties only
        predicted = (votes + summed / (2 * k + 1)).argmax(1)
        correct += (predicted == val_labels[start : start + 1024]).sum().item()
    return correct / len(val)


def probe_accuracy(train: np.ndarray, train_labels: np.ndarray, val: np.ndarray, val_labels: np.ndarray) -> float:
    """Validation accuracy of the closed-form ridge probe (module docstring)."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=PROBE_ALPHAS))
    probe.fit(np.asarray(train, dtype=np.float64), np.asarray(train_labels))
    return float(probe.score(np.asarray(val, dtype=np.float64), np.asarray(val_labels)))


def score_features(train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor):
    """The three scores and the seconds each took."""
    train, val = train.float().flatten(1).cpu(), val.float().flatten(1).cpu()
    train_labels, val_labels = train_labels.cpu(), val_labels.cpu()
    scores, seconds = {}, {}
    for name in SCORES:
        start = time.perf_counter()
        scores[name] = TRANSFER_SCORES.get(name)(train, train_labels, val, val_labels)
        seconds[f"{name}_s"] = time.perf_counter() - start
    return scores, seconds


# The scores of study/core/registry.py TRANSFER_SCORES: (train, train_labels, val, val_labels) -> float.
def logme_score(train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor) -> float:
    return logme(train.numpy(), train_labels.numpy())


def knn_score(train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor) -> float:
    return knn_accuracy(train, train_labels, val, val_labels)


def probe_score(train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor) -> float:
    return probe_accuracy(train.numpy(), train_labels.numpy(), val.numpy(), val_labels.numpy())


# --- features through the feature cache ------------------------------------------------------------


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


def candidate_features(config: TrialConfig, data: Splits) -> dict:
    """Pooled pre-logits features of the training and validation splits, and how they were obtained."""
    from study.trial.train import build_trial

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
    return {
        "train": train,
        "train_labels": train_labels,
        "val": val,
        "val_labels": val_labels,
        "weights_used": trial.weights_used,
        "feature_status": status,
        "feature_s": seconds,
        "feature_cost_s": seconds if cost is None else cost,
        "img_size": trial.img_size,
    }


@torch.inference_mode()
def _uncached_features(trial, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from study.trial.data import batches

    backbone = trial.model.backbone.eval()
    outputs, labels = [], []
    for images, batch_labels in batches(getattr(trial.data, split), trial.eval_batch_size):
        with trial.autocast():
            outputs.append(backbone.forward_head(backbone.forward_features(trial.prepare(images)), pre_logits=True))
        labels.append(batch_labels)
    return torch.cat(outputs).float().cpu(), torch.cat(labels)


# --- ranking -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    backbone: str
    weights: str

    @property
    def label(self) -> str:
        return f"{self.backbone} ({self.weights})"


def rank(candidates: list[Candidate], base: TrialConfig, echo=None) -> tuple[pd.DataFrame, dict]:
    """Score every candidate on `base`'s data; the table (one row each, ranks included) and a summary."""
    echo = echo or say
    data_cache: dict[tuple, Splits] = {}
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
        data = data_cache[data_key]
        obtained = candidate_features(config, data)
        scores, seconds = score_features(
            obtained["train"], obtained["train_labels"], obtained["val"], obtained["val_labels"]
        )
        row = {
            "backbone": candidate.backbone,
            "weights": candidate.weights,
            "weights_used": obtained["weights_used"],
            "img_size": obtained["img_size"],
            "feature_dim": int(math.prod(obtained["train"].shape[1:])),
            "train_images": len(obtained["train_labels"]),
            "val_images": len(obtained["val_labels"]),
            **scores,
            "feature_status": obtained["feature_status"],
            "feature_s": obtained["feature_s"],
            "feature_cost_s": obtained["feature_cost_s"],
            "scoring_s": sum(seconds.values()),
            **seconds,
        }
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
    return table, summary


def with_ranks(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    for score in SCORES:
        table[f"rank_{score}"] = table[score].rank(ascending=False, method="min").astype(int)
    return table[[c for c in (*TABLE_COLUMNS[:3], "img_size", *TABLE_COLUMNS[3:]) if c in table]]


def format_table(table: pd.DataFrame) -> str:
    shown = table.drop(columns=["weights_used", *(f"{s}_s" for s in SCORES)], errors="ignore")
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def write_scores(out: Path, table: pd.DataFrame, summary: dict, settings: dict) -> None:
    from study.core.files import atomic_write, write_json

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


def prescreen(space, echo=None):
    """The space with its backbone dimension cut to the top `keep` by the prescreen's score, and the record."""
    from study.core.space import Dimension

    echo = echo or say
    rule = space.prescreen
    dimension = space.dimensions["backbone"]
    base = space.example_configs()[0]
    candidates = [Candidate(backbone, base.weights) for backbone in dimension.values]
    echo(
        f"Pre-screen: scoring {len(candidates)} backbones on {base.data} ({base.weights} weights) to keep the top "
        f"{rule['keep']} by {rule['score']}"
    )
    table, summary = rank(candidates, base, echo)
    kept_set = set(table.nsmallest(rule["keep"], f"rank_{rule['score']}", keep="first")["backbone"])
    kept = [backbone for backbone in dimension.values if backbone in kept_set]
    table["kept"] = table["backbone"].isin(kept_set)
    echo(format_table(table))
    echo(
        f"Pre-screen kept {', '.join(kept)} ({rule['score']}); features {summary['feature_s']:.1f} s, scoring "
        f"{summary['scoring_s']:.1f} s, {summary['total_s']:.1f} s in all"
    )
    import dataclasses

    narrowed = dataclasses.replace(
        space,
        dimensions={**space.dimensions, "backbone": Dimension(dimension.kind, kept)},
        prescreen=None,
    )
    record = {**rule, "backbones": list(dimension.values), "kept": kept, **scores_record(table, summary)}
    return narrowed, record


# --- after the fact: a finished study --------------------------------------------------------------


def compare(results_dir: Path, echo=None) -> pd.DataFrame:
    """Score the candidates a study searched, with its settings; record and print the comparison."""
    from study.analysis.report import score_agreement, write_report
    from study.analysis.results import load_results
    from study.core.files import write_json

    echo = echo or say
    results = load_results(results_dir)
    trials = results.trials[results.trials["status"] != "error"]
    if "backbone" not in trials or trials.empty:
        raise StudyError(f"{results_dir}: no finished trial with a backbone: nothing to compare")
    pairs = trials[["backbone", "weights"]].drop_duplicates()
    if len(pairs) < 2:
        raise StudyError(
            f"{results_dir}: the study trained one backbone ({pairs.iloc[0]['backbone']}): scores rank two or more"
        )
    candidates, table, summaries = [], [], {}
    for (backbone, weights), group in trials.groupby(["backbone", "weights"], sort=False):
        first = group.iloc[0]
        settings = {key: _plain(first[key]) for key in FEATURE_SETTINGS if key in group}
        key = json.dumps(settings, sort_keys=True, default=str)
        summaries.setdefault(key, (settings, []))[1].append(Candidate(backbone, weights))
    echo(f"Scoring the {len(pairs)} backbones of {results_dir} on the study's data and settings:")
    totals = {"data_s": 0.0, "feature_s": 0.0, "scoring_s": 0.0, "total_s": 0.0}
    for settings, group_candidates in summaries.values():
        part, summary = rank(group_candidates, TrialConfig.from_dict(settings), echo)
        candidates += group_candidates
        table.append(part)
        for name in totals:
            totals[name] += summary[name]
    table = with_ranks(pd.concat(table, ignore_index=True))
    summary = {**summary, **totals, "candidates": len(candidates)}
    study = dict(results.study)
    study["scores"] = scores_record(table, summary)
    agreement_table, agreement = score_agreement(results.trials, study)
    study["scores"]["kendall_tau"] = agreement
    write_scores(results_dir, table, {**summary, "kendall_tau": agreement}, {"results": str(results_dir)})
    if results.study:
        write_json(results_dir / "study.json", study)
    echo(format_table(table))
    echo("Each score against the best validation accuracy the study reached:")
    echo(agreement_table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for name, result in agreement.items():
        echo(
            f"  {name}: Kendall tau {result['tau']:.3f} (p={result['p_value']:.3g}) over {result['backbones']} "
            f"backbones; its top backbone is {'' if result['top_is_best'] else 'not '}the study's best"
        )
    echo(f"Report: {write_report(results_dir).resolve()}")
    return table


def _plain(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


# --- command line ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.rank", description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset: digits, a torchvision dataset name, or folder:PATH")
    parser.add_argument("--backbones", help="comma-separated timm model names")
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="comma-separated weights sources (imagenet, random, or .pth/.pt/.safetensors files); every backbone "
        "is scored with each (default imagenet)",
    )
    parser.add_argument("--img-size", type=int, help="input size (default: each backbone's pretrained size)")
    parser.add_argument("--data-root", type=Path, help="where datasets and the feature cache live")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="another trial setting (split_seed, ...)"
    )
    parser.add_argument("--out", type=Path, help="where scores.csv/json go (default: results/rank-TIMESTAMP)")
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="RESULTS_DIR",
        help="score the backbones of a finished study and compare with its accuracies",
    )
    return parser


def candidates_from(backbones: str | None, weights: str) -> list[Candidate]:
    names = [name.strip() for name in (backbones or "").split(",") if name.strip()]
    sources = [weights_source(source.strip()) for source in weights.split(",") if source.strip()]
    if len(names) * len(sources) < 2:
        raise StudyError(
            "--backbones needs at least two candidates to rank: give two or more timm names (or --weights "
            f"{','.join(WEIGHT_SOURCES)})"
        )
    from study.trial.models import check_backbone_name

    for name in names:
        check_backbone_name(name)
    return [Candidate(name, source) for name in dict.fromkeys(names) for source in dict.fromkeys(sources)]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.compare is not None:
            if args.backbones or args.data:
                raise StudyError("--compare takes the backbones and data from the study: leave out --backbones/--data")
            compare(args.compare)
            return 0
        if not args.data:
            raise StudyError("--data is required: digits, a torchvision dataset name, or folder:PATH")
        candidates = candidates_from(args.backbones, args.weights)
        settings = dict(parse_assignment(text) for text in args.set)
        for key in ("backbone", "weights"):
            if key in settings:
                raise StudyError(f"--set {key}= : give --backbones and --weights instead")
        settings.update(data=args.data)
        if args.img_size is not None:
            settings["img_size"] = args.img_size
        if args.data_root is not None:
            settings["data_root"] = str(args.data_root.expanduser().resolve())
        from study.trial.data import absolute_data

        settings["data"] = absolute_data(settings["data"])
        base = TrialConfig.from_dict({k: v for k, v in settings.items() if k in FIELD_TYPES}, where="study.rank")
        out = args.out or Path("results") / f"rank-{datetime.now():%Y%m%d-%H%M%S}"
        print(f"Scoring {len(candidates)} candidates on {base.data}:", flush=True)
        table, summary = rank(candidates, base)
        write_scores(out, table, summary, {**settings, "candidates": [c.label for c in candidates]})
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(table))
    print(
        f"Features {summary['feature_s']:.1f} s, scoring {summary['scoring_s']:.1f} s, data {summary['data_s']:.1f} s "
        f"({summary['total_s']:.1f} s in all). Scores: {out.resolve()}/{SCORES_FILE}.csv and .json"
    )
    return 0
