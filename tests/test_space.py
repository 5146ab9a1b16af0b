import textwrap

import pytest

from study.config import StudyError
from study.space import available_spaces, load_space


def write_space(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_every_shipped_space_loads():
    assert {"smoke", "unfreeze_depth"} <= set(available_spaces())
    for name in available_spaces():
        space = load_space(name)
        assert space.example_configs()


def test_default_space_is_the_depth_grid():
    space = load_space("unfreeze_depth")
    assert space.dimensions["unfreeze_depth"].kind == "grid"
    assert space.dimensions["unfreeze_depth"].values[0] == 0 and space.dimensions["unfreeze_depth"].values[-1] == "all"
    assert space.asha["grace_period"] >= 1 and space.metric == "val_acc" and space.mode == "max"


def test_param_space_maps_every_kind_to_ray(tmp_path):
    space = load_space(write_space(tmp_path, """
        fixed: {backbone: resnet18}
        dimensions:
          unfreeze_depth: {grid: [0, 1]}
          optimizer: {choice: [sgd, adam]}
          lr: {loguniform: [1e-4, 1.0e-2]}
          momentum: {uniform: [0.8, 0.99]}
          batch_size: {randint: [16, 17]}
        max_epochs: 3
        """))
    params = space.param_space()
    assert params["backbone"] == "resnet18" and params["epochs"] == 3
    assert params["unfreeze_depth"] == {"grid_search": [0, 1]}
    assert params["optimizer"].categories == ["sgd", "adam"]
    assert (params["lr"].lower, params["lr"].upper) == (1e-4, 1e-2)
    # randint: both ends included in spaces, so Ray's exclusive upper bound is one more
    assert {params["batch_size"].sample() for _ in range(200)} == {16, 17}


@pytest.mark.parametrize(
    "text, message",
    [
        ("fixd: {lr: 0.1}\n", r"unknown key 'fixd' \(did you mean 'fixed'\?\)"),
        ("fixed: {learning_rate: 0.1}\n", r"unknown setting 'fixed.learning_rate'"),
        ("fixed: {epochs: 3}\n", r"unknown setting 'fixed.epochs'.*use max_epochs"),
        ("fixed: {lr: fast}\n", r"setting 'lr' must be float, got 'fast'"),
        ("fixed: {batch_size: true}\n", r"setting 'batch_size' must be int, got True"),
        ("dimensions: {depth: {grid: [1, 2]}}\n", r"unknown setting 'dimensions.depth'"),
        ("dimensions: {lr: {logunifrom: [0.1, 1]}}\n", r"unknown dimension kind 'logunifrom' \(did you mean 'loguniform'\?\)"),
        ("dimensions: {lr: {loguniform: [0, 1]}}\n", r"dimensions.lr: loguniform needs low > 0"),
        ("dimensions: {batch_size: {randint: [5, 2]}}\n", r"dimensions.batch_size: empty range \[5, 2\]"),
        ("dimensions: {lr: {uniform: [0.1, 0.1]}}\n", r"empty range"),
        ("dimensions: {batch_size: {uniform: [8, 64]}}\n", r"uniform draws floats but 'batch_size' is"),
        ("dimensions: {optimizer: {grid: []}}\n", r"grid needs a non-empty list"),
        ("dimensions: {optimizer: {grid: [sgd, adamx]}}\n", r"dimensions.optimizer: optimizer='adamx' is unknown"),
        ("dimensions: {lr: [0.1, 0.2]}\n", r"dimensions.lr must be one of"),
        ("fixed: {lr: 0.1}\ndimensions: {lr: {grid: [0.1]}}\n", r"'lr' is both fixed and a dimension"),
        ("num_samples: 0\n", r"num_samples=0 must be at least 1"),
        ("max_epochs: two\n", r"'max_epochs' must be int"),
        ("max_epochs: 2\nasha: {grace_period: 3}\n", r"asha.grace_period=3 exceeds max_epochs=2"),
        ("asha: {grace: 1}\n", r"unknown key 'asha.grace' \(valid: grace_period, reduction_factor\)"),
        ("asha: {reduction_factor: 1}\n", r"reduction_factor must be a number > 1"),
        ("metric: val_accuracy\n", r"metric 'val_accuracy' is unknown \(did you mean 'val_acc'\?\)"),
        ("fixed: [1, 2]\n", r"'fixed' must be a mapping"),
        ("- just\n- a list\n", r"a space is a YAML mapping"),
        ("fixed: {lr: 0.1\n", r"not valid YAML"),
    ],
)
def test_mistakes_are_one_line_errors_naming_file_and_key(tmp_path, text, message):
    path = write_space(tmp_path, text)
    with pytest.raises(StudyError, match=message) as caught:
        load_space(path)
    assert str(caught.value).startswith(path) and "\n" not in str(caught.value)


def test_unknown_space_lists_the_available_ones(tmp_path):
    with pytest.raises(StudyError, match=r"unknown space 'unfreeze'.*did you mean 'unfreeze_depth'"):
        load_space("unfreeze")
    with pytest.raises(StudyError, match="does not exist"):
        load_space(str(tmp_path / "missing.yaml"))


def test_cli_settings_replace_fixed_values_and_dimensions():
    space = load_space("unfreeze_depth").override({"unfreeze_depth": 3, "lr": 0.01}, max_epochs=2)
    assert "unfreeze_depth" not in space.dimensions
    assert space.fixed["unfreeze_depth"] == 3 and space.fixed["lr"] == 0.01 and space.max_epochs == 2
    with pytest.raises(StudyError, match="--max-epochs"):
        space.override({"epochs": 3})
    with pytest.raises(StudyError, match="optimizer='rmsprop' is unknown"):
        space.override({"optimizer": "rmsprop"})
