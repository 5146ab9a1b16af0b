"""Model surgery: heads, units, BatchNorm insertion, frozen-part norm settings, for every backbone of the documents."""

import copy
import itertools

import pytest
import timm
import torch
from torch import nn

from study.core.config import StudyError, TrialConfig
from study.trial.backbones import create_backbone, structure_only
from study.trial.freeze import INSERTED_BN, apply_freeze, freeze_plan
from study.trial.heads import head_modules
from study.trial.layers import weight_layers
from study.trial.train import build_trial

# (backbone, head): the documents' models and the small ones used on CPU
MODELS = [
    ("vgg16", "linear"),
    ("vgg16", "single_linear"),
    ("resnet50", "linear"),
    ("densenet201", "linear"),
    ("vit_base_patch16_224", "linear"),
    ("mobilenetv2_100", "linear"),
    ("tf_efficientnet_lite0", "linear"),
    ("resnet18", "linear"),
    ("vit_tiny_patch16_224", "linear"),
]
UNITS = ("layer", "block", "stage")
DEPTHS = (0, 1, 3, "all")
SWITCHES = list(itertools.product(("none", "before_retrained_conv"), (False, True), ("eval", "train")))


def is_vit(backbone: str) -> bool:
    return backbone.startswith("vit_")


def expected(model: nn.Module, layers, unit: str, depth, train_bn_affine: bool) -> tuple[set, set]:
    """(every trainable parameter, those of the trained units), from the definitions rather than the plan:
    layers with what rides with them, or timm's own parameter groups for blocks and stages."""
    head_prefix = head_modules(model)[0] + "."
    names = [name for name, _ in model.named_parameters() if INSERTED_BN not in name]
    head = {name for name in names if name.startswith(head_prefix)}
    if unit == "layer":
        count = len(layers) if depth == "all" else depth
        trained = {name for layer in layers[len(layers) - count :] for name in layer.params}
    else:
        group_of = timm.models.group_parameters(model, model.group_matcher(coarse=unit == "stage"), reverse=True)
        groups = list(dict.fromkeys(group_of[f"{layer.name}.weight"] for layer in layers))
        count = len(groups) if depth == "all" else depth
        chosen = set(groups[len(groups) - count :])
        trained = {name for name, group in group_of.items() if group in chosen} - head
        # groups without a layer (DenseNet's final norm5 sits with the head in timm's groups) go with their layer
        trained |= {
            name
            for layer in layers
            if group_of[f"{layer.name}.weight"] in chosen
            for name in layer.params
            if group_of[name] not in groups
        }
    norms = set()
    if (
        train_bn_affine
    ):  # every norm layer's affine parameters: those of the frozen part are added, the others train anyway
        norms = {
            f"{module_name}.{p}"
            for module_name, module in model.named_modules()
            if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)) and INSERTED_BN not in module_name
            for p, _ in module.named_parameters(recurse=False)
        }
    return head | trained | norms, trained


@pytest.mark.parametrize("backbone, head", MODELS)
def test_every_combination_trains_exactly_what_it_says(backbone, head):
    """For each unit, depth and switch: requires_grad, the inserted BatchNorm and every norm layer's mode in train()."""
    if not backbone.startswith("vgg"):  # one linear layer already: nothing to replace
        with pytest.raises(StudyError, match=f"{backbone} is not a timm VGG model.*use head=linear"):
            structure_only(backbone, 10, "single_linear")
    pristine = structure_only(backbone, 10, head)
    layers = weight_layers(pristine)
    checked = 0
    for unit, depth, (bn_insert, train_bn_affine, frozen_bn) in itertools.product(UNITS, DEPTHS, SWITCHES):
        settings = dict(
            unit=unit, bn_insert=bn_insert, train_bn_affine=train_bn_affine, frozen_bn=frozen_bn, layers=layers
        )
        if bn_insert != "none" and is_vit(backbone):
            with pytest.raises(StudyError, match="has no conv layer after its input layer.*use bn_insert=none"):
                freeze_plan(pristine, depth, backbone, **settings)
            continue
        plan = freeze_plan(pristine, depth, backbone, **settings)
        model = copy.deepcopy(pristine) if plan.inserted_bn else pristine  # insertion changes the model
        transfer = apply_freeze(model, plan).train()
        context = f"{backbone} {head} {unit} depth={depth} {bn_insert} affine={train_bn_affine} frozen_bn={frozen_bn}"

        want, trained = expected(model, layers, unit, depth, train_bn_affine)
        trained_convs = [layer.name for layer in layers if layer.kind == "conv" and f"{layer.name}.weight" in trained]
        inserted = [name.rpartition(".")[0] for name, _ in model.named_modules() if name.endswith("." + INSERTED_BN)]
        if bn_insert == "none":
            assert inserted == [] and plan.inserted_bn == {}, context
        else:
            assert inserted == trained_convs == list(plan.inserted_bn), (
                context
            )  # one per retrained conv layer, in order
            want |= {f"{conv}.{INSERTED_BN}.{p}" for conv in trained_convs for p in ("weight", "bias")}
            for conv in trained_convs:
                assert (
                    model.get_submodule(conv).get_submodule(INSERTED_BN).num_features
                    == model.get_submodule(conv).in_channels
                )
        requires_grad = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
        assert requires_grad == want, (
            f"{context}: extra {sorted(requires_grad - want)[:3]}, missing {sorted(want - requires_grad)[:3]}"
        )
        assert plan.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad), context
        assert plan.total_params == sum(p.numel() for p in model.parameters()), context

        for name, module in model.named_modules():
            if isinstance(module, nn.BatchNorm2d):
                # frozen BatchNorm keeps its statistics unless frozen_bn=train; trained and inserted ones learn them
                learns = INSERTED_BN in name or f"{name}.weight" in trained or frozen_bn == "train"
                assert module.training == learns, f"{context}: {name}"
            elif isinstance(module, nn.LayerNorm):
                assert module.training, f"{context}: {name}"  # no statistics: its mode changes nothing
        assert transfer.training
        checked += 1
    assert checked == len(UNITS) * len(DEPTHS) * len(SWITCHES) // (2 if is_vit(backbone) else 1)


@pytest.mark.parametrize("backbone, head", MODELS)
def test_a_training_step_on_the_meta_device_reaches_exactly_the_trainable_parameters(backbone, head):
    """Forward and backward through the surgically changed model: gradients and norm modes as the plan says."""
    model = structure_only(backbone, 10, head)
    bn_insert = "none" if is_vit(backbone) else "before_retrained_conv"
    plan = freeze_plan(model, 1, backbone, unit="block", bn_insert=bn_insert, train_bn_affine=True)
    transfer = apply_freeze(model, plan)
    modes = {}

    def record_mode(name):
        def hook(module, _inputs) -> None:
            modes.setdefault(name, module.training)

        return hook

    hooks = [
        module.register_forward_pre_hook(record_mode(name))
        for name, module in model.named_modules()
        if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm))
    ]
    transfer.train()
    transfer(torch.zeros(2, *model.pretrained_cfg["input_size"], device="meta")).sum().backward()
    for hook in hooks:
        hook.remove()
    assert {name for name, p in model.named_parameters() if p.grad is not None} == plan.trainable
    in_eval = {name for name, training in modes.items() if not training}
    assert in_eval == set(plan.eval_norms)
    assert {name for name in modes if name.endswith(INSERTED_BN)} == {
        f"{conv}.{INSERTED_BN}" for conv in plan.inserted_bn
    }
    assert len(plan.inserted_bn) == sum(layer.kind == "conv" for layer in plan.trained_layers)


@pytest.mark.parametrize(
    "backbone, settings",
    [
        (
            "resnet18",
            dict(unit="block", depth=1, bn_insert="before_retrained_conv", train_bn_affine=True, frozen_bn="eval"),
        ),
        ("resnet18", dict(unit="layer", depth=3, bn_insert="none", train_bn_affine=False, frozen_bn="train")),
        (
            "mobilenetv2_100",
            dict(unit="stage", depth=1, bn_insert="before_retrained_conv", train_bn_affine=False, frozen_bn="eval"),
        ),
        (
            "tf_efficientnet_lite0",
            dict(unit="block", depth=2, bn_insert="none", train_bn_affine=True, frozen_bn="train"),
        ),
        ("vit_tiny_patch16_224", dict(unit="block", depth=1, bn_insert="none", train_bn_affine=True, frozen_bn="eval")),
    ],
)
def test_a_real_training_step_moves_only_what_trains(backbone, settings):
    """Real weights and gradients on CPU: parameters and BatchNorm statistics change exactly where the plan says."""
    model, _ = create_backbone(backbone, "random", 10, seed=0, img_size=32)
    depth = settings.pop("depth")
    plan = freeze_plan(model, depth, backbone, **settings)
    transfer = apply_freeze(model, plan)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    transfer.train()
    images, labels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(transfer(images), labels).backward()
    optimizer.step()

    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert {name for name, p in model.named_parameters() if p.grad is not None} == plan.trainable
    # plain SGD moves a parameter exactly when its gradient is not zero (timm zero-initialises some residual
    # branches' last BatchNorm, so a few trainable parameters see exactly zero gradient in a random network)
    # (and a gradient below float resolution moves nothing)
    pushed = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().max() > 0}
    clearly = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().max() > 1e-4}
    assert clearly <= changed & dict(model.named_parameters()).keys() <= pushed
    assert head_modules(model)[0] + ".weight" in pushed and len(pushed) > len(plan.trainable) / 2
    statistics = {name.rpartition(".")[0] for name in before if name.endswith("running_mean")}
    moved = {name for name in statistics if f"{name}.running_mean" in changed}
    learning = {name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and m.training}
    assert moved == learning == statistics - set(plan.eval_norms)
    if settings["bn_insert"] != "none":
        assert {f"{conv}.{INSERTED_BN}" for conv in plan.inserted_bn} <= moved


def test_document_000_vgg16_target_and_bn_target_models_by_hand():
    """VGG16, its three FC layers replaced by ONE linear layer, "Target model n" = conv layers n..13 retrained."""
    model = structure_only("vgg16", 10, head="single_linear", img_size=32)
    layers = weight_layers(model)
    assert [layer.kind for layer in layers] == ["conv"] * 13 and layers[-1].name == "features.28"
    conv_512 = 3 * 3 * 512 * 512 + 512  # conv layers 9..13: 3x3 kernels, 512 -> 512 channels, with bias
    head = 512 * 10 + 10  # one linear layer on the pooled 512 features (Flatten at 32 px: the map is 1x1)
    vgg16_convs = 14_714_688  # the 13 conv layers (Keras' VGG16 without its top has exactly this many)
    target_13 = freeze_plan(model, 1, "vgg16", layers=layers)  # n = 13: depth 14 - n = 1
    assert target_13.trainable_params == conv_512 + head == 2_364_938
    assert target_13.total_params == vgg16_convs + head == 14_719_818
    bn_target_13 = freeze_plan(model, 1, "vgg16", bn_insert="before_retrained_conv", layers=layers)
    assert bn_target_13.inserted_bn == {"features.28": 512}
    assert bn_target_13.trainable_params == conv_512 + 2 * 512 + head == 2_365_962  # + gamma, beta of 512 channels
    bn_target_10 = freeze_plan(model, 4, "vgg16", bn_insert="before_retrained_conv", layers=layers)  # n = 10
    assert list(bn_target_10.inserted_bn) == ["features.21", "features.24", "features.26", "features.28"]
    assert bn_target_10.trainable_params == 4 * conv_512 + 4 * 2 * 512 + head == 9_448_458

    # The real BN Target model n = 13 on 32 px images: one step changes conv 13, its new BatchNorm and the head only.
    real, _ = create_backbone("vgg16", "random", 10, seed=0, img_size=32, head="single_linear")
    assert isinstance(real.pre_logits, nn.Identity) and real.get_classifier().in_features == 512
    transfer = apply_freeze(real, freeze_plan(real, 1, "vgg16", bn_insert="before_retrained_conv"))
    before = {name: tensor.clone() for name, tensor in real.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in real.parameters() if p.requires_grad], lr=0.01)
    transfer.train()
    nn.functional.cross_entropy(transfer(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    changed = {name for name, tensor in real.state_dict().items() if not torch.equal(before[name], tensor)}
    assert changed == {
        "features.28.weight",
        "features.28.bias",
        "head.fc.weight",
        "head.fc.bias",
        "features.28.inserted_bn.weight",
        "features.28.inserted_bn.bias",
        "features.28.inserted_bn.running_mean",
        "features.28.inserted_bn.running_var",
        "features.28.inserted_bn.num_batches_tracked",
    }


def test_single_linear_is_rejected_where_there_are_no_fully_connected_layers_to_replace():
    with pytest.raises(
        StudyError,
        match=r"resnet18 is not a timm VGG model and its classifier \(fc\) is one layer already: use head=linear",
    ):
        structure_only("resnet18", 10, head="single_linear")
    with pytest.raises(StudyError, match="vit_tiny_patch16_224 is not a timm VGG model"):
        create_backbone("vit_tiny_patch16_224", "random", 10, seed=0, img_size=32, head="single_linear")


def test_units_count_timm_blocks_and_stages_and_depth_beyond_them_is_an_error():
    model = structure_only("resnet50", 10)
    plan = freeze_plan(model, 2, "resnet50", unit="block")
    assert (plan.num_units, plan.unit_depth, plan.depth) == (
        17,
        2,
        6,
    )  # stem + 16 bottlenecks; two of them hold 3 convs each
    assert [layer.name for layer in plan.trained_layers] == [f"layer4.{b}.conv{c}" for b in (1, 2) for c in (1, 2, 3)]
    stage = freeze_plan(model, 1, "resnet50", unit="stage")
    assert (
        stage.num_units == 5 and stage.depth == 10 and stage.trained_layers[0].name == "layer4.0.conv1"
    )  # with the downsample
    with pytest.raises(StudyError, match="unfreeze_depth=18 exceeds the 17 blocks of resnet50"):
        freeze_plan(model, 18, "resnet50", unit="block")
    vit = freeze_plan(structure_only("vit_tiny_patch16_224", 10), 1, "vit_tiny_patch16_224", unit="block")
    assert (
        vit.depth == 4 and {"blocks.11.norm1.weight", "norm.weight"} <= vit.trainable
    )  # the block's own pre-norm goes with it


def test_frozen_prefix_ends_where_anything_trains_or_moves():
    resnet = structure_only("resnet18", 10)
    layers = weight_layers(resnet)
    assert freeze_plan(resnet, 2, "resnet18", layers=layers).frozen_prefix_layers == 18
    assert (
        freeze_plan(resnet, 2, "resnet18", layers=layers, bn_insert="before_retrained_conv").frozen_prefix_layers == 18
    )
    assert freeze_plan(resnet, 2, "resnet18", layers=layers, frozen_bn="train").frozen_prefix_layers == 0  # bn1 moves
    assert freeze_plan(resnet, 2, "resnet18", layers=layers, train_bn_affine=True).frozen_prefix_layers == 0
    vgg = structure_only("vgg16", 10, head="single_linear")
    assert (
        freeze_plan(vgg, 1, "vgg16", train_bn_affine=True, frozen_bn="train").frozen_prefix_layers == 12
    )  # no BatchNorm
    vit = structure_only("vit_tiny_patch16_224", 10)
    assert (
        freeze_plan(vit, 1, "vit_tiny_patch16_224", unit="block").frozen_prefix_layers == 44
    )  # norm1 rides with layer 45
    assert freeze_plan(vit, 1, "vit_tiny_patch16_224", train_bn_affine=True).frozen_prefix_layers == 0


def test_the_effective_column_says_what_each_setting_did():
    vit = freeze_plan(
        structure_only("vit_tiny_patch16_224", 10), 0, "vit_tiny_patch16_224", train_bn_affine=True, frozen_bn="train"
    )
    assert vit.effective == (
        "trains 0/49 layers; bn_inserted 0; norm_affine 25 LayerNorm; "
        "frozen_bn train has no effect (no BatchNorm in the frozen part)"
    )
    resnet = freeze_plan(structure_only("resnet18", 10), 1, "resnet18", unit="block", bn_insert="before_retrained_conv")
    assert resnet.effective == "trains 2/20 layers (last 1/9 blocks); bn_inserted 2; frozen_bn eval (18 BatchNorm)"
    vgg = freeze_plan(structure_only("vgg16", 10, head="single_linear"), 1, "vgg16", train_bn_affine=True)
    assert "norm_affine none (no norm layer in the frozen part)" in vgg.effective


def test_inserted_batchnorm_keeps_layer_numbers_and_names(small_digits):
    """After insertion the layers are those of the unmodified model; each new BatchNorm rides with its conv."""
    model = structure_only("resnet18", 10)
    before = weight_layers(model)
    apply_freeze(model, freeze_plan(model, 2, "resnet18", bn_insert="before_retrained_conv"))
    after = weight_layers(model)
    assert [layer.name for layer in after] == [layer.name for layer in before]
    assert set(after[-1].params) == set(before[-1].params) | {
        f"layer4.1.conv2.{INSERTED_BN}.weight",
        f"layer4.1.conv2.{INSERTED_BN}.bias",
    }
    assert all(a.params == b.params for a, b in zip(after[:-2], before[:-2]))
    assert f"layer4.1.conv2.{INSERTED_BN}" in after[-1].norms

    trial = build_trial(
        TrialConfig(
            backbone="resnet18",
            weights="random",
            img_size=32,
            unfreeze_unit="block",
            unfreeze_depth=1,
            bn_insert="before_retrained_conv",
        ),
        small_digits,
    )
    info = trial.info()
    assert info["inserted_bn"] == 2 and info["unfrozen_layers"] == 2 and "bn_inserted 2" in info["effective"]


def test_distilled_models_get_both_heads_new_and_trained():
    model = structure_only("deit_tiny_distilled_patch16_224", 10)
    plan = freeze_plan(model, 0, "deit_tiny_distilled_patch16_224")
    assert plan.trainable == {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}
    assert plan.trainable_params == 2 * (192 * 10 + 10) and len(plan.layers) == 49
