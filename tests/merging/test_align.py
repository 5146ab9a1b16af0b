import pytest
import timm
import torch
from torch import nn

from study.core.config import StudyError
from study.merging.align import permutation_spec, permute, weight_matching
from study.merging.interpolation import interpolate


class InvertedResidual(nn.Module):
    """1x1 expand, depthwise 3x3, 1x1 project, plus the input: the residual ties input and output channels."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.expand = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x):
        y = nn.functional.relu6(self.bn1(self.expand(x)))
        y = nn.functional.relu6(self.bn2(self.depthwise(y)))
        return x + self.bn3(self.project(y))


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = InvertedResidual(8, 16)
        self.down = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.block2 = InvertedResidual(12, 24)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = self.block1(torch.relu(self.bn(self.stem(x))))
        x = self.block2(torch.relu(self.down(x)))
        return self.head(self.pool(x).flatten(1))


class Branches(nn.Module):
    """Concatenation: an operation the alignment does not permute through."""

    def __init__(self):
        super().__init__()
        self.left, self.right = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)
        self.mix = nn.Conv2d(8, 6, 1)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.out(torch.relu(self.mix(torch.cat([self.left(x), self.right(x)], 1)))).mean((2, 3))


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, so that a wrong permutation of them shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.randn(module.num_features, generator=generator))
                module.bias.copy_(torch.randn(module.num_features, generator=generator))
    return model.eval()


def random_perms(spec, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(group.size, generator=generator) for group in spec.groups]


def outputs(model: nn.Module, state: dict, images: torch.Tensor) -> torch.Tensor:
    model.load_state_dict(state)
    with torch.no_grad():
        return model.eval()(images)


def test_groups_follow_residuals_depthwise_convs_and_batchnorm():
    torch.manual_seed(0)
    spec = permutation_spec(TinyNet(), torch.randn(2, 3, 16, 16))
    groups = {group.size: set(group.axes) for group in spec.groups}
    assert sorted(groups) == [8, 12, 16, 24] and not spec.fixed
    # the residual stream of block1: stem output, its BN, block1's projection and BN, read by expand and down
    assert groups[8] == {
        ("stem.weight", 0),
        ("stem.bias", 0),
        *((f"bn.{k}", 0) for k in ("weight", "bias", "running_mean", "running_var")),
        ("block1.expand.weight", 1),
        ("block1.project.weight", 0),
        ("down.weight", 1),
        *((f"block1.bn3.{k}", 0) for k in ("weight", "bias", "running_mean", "running_var")),
    }
    # depthwise: the expand conv's channels pass through it
    assert {("block1.expand.weight", 0), ("block1.depthwise.weight", 0), ("block1.project.weight", 1)} <= groups[16]
    assert ("head.weight", 1) in groups[12] and not any(
        key == "head.weight" and dim == 0 for g in spec.groups for key, dim in g.axes
    )


@pytest.mark.parametrize("build", [TinyNet, Branches], ids=["residual-depthwise", "concat"])
def test_a_permuted_copy_computes_the_same_function_and_aligns_back(build):
    torch.manual_seed(0)
    model = randomised(build(), seed=1)
    images = torch.randn(4, 3, 16, 16)
    spec = permutation_spec(model, images)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    permuted = permute(state, spec, random_perms(spec, seed=2))
    assert any(not torch.equal(permuted[k], state[k]) for k in state)
    reference = outputs(model, state, images)
    torch.testing.assert_close(outputs(model, permuted, images), reference, rtol=1e-5, atol=1e-5)

    # without alignment, averaging a model with its permuted copy is another function
    assert not torch.allclose(outputs(model, interpolate(state, permuted, 0.5, state), images), reference, atol=1e-3)
    # weight matching finds the permutation back: the aligned copy is the model, so every merge is the model
    parameters = [name for name, _ in model.named_parameters()]
    aligned = permute(permuted, spec, weight_matching(state, permuted, spec, parameters))
    assert all(torch.equal(aligned[k], state[k]) for k in state)
    torch.testing.assert_close(
        outputs(model, interpolate(state, aligned, 0.5, state), images), reference, rtol=0, atol=0
    )


def test_concatenation_is_kept_in_place_and_named():
    spec = permutation_spec(Branches(), torch.randn(1, 3, 8, 8))
    assert spec.fixed["cat"] == 1
    assert [group.size for group in spec.groups] == [6]  # only mix -> out stays permutable
    assert "kept in place by: cat x1" in spec.describe()


def test_efficientnet_lite0_permuted_copy_is_the_same_function_and_aligns_back():
    torch.manual_seed(0)
    model = randomised(timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=5), seed=3)
    images = torch.randn(2, 3, 32, 32)
    spec = permutation_spec(model, images)
    state = model.state_dict()
    parameters = [name for name, _ in model.named_parameters()]
    # every tensor of this CNN is permuted along some dimension, except the logits' bias
    assert set(parameters) - set(spec.axes_by_key()) == {"classifier.bias"} and not spec.fixed
    permuted = permute(state, spec, random_perms(spec, seed=4))
    reference = outputs(model, state, images)
    torch.testing.assert_close(outputs(model, permuted, images), reference, rtol=1e-4, atol=1e-4)
    aligned = permute(permuted, spec, weight_matching(state, permuted, spec, parameters))
    assert all(torch.equal(aligned[k], state[k]) for k in state)


def test_a_model_torch_fx_cannot_trace_is_a_one_line_error():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else -self.conv(x)

    with pytest.raises(
        StudyError,
        match=r"^cannot align DataDependent: torch.fx cannot trace it \(TraceError: .*\): merge without --align$",
    ):
        permutation_spec(DataDependent(), torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize(
    "backbone, size, kept_in_place_by",
    [
        ("resnet18", 32, set()),
        ("densenet121", 32, {"cat"}),
        ("vit_tiny_patch16_224", 224, {"Linear", "layer_norm", "scaled_dot_product_attention"}),
    ],
)
def test_coverage_of_other_backbones_is_as_documented_and_always_function_preserving(backbone, size, kept_in_place_by):
    torch.manual_seed(0)
    model = randomised(timm.create_model(backbone, pretrained=False, num_classes=3), seed=5)
    images = torch.randn(2, 3, size, size)
    spec = permutation_spec(model, images)
    assert kept_in_place_by <= set(spec.fixed) and bool(spec.fixed) == bool(kept_in_place_by)
    if backbone.startswith("vit"):
        assert spec.groups == []  # nothing is permuted in a ViT
        return
    state = model.state_dict()
    torch.testing.assert_close(
        outputs(model, permute(state, spec, random_perms(spec, seed=6)), images),
        outputs(model, state, images),
        rtol=1e-4,
        atol=1e-4,
    )
