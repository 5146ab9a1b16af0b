"""study/cli/layers.py, `python -m study.layers`: the numbered layers of a backbone, its trainable parameters at
every depth, and what one configuration's surgery and protocol settings train."""

from study.cli import layers
from tests.helpers import run_module


def test_layers_cli_numbers_layers_and_counts_trainable_params_per_depth():
    result = run_module("study.layers", "tf_efficientnet_lite0", "--num-classes", "10")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "total params: 3383818" in lines
    assert "trainable params at depth 0: 12810" in lines
    assert "trainable params at depth 49: 3383818" in lines
    assert sum(line.startswith("trainable params at depth") for line in lines) == 50
    assert any(line.split()[:3] == ["1", "conv_stem", "conv"] for line in lines)


def test_layers_cli_takes_surgery_settings_and_counts_that_configuration(capsys):
    args = [
        "vgg16",
        "--num-classes",
        "10",
        "--set",
        "head=single_linear",
        "--set",
        "unfreeze_depth=1",
        "--set",
        "bn_insert=before_retrained_conv",
    ]
    assert layers.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("vgg16: 13 layers (conv and linear modules in forward order), 13 blocks, 13 stages")
    assert "trainable params: 2365962" in lines and "inserted BN layers: 1" in lines
    assert (
        "effective: trains 1/13 layers; bn_inserted 1; frozen_bn eval has no effect (no BatchNorm in the frozen part)"
        in lines
    )
    assert layers.main(["resnet18", "--set", "unfreeze_unit=block", "--set", "unfreeze_depth=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:6] == ["#", "layer", "kind", "params", "block", "stage"]
    assert lines[2].split()[:7] == ["1", "conv1", "conv", "9,536", "1", "1", "bn1"]  # 7x7x3x64 + BatchNorm(64)
    block_4_0 = (
        3 * 3 * 256 * 512 + 3 * 3 * 512 * 512 + 256 * 512 + 3 * 2 * 512
    )  # conv1, conv2, downsample conv, their BNs
    block_4_1 = 2 * 3 * 3 * 512 * 512 + 2 * 2 * 512
    assert f"trainable params: {block_4_0 + block_4_1 + 512 * 10 + 10}" in lines
    assert layers.main(["resnet18", "--set", "head=single_linear"]) == 2
    error = capsys.readouterr().err
    assert (
        error.startswith("error: head=single_linear replaces VGG's three fully connected layers")
        and error.count("\n") == 1
    )


def test_layers_cli_prints_each_trained_layer_s_learning_rate(capsys):
    assert layers.main(["tf_efficientnet_lite0", "--set", "unfreeze_depth=2", "--set", "layer_lr_decay=0.8"]) == 0
    out = capsys.readouterr().out
    assert "learning rates (lr=0.001 x layer_lr_decay=0.8 ** distance from the head in layers): head 0.001" in out
    assert "  49  conv_head            layer 49, distance 1: lr 0.0008" in out
    assert "  48  blocks.6.0.conv_pwl  layer 48, distance 2: lr 0.00064" in out
    assert "  47  " not in out.split("learning rates")[1]
