"""The frozen-prefix feature cache: same results as without it, computed once, shared, bounded, honestly timed."""

import contextlib
import os
import subprocess
import sys

import pytest
import torch

from study.analysis.results import trials_table
from study.core.config import TrialConfig
from study.trial.backbones import create_backbone
from study.trial.cut import cut_points, find_cut, trace
from study.trial.feature_cache import CACHE_DIR, FeatureStore
from study.trial.freeze import freeze_plan
from study.trial.splits import Splits
from study.trial.train import build_trial, run_trial, train_epoch
from tests.helpers import REPO
from tests.trial.test_data import torch_save_on_a_full_disk

COMPARED = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")


def trial_config(root, **settings) -> TrialConfig:
    """A small trial on the CPU, where float32 makes cached and uncached results agree to rounding."""
    return TrialConfig(**{"img_size": 32, "epochs": 2, "lr": 0.01, "data_root": str(root), "device": "cpu", **settings})


def assert_same_results(cached: list[dict], uncached: list[dict]) -> None:
    assert len(cached) == len(uncached)
    for with_cache, without in zip(cached, uncached):
        for key in COMPARED:
            assert with_cache[key] == pytest.approx(without[key], rel=1e-4, abs=1e-6), (key, with_cache["epoch"])


@pytest.mark.parametrize(
    "settings",
    [
        dict(unfreeze_depth=0),  # linear probe on real ImageNet weights: pooled pre-logits features
        dict(unfreeze_depth=8),  # a cut between two inverted-residual blocks
        dict(backbone="resnet18", weights="random", unfreeze_unit="block", unfreeze_depth=1),
        dict(backbone="vit_tiny_patch16_224", weights="random", unfreeze_unit="block", unfreeze_depth=1),
        dict(unfreeze_depth=2, bn_insert="before_retrained_conv", optimizer="sgd"),
    ],
    ids=["lite0-probe", "lite0-depth8", "resnet18-block", "vit-block", "lite0-bn-insert"],
)
def test_cached_and_uncached_trials_give_the_same_results(settings, small_digits, tmp_path):
    """Same seed: the same head, the same batches in the same order, the same steps, with or without the cache."""
    cached = list(run_trial(trial_config(tmp_path, **settings), small_digits))
    uncached = list(run_trial(trial_config(tmp_path, feature_cache=False, **settings), small_digits))
    assert cached[0]["cache"] == "built" and cached[0]["cache_cut"] and uncached[0]["cache"] == "off"
    assert uncached[0]["cache_note"] == "feature_cache=false"
    assert_same_results(cached, uncached)


def test_a_linear_probe_computes_the_pooled_pre_logits_features_once(small_digits, tmp_path):
    trial = build_trial(trial_config(tmp_path, unfreeze_depth=0), small_digits)
    backbone = trial.model.backbone
    stem_calls = []
    backbone.conv_stem.register_forward_hook(lambda *_: stem_calls.append(1))
    train_epoch(trial)
    assert stem_calls and sum(stem_calls) == -(-len(small_digits.train) // trial.config.batch_size)  # once per image
    stem_calls.clear()
    train_epoch(trial)
    assert not stem_calls  # from the second epoch on, no image passes through the frozen network

    features = trial.cache.split("train").features
    trial.model.eval()
    with torch.inference_mode():
        batch = trial.prepare(small_digits.train.images[:8])
        expected = backbone.forward_head(backbone.forward_features(batch), pre_logits=True)
    assert features.shape == (len(small_digits.train), 1280)
    assert torch.allclose(features[:8], expected, rtol=1e-4, atol=1e-5)


def test_cuts_fall_between_residual_blocks_never_inside_one():
    model, _ = create_backbone("resnet18", "random", 10, 0, 32)
    model.eval()
    graph = trace(model).graph
    points = [node.name for node in cut_points(graph)]
    assert "layer4_0_act2" in points and "layer3_1_act2" in points  # block ends (after the residual add)
    assert not any(
        name.startswith(("layer4_0_conv", "layer4_0_bn", "layer4_1_conv")) for name in points
    )  # a shortcut is pending
    # one trained layer (layer4.1.conv2) sits inside the last block: the cut moves back to the block before it
    plan = freeze_plan(model, 1, "resnet18")
    cut = find_cut(model, plan, torch.randn(2, 3, 32, 32), contextlib.nullcontext).cut
    assert cut.name == "layer4_0_act2" and cut.prefix_layers == 18 and plan.frozen_prefix_layers == 19


@pytest.mark.parametrize(
    "settings, note",
    [
        (dict(augment="basic"), "augment=basic changes the frozen prefix's input every epoch"),
        (dict(augment="cutmix_mixup"), "augment=cutmix_mixup changes the frozen prefix's input every epoch"),
        (dict(frozen_bn="train"), "the first layer trains or updates BatchNorm statistics: nothing frozen to cache"),
        (dict(train_bn_affine=True), "the first layer trains or updates BatchNorm statistics: nothing frozen to cache"),
        (dict(unfreeze_depth="all"), "the first layer trains or updates BatchNorm statistics: nothing frozen to cache"),
        (
            dict(unfreeze_depth=48),
            "the frozen prefix up to the last cut point (bn1, 1 layers) holds 2.8% of the forward",
        ),
        (dict(feature_cache=False), "feature_cache=false"),
    ],
)
def test_a_trial_without_the_cache_records_why(settings, note, small_digits, tmp_path):
    info = build_trial(trial_config(tmp_path, **settings), small_digits).info()
    assert info["cache"] == "off" and info["cache_note"].startswith(note) and info["cache_build_s"] == 0


def test_features_are_shared_across_trials_and_their_build_is_charged_once(small_digits, tmp_path):
    first = list(run_trial(trial_config(tmp_path, unfreeze_depth=4, lr=0.01, seed=1), small_digits))
    second = list(run_trial(trial_config(tmp_path, unfreeze_depth=4, lr=0.003, seed=2), small_digits))
    assert len(list((tmp_path / CACHE_DIR).glob("*.pt"))) == 3  # train, val, test: once each
    built, reused = first[-1], second[-1]
    assert built["cache"] == "built" and reused["cache"] == "reused" and built["cache_cut"] == reused["cache_cut"]
    # the builder's first epoch holds the build; what the study spent is the sum of the epochs, and the builder's
    # time alone is the same
    assert 0 < built["cache_build_s"] <= first[0]["epoch_time_s"]
    assert built["study_train_time_s"] == pytest.approx(sum(r["epoch_time_s"] for r in first))
    assert built["train_time_s"] == pytest.approx(built["study_train_time_s"])
    # the reuser spent nothing on the features; alone it would have paid what they cost
    assert reused["cache_build_s"] == 0 and reused["cache_cost_s"] == built["cache_cost_s"] == built["cache_build_s"]
    assert reused["train_time_s"] == pytest.approx(reused["study_train_time_s"] + built["cache_cost_s"])
    assert "val: reused" in reused["cache_note"] and "train: built" in built["cache_note"]
    trials, *_ = trials_table(
        [
            {
                "trial_id": "a",
                "config": trial_config(tmp_path).to_dict(),
                "history": second,
                "error": None,
                "max_epochs": 2,
            }
        ]
    )
    assert trials.loc[0, "cache"] == "reused" and trials.loc[0, "train_time_s"] > trials.loc[0, "study_train_time_s"]


def test_a_smaller_training_split_shares_validation_and_test_features_only(small_digits, tmp_path):
    list(run_trial(trial_config(tmp_path, epochs=1), small_digits))
    fewer = Splits(
        name=small_digits.name,
        classes=small_digits.classes,
        train=small_digits.train.subset(range(100)),
        val=small_digits.val,
        test=small_digits.test,
    )
    (report,) = run_trial(trial_config(tmp_path, epochs=1), fewer)
    assert (
        report["cache"] == "built" and "val: reused" in report["cache_note"] and "test: reused" in report["cache_note"]
    )


def test_a_later_cut_is_computed_from_an_earlier_cut_s_cached_features(small_digits, tmp_path):
    """A grid that runs deep trials first computes each stretch of the frozen network once."""
    list(run_trial(trial_config(tmp_path, unfreeze_depth=8, epochs=1), small_digits))
    chained = list(run_trial(trial_config(tmp_path, unfreeze_depth=0), small_digits))
    assert (
        chained[0]["cache"] == "built"
        and "train: built from add_6 features through global_pool_flatten" in chained[0]["cache_note"]
    )
    from_images = list(run_trial(trial_config(tmp_path / "fresh", unfreeze_depth=0), small_digits))
    assert "from images through global_pool_flatten" in from_images[0]["cache_note"]
    assert chained[0]["cache_cost_s"] > chained[0]["cache_build_s"]  # the earlier cut's build is part of the cost
    assert_same_results(chained, from_images)


def test_the_store_evicts_the_least_recently_used_files_to_stay_within_its_budget(tmp_path):
    store = FeatureStore(str(tmp_path), budget=1 << 30)
    record = lambda: {"features": torch.zeros(1024), "build_s": 0.0, "cost_s": 0.0, "origin": "test"}
    for used, key in enumerate(("a", "b", "c"), 1):
        store.save(key, record())
        os.utime(store.path(key), (used, used))  # used in this order, long ago
    store.budget = int(3.5 * store.path("a").stat().st_size)  # room for three
    assert store.load("a") is not None  # used now: the most recent
    store.save("d", record())
    assert {path.stem for path in store.directory.glob("*.pt")} == {"a", "c", "d"}  # b was the least recently used
    assert store.load("b") is None


def test_a_damaged_feature_file_is_computed_again(small_digits, tmp_path, capsys):
    list(run_trial(trial_config(tmp_path, epochs=1), small_digits))
    for file in (tmp_path / CACHE_DIR).glob("*.pt"):
        file.write_bytes(file.read_bytes()[:100])
    (report,) = run_trial(trial_config(tmp_path, epochs=1), small_digits)
    assert report["cache"] == "built" and "is unreadable" in capsys.readouterr().out


def test_trials_starting_together_build_the_features_once_under_the_lock(tmp_path):
    script = (
        "import torch; torch.set_num_threads(1)\n"
        "from study.core.config import TrialConfig; from study.trial.train import run_trial\n"
        f"(report,) = run_trial(TrialConfig(img_size=32, epochs=1, data_root={str(tmp_path)!r}))\n"
        "print('status', report['cache'])\n"
    )
    runs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO) for _ in range(2)
    ]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert all(run.returncode == 0 for run in runs)
    statuses = sorted(
        line.split()[1] for output in outputs for line in output.splitlines() if line.startswith("status")
    )
    assert statuses == ["built", "reused"]


def test_cpu_trials_run_in_float32_channels_last(small_digits, tmp_path):
    trial = build_trial(trial_config(tmp_path), small_digits)
    info = trial.info()
    assert info["amp_dtype"] == "off" and info["channels_last"]
    conv = trial.model.backbone.conv_stem.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and conv.dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="autocast and GPU-resident features need a CUDA device")
@pytest.mark.parametrize("depth", [0, 8])
def test_on_cuda_mixed_precision_is_on_by_default_and_the_cache_keeps_the_results(depth, small_digits, tmp_path):
    settings = dict(unfreeze_depth=depth, device="cuda", epochs=3)
    cached = list(run_trial(trial_config(tmp_path, **settings), small_digits))
    uncached = list(run_trial(trial_config(tmp_path, feature_cache=False, **settings), small_digits))
    full = list(run_trial(trial_config(tmp_path, feature_cache=False, amp=False, **settings), small_digits))
    assert (
        cached[0]["amp_dtype"] in ("bfloat16", "float16")
        and full[0]["amp_dtype"] == "off"
        and cached[0]["cache"] == "built"
    )
    for with_cache, without in zip(cached, uncached):  # half precision: agreement to its resolution
        assert with_cache["val_loss"] == pytest.approx(without["val_loss"], rel=0.05)
        assert abs(with_cache["val_acc"] - without["val_acc"]) <= 0.05
    assert abs(cached[-1]["val_acc"] - full[-1]["val_acc"]) <= 0.05


def test_random_weights_features_are_never_shared_across_trial_seeds(small_digits, tmp_path):
    """Random weights are drawn from the trial seed: another seed or repeat is another frozen network."""
    settings = dict(weights="random", unfreeze_depth=0)
    first = list(run_trial(trial_config(tmp_path, seed=0, **settings), small_digits))
    assert first[0]["cache"] == "built"
    for other in (dict(seed=1), dict(seed=0, repeat=1)):
        cached = list(run_trial(trial_config(tmp_path, **other, **settings), small_digits))
        assert cached[0]["cache"] == "built" and "reused" not in cached[0]["cache_note"], other
        uncached = list(run_trial(trial_config(tmp_path, feature_cache=False, **other, **settings), small_digits))
        assert_same_results(cached, uncached)


def test_pretrained_features_are_shared_across_trial_seeds_and_repeats(small_digits, tmp_path):
    list(run_trial(trial_config(tmp_path, seed=0, epochs=1), small_digits))
    for other in (dict(seed=1), dict(seed=0, repeat=1)):
        (report,) = run_trial(trial_config(tmp_path, epochs=1, **other), small_digits)
        assert report["cache"] == "reused" and "built" not in report["cache_note"], other


@pytest.mark.parametrize("fault", ["full disk", "cache directory is a file"])
def test_features_that_cannot_be_cached_stay_in_the_trial_s_memory_and_its_cache_note_says_why(
    fault, small_digits, tmp_path, monkeypatch, capsys
):
    """The cache is an optimisation: a full or unwritable data root costs the reuse, never the trial."""
    if fault == "full disk":
        monkeypatch.setattr(torch, "save", torch_save_on_a_full_disk)
        reason = f"torch.save failed in {tmp_path / CACHE_DIR}: [enforce fail at inline_container.cc:672]"
    else:
        (tmp_path / CACHE_DIR).write_text("a file where the cache directory should be")
        reason = f"{tmp_path / CACHE_DIR} cannot be written (File exists)"
    cached = list(run_trial(trial_config(tmp_path, epochs=1), small_digits))
    assert (
        cached[0]["cache"] == "built"
        and f"train: built from images through global_pool_flatten, kept in this trial's memory only: {reason}"
        in cached[0]["cache_note"]
    )
    assert "note: the train features are kept in this trial's memory" in capsys.readouterr().out
    assert not list(tmp_path.rglob("*.pt"))
    uncached = list(run_trial(trial_config(tmp_path, feature_cache=False, epochs=1), small_digits))
    assert_same_results(cached, uncached)
