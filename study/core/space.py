"""Named search spaces: YAML files that say what is fixed, what is searched, and how.

A space file (search_spaces/NAME.yaml):

    description: what the study asks
    fixed:            # trial settings shared by every trial (study/core/config.py)
      backbone: tf_efficientnet_lite0
    dimensions:       # searched settings, one kind each
      unfreeze_depth: {grid: [0, 1, 2, all]}   # every value, crossed with other grids
      optimizer: {choice: [sgd, adamw]}         # one value drawn per sample
      lr: {loguniform: [1.0e-4, 1.0e-2]}        # also: uniform: [lo, hi]
      batch_size: {randint: [16, 64]}           # both ends included
    search: random    # grid | random | optuna | optuna_mo (below); default: grid if every dimension is one
    num_samples: 1    # draws of the sampled dimensions (grids repeat this often); Optuna: the number of trials
    repeats: 1        # runs of each configuration, each with its own trial seed (grid and random searches only)
    max_epochs: 5     # every trial's epoch budget
    asha: {grace_period: 1, reduction_factor: 2, objectives: pareto}   # or `asha: false` to run every trial out
    metric: val_acc
    mode: max

Early stopping (`asha`, study/tune/schedulers.py builds the scheduler): rungs at grace_period x reduction_factor^k
epochs below max_epochs; at each, a trial continues if it ranks in the top 1/reduction_factor of the
results recorded there. `objectives` says how it ranks:
- pareto (the default): multi-objective ASHA (study/tune/rungs.py): non-dominated sorting on validation accuracy
  against standalone training time, so the cheap trials that make the accuracy-time front are not stopped
  for being less accurate;
- metric: Ray's ASHA on `metric`/`mode` alone.

Search algorithms (registered in study/core/registry.py SEARCHES; Ray Tune runs them all, study/tune/search.py builds
them):
- grid: every combination of the grid dimensions, num_samples times; only grid dimensions allowed.
- random: Ray's variant generator: grids crossed, sampled dimensions drawn num_samples times (seeded).
- optuna: Optuna's TPE sampler (seeded) proposes num_samples trials, learning from finished ones, on
  `metric`/`mode`. Grids are not allowed (TPE samples every dimension): use `choice`.
- optuna_mo: multi-objective TPE: maximise val_acc and minimise train_time_s together. `metric`/`mode`
  are then those of `objectives: metric` alone; the sampler learns only from trials that ran all
  max_epochs (a trial the scheduler stops is told to Optuna as pruned: its accuracy and time belong to a
  shorter budget).

Repeats (`repeats: N`, 1..1000, or `--repeats N`): every configuration runs N times, as trials `repeat` 0..N-1 whose
trial seed (TrialConfig.trial_seed: head initialisation, batch order, random backbone weights) differs; the split
(split_seed) is the same. Repeat 0 trains with `seed` itself, as a study without repeats does. It is one more grid
(study/tune/search.py), so grid and random searches only: Optuna proposes each configuration once. With repeats,
random search draws a sample's values once for all its grid combinations (Ray's constant_grid_search), so the
repeats of a configuration are the same configuration. `repeat` itself is numbered by the study: no space sets it.

Everything is validated when the file is read; mistakes name the file and the key. This module is plain
Python: study/tune/search.py translates a space into Ray Tune's (`param_space`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from study.core.config import (
    DATA_FINGERPRINT,
    FIELD_TYPES,
    StudyError,
    TrialConfig,
    check_number,
    closest_hint,
    load_yaml,
)
from study.core.metrics import ACCURACY, SCHEDULER_METRICS
from study.core.registry import SEARCHES, TRANSFER_SCORES

# The shipped spaces are package data of `search_spaces` (pyproject), so an installed wheel has them too; both
# setuptools installs (wheel, editable) put them in a real directory.
SPACES_DIR = Path(str(resources.files("search_spaces")))
# Trial settings that are paths study WRITES to: only the command line may set them, never a space file (which
# may come from someone else); every other path in a space (weights, folder data) is only read.
COMMAND_LINE_ONLY = ("data_root",)
REPEAT = "repeat"  # the trial setting a space's `repeats` numbers: set by the study only
SPACE_KEYS = (
    "description",
    "fixed",
    "dimensions",
    "search",
    "num_samples",
    "repeats",
    "max_epochs",
    "asha",
    "metric",
    "mode",
    "prescreen",
)
ASHA_KEYS = ("grace_period", "reduction_factor", "objectives")
# How the rungs rank trials: pareto (multi-objective ASHA, study/tune/rungs.py) or metric (Ray's ASHA on `metric`).
ASHA_OBJECTIVES = ("pareto", "metric")
DIMENSION_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
PRESCREEN_KEYS = ("score", "keep")
PRESCREEN_SCORES = TRANSFER_SCORES.names()  # study/core/registry.py; study/ranking/scores.py computes them
MAX_SPACE_BYTES = 1_000_000  # a space is a few hundred bytes: anything this large is the wrong file


@dataclass(kw_only=True)
class Dimension:
    kind: str
    values: list  # the listed values (grid, choice) or [low, high]

    def examples(self) -> list:
        """Values that stand for this dimension in validation: all listed values, or both ends of a range."""
        return list(self.values)


@dataclass(kw_only=True)
class Space:
    name: str
    source: str
    description: str = ""
    fixed: dict = field(default_factory=dict)
    dimensions: dict[str, Dimension] = field(default_factory=dict)
    num_samples: int = 1
    repeats: int = 1  # runs of each configuration, with trial seeds of its own (TrialConfig.repeat 0..repeats-1)
    max_epochs: int = 5
    asha: dict | None = field(
        default_factory=lambda: {"grace_period": 1, "reduction_factor": 2, "objectives": ASHA_OBJECTIVES[0]}
    )
    metric: str = ACCURACY
    mode: str = "max"
    search: str = "grid"
    # Rank the backbone dimension's values by a transferability score before the search; search the top `keep`
    # (study/ranking/candidates.py). None once applied: study.json keeps the narrowed space and, apart, the ranking.
    prescreen: dict | None = None

    @classmethod
    def from_record(cls, record: dict) -> Space:
        """The space as study.json records it (dataclasses.asdict), for --resume."""
        dimensions = {key: Dimension(**spec) for key, spec in record["dimensions"].items()}
        asha = record.get("asha")
        if asha is not None and "objectives" not in asha:
            asha = {**asha, "objectives": "metric"}  # recorded before the choice existed: it ran Ray's ASHA
        space = cls(**{**record, "dimensions": dimensions, "asha": asha})
        space.validate()
        return space

    def override(self, settings: dict, **study) -> Space:
        """Fixed settings from the CLI replace the space's value or dimension; study keys replace study settings."""
        for key in settings:
            if key == "epochs":
                raise StudyError("set the epoch budget with --max-epochs, not --set epochs=")
            if key == REPEAT:
                raise StudyError(
                    "the study numbers each configuration's repeats: run N of each with --repeats N, not --set repeat="
                )
            if key == DATA_FINGERPRINT:
                raise StudyError(
                    f"--set {key}: the study sets it, from the data's files before its trials start: leave it out"
                )
        dimensions = {k: d for k, d in self.dimensions.items() if k not in settings}
        changed = dataclasses.replace(self, fixed={**self.fixed, **settings}, dimensions=dimensions, **study)
        changed.validate()
        return changed

    def example_configs(self) -> list[TrialConfig]:
        """One config per listed dimension value (others at their first): catches bad values before Ray starts."""
        base = {**self.fixed, **{k: d.examples()[0] for k, d in self.dimensions.items()}, "epochs": self.max_epochs}
        configs = [TrialConfig.from_dict(base, where=self.source)]
        for key, dimension in self.dimensions.items():
            configs += [
                TrialConfig.from_dict({**base, key: value}, where=f"{self.source}: dimensions.{key}")
                for value in dimension.examples()[1:]
            ]
        return configs

    def validate(self) -> None:
        where = self.source
        try:
            check_number("num_samples", self.num_samples)
            check_number("repeats", self.repeats)
            check_number("max_epochs", self.max_epochs)
        except StudyError as error:
            raise StudyError(f"{where}: {error}") from None
        if self.metric not in SCHEDULER_METRICS:
            raise StudyError(
                f"{where}: metric '{self.metric}' is unknown{closest_hint(self.metric, SCHEDULER_METRICS)}"
            )
        if self.mode not in ("max", "min"):
            raise StudyError(f"{where}: mode '{self.mode}' must be max or min")
        if self.search not in SEARCHES:
            hint = closest_hint(self.search, SEARCHES.names())
            raise StudyError(f"{where}: search '{self.search}' is unknown{hint}")
        grids = [key for key, d in self.dimensions.items() if d.kind == "grid"]
        sampled = [key for key, d in self.dimensions.items() if d.kind != "grid"]
        if self.search == "grid" and sampled:
            raise StudyError(
                f"{where}: search grid runs grid dimensions only, but '{sampled[0]}' is "
                f"{self.dimensions[sampled[0]].kind}: use search: random (grids crossed, the rest sampled) or "
                "make it a grid"
            )
        if self.search.startswith("optuna") and grids:
            raise StudyError(
                f"{where}: search {self.search} samples every dimension (TPE), but '{grids[0]}' is a grid: write it "
                f"as {{choice: {self.dimensions[grids[0]].values}}}"
            )
        if self.search.startswith("optuna") and self.repeats > 1:
            raise StudyError(
                f"{where}: repeats={self.repeats} needs search grid or random: Optuna proposes each configuration "
                "once, from the results so far; use search: random (or grid), or repeats: 1"
            )
        if REPEAT in self.fixed or REPEAT in self.dimensions:
            raise StudyError(
                f"{where}: '{REPEAT}' is numbered by the study (0..repeats-1), not set: write `repeats: N` to run "
                "each configuration N times"
            )
        if DATA_FINGERPRINT in self.fixed or DATA_FINGERPRINT in self.dimensions:
            raise StudyError(
                f"{where}: '{DATA_FINGERPRINT}' is set by the study, from the data's files before its trials start: "
                "leave it out"
            )
        if self.search.startswith("optuna") and not self.dimensions:
            raise StudyError(
                f"{where}: search {self.search} needs at least one dimension to sample: add one, or use search: grid"
            )
        if self.asha is not None:
            if self.asha["grace_period"] > self.max_epochs:
                raise StudyError(
                    f"{where}: asha.grace_period={self.asha['grace_period']} exceeds max_epochs={self.max_epochs}: "
                    "lower it"
                )
        both = set(self.fixed) & set(self.dimensions)
        if both:
            raise StudyError(f"{where}: '{sorted(both)[0]}' is both fixed and a dimension: keep one")
        self.check_prescreen()
        self.example_configs()

    def check_prescreen(self) -> None:
        if self.prescreen is None:
            return
        where, rule = self.source, self.prescreen
        if not isinstance(rule, dict):
            raise StudyError(f"{where}: 'prescreen' must be a mapping {{score: logme|knn|probe, keep: K}}")
        _check_keys(rule, PRESCREEN_KEYS, where, "prescreen.")
        score, keep = rule.get("score"), rule.get("keep")
        if score not in PRESCREEN_SCORES:
            hint = closest_hint(score, PRESCREEN_SCORES) if isinstance(score, str) else ""
            raise StudyError(
                f"{where}: prescreen.score {score!r} is unknown{hint}: use one of {', '.join(PRESCREEN_SCORES)}"
            )
        if type(keep) is not int or keep < 1:
            raise StudyError(f"{where}: prescreen.keep must be an integer >= 1 (backbones searched), got {keep!r}")
        backbones = self.dimensions.get("backbone")
        if backbones is None:
            raise StudyError(
                f"{where}: prescreen ranks the values of a backbone dimension, but the space has none"
                + (" (--backbone fixed it)" if "backbone" in self.fixed else "")
                + ": add dimensions.backbone: {grid: [...]}, or remove prescreen"
            )
        if len(backbones.values) <= keep:
            raise StudyError(
                f"{where}: prescreen.keep={keep} keeps all {len(backbones.values)} backbones of the dimension: "
                f"lower keep below {len(backbones.values)}, or remove prescreen"
            )
        if len(set(backbones.values)) != len(backbones.values):
            raise StudyError(f"{where}: dimensions.backbone lists a backbone twice: list each once to prescreen")
        if "weights" in self.dimensions:
            raise StudyError(
                f"{where}: prescreen ranks backbones under one weights source, but weights is a dimension: fix "
                "weights, or rank backbone x weights with python -m study.rank --weights A,B"
            )


def available_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def resolve_space_path(name_or_path: str) -> Path:
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise StudyError(
                f"space file {path} does not exist: give a path to a .yaml file or a name from: "
                f"{', '.join(available_spaces())}"
            )
        return path
    path = SPACES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name_or_path, available_spaces(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise StudyError(
            f"unknown space '{name_or_path}'{hint}: use one of {', '.join(available_spaces())} (in {SPACES_DIR}), or "
            "a path to a .yaml file"
        )
    return path


def load_space(name_or_path: str) -> Space:
    path = resolve_space_path(name_or_path)
    where = str(path)
    if path.stat().st_size > MAX_SPACE_BYTES:
        raise StudyError(
            f"{where}: {path.stat().st_size:,} bytes is no space file (at most {MAX_SPACE_BYTES:,}): give the .yaml "
            "of a space"
        )
    try:
        raw = load_yaml(path.read_text())
    except UnicodeDecodeError as error:
        raise StudyError(
            f"{where}: not a text file ({error.reason} at byte {error.start}): a space is YAML text"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise StudyError(f"{where}: not valid YAML{line}: {getattr(error, 'problem', error)}") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{where}: a space is a YAML mapping with keys {', '.join(SPACE_KEYS)}")
    _check_string_keys(raw, where)
    _check_keys(raw, SPACE_KEYS, where)
    fixed = _mapping(raw, "fixed", where)
    for key in fixed:
        if key not in FIELD_TYPES or key == "epochs":
            raise StudyError(
                f"{where}: unknown setting 'fixed.{key}'{closest_hint(key, set(FIELD_TYPES) - {'epochs'})}"
                + (" (use max_epochs)" if key == "epochs" else "")
            )
    dimensions = {key: _dimension(key, spec, where) for key, spec in _mapping(raw, "dimensions", where).items()}
    for key in COMMAND_LINE_ONLY:
        if key in fixed or key in dimensions:
            raise StudyError(
                f"{where}: '{key}' cannot be set in a space file: study writes downloads and caches there, and a "
                "shared "
                f"space must not choose where study writes; pass --data-root DIR (or --set {key}=DIR) on the command "
                "line"
            )
    default_search = "grid" if all(d.kind == "grid" for d in dimensions.values()) else "random"
    space = Space(
        name=path.stem,
        source=where,
        description=_typed(raw, "description", str, where, ""),
        fixed=fixed,
        dimensions=dimensions,
        num_samples=_typed(raw, "num_samples", int, where, 1),
        repeats=_typed(raw, "repeats", int, where, 1),
        max_epochs=_typed(raw, "max_epochs", int, where, 5),
        asha=_asha(raw, where),
        metric=_typed(raw, "metric", str, where, ACCURACY),
        mode=_typed(raw, "mode", str, where, "max"),
        search=_typed(raw, "search", str, where, default_search),
        prescreen=raw.get("prescreen"),
    )
    space.validate()
    return space


def _check_string_keys(value, where: str, at: str = "") -> None:
    """Every key of every mapping is a name (YAML also allows numbers, lists, null as keys)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise StudyError(
                    f"{where}: the key {key!r}{f' in {at}' if at else ''} is not a name ({type(key).__name__}): "
                    "keys are setting and space names (quote it if it is one)"
                )
            _check_string_keys(item, where, f"{at}.{key}" if at else key)
    elif isinstance(value, list):
        for item in value:
            _check_string_keys(item, where, at)


def _check_keys(mapping: dict, valid, where: str, prefix: str = "") -> None:
    for key in mapping:
        if key not in valid:
            raise StudyError(f"{where}: unknown key '{prefix}{key}'{closest_hint(str(key), valid)}")


def _mapping(raw: dict, key: str, where: str) -> dict:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise StudyError(f"{where}: '{key}' must be a mapping of setting: value")
    return value


def _typed(raw: dict, key: str, kind: type, where: str, default):
    value = raw.get(key, default)
    if type(value) is not kind:
        raise StudyError(f"{where}: '{key}' must be {kind.__name__}, got {value!r}")
    return value


def _asha(raw: dict, where: str) -> dict | None:
    value = raw.get("asha", {})
    if value is False:
        return None
    if not isinstance(value, dict):
        raise StudyError(f"{where}: 'asha' must be a mapping with {', '.join(ASHA_KEYS)}, or false")
    _check_keys(value, ASHA_KEYS, where, "asha.")
    grace, factor = value.get("grace_period", 1), value.get("reduction_factor", 2)
    objectives = value.get("objectives", ASHA_OBJECTIVES[0])
    if objectives not in ASHA_OBJECTIVES:
        raise StudyError(
            f"{where}: asha.objectives must be pareto (accuracy against training time) or metric (the space's "
            f"`metric` alone), got {objectives!r}"
        )
    if type(grace) is not int or grace < 1:
        raise StudyError(f"{where}: asha.grace_period must be an integer >= 1, got {grace!r}")
    if type(factor) not in (int, float) or not math.isfinite(factor) or factor <= 1:
        raise StudyError(f"{where}: asha.reduction_factor must be a number > 1, got {factor!r}")
    return {"grace_period": grace, "reduction_factor": factor, "objectives": objectives}


def _dimension(key: str, spec, where: str) -> Dimension:
    at = f"{where}: dimensions.{key}"
    if key not in FIELD_TYPES or key == "epochs":
        raise StudyError(
            f"{where}: unknown setting 'dimensions.{key}'{closest_hint(key, set(FIELD_TYPES) - {'epochs'})}"
        )
    if not isinstance(spec, dict) or len(spec) != 1:
        raise StudyError(f"{at} must be one of {{{', '.join(k + ': ...' for k in DIMENSION_KINDS)}}}")
    ((kind, values),) = spec.items()
    if kind not in DIMENSION_KINDS:
        raise StudyError(f"{at}: unknown dimension kind '{kind}'{closest_hint(str(kind), DIMENSION_KINDS)}")
    if not isinstance(values, list) or not values:
        raise StudyError(f"{at}: {kind} needs a non-empty list")
    if kind in ("grid", "choice"):
        return Dimension(kind=kind, values=values)
    if len(values) != 2 or not all(type(v) in (int, float) and math.isfinite(v) for v in values):
        raise StudyError(f"{at}: {kind} needs [low, high] finite numbers, got {values!r}")
    low, high = values
    if kind == "randint" and not all(type(v) is int for v in values):
        raise StudyError(f"{at}: randint needs integer bounds, got {values!r}")
    if low > high or (kind != "randint" and low == high):
        raise StudyError(f"{at}: empty range {values!r}: low must be below high")
    if kind == "loguniform" and low <= 0:
        raise StudyError(f"{at}: loguniform needs low > 0 (a log scale), got {values!r}")
    if kind in ("uniform", "loguniform") and FIELD_TYPES[key] is not float:
        raise StudyError(f"{at}: {kind} draws floats but '{key}' is {FIELD_TYPES[key]}: use randint, grid or choice")
    return Dimension(kind=kind, values=[low, high] if kind == "randint" else [float(low), float(high)])
