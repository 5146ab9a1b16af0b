"""Transferability scores (study/ranking/scores.py): LogME against its closed form, its invariances, k-NN and the probe
against scikit-learn, and real ImageNet weights ranked above random ones on digits and on real photos."""

import itertools
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from study.cli.rank import main
from study.core.config import TrialConfig
from study.ranking import scores
from study.ranking.candidates import Candidate, rank_candidates
from tests.helpers import REPO, run_module

CIFAR_JPEGS = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
REAL = [Candidate(backbone=f"tf_efficientnet_lite{n}", weights="imagenet") for n in range(3)]
RANDOM = [
    Candidate(backbone="tf_efficientnet_lite0", weights="random"),
    Candidate(backbone="tf_efficientnet_lite2", weights="random"),
]


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
    spectrum = scores.Spectrum.of(features, labels)
    targets = scores.one_hot(labels)
    for alpha, beta in itertools.product((0.01, 1.0, 30.0), (0.1, 2.0, 50.0)):
        expected = [direct_evidence(features, targets[:, c], alpha, beta) for c in range(targets.shape[1])]
        np.testing.assert_allclose(scores.evidence(spectrum, alpha, beta), expected, rtol=1e-9)


def test_the_fixed_point_iteration_reaches_the_maximum_a_grid_search_finds():
    features, labels = problem(40, 6, seed=1)
    target = scores.one_hot(labels)[:, 0]
    alphas, betas = np.logspace(-4, 3, 141), np.logspace(-2, 2, 161)  # steps of 0.05 and 0.025 in log10
    grid = np.array([[direct_evidence(features, target, a, b) for b in betas] for a in alphas])
    best_alpha, best_beta = np.unravel_index(grid.argmax(), grid.shape)
    spectrum = scores.Spectrum.of(features, labels)
    alpha, beta = scores.maximise_evidence(spectrum)
    found = direct_evidence(features, target, alpha[0], beta[0])
    assert found >= grid.max() - 1e-9  # no grid point is better
    assert abs(np.log10(alpha[0]) - np.log10(alphas[best_alpha])) <= 0.05
    assert abs(np.log10(beta[0]) - np.log10(betas[best_beta])) <= 0.025
    assert scores.logme(features, labels) == pytest.approx(np.mean(scores.evidence(spectrum, alpha, beta)) / 40)


def test_logme_invariances_of_the_paper():
    """The evidence sees the features through F F' up to the prior's scale (study/ranking/scores.py's docstring)."""
    features, labels = problem(50, 8, seed=2)
    score = scores.logme(features, labels)
    order = np.random.default_rng(0).permutation(50)
    assert scores.logme(features[order], labels[order]) == pytest.approx(score, rel=1e-9)
    assert scores.logme(7.3 * features, labels) == pytest.approx(score, rel=1e-7)
    assert scores.logme(np.hstack([features, features]), labels) == pytest.approx(score, rel=1e-7)
    # duplicating some columns re-weights them: a different model, a different evidence
    assert scores.logme(np.hstack([features, features[:, :2]]), labels) != pytest.approx(score, rel=1e-4)
    # and the score tells signal from noise
    noise = np.random.default_rng(3).normal(size=features.shape)
    assert scores.logme(noise, labels) < score


def test_knn_is_cosine_majority_vote_and_the_probe_fits_what_is_linearly_separable():
    features, labels = problem(80, 6, seed=4, classes=2)
    train, val = torch.tensor(features[:60]), torch.tensor(features[60:])
    train_labels, val_labels = torch.tensor(labels[:60]), torch.tensor(labels[60:])
    # two classes and an odd k: no ties, so scikit-learn's classifier must agree prediction for prediction
    reference = KNeighborsClassifier(n_neighbors=7, metric="cosine").fit(features[:60], labels[:60])
    assert scores.knn_accuracy(train, train_labels, val, val_labels, k=7) == pytest.approx(
        reference.score(features[60:], labels[60:])
    )
    # a tie (one vote each, k=2) goes to the class with the larger summed similarity
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([[1.0, 0.2]])
    assert scores.knn_accuracy(points, torch.tensor([0, 1]), query, torch.tensor([0]), k=2) == 1.0
    assert scores.knn_accuracy(points, torch.tensor([1, 0]), query, torch.tensor([1]), k=2) == 1.0
    separable = np.vstack([np.zeros((20, 3)), np.ones((20, 3))]) + np.random.default_rng(5).normal(
        scale=0.05, size=(40, 3)
    )
    two = np.repeat([0, 1], 20)
    assert scores.probe_accuracy(separable[::2], two[::2], separable[1::2], two[1::2]) == 1.0


# --- prescreen in a space --------------------------------------------------------------------------

SPACE = """\
fixed: {{data: digits, img_size: 32, weights: random}}
dimensions:
  backbone: {{grid: [resnet10t, mobilenetv3_small_050, tf_efficientnet_lite0]}}
{extra}
search: grid
max_epochs: 1
asha: false
"""


@pytest.mark.parametrize(
    "extra, args, message",
    [
        ("prescreen: {score: logmee, keep: 2}", [], "prescreen.score 'logmee' is unknown (did you mean 'logme'?)"),
        ("prescreen: {score: knn, keep: 3}", [], "prescreen.keep=3 keeps all 3 backbones of the dimension"),
        ("prescreen: {score: knn, keep: 0}", [], "prescreen.keep must be an integer >= 1"),
        ("prescreen: {score: knn, keep: two}", [], "prescreen.keep must be an integer >= 1 (backbones searched), got"),
        ("prescreen: {score: knn, top: 2}", [], "unknown key 'prescreen.top'"),
        ("prescreen: knn", [], "'prescreen' must be a mapping {score: logme|knn|probe, keep: K}"),
        (
            "prescreen: {score: probe, keep: 1}",
            ["--backbone", "resnet10t"],
            "prescreen ranks the values of a backbone dimension, but the space has none (--backbone fixed it)",
        ),
        (
            "  weights: {grid: [imagenet, random]}\nprescreen: {score: probe, keep: 1}",
            ["--set", "img_size=32"],
            "prescreen ranks backbones under one weights source, but weights is a dimension",
        ),
    ],
)
def test_prescreen_settings_are_checked_before_anything_runs(tmp_path, capsys, extra, args, message):
    from study.cli import run

    text = SPACE.format(extra=extra)
    if "weights: {grid" in extra:
        text = text.replace(", weights: random", "")
    space = tmp_path / "space.yaml"
    space.write_text(text)
    assert run.main(["--space", str(space), *args, "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {space}: ") and message in error and error.count("\n") == 1, error
    assert not (tmp_path / "out").exists()


def test_a_bad_prescreen_exits_2_from_the_command_line(tmp_path):
    from tests.helpers import run_module

    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(extra="prescreen: {score: auc, keep: 1}"))
    done = run_module("study.run", "--space", str(space), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "prescreen.score 'auc' is unknown" in done.stderr and "use one of logme, knn, probe" in done.stderr


# --- real weights against random ones --------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_photos(tmp_path_factory) -> Path:
    """30 real CIFAR-10 JPEGs per class (train/ only: study takes a fifth of them for validation)."""
    if not CIFAR_JPEGS.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CIFAR_JPEGS} is missing: CI provides the shared test data at the repository's parent")
        pytest.skip(f"{CIFAR_JPEGS} is missing (the shared test data)")
    root = tmp_path_factory.mktemp("cifar10-jpg")
    taken: dict[str, int] = {}
    with tarfile.open(CIFAR_JPEGS) as archive:
        for member in archive:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[0] == "train" and taken.get(parts[1], 0) < 30:
                taken[parts[1]] = taken.get(parts[1], 0) + 1
                (root / "train" / parts[1]).mkdir(parents=True, exist_ok=True)
                (root / member.name).write_bytes(archive.extractfile(member).read())
    return root


def assert_real_above_random(table: pd.DataFrame) -> None:
    real = table[table["weights"] == "imagenet"]
    random = table[table["weights"] == "random"]
    for score in scores.SCORES:
        assert real[score].min() > random[score].max(), (score, table[["backbone", "weights", score]])
        assert set(real[f"rank_{score}"]) == {1, 2, 3}


@pytest.mark.slow
def test_on_digits_logme_ranks_real_weights_above_random_ones(tmp_path):
    """Digits are 8x8 scans: a random-init network's features serve k-NN and a linear probe as well as ImageNet's
    (measured at 64 and 96 px: docs/backbone-ranking.md), so only LogME is asked to tell them apart here."""
    base = TrialConfig(data="digits", img_size=64, train_fraction=0.3, data_root=str(tmp_path))
    candidates = [
        Candidate(backbone="tf_efficientnet_lite0", weights="imagenet"),
        Candidate(backbone="tf_efficientnet_lite0", weights="random"),
    ]
    table, summary = rank_candidates(candidates, base, echo=lambda text: None)
    assert table.set_index("weights")["rank_logme"].to_dict() == {"imagenet": 1, "random": 2}
    assert (table["feature_dim"] == 1280).all() and (table["train_images"] == 324).all()
    assert summary["scoring_s"] > 0 and (table["feature_status"] == "built").all()


@pytest.mark.slow
def test_real_weights_rank_above_random_ones_on_real_photos(cifar_photos, tmp_path):
    base = TrialConfig(data=f"folder:{cifar_photos}", img_size=64, data_root=str(tmp_path))
    table, _ = rank_candidates(REAL + RANDOM, base, echo=lambda text: None)
    assert_real_above_random(table)
    assert (table["train_images"] == 240).all() and (table["val_images"] == 60).all()


# --- the command line, the shared feature cache, and --compare on a tiny study ----------------------


@pytest.mark.slow
def test_rank_then_a_study_then_compare_share_the_features(tmp_path):
    """study.rank builds the depth-0 features; linear-probe trials read them; --compare reads them again and
    scores the study's backbones against its accuracies."""
    from study.analysis.page import REPORT_FILE, export
    from study.analysis.results import trials_table
    from study.core.files import write_json
    from study.trial.train import run_trial

    root, out = tmp_path / "root", tmp_path / "rank"
    common = ["--img-size", "32", "--data-root", str(root), "--set", "train_fraction=0.2"]
    done = run_module(
        "study.rank",
        "--data",
        "digits",
        "--backbones",
        "tf_efficientnet_lite0",
        "--weights",
        "imagenet,random",
        *common,
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out / "scores.csv")
    assert list(table["weights"]) == ["imagenet", "random"] and (table["feature_status"] == "built").all()
    for score in scores.SCORES:
        assert sorted(table[f"rank_{score}"]) == [1, 2]
        assert f"{score}" in done.stdout
    record = json.loads((out / "scores.json").read_text())
    assert record["summary"]["knn_k"] == scores.KNN_K and len(record["scores"]) == 2 and record["hardware"]
    assert {"feature_s", "scoring_s", "logme_s", "knn_s", "probe_s", "feature_dim", "train_images"} <= set(table)

    records = []
    for weights in ("imagenet", "random"):
        config = TrialConfig(
            weights=weights, data="digits", img_size=32, train_fraction=0.2, data_root=str(root), epochs=2
        )
        history = list(run_trial(config))
        assert history[0]["cache"] == "reused"  # the training split's features came from study.rank
        records.append(
            {"trial_id": f"t_{weights}", "config": config.to_dict(), "history": history, "error": None, "max_epochs": 2}
        )
    study = tmp_path / "study"
    trials, epochs, _ = trials_table(records)
    export(study, trials, epochs, title="tiny")
    write_json(study / "study.json", {"space": {"name": "tiny", "dimensions": {"weights": {"kind": "grid"}}}})

    done = run_module("study.rank", "--compare", str(study))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Kendall tau" in done.stdout
    compared = pd.read_csv(study / "scores.csv")
    assert (compared["feature_status"] == "reused").all()
    pd.testing.assert_frame_equal(
        compared[list(scores.SCORES)], table[list(scores.SCORES)], rtol=1e-6
    )  # the same features, the same scores
    tau = json.loads((study / "study.json").read_text())["scores"]["kendall_tau"]
    best = trials.set_index("weights")["best_val_acc"]
    for score in scores.SCORES:
        agrees = (table.set_index("weights")[score].idxmax() == best.idxmax()) and best.nunique() == 2
        assert tau[score]["backbones"] == 2 and tau[score]["tau"] == (1.0 if agrees else -1.0)
    page = (study / REPORT_FILE).read_text()
    assert "Did the scores predict the study?" in page and "python -m study.rank --compare" in page


def test_compare_and_rank_refuse_what_they_cannot_score(tmp_path):
    assert main(["--compare", str(tmp_path / "absent")]) == 2
    assert main(["--data", "digits", "--backbones", "resnet18"]) == 2
    assert main(["--data", "digits", "--backbones", "resnet18,resnet99"]) == 2


@pytest.mark.slow
def test_a_prescreened_study_searches_the_top_backbones_and_reports_the_ranking(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(extra="prescreen: {score: knn, keep: 2}"))
    out = tmp_path / "out"
    done = run_module("study.run", "--space", str(space), "--data-root", str(tmp_path / "root"), "--out", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    record = json.loads((out / "study.json").read_text())
    screened = record["prescreen"]
    assert screened["score"] == "knn" and screened["keep"] == 2 and len(screened["table"]) == 3
    ranking = pd.DataFrame(screened["table"]).sort_values("rank_knn")
    assert set(screened["kept"]) == set(ranking["backbone"][:2]) and ranking["kept"].sum() == 2
    assert record["space"]["dimensions"]["backbone"]["values"] == screened["kept"]
    assert record["space"]["prescreen"] is None and screened["summary"]["scoring_s"] > 0
    trials = pd.read_csv(out / "trials.csv")
    assert sorted(trials["backbone"]) == sorted(screened["kept"])
    assert f"Pre-screen kept {', '.join(screened['kept'])} (knn)" in done.stdout
    page = (out / "report.html").read_text()
    assert "Pre-screen of the backbones" in page and "Did the scores predict the study?" in page
    assert "Scores from the pre-screen (knn)" in page


def test_a_tie_for_the_best_accuracy_counts_every_tied_backbone_as_best_whatever_the_row_order():
    from study.analysis.agreement import score_agreement
    from study.ranking.compare import agreement_line

    trials = pd.DataFrame(
        {
            "backbone": ["a", "b", "c", "d"],
            "weights": ["imagenet"] * 4,
            "status": ["completed"] * 4,
            "best_val_acc": [0.9, 0.9, 0.5, 0.4],
        }
    )
    study = {
        "scores": {
            "table": [
                {"backbone": "a", "weights": "imagenet", "knn": 0.3, "probe": 0.7, "logme": 0.1},
                {"backbone": "b", "weights": "imagenet", "knn": 0.8, "probe": 0.2, "logme": 0.9},
                {"backbone": "c", "weights": "imagenet", "knn": 0.1, "probe": 0.9, "logme": 0.9},
                {"backbone": "d", "weights": "imagenet", "knn": 0.0, "probe": 0.1, "logme": 0.0},
            ]
        }
    }
    verdicts = {
        order: score_agreement(trials.iloc[list(order)], study).by_score
        for order in itertools.permutations(range(len(trials)))
    }
    first = verdicts[(0, 1, 2, 3)]
    assert all(verdict == first for verdict in verdicts.values())  # the row order decides nothing
    assert first["knn"]["top_is_best"] and first["knn"]["best"] == ["a", "b"] and first["knn"]["top"] == ["b"]
    assert not first["probe"]["top_is_best"] and first["probe"]["top"] == ["c"]
    # a tie on the score, and c is not among the best
    assert not first["logme"]["top_is_best"] and first["logme"]["top"] == ["b", "c"]
    assert agreement_line("knn", first["knn"]).endswith(
        "its top backbone (b) is among the study's 2 best, tied at the best accuracy (a, b)"
    )
    assert agreement_line("probe", first["probe"]).endswith(
        "its top backbone (c) is not among the study's 2 best, tied at the best accuracy (a, b)"
    )
    assert agreement_line("logme", first["logme"]).endswith(
        "its top backbones (b, c, tied on the score) are not all among the study's 2 best, tied at the best accuracy "
        "(a, b)"
    )
    alone = score_agreement(trials.assign(best_val_acc=[0.9, 0.8, 0.5, 0.4]), study).by_score
    assert agreement_line("knn", alone["knn"]).endswith("its top backbone (b) is not the study's best (a)")
    assert agreement_line("probe", alone["probe"]).endswith("its top backbone (c) is not the study's best (a)")
