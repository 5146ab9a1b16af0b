"""Transferability scores of frozen features: LogME, k-NN and a linear probe, each higher-is-better.

Each score reads a candidate's pooled pre-logits features of the training and validation splits
(study/ranking/candidates.py obtains them) and says how well the backbone would transfer, without training it:

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

`logme_score`, `knn_score` and `probe_score` are the entries of study/core/registry.py's TRANSFER_SCORES, the
names `prescreen.score` and the scores table use. Plain NumPy, PyTorch and scikit-learn: no Ray.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from study.core.registry import TRANSFER_SCORES

SCORES = {option.name: option.description for option in TRANSFER_SCORES}  # study/core/registry.py
KNN_K = 10
PROBE_ALPHAS = tuple(10.0**e for e in range(-2, 5))
LOGME_MAX_ITERATIONS = 1000
RANK_TOLERANCE = 1e-10  # relative: smaller singular values are rounding errors of zero
LOGME_TOLERANCE = 1e-7  # relative change of alpha and beta between iterations at convergence


@dataclass(kw_only=True)
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
        return cls(singular=singular, projected=projected, target_norms=(targets**2).sum(0), samples=samples, dim=dim)


def one_hot(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    return (labels[:, None] == np.unique(labels)[None, :]).astype(np.float64)


class FitTerms(NamedTuple):
    """What the evidence and the fixed-point iteration read of the fit at given alpha and beta, per class."""

    gamma: np.ndarray  # the effective number of parameters
    mean_norm: np.ndarray  # m'm
    residual: np.ndarray  # |F m - y|^2
    shrink: np.ndarray  # eigenvalues of alpha I + beta F'F along F's right singular vectors


def fit_terms(spectrum: Spectrum, alpha: np.ndarray, beta: np.ndarray) -> FitTerms:
    """gamma, m'm and |F m - y|^2 per class at the posterior mean m = beta (alpha I + beta F'F)^-1 F' y."""
    s2 = spectrum.singular[:, None] ** 2
    shrink = alpha + beta * s2
    z = spectrum.projected
    gamma = (beta * s2 / shrink).sum(0)
    mean_norm = ((beta * spectrum.singular[:, None] * z / shrink) ** 2).sum(0)
    residual = ((alpha * z / shrink) ** 2).sum(0) + spectrum.target_norms - (z**2).sum(0)
    return FitTerms(gamma=gamma, mean_norm=mean_norm, residual=np.maximum(residual, 0.0), shrink=shrink)


def evidence(spectrum: Spectrum, alpha, beta) -> np.ndarray:
    """log p(y_c | F, alpha, beta) per class (the paper's equation for the evidence, in the SVD basis)."""
    alpha = np.broadcast_to(np.asarray(alpha, dtype=np.float64), spectrum.target_norms.shape)
    beta = np.broadcast_to(np.asarray(beta, dtype=np.float64), spectrum.target_norms.shape)
    n, d = spectrum.samples, spectrum.dim
    _, mean_norm, residual, shrink = fit_terms(spectrum, alpha, beta)
    log_det = np.log(shrink).sum(0) + (d - len(spectrum.singular)) * np.log(alpha)  # log |alpha I + beta F'F|
    return (
        n / 2 * np.log(beta)
        + d / 2 * np.log(alpha)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * residual
        - alpha / 2 * mean_norm
        - log_det / 2
    )


class Precisions(NamedTuple):
    """The prior's and the noise's precision per class: w ~ N(0, 1/alpha I), noise ~ N(0, 1/beta I)."""

    alpha: np.ndarray
    beta: np.ndarray


def maximise_evidence(spectrum: Spectrum) -> Precisions:
    """The paper's fixed-point iteration for alpha and beta, every class at once, from alpha = beta = 1."""
    classes = spectrum.target_norms.shape
    alpha, beta = np.ones(classes), np.ones(classes)
    tiny = np.finfo(np.float64).tiny
    for _ in range(LOGME_MAX_ITERATIONS):
        gamma, mean_norm, residual, _ = fit_terms(spectrum, alpha, beta)
        new_alpha = gamma / np.maximum(mean_norm, tiny)
        new_beta = (spectrum.samples - gamma) / np.maximum(residual, tiny)
        converged = np.all(np.abs(new_alpha - alpha) <= LOGME_TOLERANCE * alpha) and np.all(
            np.abs(new_beta - beta) <= LOGME_TOLERANCE * beta
        )
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    return Precisions(alpha=alpha, beta=beta)


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
    # scikit-learn adds about a second to the import: only scoring the probe pays for it
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=PROBE_ALPHAS))
    probe.fit(np.asarray(train, dtype=np.float64), np.asarray(train_labels))
    return float(probe.score(np.asarray(val, dtype=np.float64), np.asarray(val_labels)))


class FeatureScores(NamedTuple):
    scores: dict[str, float]  # by score name
    seconds: dict[str, float]  # by "{score}_s": the seconds each score took


def score_features(
    train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor
) -> FeatureScores:
    """The three scores and the seconds each took."""
    train, val = train.float().flatten(1).cpu(), val.float().flatten(1).cpu()
    train_labels, val_labels = train_labels.cpu(), val_labels.cpu()
    scores, seconds = {}, {}
    for name in SCORES:
        start = time.perf_counter()
        scores[name] = TRANSFER_SCORES.get(name)(train, train_labels, val, val_labels)
        seconds[f"{name}_s"] = time.perf_counter() - start
    return FeatureScores(scores=scores, seconds=seconds)


# The scores of study/core/registry.py TRANSFER_SCORES: (train, train_labels, val, val_labels) -> float.
def logme_score(train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor) -> float:
    return logme(train.numpy(), train_labels.numpy())


def knn_score(train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor) -> float:
    return knn_accuracy(train, train_labels, val, val_labels)


def probe_score(train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor) -> float:
    return probe_accuracy(train.numpy(), train_labels.numpy(), val.numpy(), val_labels.numpy())
