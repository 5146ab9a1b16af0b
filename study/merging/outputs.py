"""What a merge leaves behind and prints: merge.csv/html, similarity.csv/html, merge.json, the closing summary.

merge.csv holds one row per alignment, alpha and head (train/val/test accuracy and loss) and merge.html plots the
accuracies against alpha; similarity.csv and similarity.html compare the filters of one conv layer
(study/merging/similarity.py); merge.json records the inputs, settings, alignment coverage, summaries, versions
and hardware. Every file goes through the one atomic write (study/core/files.py), so an interrupted merge leaves no
half-written file.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from study.core.files import atomic_write, write_json
from study.merging.similarity import FilterSimilarity, similarity_figures


def write_outputs(out: Path, table: pd.DataFrame, similarity: FilterSimilarity, record: dict, order: str) -> None:
    atomic_write(out / "merge.csv", lambda p: table.to_csv(p, index=False))
    figure = merge_figure(table, record)
    atomic_write(out / "merge.html", lambda p: figure.write_html(p, include_plotlyjs=True, full_html=True))
    atomic_write(out / "similarity.csv", lambda p: similarity.table().to_csv(p, index=False))
    labels = (f"A ({record['checkpoint_a']['data']})", f"B ({record['checkpoint_b']['data']})")
    parts = [
        f.to_html(full_html=False, include_plotlyjs=i == 0)
        for i, f in enumerate(similarity_figures(similarity, order, labels))
    ]
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>filter similarity</title></head><body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
    atomic_write(out / "similarity.html", lambda p: Path(p).write_text(page))
    write_json(out / "merge.json", record)


def merge_figure(table: pd.DataFrame, record: dict) -> go.Figure:
    """Validation (solid) and test (dotted) accuracy against alpha, one line per alignment and head."""
    figure = go.Figure()
    for (alignment, head), part in table.groupby(["align", "head"], sort=False):
        for split, dash in (("val", "solid"), ("test", "dot")):
            figure.add_trace(
                go.Scatter(
                    x=part["alpha"],
                    y=part[f"{split}_acc"],
                    mode="lines+markers",
                    name=f"{split}: align {alignment}, head {head}",
                    line=dict(dash=dash),
                    hovertemplate=f"align {alignment}, head {head}<br>alpha %{{x}}<br>{split} acc "
                    f"%{{y:.4f}}<extra></extra>",
                )
            )
    a, b = record["checkpoint_a"], record["checkpoint_b"]
    figure.update_layout(
        title=f"(1 - alpha) * A + alpha * B on {record['target']['data']}: A trained on {a['data']}, B on {b['data']} "
        f"({a['backbone']}; BatchNorm statistics {record['bn_stats']})",
        xaxis_title="alpha (weight of B)",
        yaxis_title="accuracy",
        template="plotly_white",
        hovermode="closest",
    )
    return figure


def print_summary(out: Path, table: pd.DataFrame, record: dict) -> None:
    for split in ("val", "test"):
        pivot = table.pivot_table(index="alpha", columns=["align", "head"], values=f"{split}_acc", sort=False)
        print(
            f"\n{split} accuracy by alpha (columns: alignment, "
            f"head):\n{pivot.to_string(float_format=lambda v: f'{v:.4f}')}"
        )
    s = record["similarity"]
    line = (
        f"\nfilter similarity of {s['layer']} ({s['filters']} filters): mean diagonal raw "
        f"{s['raw_mean_diagonal']:.3f}, "
        f"greedy {s['greedy_mean_diagonal']:.3f}, optimal {s['optimal_mean_diagonal']:.3f}; above {s['threshold']}: "
        f"greedy {s['greedy_share_above_threshold']:.1%}, optimal {s['optimal_share_above_threshold']:.1%}"
    )
    if "aligned_raw_mean_diagonal" in s:
        line += f"; raw order after weight matching {s['aligned_raw_mean_diagonal']:.3f}"
    print(line)
    print(f"Finished in {record['seconds']:.0f} s. Results: {out.resolve()}")
