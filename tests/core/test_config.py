import pytest

from study.core.config import StudyError, TrialConfig, parse_assignment


def test_defaults_are_valid_and_resolved():
    config = TrialConfig()
    assert config.backbone == "tf_efficientnet_lite0" and config.unfreeze_depth == 0
    assert TrialConfig.from_dict(config.to_dict()) == config


def test_int_widens_to_float_but_nothing_else_converts():
    assert TrialConfig(lr=1).lr == 1.0 and isinstance(TrialConfig(lr=1).lr, float)
    with pytest.raises(StudyError, match="setting 'lr' must be float, got 'fast'"):
        TrialConfig(lr="fast")
    with pytest.raises(StudyError, match="setting 'batch_size' must be int, got True"):
        TrialConfig(batch_size=True)
    with pytest.raises(StudyError, match="setting 'batch_size' must be int, got 32.5"):
        TrialConfig(batch_size=32.5)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"lr": 0}, "lr=0.0 must be positive"),
        ({"lr": -0.1}, "lr=-0.1 must be positive"),
        ({"batch_size": 0}, "batch_size=0 must be positive"),
        ({"unfreeze_depth": -1}, "unfreeze_depth=-1 is invalid"),
        ({"unfreeze_depth": "most"}, "unfreeze_depth='most' is invalid"),
        ({"optimizer": "adamm"}, "optimizer='adamm' is unknown .did you mean 'adam'"),
        ({"weight_decay": -1.0}, "weight_decay=-1.0 is negative"),
        ({"head": "mlp"}, "head='mlp' is unknown .valid: linear, single_linear"),
        ({"unfreeze_unit": "blocks"}, "unfreeze_unit='blocks' is unknown .did you mean 'block'"),
        ({"bn_insert": "before_conv"}, "bn_insert='before_conv' is unknown .did you mean 'before_retrained_conv'"),
        ({"frozen_bn": "fixed"}, "frozen_bn='fixed' is unknown .valid: eval, train"),
        ({"train_bn_affine": "yes"}, "setting 'train_bn_affine' must be bool, got 'yes'"),
        ({"weights": "vgg16.bin"}, "weights='vgg16.bin' is neither imagenet nor random nor a path"),
        ({"train_fraction": 0}, r"train_fraction=0.0 is outside \(0, 1\]"),
        ({"train_fraction": 1.5}, r"train_fraction=1.5 is outside \(0, 1\]"),
        ({"augment": "cutmix"}, "augment='cutmix' is unknown .did you mean 'cutmix_mixup'"),
        ({"loader_workers": -1}, "loader_workers=-1 is negative"),
    ],
)
def test_bad_values_name_the_setting(settings, message):
    with pytest.raises(StudyError, match=message):
        TrialConfig(**settings)


def test_unknown_keys_are_errors_with_the_closest_name():
    with pytest.raises(StudyError, match="unknown setting 'learning_rate'"):
        TrialConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(StudyError, match="did you mean 'unfreeze_depth'"):
        TrialConfig.from_dict({"unfreeze_dept": 3})


def test_cli_assignments_are_read_as_yaml():
    assert parse_assignment("lr=1e-3") == ("lr", 1e-3)
    assert parse_assignment("img_size=null") == ("img_size", None)
    assert parse_assignment("unfreeze_depth=all") == ("unfreeze_depth", "all")
    with pytest.raises(StudyError, match="not key=value"):
        parse_assignment("lr")
    with pytest.raises(StudyError, match="unknown setting 'lrr'"):
        parse_assignment("lrr=1")


def test_repeat_0_trains_with_the_seed_itself_and_later_repeats_with_seeds_of_their_own():
    assert TrialConfig(seed=5).trial_seed == TrialConfig(seed=5, repeat=0).trial_seed == 5  # results as before repeats
    seeds = {TrialConfig(seed=seed, repeat=repeat).trial_seed for seed in (0, 1, 2) for repeat in range(4)}
    assert len(seeds) == 12  # no two (seed, repeat) pairs share one: repeats of seed 0 are not seeds 1, 2, 3
    assert all(0 <= seed < 2**32 for seed in seeds) and all(type(seed) is int for seed in seeds)
    # deterministic, and NumPy keeps SeedSequence stable across releases: a repeated study trains the same after an
    # upgrade
    assert TrialConfig(seed=1, repeat=2).trial_seed == 1596810411
    with pytest.raises(StudyError, match="repeat=-1 is negative"):
        TrialConfig(repeat=-1)
