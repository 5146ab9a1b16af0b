import ast
import dataclasses
from pathlib import Path

import pytest

import study
from study.core.config import StudyError
from study.core.registry import SEARCHES
from study.core.space import Space, available_spaces, load_space
from study.tune.search import param_space
from tests.helpers import write_space

SHIPPED = {
    "unfreeze_depth",
    "bn_insertion",
    "optimizer",
    "augmentation",
    "backbone",
    "full",
    "smoke",
    "paper_000_bn_target",
    "paper_001_transfer_vs_finetune",
    "paper_004_unfreeze_k",
}


def test_every_shipped_space_loads():
    assert SHIPPED <= set(available_spaces())
    for name in available_spaces():
        space = load_space(name)
        assert space.example_configs() and space.description and space.search in SEARCHES


def test_the_full_space_searches_every_dimension_with_multi_objective_tpe_and_asha():
    full = load_space("full")
    assert full.search == "optuna_mo" and full.asha and full.metric == "val_acc"
    assert set(full.dimensions) == {
        "backbone",
        "unfreeze_depth",
        "bn_insert",
        "train_bn_affine",
        "optimizer",
        "lr",
        "weight_decay",
        "augment",
        "batch_size",
    }


def test_the_document_spaces_are_the_documents_experiments():
    bn = load_space("paper_000_bn_target")
    assert (bn.fixed["backbone"], bn.fixed["head"], bn.fixed["data"]) == ("vgg16", "single_linear", "cifar10")
    assert bn.dimensions["unfreeze_depth"].values == list(range(1, 14))  # Target model n = 14 - depth, n = 13..1
    assert bn.dimensions["bn_insert"].values == ["none", "before_retrained_conv"]
    transfer = load_space("paper_001_transfer_vs_finetune")
    assert [name.split(".")[0] for name in transfer.dimensions["backbone"].values] == [
        "resnet50",
        "densenet201",
        "vit_base_patch16_224",
    ]
    assert transfer.dimensions["unfreeze_depth"].values == [0, "all"] and transfer.dimensions["optimizer"].values == [
        "sgd",
        "adam",
    ]
    assert (
        transfer.fixed["data"],
        transfer.fixed["img_size"],
        transfer.fixed["lr"],
        transfer.fixed["momentum"],
        transfer.fixed["batch_size"],
    ) == ("stl10", 224, 0.001, 0.9, 50)
    assert transfer.max_epochs == 50 and set(transfer.dimensions["augment"].values) == {
        "none",
        "pspnet",
        "augmix",
        "cutmix_mixup",
    }
    k = load_space("paper_004_unfreeze_k")
    # the document's protocol: the head alone for 3 epochs, then the top K layers with it for 3 more
    assert (k.fixed["backbone"], k.fixed["data"], k.max_epochs, k.fixed["head_warmup_epochs"]) == (
        "mobilenetv2_100",
        "oxford_pets_binary",
        6,
        3,
    )
    assert k.dimensions["train_fraction"].values == [0.1, 0.2]
    # the document's K (Keras layers, 154) as conv layers of the same MobileNetV2 (study/trial/layers.py's layers)
    assert k.dimensions["unfreeze_depth"].values == [0, 1, 2, 3, 5, 6, 7, 8, 10, 20, 34]


def test_default_space_is_the_depth_grid():
    space = load_space("unfreeze_depth")
    assert space.dimensions["unfreeze_depth"].kind == "grid"
    assert space.dimensions["unfreeze_depth"].values[0] == 0 and space.dimensions["unfreeze_depth"].values[-1] == "all"
    assert space.asha["grace_period"] >= 1 and space.metric == "val_acc" and space.mode == "max"


def test_the_front_spaces_stop_trials_by_pareto_rank_and_single_metric_asha_stays_available(tmp_path):
    for name in ("unfreeze_depth", "full", "backbone", "smoke"):
        assert load_space(name).asha["objectives"] == "pareto", name
    assert load_space("optimizer").asha["objectives"] == "metric"  # single-objective TPE on val_acc
    minimal = "fixed: {backbone: tf_efficientnet_lite0, data: digits}\nasha: {grace_period: 1}\n"
    assert load_space(write_space(tmp_path, minimal)).asha["objectives"] == "pareto"  # the default
    recorded = dataclasses.asdict(load_space("smoke"))
    recorded["asha"].pop("objectives")  # a study.json written before the choice existed ran Ray's ASHA
    assert Space.from_record(recorded).asha["objectives"] == "metric"


def test_param_space_maps_every_kind_to_ray(tmp_path):
    space = load_space(
        write_space(
            tmp_path,
            """
        fixed: {backbone: resnet18}
        dimensions:
          unfreeze_depth: {grid: [0, 1]}
          optimizer: {choice: [sgd, adam]}
          lr: {loguniform: [1e-4, 1.0e-2]}
          momentum: {uniform: [0.8, 0.99]}
          batch_size: {randint: [16, 17]}
        max_epochs: 3
        """,
        )
    )
    params = param_space(space)
    assert params["backbone"] == "resnet18" and params["epochs"] == 3
    assert params["unfreeze_depth"] == {"grid_search": [0, 1]}
    assert params["optimizer"].categories == ["sgd", "adam"]
    assert (params["lr"].lower, params["lr"].upper) == (1e-4, 1e-2)
    # randint: both ends included in spaces, so Ray's exclusive upper bound is one more
    assert {params["batch_size"].sample() for _ in range(200)} == {16, 17}


def test_only_the_ray_layer_imports_ray():
    """Ray's API churns: study/tune alone imports it (at any depth, lazy imports included)."""
    package = Path(study.__file__).parent
    importers = set()
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name == "ray" or name.startswith("ray.") for name in names):
                importers.add(path.relative_to(package).parts[0])
    assert importers == {"tune"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("fixd: {lr: 0.1}\n", r"unknown key 'fixd' \(did you mean 'fixed'\?\)"),
        ("fixed: {learning_rate: 0.1}\n", r"unknown setting 'fixed.learning_rate'"),
        ("fixed: {epochs: 3}\n", r"unknown setting 'fixed.epochs'.*use max_epochs"),
        ("fixed: {lr: fast}\n", r"setting 'lr' must be float, got 'fast'"),
        ("fixed: {batch_size: true}\n", r"setting 'batch_size' must be int, got True"),
        ("dimensions: {depth: {grid: [1, 2]}}\n", r"unknown setting 'dimensions.depth'"),
        (
            "dimensions: {lr: {logunifrom: [0.1, 1]}}\n",
            r"unknown dimension kind 'logunifrom' \(did you mean 'loguniform'\?\)",
        ),
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
        ("asha: {grace: 1}\n", r"unknown key 'asha.grace' \(valid: grace_period, objectives, reduction_factor\)"),
        ("asha: {objectives: hypervolume}\n", r"asha.objectives must be pareto .* or metric"),
        ("asha: {reduction_factor: 1}\n", r"reduction_factor must be a number > 1"),
        ("metric: val_accuracy\n", r"metric 'val_accuracy' is unknown \(did you mean 'val_acc'\?\)"),
        ("fixed: [1, 2]\n", r"'fixed' must be a mapping"),
        ("- just\n- a list\n", r"a space is a YAML mapping"),
        ("fixed: {lr: 0.1\n", r"not valid YAML"),
        ("repeats: 0\n", r"repeats=0 is outside 1..1000"),
        ("repeats: -1\n", r"repeats=-1 is outside 1..1000"),
        ("repeats: 1001\n", r"repeats=1001 is outside 1..1000"),
        ("repeats: 1.5\n", r"'repeats' must be int, got 1.5"),
        ("repeats: '3'\n", r"'repeats' must be int, got '3'"),
        ("repeats: true\n", r"'repeats' must be int, got True"),
        (
            "dimensions: {lr: {choice: [0.1, 0.2]}}\nsearch: optuna\nrepeats: 3\n",
            r"repeats=3 needs search grid or random: Optuna proposes each configuration once",
        ),
        ("fixed: {repeat: 1}\n", r"'repeat' is numbered by the study .*write `repeats: N`"),
        ("dimensions: {repeat: {grid: [0, 1]}}\n", r"'repeat' is numbered by the study"),
        ("fixed: {data_fingerprint: 0123abcd}\n", r"'data_fingerprint' is set by the study, from the data's files"),
        ("dimensions: {data_fingerprint: {grid: [a, b]}}\n", r"'data_fingerprint' is set by the study"),
    ],
)
def test_mistakes_are_one_line_errors_naming_file_and_key(tmp_path, text, message):
    path = write_space(tmp_path, text)
    with pytest.raises(StudyError, match=message) as caught:
        load_space(path)
    assert str(caught.value).startswith(path) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "dimensions: {lr: {uniform: [0.1, 0.2]}}\nsearch: grid\n",
            r"search grid runs grid dimensions only, but 'lr' is uniform",
        ),
        (
            "dimensions: {lr: {grid: [0.1, 0.2]}}\nsearch: optuna\n",
            r"search optuna samples every dimension \(TPE\), but 'lr' is a grid: write it as \{choice: \[0.1, 0.2\]\}",
        ),
        ("search: optuna_mo\n", r"search optuna_mo needs at least one dimension to sample"),
        ("search: tpe\n", r"search 'tpe' is unknown \(valid: grid, optuna, optuna_mo, random\)"),
        ("search: [grid]\n", r"'search' must be str"),
    ],
)
def test_search_mistakes_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(StudyError, match=message):
        load_space(write_space(tmp_path, text))


def test_search_defaults_to_grid_for_grids_only_and_to_random_otherwise(tmp_path):
    assert load_space(write_space(tmp_path, "dimensions: {lr: {grid: [0.1, 0.2]}}\n")).search == "grid"
    assert (
        load_space(write_space(tmp_path, "dimensions: {lr: {grid: [0.1]}, momentum: {uniform: [0.8, 0.9]}}\n")).search
        == "random"
    )
    assert load_space(write_space(tmp_path, "fixed: {lr: 0.1}\n")).search == "grid"


def test_a_space_comes_back_from_its_record_in_study_json():
    import dataclasses
    import json

    space = load_space("full")
    assert Space.from_record(json.loads(json.dumps(dataclasses.asdict(space)))) == space


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


def test_repeats_are_recorded_with_the_space_and_counted_in_its_planned_trials(tmp_path):
    import json

    from study.analysis.page import planned_trial_count

    space = load_space(write_space(tmp_path, "dimensions: {unfreeze_depth: {grid: [0, 2]}}\nrepeats: 3\n"))
    assert space.repeats == 3 and load_space("smoke").repeats == 1
    record = json.loads(json.dumps(dataclasses.asdict(space)))  # as study.json keeps it
    assert Space.from_record(record) == space and planned_trial_count({"space": record}) == 6
    record.pop("repeats")  # a study.json written before repeats existed
    assert Space.from_record(record).repeats == 1 and planned_trial_count({"space": record}) == 2
    assert space.override({}, repeats=5).repeats == 5
    with pytest.raises(StudyError, match="--repeats N, not --set repeat="):
        space.override({"repeat": 1})
    with pytest.raises(StudyError, match="^--set data_fingerprint: the study sets it, .*: leave it out$"):
        space.override({"data_fingerprint": "0123abcd"})
    with pytest.raises(StudyError, match="repeats=2 needs search grid or random"):
        load_space("optimizer").override({}, repeats=2)
