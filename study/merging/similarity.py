"""Cosine similarity between two models' conv filters, as in document 002.

A *filter* is one kernel of a conv layer split per input channel: a conv with
3 input and 128 output channels and 3x3 kernels has 384 filters of 9 values
(filter index = output channel * input channels + input channel). The matrix
S[i, j] = cos(filter i of A, filter j of B) is shown three ways:

- raw order: a diagonal appears only if the two models keep their filters in
  the same order (document 002: models trained from the same seed);
- reordered: B's filters (columns) permuted so that each of A's filters faces
  its best match. `greedy` follows the document: for A's filters in order, take
  the most similar B filter not taken yet. `optimal` maximises the sum of the
  diagonal (scipy's linear_sum_assignment); greedy can never beat it;
- binarised: the reordered matrix thresholded (default 0.5, as in the document).

The numbers: the mean diagonal similarity after reordering, and the share of
A's filters whose match is above the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from study.core.config import StudyError

ORDERS = ("greedy", "optimal")


def conv_weight(model: nn.Module, layer: str) -> torch.Tensor:
    """The weight of conv module `layer`, checked to have filters worth comparing."""
    module = dict(model.named_modules()).get(layer)
    if not isinstance(module, nn.modules.conv._ConvNd):
        convs = [name for name, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
        raise StudyError(
            f"--layer '{layer}' is not a conv layer of {type(model).__name__}: use one of {', '.join(convs[:4])}, ..."
        )
    if module.weight[0, 0].numel() == 1:
        raise StudyError(
            f"--layer '{layer}' has 1x1 kernels: its per-channel filters are single numbers; choose a conv with "
            "larger kernels"
        )
    return module.weight.detach()


def conv_filters(weight: torch.Tensor) -> torch.Tensor:
    """A conv weight's filters: (out channels * in channels per group) x (kernel elements), row o * in + i."""
    return weight.detach().float().cpu().reshape(weight.shape[0] * weight.shape[1], -1)


def cosine_matrix(filters_a: torch.Tensor, filters_b: torch.Tensor) -> np.ndarray:
    """S[i, j] = cosine similarity of A's filter i and B's filter j (0 where a filter is all zeros)."""
    unit_a = nn.functional.normalize(filters_a.double(), dim=1)
    unit_b = nn.functional.normalize(filters_b.double(), dim=1)
    return (unit_a @ unit_b.T).numpy()


def greedy_order(similarity: np.ndarray) -> np.ndarray:
    """Document 002's reordering: for A's filters in order, the most similar B filter not yet taken."""
    taken = np.zeros(similarity.shape[1], dtype=bool)
    order = np.empty(similarity.shape[0], dtype=np.int64)
    for row in range(similarity.shape[0]):
        candidates = np.where(taken, -np.inf, similarity[row])
        order[row] = int(np.argmax(candidates))
        taken[order[row]] = True
    return order


def optimal_order(similarity: np.ndarray) -> np.ndarray:
    """The column order maximising the sum of the diagonal."""
    _, columns = linear_sum_assignment(similarity, maximize=True)
    return columns


@dataclass(kw_only=True)
class FilterSimilarity:
    layer: str
    shape: tuple[int, ...]  # the conv weight's shape
    matrix: np.ndarray  # raw order
    orders: dict[str, np.ndarray]  # "greedy" / "optimal" -> B's filter facing each of A's filters
    threshold: float

    def matched(self, order: str) -> np.ndarray:
        return self.matrix[np.arange(len(self.matrix)), self.orders[order]]

    def summary(self) -> dict:
        diagonal = np.diag(self.matrix)
        result = {
            "layer": self.layer,
            "filters": len(self.matrix),
            "threshold": self.threshold,
            "raw_mean_diagonal": float(diagonal.mean()),
            "raw_share_above_threshold": float((diagonal > self.threshold).mean()),
        }
        for order in self.orders:
            matched = self.matched(order)
            result[f"{order}_mean_diagonal"] = float(matched.mean())
            result[f"{order}_share_above_threshold"] = float((matched > self.threshold).mean())
        return result

    def table(self) -> pd.DataFrame:
        """One row per filter of A: where it sits, its raw-order partner and its matches."""
        in_per_group = self.shape[1]
        count = len(self.matrix)
        table = pd.DataFrame(
            {
                "filter": np.arange(count),
                "out_channel": np.arange(count) // in_per_group,
                "in_channel": np.arange(count) % in_per_group,
                "raw_similarity": np.diag(self.matrix),
            }
        )
        for order, columns in self.orders.items():
            table[f"{order}_match"] = columns
            table[f"{order}_similarity"] = self.matched(order)
        return table


def filter_similarity(
    weight_a: torch.Tensor, weight_b: torch.Tensor, layer: str, threshold: float = 0.5
) -> FilterSimilarity:
    """Compare the filters of two conv weights of one shape (see the module docstring)."""
    if weight_a.shape != weight_b.shape:
        raise StudyError(
            f"layer '{layer}' is {tuple(weight_a.shape)} in A but {tuple(weight_b.shape)} in B: compare models of "
            "one architecture"
        )
    matrix = cosine_matrix(conv_filters(weight_a), conv_filters(weight_b))
    orders = {"greedy": greedy_order(matrix), "optimal": optimal_order(matrix)}
    return FilterSimilarity(layer=layer, shape=tuple(weight_a.shape), matrix=matrix, orders=orders, threshold=threshold)


def similarity_figures(result: FilterSimilarity, order: str, labels: tuple[str, str]) -> list[go.Figure]:
    """Heatmaps: raw order, reordered by `order`, and the reordered matrix binarised at the threshold."""
    reordered = result.matrix[:, result.orders[order]]
    summary = result.summary()
    name_a, name_b = labels
    views = [
        (result.matrix, f"raw order: mean diagonal {summary['raw_mean_diagonal']:.3f}", "RdBu", -1),
        (reordered, f"reordered ({order}): mean diagonal {summary[f'{order}_mean_diagonal']:.3f}", "RdBu", -1),
        (
            (reordered > result.threshold).astype(np.int8),
            f"reordered ({order}), binarised at {result.threshold}: {summary[f'{order}_share_above_threshold']:.1%} "
            "of the diagonal above",
            "Greys",
            0,
        ),
    ]
    figures = []
    for values, title, colours, low in views:
        figure = go.Figure(go.Heatmap(z=values, colorscale=colours, zmin=low, zmax=1))
        figure.update_layout(
            title=f"{result.layer} ({len(result.matrix)} filters): {title}",
            xaxis_title=f"filter of {name_b}",
            yaxis_title=f"filter of {name_a}",
            yaxis_autorange="reversed",
            width=720,
            height=680,
            template="plotly_white",
        )
        figures.append(figure)
    return figures
