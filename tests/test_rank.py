"""Transferability scores (study/rank.py): LogME against its closed form, its invariances, k-NN and the probe
against scikit-learn, and real ImageNet weights ranked above random ones on digits and on real photos."""

import itertools

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from study import rank


def problem(samples: int, dim: int, seed: int = 0, classes: int = 3):
    """Features whose first columns carry the class, plus noise: a problem LogME should find some signal in."""
    generator = np.random.default_rng(seed)
    labels = np.arange(samples) % classes
    centres = generator.normal(size=(classes, dim))
    return centres[labels] + generator.normal(scale=1.5, size=(samples, dim)), labels


def direct_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, F F'/alpha + I/beta): the marginal of y = F w + e, w ~ N(0, I/alpha), e ~ N(0, I/beta)."""
    covariance = features @ features.T / alpha + np.eye(len(target)) / beta
    _, log_det = np.linalg.slogdet(covariance)
    return float(-0.5 * (len(target) * np.log(2 * np.pi) + log_det + target @ np.linalg.solve(covariance, target)))


@pytest.mark.parametrize("samples, dim", [(30, 5), (6, 10)])  # more samples than features, and fewer
def test_evidence_is_the_closed_form_marginal_for_fixed_precisions(samples, dim):
    features, labels = problem(samples, dim)
    spectrum = rank.Spectrum.of(features, labels)
    targets = rank.one_hot(labels)
    for alpha, beta in itertools.product((0.01, 1.0, 30.0), (0.1, 2.0, 50.0)):
        expected = [direct_evidence(features, targets[:, c], alpha, beta) for c in range(targets.shape[1])]
        np.testing.assert_allclose(rank.evidence(spectrum, alpha, beta), expected, rtol=1e-9)


def test_the_fixed_point_iteration_reaches_the_maximum_a_grid_search_finds():
    features, labels = problem(40, 6, seed=1)
    target = rank.one_hot(labels)[:, 0]
    alphas, betas = np.logspace(-4, 3, 141), np.logspace(-2, 2, 161)  # steps of 0.05 and 0.025 in log10
    grid = np.array([[direct_evidence(features, target, a, b) for b in betas] for a in alphas])
    best_alpha, best_beta = np.unravel_index(grid.argmax(), grid.shape)
    spectrum = rank.Spectrum.of(features, labels)
    alpha, beta = rank.maximise_evidence(spectrum)
    found = direct_evidence(features, target, alpha[0], beta[0])
    assert found >= grid.max() - 1e-9  # no grid point is better
    assert abs(np.log10(alpha[0]) - np.log10(alphas[best_alpha])) <= 0.05
    assert abs(np.log10(beta[0]) - np.log10(betas[best_beta])) <= 0.025
    assert rank.logme(features, labels) == pytest.approx(np.mean(rank.evidence(spectrum, alpha, beta)) / 40)


def test_logme_invariances_of_the_paper():
    """The evidence sees the features through F F' up to the prior's scale (module docstring of study/rank.py)."""
    features, labels = problem(50, 8, seed=2)
    score = rank.logme(features, labels)
    order = np.random.default_rng(0).permutation(50)
    assert rank.logme(features[order], labels[order]) == pytest.approx(score, rel=1e-9)
    assert rank.logme(7.3 * features, labels) == pytest.approx(score, rel=1e-7)
    assert rank.logme(np.hstack([features, features]), labels) == pytest.approx(score, rel=1e-7)
    # duplicating some columns re-weights them: a different model, a different evidence
    assert rank.logme(np.hstack([features, features[:, :2]]), labels) != pytest.approx(score, rel=1e-4)
    # and the score tells signal from noise
    noise = np.random.default_rng(3).normal(size=features.shape)
    assert rank.logme(noise, labels) < score


def test_knn_is_cosine_majority_vote_and_the_probe_fits_what_is_linearly_separable():
    features, labels = problem(80, 6, seed=4, classes=2)
    train, val = torch.tensor(features[:60]), torch.tensor(features[60:])
    train_labels, val_labels = torch.tensor(labels[:60]), torch.tensor(labels[60:])
    # two classes and an odd k: no ties, so scikit-learn's classifier must agree prediction for prediction
    reference = KNeighborsClassifier(n_neighbors=7, metric="cosine").fit(features[:60], labels[:60])
    assert rank.knn_accuracy(train, train_labels, val, val_labels, k=7) == pytest.approx(
        reference.score(features[60:], labels[60:])
    )
    # a tie (one vote each, k=2) goes to the class with the larger summed similarity
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([[1.0, 0.2]])
    assert rank.knn_accuracy(points, torch.tensor([0, 1]), query, torch.tensor([0]), k=2) == 1.0
    assert rank.knn_accuracy(points, torch.tensor([1, 0]), query, torch.tensor([1]), k=2) == 1.0
    separable = np.vstack([np.zeros((20, 3)), np.ones((20, 3))]) + np.random.default_rng(5).normal(
        scale=0.05, size=(40, 3)
    )
    two = np.repeat([0, 1], 20)
    assert rank.probe_accuracy(separable[::2], two[::2], separable[1::2], two[1::2]) == 1.0
