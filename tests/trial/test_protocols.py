"""Fine-tuning protocols (issue 19): head warm-up then unfreeze, lr schedules with warm-up, layer-wise lr decay,
bias-only training (BitFit); each checked on the real Lite0 with its ImageNet weights and real digits."""

import math
import textwrap

import pytest
import torch

from study.cli import run
from study.core.config import StudyError, TrialConfig
from study.trial import train
from study.trial.backbones import structure_only
from study.trial.layers import weight_layers
from study.trial.optim import lr_scheduler
from study.trial.train import build_trial, run_trial, train_epoch


def config(tmp_path, **settings) -> TrialConfig:
    return TrialConfig(img_size=32, data_root=str(tmp_path), **settings)


def capture_trials(monkeypatch) -> list:
    """The Trial objects run_trial builds, to look at the model between its epochs."""
    built = []

    def recording(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    real = train.build_trial
    monkeypatch.setattr(train, "build_trial", recording)
    return built


def changed(before: dict, model: torch.nn.Module) -> set[str]:
    return {name for name, value in model.state_dict().items() if not torch.equal(before[name], value)}


def test_head_warmup_trains_the_head_alone_then_the_unfrozen_layers(small_digits, tmp_path, monkeypatch):
    trials = capture_trials(monkeypatch)
    settings = config(tmp_path, unfreeze_depth=2, head_warmup_epochs=2, epochs=3, lr=0.01, feature_cache=False)
    untrained = build_trial(settings, small_digits).model.backbone.state_dict()
    reports = run_trial(settings, small_digits)
    first, second = next(reports), next(reports)
    backbone = trials[-1].model.backbone
    layers = weight_layers(backbone)
    head = {"classifier.weight", "classifier.bias"}
    assert changed(untrained, backbone) == head  # no other parameter and no BatchNorm statistic moved in the warm-up
    after_warmup = {name: value.clone() for name, value in backbone.state_dict().items()}
    third = next(reports)
    trained = {p for layer in layers[-2:] for p in layer.params}
    statistics = {
        f"{norm}.{buffer}"
        for layer in layers[-2:]
        for norm in layer.norms
        for buffer in ("running_mean", "running_var", "num_batches_tracked")
    }
    # the last two layers (conv_head with bn2, blocks.6.0.conv_pwl with bn3), their BatchNorm statistics, the head
    assert changed(after_warmup, backbone) == head | trained | statistics
    assert len(trained) == 6 and len(statistics) == 6
    assert [r["phase"] for r in (first, second, third)] == ["head_warmup", "head_warmup", "main"]
    assert [r["trainable_params"] for r in (first, second, third)] == [
        12810,
        12810,
        12810 + sum(p.numel() for name, p in backbone.named_parameters() if name in trained),
    ]
    assert third["train_time_s"] == pytest.approx(sum(r["epoch_time_s"] for r in (first, second, third)))


def test_cached_and_uncached_head_warmup_give_the_same_numbers(small_digits, tmp_path):
    settings = dict(
        unfreeze_depth=3, head_warmup_epochs=2, epochs=4, lr=0.01, lr_schedule="cosine", warmup_epochs=0.5, seed=2
    )
    cached = list(run_trial(config(tmp_path, **settings), small_digits))
    uncached = list(run_trial(config(tmp_path, **settings, feature_cache=False), small_digits))
    assert [r["cache"] for r in cached] == ["built"] * 4 and {r["cache"] for r in uncached} == {"off"}
    assert [r["cache_cut"] for r in cached] == ["global_pool_flatten"] * 2 + ["blocks_6_0_bn1"] * 2
    assert "epochs 1-2 (head_warmup): cut after global_pool_flatten" in cached[-1]["cache_note"]
    assert "epochs 3-4 (main): cut after blocks_6_0_bn1" in cached[-1]["cache_note"]
    for a, b in zip(cached, uncached):
        assert a["phase"] == b["phase"]
        for key in ("train_loss", "val_loss", "test_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
        assert a["val_acc"] == b["val_acc"] and a["test_acc"] == b["test_acc"]
    # both phases' features were built in this trial's training time, and are charged once each
    assert cached[-1]["cache_build_s"] > cached[0]["cache_build_s"] > 0


@pytest.mark.parametrize("unit", ["layer", "block"])
def test_layer_lr_decay_groups_follow_the_layer_numbering(small_digits, tmp_path, unit):
    decay, lr = 0.5, 0.1
    settings = config(tmp_path, unfreeze_depth=3, unfreeze_unit=unit, layer_lr_decay=decay, lr=lr, weight_decay=0.01)
    trial = build_trial(settings, small_digits)
    backbone = trial.model.backbone
    layers = weight_layers(backbone)
    number = (lambda layer: layer.index) if unit == "layer" else (lambda layer: layer.block)
    top = max(number(layer) for layer in layers)
    expected = {"classifier.weight": lr, "classifier.bias": lr}
    for layer in layers:
        if number(layer) > top - 3:
            expected.update({name: lr * decay ** (top - number(layer) + 1) for name in layer.params})
    names = {id(p): name for name, p in backbone.named_parameters()}
    got = {names[id(p)]: group["lr"] for group in trial.optimizer.param_groups for p in group["params"]}
    assert got.keys() == expected.keys()
    for name, rate in expected.items():
        assert got[name] == pytest.approx(rate), name
    # timm's weight-decay rule still holds in every group: weights decay, BatchNorm and biases do not
    for group in trial.optimizer.param_groups:
        decays = {p.ndim > 1 and not names[id(p)].endswith(".bias") for p in group["params"]}
        assert decays == {group["weight_decay"] > 0}
    assert len(trial.optimizer.param_groups) == 8  # the head and three units, each split by weight decay


def lr_trace(schedule: str, warmup_epochs: float, epochs: int, batches: int) -> list[list[float]]:
    """The lr of each of two groups (0.1 and 0.05) used by every batch of a phase."""
    parameters = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": parameters[:1], "lr": 0.1}, {"params": parameters[1:], "lr": 0.05}])
    scheduler = lr_scheduler(
        optimizer, TrialConfig(lr_schedule=schedule, warmup_epochs=warmup_epochs, epochs=epochs), epochs, batches
    )
    trace = []
    for _ in range(epochs * batches):
        trace.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return trace


def test_schedules_give_the_learning_rate_expected_at_chosen_batches():
    cosine = lr_trace("cosine", 1, 4, 10)  # warm-up W = 10 batches, then 30 of cosine
    for t in (0, 4, 9):
        assert cosine[t] == pytest.approx([0.1 * (t + 1) / 11, 0.05 * (t + 1) / 11])
    for j in (0, 10, 15, 29):
        factor = (1 + math.cos(math.pi * j / 30)) / 2
        assert cosine[10 + j] == pytest.approx([0.1 * factor, 0.05 * factor])
    step = lr_trace("step", 0.5, 3, 10)  # W = 5, then 25 batches: x0.1 at 8 and 17 (rounded thirds)
    assert step[4] == pytest.approx([0.1 * 5 / 6, 0.05 * 5 / 6])
    assert step[5 + 7] == pytest.approx([0.1, 0.05]) and step[5 + 8] == pytest.approx([0.01, 0.005])
    assert step[5 + 16] == pytest.approx([0.01, 0.005]) and step[5 + 17] == pytest.approx([0.001, 0.0005])
    assert lr_trace("constant", 0, 2, 5) == [[0.1, 0.05]] * 10


def test_the_second_phase_starts_its_own_schedule_and_warm_up(small_digits, tmp_path, monkeypatch):
    trials = capture_trials(monkeypatch)
    settings = config(
        tmp_path, unfreeze_depth=1, head_warmup_epochs=2, epochs=4, lr=0.01, lr_schedule="cosine", warmup_epochs=1
    )
    lrs = []
    for _ in run_trial(settings, small_digits):
        lrs.append(trials[0].optimizer.param_groups[0]["lr"])
    # 3 batches an epoch: each phase warms up over its first 3 and decays to 0 over its last 3
    assert lrs == pytest.approx([0.01, 0.0, 0.01, 0.0], abs=1e-12)


def test_train_bias_changes_exactly_the_frozen_part_s_biases_and_the_trained_layers(small_digits, tmp_path):
    trial = build_trial(config(tmp_path, unfreeze_depth=2, train_bias=True, lr=0.05), small_digits)
    backbone = trial.model.backbone
    layers = weight_layers(backbone)
    trained = {p for layer in layers[-2:] for p in layer.params} | {"classifier.weight", "classifier.bias"}
    biases = {name for name, _ in backbone.named_parameters() if name.endswith(".bias")}
    before = {name: value.clone() for name, value in backbone.named_parameters()}
    train_epoch(trial)
    moved = {name for name, value in backbone.named_parameters() if not torch.equal(before[name], value)}
    assert moved == trained | biases
    assert len(biases - trained) == 47  # Lite0's convs have none: every BatchNorm's beta in the frozen part
    assert "bias 47 tensors in the frozen part" in trial.info()["effective"]


def test_train_bias_shrinks_the_cacheable_prefix_and_the_cache_note_says_so(small_digits, tmp_path):
    info = build_trial(config(tmp_path, train_bias=True), small_digits).info()
    assert info["cache"] == "off"
    assert info["cache_note"] == (
        "the first layer trains or updates BatchNorm statistics: nothing frozen to cache "
        "(layer 1: train_bias=true trains bn1.bias)"
    )


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"head_warmup_epochs": 5}, r"head_warmup_epochs=5 must be in 0..4 \(epochs=5 counts the warm-up too\)"),
        ({"head_warmup_epochs": -1}, r"head_warmup_epochs=-1 must be in 0..4"),
        ({"lr_schedule": "cosin"}, "lr_schedule='cosin' is unknown .did you mean 'cosine'"),
        ({"warmup_epochs": -0.5}, r"warmup_epochs=-0.5 must be >= 0 and shorter than each training phase \(5 epochs\)"),
        ({"warmup_epochs": 2, "head_warmup_epochs": 2}, r"shorter than each training phase \(2 epochs\)"),
        ({"layer_lr_decay": 0}, r"layer_lr_decay=0.0 is outside \(0, 1\]: use e.g. 0.9, or 1 for no decay"),
        ({"layer_lr_decay": 1.2}, r"layer_lr_decay=1.2 is outside \(0, 1\]"),
        ({"train_bias": "yes"}, "setting 'train_bias' must be bool, got 'yes'"),
    ],
)
def test_bad_protocol_settings_name_the_setting_and_the_fix(settings, message):
    with pytest.raises(StudyError, match=message):
        TrialConfig(**settings)


SPACE = """
    description: every protocol setting as a dimension
    fixed: {data: digits, img_size: 32, unfreeze_depth: 2}
    dimensions:
      head_warmup_epochs: {grid: [0, 2]}
      lr_schedule: {grid: [constant, cosine]}
      layer_lr_decay: {grid: [1.0, 0.8]}
      train_bias: {grid: [false, true]}
    search: grid
    max_epochs: 4
    asha: false
"""


def test_every_protocol_setting_is_a_dimension_and_the_dry_run_shows_both_phases(tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(SPACE))
    assert run.main(["--space", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "16 trials" in out
    model = structure_only("tf_efficientnet_lite0", 10, img_size=32)
    sizes = dict(model.named_parameters())
    layers = weight_layers(model)
    main = 12810 + sum(sizes[name].numel() for layer in layers[-2:] for name in layer.params)
    bitfit = main + sum(sizes[name].numel() for layer in layers[:-2] for name in layer.params if name.endswith(".bias"))
    for trainable in (main, bitfit):
        assert out.count(f"2 head_warmup (12,810) then 2 main ({trainable:,})") == 4
        assert out.count(f" 4 main ({trainable:,})") == 4


@pytest.mark.parametrize(
    "dimension, message",
    [
        ("head_warmup_epochs: {grid: [0, 4]}", "dimensions.head_warmup_epochs: head_warmup_epochs=4 must be in 0..3"),
        ("lr_schedule: {grid: [cosine, linear]}", "lr_schedule='linear' is unknown"),
        ("layer_lr_decay: {grid: [0.9, 1.1]}", "layer_lr_decay=1.1 is outside (0, 1]"),
    ],
)
def test_a_bad_protocol_dimension_is_one_line_and_exit_2(tmp_path, capsys, dimension, message):
    path = tmp_path / "space.yaml"
    path.write_text(f"fixed: {{data: digits}}\ndimensions:\n  {dimension}\nsearch: grid\nmax_epochs: 4\n")
    assert run.main(["--space", str(path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1 and error.startswith("error: ")
    assert not (tmp_path / "out").exists()


def test_document_004_runs_its_exact_protocol(capsys):
    assert run.main(["--space", "paper_004_unfreeze_k", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "22 trials; up to 6 epochs each" in out
    assert out.count("3 head_warmup (2,562) then 3 main") == 22
