"""After a study: score the backbones it searched, on its data and settings, against the accuracies it reached.

`python -m study.rank --compare RESULTS_DIR` (study/cli/rank.py). The candidates are the (backbone, weights)
pairs of the study's finished trials; those that share what features depend on (FEATURE_SETTINGS) are ranked
together, with the settings of their first trial, so the features are the ones the study's linear-probe trials
cached. The scores go into RESULTS_DIR (scores.csv/json, study.json's `scores`), each score is printed against the
best validation accuracy the study reached (Kendall tau per score, study/analysis/agreement.py), and the report is
rewritten with the comparison.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from study.analysis.agreement import score_agreement
from study.analysis.results import load_results
from study.core.config import StudyError, TrialConfig
from study.core.files import write_json
from study.ranking.candidates import (
    Candidate,
    Echo,
    Ranking,
    format_table,
    rank_candidates,
    say,
    scores_record,
    with_ranks,
    write_scores,
)

# What a candidate's features depend on besides backbone and weights: the base config's values are used.
FEATURE_SETTINGS = ("data", "data_root", "img_size", "split_seed", "train_fraction", "head", "device", "amp")


def compare(results_dir: Path, echo: Echo = say) -> pd.DataFrame:
    """Score the candidates a study searched, with its settings; record and print the comparison."""
    # The report page imports Plotly: only --compare pays for it, not every ranking.
    from study.analysis.page import write_report

    results = load_results(results_dir)
    groups = candidates_by_settings(results_dir, results.trials)
    echo(
        f"Scoring the {sum(len(group) for _, group in groups)} backbones of {results_dir} on the study's data and "
        "settings:"
    )
    table, summary = rank_groups(groups, echo)
    study = dict(results.study)
    study["scores"] = scores_record(table, summary)
    agreement_table, agreement = score_agreement(results.trials, study)
    study["scores"]["kendall_tau"] = agreement
    write_scores(results_dir, table, {**summary, "kendall_tau": agreement}, {"results": str(results_dir)})
    if results.study:
        write_json(results_dir / "study.json", study)
    echo(format_table(table))
    echo("Each score against the best validation accuracy the study reached:")
    echo(agreement_table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for name, result in agreement.items():
        echo(agreement_line(name, result))
    echo(f"Report: {write_report(results_dir).resolve()}")
    return table


def agreement_line(name: str, result: dict) -> str:
    """A score's agreement with the study in words; ties (on the score, or for the best accuracy) named, never broken
    by row order (study/analysis/agreement.py)."""
    top, best, agrees = result["top"], result["best"], result["top_is_best"]
    if len(top) == 1:
        picked = f"its top backbone ({top[0]}) is {'' if agrees else 'not '}"
    else:
        picked = f"its top backbones ({', '.join(top)}, tied on the score) are {'' if agrees else 'not all '}"
    if len(best) == 1:
        verdict = "the study's best" if agrees else f"the study's best ({best[0]})"
    else:
        verdict = f"among the study's {len(best)} best, tied at the best accuracy ({', '.join(best)})"
    return (
        f"  {name}: Kendall tau {result['tau']:.3f} (p={result['p_value']:.3g}) over {result['backbones']} backbones; "
        f"{picked}{verdict}"
    )


def candidates_by_settings(results_dir: Path, trials: pd.DataFrame) -> list[tuple[dict, list[Candidate]]]:
    """The study's candidates grouped by the settings their features depend on, each group with those settings."""
    trials = trials[trials["status"] != "error"]
    if "backbone" not in trials or trials.empty:
        raise StudyError(f"{results_dir}: no finished trial with a backbone: nothing to compare")
    pairs = trials[["backbone", "weights"]].drop_duplicates()
    if len(pairs) < 2:
        raise StudyError(
            f"{results_dir}: the study trained one backbone ({pairs.iloc[0]['backbone']}): scores rank two or more"
        )
    groups: dict[str, tuple[dict, list[Candidate]]] = {}
    for (backbone, weights), group in trials.groupby(["backbone", "weights"], sort=False):
        first = group.iloc[0]
        settings = {key: _plain(first[key]) for key in FEATURE_SETTINGS if key in group}
        key = json.dumps(settings, sort_keys=True, default=str)
        groups.setdefault(key, (settings, []))[1].append(Candidate(backbone=backbone, weights=weights))
    return list(groups.values())


def rank_groups(groups: list[tuple[dict, list[Candidate]]], echo: Echo) -> Ranking:
    """Every group ranked on its own settings, then all candidates ranked together; the seconds summed."""
    tables, candidates = [], 0
    totals = {"data_s": 0.0, "feature_s": 0.0, "scoring_s": 0.0, "total_s": 0.0}
    for settings, group in groups:
        part, summary = rank_candidates(group, TrialConfig.from_dict(settings), echo)
        candidates += len(group)
        tables.append(part)
        for name in totals:
            totals[name] += summary[name]
    # the last group's summary stands for the settings (data, k, probe penalties); the seconds are the totals
    summary = {**summary, **totals, "candidates": candidates}
    return Ranking(table=with_ranks(pd.concat(tables, ignore_index=True)), summary=summary)


def _plain(value):
    """A table cell as JSON and TrialConfig take it: NaN as None, NumPy scalars as Python ones."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value
