"""FaithfulnessCorrelation builds its rows by scattering the baseline's values at a subset's
elements where the groups are shared and of equal size: the same rows, so the same scores, as
the general route (a mask of the whole row and ``modality.replace``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit import metrics as M
from evalkit.metrics.faithfulness import correlation


def _model(d: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 3))


@pytest.mark.parametrize("shape, modality, grouping, baseline", [
    ((7, 3, 6, 5), "image", "pixels", "black"),
    ((7, 3, 6, 5), "image", "channel_values", "mean"),
    ((7, 2, 40), "series", "pixels", "black"),
    ((7, 2, 40), "series", "pixels", 0.25),
    ((9, 12), "tabular", "pixels", "mean"),
    # a baseline row shared by the samples, on groups that are single positions in order
    ((7, 2, 40), "series", "channel_values", np.linspace(-1.0, 1.0, 80).reshape(2, 40)),
    ((9, 12), "tabular", "pixels", 0.5),
])
def test_scattered_rows_equal_the_general_route(monkeypatch, shape, modality, grouping,
                                                baseline):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=gen)
    x[0].view(-1)[:4] = -0.0
    a = torch.randn(*shape, generator=gen)
    model = _model(x[0].numel())
    y = torch.arange(shape[0]) % 3
    scores = []
    calls = []
    scatter = correlation.FaithfulnessCorrelation._scattered_scores
    monkeypatch.setattr(correlation.FaithfulnessCorrelation, "_scattered_scores",
                        lambda self, *args: calls.append(1) or scatter(self, *args))
    for scattered in (True, False):
        if not scattered:
            assert calls  # the first call took the scattered route
            monkeypatch.setattr(correlation, "_group_elements", lambda grp, row_shape: None)
        metric = M.FaithfulnessCorrelation(nr_runs=6, subset_size=3, grouping=grouping,
                                           perturb_baseline=baseline, seed=2)
        scores.append(torch.as_tensor(metric(model, x, y, a, modality=modality,
                                             batch_size=5)))
    assert torch.equal(scores[0].isnan(), scores[1].isnan())
    assert torch.equal(scores[0].nan_to_num(7.0), scores[1].nan_to_num(7.0))


def test_group_elements():
    from evalkit.perturb import make_grouping

    x = torch.zeros(2, 3, 4, 5)
    pixels = make_grouping("pixels")(x)
    elements = correlation._group_elements(pixels, (3, 4, 5))
    assert elements.shape == (20, 3)
    # pixel (0, 1) is flat position 1 in each of the 3 channels
    assert elements[1].tolist() == [1, 21, 41]
    # groups of unequal size (a label map with one large group): the general route
    labels = torch.zeros(1, 1, 4, 5, dtype=torch.int64)
    labels[..., 0, :2] = 1
    assert correlation._group_elements(make_grouping(labels)(x), (3, 4, 5)) is None


def test_subsets_are_sorted_so_sums_do_not_depend_on_the_cpus_partition_order(monkeypatch):
    # np.argpartition's order within the k smallest depends on the CPU's SIMD kernels; the ids
    # are sorted, so a partition that returns them in another order gives the same bits
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 40, generator=gen)
    a = torch.randn(6, 40, generator=gen)
    model = _model(40)
    y = torch.arange(6) % 3
    metric = M.FaithfulnessCorrelation(nr_runs=8, subset_size=13, grouping="pixels", seed=0)
    first = metric(model, x, y, a, modality="tabular")
    subsets = metric.subsets_.copy()
    assert (subsets[..., 1:] > subsets[..., :-1]).all()  # ascending, distinct

    real = correlation.np.argpartition

    def reversed_partition(u, kth, axis):
        out = real(u, kth, axis=axis)
        out[..., : kth + 1] = out[..., kth::-1].copy()  # the same sets, listed the other way
        return out

    monkeypatch.setattr(correlation.np, "argpartition", reversed_partition)
    again = M.FaithfulnessCorrelation(nr_runs=8, subset_size=13, grouping="pixels", seed=0)
    second = again(model, x, y, a, modality="tabular")
    assert (again.subsets_ == subsets).all()
    assert torch.equal(torch.as_tensor(first), torch.as_tensor(second))
