import itertools
import math

import numpy as np
import pytest
import torch

from study.core.config import StudyError
from study.merging.similarity import conv_filters, conv_weight, filter_similarity, similarity_figures

R = 1 / math.sqrt(2)


def as_weight(filters: list[list[float]]) -> torch.Tensor:
    """Four 2-element filters as a conv weight of 2 output x 2 input channels and 1x2 kernels (filter o * 2 + i)."""
    return torch.tensor(filters, dtype=torch.float32).reshape(2, 2, 1, 2)


A = as_weight([[1, 0], [0, 1], [1, 1], [1, -1]])
B = as_weight([[0, 3], [2, 2], [4, 0], [-1, 1]])
# cos(A_i, B_j), by hand
EXPECTED = np.array([[0, R, 1, -R], [1, R, 0, R], [R, 1, R, 0], [-R, 0, R, -1]])


def test_cosine_matrix_and_both_reorderings_on_hand_made_filters():
    result = filter_similarity(A, B, "hand", threshold=0.5)
    np.testing.assert_allclose(result.matrix, EXPECTED, atol=1e-12)
    # greedy (document 002): A0 takes B2, A1 takes B0, A2 takes B1, A3 is left with B3
    assert result.orders["greedy"].tolist() == [2, 0, 1, 3]
    # the optimal assignment beats greedy here: every filter gets a 0.707 partner
    best = max(sum(EXPECTED[i, p[i]] for i in range(4)) for p in itertools.permutations(range(4)))
    assert EXPECTED[range(4), result.orders["optimal"]].sum() == pytest.approx(best) == pytest.approx(4 * R)
    summary = result.summary()
    assert summary["filters"] == 4
    assert summary["raw_mean_diagonal"] == pytest.approx((0 + R + R - 1) / 4)
    assert summary["greedy_mean_diagonal"] == pytest.approx(0.5) and summary["greedy_share_above_threshold"] == 0.75
    assert summary["optimal_mean_diagonal"] == pytest.approx(R) and summary["optimal_share_above_threshold"] == 1.0
    table = result.table()
    assert table["out_channel"].tolist() == [0, 0, 1, 1] and table["in_channel"].tolist() == [0, 1, 0, 1]
    assert table["greedy_similarity"].tolist() == pytest.approx([1, 1, 1, -1])


def test_first_layer_of_3_inputs_and_128_outputs_has_384_filters_and_reordering_finds_a_shuffle():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(128, 3, 3, 3, generator=generator)
    assert conv_filters(weight).shape == (384, 9)
    shuffled = weight[torch.randperm(128, generator=generator)] * 2.5  # other order, other scale: same shapes
    result = filter_similarity(weight, shuffled, "conv1")
    summary = result.summary()
    assert summary["raw_mean_diagonal"] < 0.2  # no diagonal without reordering
    assert summary["greedy_mean_diagonal"] == pytest.approx(1) and summary["optimal_mean_diagonal"] == pytest.approx(1)
    assert summary["greedy_share_above_threshold"] == 1.0
    figures = similarity_figures(result, "greedy", ("A", "B"))
    assert len(figures) == 3 and set(np.unique(figures[2].data[0].z)) <= {0, 1}
    assert np.diag(figures[1].data[0].z) == pytest.approx(np.ones(384))


def test_a_zero_filter_has_similarity_zero_not_nan():
    zero = as_weight([[0, 0], [0, 1], [1, 1], [1, -1]])
    assert np.isfinite(filter_similarity(zero, B, "hand").matrix).all()
    assert filter_similarity(zero, B, "hand").matrix[0].tolist() == [0, 0, 0, 0]


def test_layers_without_comparable_filters_are_one_line_errors():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3))
    assert conv_weight(model, "2").shape == (4, 4, 3, 3)
    with pytest.raises(StudyError, match=r"'0' has 1x1 kernels"):
        conv_weight(model, "0")
    with pytest.raises(StudyError, match=r"'1' is not a conv layer of Sequential: use one of 0, 2, ..."):
        conv_weight(model, "1")
    with pytest.raises(StudyError, match="compare models of one architecture"):
        filter_similarity(A, torch.zeros(2, 2, 3, 3), "hand")
