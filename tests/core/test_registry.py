"""study/core/registry.py: each named option defined once, and everything that lists or checks names reads it."""

import subprocess
import sys

import pytest
import torch

from study.cli import run
from study.core import registry
from study.core.config import StudyError, TrialConfig
from study.core.space import load_space
from study.trial.train import build_trial, run_trial
from tests.helpers import REPO


@pytest.mark.parametrize("table", registry.REGISTRIES, ids=lambda table: table.kind)
def test_every_registered_name_has_an_implementation_and_a_description(table):
    assert table.names()
    for option in table:
        assert option.description and table.get(option.name) is not None, option


def test_a_name_added_to_the_registry_is_accepted_and_trained_with(small_digits):
    """The config reads its valid choices from the registry: one added line makes a new optimizer usable, and the
    trial trains with that optimizer (not a fallback such as the default adamw)."""
    registry.OPTIMIZERS.add("plain_sgd", "study.trial.optim:sgd", "SGD under a second name (a test's)")
    try:
        config = TrialConfig(optimizer="plain_sgd", momentum=0.5, img_size=32, epochs=1, lr=0.01)
        optimizer = build_trial(config, small_digits).optimizer
        assert type(optimizer) is torch.optim.SGD, type(optimizer)
        assert {group["momentum"] for group in optimizer.param_groups} == {0.5}
        (report,) = run_trial(config, small_digits)
        assert report["train_loss"] > 0
        with pytest.raises(StudyError, match=r"optimizer='plain_sdg' is unknown \(did you mean 'plain_sgd'\?\)"):
            TrialConfig(optimizer="plain_sdg")
    finally:
        del registry.OPTIMIZERS.options["plain_sgd"]
    with pytest.raises(StudyError, match="optimizer='plain_sgd' is unknown"):
        TrialConfig(optimizer="plain_sgd")


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="registered twice"):
        registry.HEADS.add("linear", "study.trial.heads:linear_head", "again")


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"augment": "trivial_augment"}, r"augment='trivial_augment' is unknown \(did you mean 'trivialaugment'\?\)"),
        ({"head": "single"}, r"head='single' is unknown \(did you mean 'single_linear'\?\)"),
        ({"unfreeze_unit": "stages"}, r"unfreeze_unit='stages' is unknown \(did you mean 'stage'\?\)"),
    ],
)
def test_unknown_names_get_a_hint_from_the_registry(settings, message):
    with pytest.raises(StudyError, match=message):
        TrialConfig(**settings)


def test_the_dry_run_names_the_search_and_scheduler_from_the_registry(capsys):
    assert run.main(["--space", "smoke", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    space = load_space("smoke")
    assert space.asha["objectives"] == "pareto"
    scheduler = "pareto_asha"
    assert f"search {space.search}: {registry.SEARCHES.describe(space.search)}" in printed
    assert f"scheduler {scheduler}: {registry.SCHEDULERS.describe(scheduler)}" in printed


def test_the_options_page_of_the_docs_is_the_registry():
    assert (REPO / "docs" / "options.md").read_text() == registry.markdown(), "run: python -m study.core.registry"


def test_naming_options_imports_no_implementation():
    """Validating configs and spaces stays cheap and Ray-free: the registry holds names, not imports."""
    code = (
        "import sys; from study.core.config import TrialConfig; from study.core.space import load_space; "
        "TrialConfig(optimizer='sgd', augment='basic', head='linear', unfreeze_unit='block'); load_space('full'); "
        "print(sorted(m for m in ('torch', 'ray', 'study.trial.train', 'study.tune') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
