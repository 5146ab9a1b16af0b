"""A study's report as a page: `write_report` writes RESULTS_DIR/report.html, `export` a finished study's files.

One self-contained page (plotly.js embedded: it opens offline) with the views a decision needs, in this order:
the answer (study/analysis/recommend.py: which configuration to pick, and what each smaller budget costs in
accuracy) and what the time axis means; the Pareto fronts of validation accuracy against training time, trainable
parameters and peak memory, every accuracy with its interval; the front as a table (and, with repeats, every
configuration's spread over them); the hypervolume of the accuracy-time front as trials finished; the
early-stopping rungs; parallel coordinates of the searched dimensions; learning curves; accuracy per value of each
dimension; dimension importance (Optuna's fANOVA); the pre-screen and whether the scores predicted the study; every
trial as a table; the study's settings. The views themselves are in study/analysis/views/; this module orders them,
renders them as HTML and writes the page. Whatever part of a results directory exists is shown: an interrupted
study, error trials, a single trial. A running study's page (`progress`) says so and reloads itself
(study/watch/live.py rewrites it).
"""

from __future__ import annotations

import html
import json
import math
import numbers
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from study.analysis.agreement import candidate_accuracies
from study.analysis.pareto import INCLUDE_STOPPED
from study.analysis.recommend import Recommendation, recommend
from study.analysis.repeats import front_candidates, repeated, trial_labels
from study.analysis.results import OUTCOME_COLUMNS, Results, load_results, write_tables
from study.analysis.searched import searched_dimensions
from study.analysis.views import View
from study.analysis.views.curves import curves_view, rungs_view
from study.analysis.views.dimensions import dimension_views, importance_view, parallel_view
from study.analysis.views.front import (
    configurations_view,
    front_table_view,
    pareto_figure,
    pareto_view,
    trials_table_view,
)
from study.analysis.views.hypervolume import hypervolume_view
from study.analysis.views.provenance import prediction_view, prescreen_view, settings_view
from study.core.files import atomic_write
from study.core.metrics import FRONT_COSTS, MAIN_COST

REPORT_FILE = "report.html"
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
# A running study's report is rewritten at most this often, and its page reloads itself as often.
LIVE_PERIOD_S = 30
# The time-axis sentence names at most this many trials that reused cached features, then counts the rest.
NAMED_REUSES = 8


@dataclass(kw_only=True)
class Progress:
    """Where a running study stands, shown on its partial report."""

    finished: int
    total: int | None
    updated: datetime


def planned_trial_count(study: dict) -> int | None:
    """How many trials the space asks for, when every dimension is a grid (sampled ones repeat num_samples times)."""
    space = study.get("space") or {}
    if "num_samples" not in space:
        return None
    grids = [len(d.get("values", [])) for d in (space.get("dimensions") or {}).values() if d.get("kind") == "grid"]
    return int(space["num_samples"] * math.prod(grids) * space.get("repeats", 1))  # no repeats before they existed


def summary(results: Results, trials: pd.DataFrame, running: bool = False) -> str:
    counts = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in trials["status"].value_counts().items())
    text = f"{len(trials)} trial{'s' if len(trials) > 1 else ''} ({counts})." if len(trials) else "No trials."
    planned = planned_trial_count(results.study)
    if planned is not None and planned != len(trials):
        text += f" The space plans {planned}."
    if results.study and "finished" not in results.study and not running:
        text += " The study did not record a finish: these are partial results of an interrupted or running study."
    return text


def answer(results: Results, include_stopped: bool = INCLUDE_STOPPED) -> Recommendation:
    """The study's recommendation (study/analysis/recommend.py); none for results without training times."""
    if MAIN_COST not in results.trials:
        return Recommendation(pick=None, sentence=f"No recommendation: these results have no '{MAIN_COST}' column.")
    return recommend(results.trials, results.outcomes, include_stopped)


def time_axis_note(trials: pd.DataFrame) -> str:
    """What the fronts' time means, which trials reused cached features, and what this study spent training."""
    if "study_train_time_s" not in trials:
        return (
            "Training time in these results is what each trial spent in its own study (they were written before the "
            "time alone on a fresh node was recorded): a trial that reused cached features looks cheaper than it is."
        )
    text = "Training time is what each configuration costs alone on a fresh node"
    reused = trials["cache"].eq("reused") if "cache" in trials else pd.Series(False, index=trials.index)
    if reused.any():
        named = [
            f"{label} ({trial_id})" for label, trial_id in zip(trial_labels(trials)[reused], trials["trial_id"][reused])
        ]
        more = len(named) - NAMED_REUSES
        listed = ", ".join(named[:NAMED_REUSES]) + (f" and {more} more" if more > 0 else "")
        text += (
            f": {len(named)} trial(s) reused features cached by an earlier trial or study ({listed}), which count "
            "what building them cost"
        )
    return f"{text}; this study spent {trials['study_train_time_s'].sum():.1f} s training in all (study_train_time_s)."


def views(
    results: Results, include_stopped: bool = INCLUDE_STOPPED, recommendation: Recommendation | None = None
) -> list[View]:
    """Every view of the report, in order; `recommendation`: the study's, when the caller has it already."""
    trials, study = results.trials, results.study
    dimensions = searched_dimensions(trials, study)
    judged = (recommendation or answer(results, include_stopped)).front
    return [
        *(pareto_view(trials, cost, include_stopped=include_stopped, judged=judged) for cost in FRONT_COSTS),
        front_table_view(trials, dimensions, include_stopped, judged=judged),
        *([configurations_view(trials, dimensions)] if repeated(trials) else []),
        hypervolume_view(trials, include_stopped),
        rungs_view(results.epochs, trials, dimensions),
        parallel_view(trials, dimensions),
        curves_view(results.epochs, trials, dimensions),
        *dimension_views(trials, dimensions, include_stopped),
        importance_view(trials, dimensions, include_stopped),
        *([prescreen_view(study)] if study.get("prescreen") else []),
        *([prediction_view(trials, study)] if len(candidate_accuracies(trials)) >= 2 else []),
        trials_table_view(trials, dimensions, include_stopped),
        settings_view(study),
    ]


def render(results: Results, include_stopped: bool = INCLUDE_STOPPED, progress: Progress | None = None) -> str:
    """The report as one HTML page, plotly.js inlined. With `progress` (a running study): a partial page that says
    so and reloads itself every LIVE_PERIOD_S seconds."""
    name = (results.study.get("space") or {}).get("name") or results.path.name
    recommendation = answer(results, include_stopped)
    sections = [_section(number, view) for number, view in enumerate(views(results, include_stopped, recommendation))]
    budgets = "".join(f"<li>{html.escape(line)}</li>" for line in recommendation.budgets)
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in results.notes)
    policy = "take part in" if include_stopped else "are shown but take no part in"
    reload = f'<meta http-equiv="refresh" content="{LIVE_PERIOD_S}">\n' if progress is not None else ""
    partial = partial_note(progress) if progress is not None else ""
    opening = summary(results, results.trials, running=progress is not None)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{reload}<title>Study report: {html.escape(name)}</title>
<script type="text/javascript">{get_plotlyjs()}</script>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
section {{ margin: 2.5em 0; }}
.note {{ background: #fff4e5; border-left: 4px solid #f0a202; padding: 0.5em 1em; }}
table.table {{ border-collapse: collapse; font-size: 0.9em; }}
table.table th, table.table td {{
  border-bottom: 1px solid #ddd; padding: 0.3em 0.7em; text-align: left; vertical-align: top;
}}
.scroll {{ overflow-x: auto; }}
.partial {{ background: #e8f1fb; border-left: 4px solid #2b6cb0; padding: 0.5em 1em; font-weight: bold; }}
.answer {{
  background: #e6f4ea; border-left: 4px solid #2a9d8f; padding: 0.6em 1em; font-size: 1.15em; font-weight: bold;
}}
</style>
</head>
<body>
<h1>Study report: {html.escape(name)}</h1>
{partial}<p>{html.escape(opening)} Results: <code>{html.escape(str(results.path.resolve()))}</code>.</p>
<p class="answer" id="recommendation">{html.escape(recommendation.sentence)}</p>
{f'<ul class="budgets">{budgets}</ul>' if budgets else ""}
<p id="time-axis">{html.escape(time_axis_note(results.trials))}</p>
<p>Fronts maximise validation accuracy (final epoch) against one cost each; error trials never take part, trials stopped
early by ASHA {policy} them. Every accuracy carries its 95% interval (docs/results.md). Test accuracy is shown beside,
never used to choose.</p>
{notes}
{"".join(sections)}
</body>
</html>
"""


def _section(number: int, view: View) -> str:
    """One view as a section of the page: its title, note, figure (drawn by the inlined plotly.js) and table."""
    parts = [f"<h2>{html.escape(view.title)}</h2>"]
    if view.note:
        parts.append(f'<p class="note">{html.escape(view.note)}</p>')
    if view.figure is not None:
        figure = go.Figure(view.figure).update_layout(title_text="")  # the section heading names it
        parts.append(
            figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{number}", config=PLOT_CONFIG)
        )
    if view.table is not None:
        table = view.table.map(
            lambda v: _table_number(v) if isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) else v
        )
        parts.append(f'<div class="scroll">{table.to_html(index=False, na_rep="–", classes="table", border=0)}</div>')
    return f"<section>{''.join(parts)}</section>"


def _table_number(value: float) -> str:
    """A number in a table cell: counts and seconds in full, measures to 4 significant digits, '–' when undefined."""
    if not math.isfinite(value):
        return "–"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def partial_note(progress: Progress) -> str:
    to_come = f", {max(0, progress.total - progress.finished)} still to come" if progress.total is not None else ""
    return (
        f'<p class="partial" id="partial">Partial report: the study is still running. Last updated '
        f"{progress.updated:%Y-%m-%d %H:%M:%S}; {progress.finished} trial(s) finished{to_come}. This page "
        f"reloads itself every {LIVE_PERIOD_S} s.</p>\n"
    )


def waiting_page(results_dir: Path, progress: Progress) -> str:
    """A running study's page before its first trial finishes: what runs, and a reload."""
    try:
        name = json.loads((results_dir / "study.json").read_text())["space"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        name = results_dir.name
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{LIVE_PERIOD_S}">
<title>Study report: {html.escape(name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
.partial {{ background: #e8f1fb; border-left: 4px solid #2b6cb0; padding: 0.5em 1em; font-weight: bold; }}
</style>
</head>
<body>
<h1>Study report: {html.escape(name)}</h1>
{partial_note(progress)}<p>No trial has finished yet. Results: <code>{html.escape(str(results_dir.resolve()))}</code>.
</p>
</body>
</html>
"""


def write_report(
    results_dir: str | Path,
    include_stopped: bool = INCLUDE_STOPPED,
    out: str | Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """Read a results directory and write its report (default RESULTS_DIR/report.html); returns the path.
    `progress`: the study is running (a partial page, rendered by study/watch/live.py `LiveReport`)."""
    results = load_results(results_dir)
    path = Path(out) if out else results.path / REPORT_FILE
    page = render(results, include_stopped, progress)
    atomic_write(path, lambda p: Path(p).write_text(page, encoding="utf-8"))
    return path


def export(
    out: Path, trials: pd.DataFrame, epochs: pd.DataFrame, title: str, outcomes: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Write the tables (study/analysis/results.py `write_tables`, rewritten while a study runs) and pareto.html, its
    members not significantly below the best ringed, into `out`; return the front."""
    front = write_tables(out, trials, epochs, outcomes)
    judged = recommend(trials, outcomes if outcomes is not None else pd.DataFrame(columns=OUTCOME_COLUMNS)).front
    figure = pareto_figure(front_candidates(trials), front, title, judged=judged)
    atomic_write(out / "pareto.html", lambda p: figure.write_html(p, include_plotlyjs=True, full_html=True))
    return front
