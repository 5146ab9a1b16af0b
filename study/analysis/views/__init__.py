"""The report's views: each a function of the trials (and the study's record) that returns a `View`.

One module per kind of question, as optuna/visualization/ keeps one plot per file: front.py (the Pareto fronts
and the trial tables), hypervolume.py (how the front grew), curves.py (learning curves, early-stopping rungs),
dimensions.py (the searched dimensions: parallel coordinates, accuracy per value, importance), provenance.py
(the study's settings, its pre-screen, whether the scores predicted it). The numbers they show are computed
elsewhere (study/analysis/pareto.py, importance.py, agreement.py); study/analysis/page.py puts the views in order
on the report's page, and notebooks/analysis.ipynb shows the same views on filtered trials.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go


@dataclass(kw_only=True)
class View:
    """One part of the report: a figure and/or a table, and a note when something cannot be shown."""

    title: str
    figure: go.Figure | None = None
    table: pd.DataFrame | None = None
    note: str = ""

    def show(self) -> None:
        """Display in a notebook: the note, the figure (interactive), the table."""
        from IPython.display import Markdown, display

        display(Markdown(f"### {self.title}" + (f"\n\n*{self.note}*" if self.note else "")))
        if self.figure is not None:
            self.figure.show()
        if self.table is not None:
            display(self.table)
