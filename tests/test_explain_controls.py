"""Control explanations: Sobel on a step image, seeded Random, Constant, GroundTruth masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _explain_helpers import GapNet, inputs, make

import evalkit as ek
from evalkit.explain import explainer_info


def test_sobel_vertical_step():
    x = torch.zeros((2, 3, 6, 8), dtype=torch.float64)
    x[..., 4:] = 1.0  # a vertical edge between columns 3 and 4
    a = ek.explain(make(GapNet), x, None, method="Sobel")
    assert a.shape == (2, 1, 6, 8)
    expected = torch.zeros((6, 8), dtype=torch.float64)
    expected[:, 3:5] = 2.0  # 0.5 * |1 + 2 + 1|, on both sides of the edge, every row
    torch.testing.assert_close(a[0, 0], expected)
    torch.testing.assert_close(a[1, 0], expected)
    # transposed: a horizontal edge gives the same map transposed
    t = ek.explain(make(GapNet), x.transpose(2, 3).contiguous(), None, method="Sobel")
    torch.testing.assert_close(t[0, 0], expected.T)


def test_sobel_matches_explicit_filter_and_options():
    x, _ = inputs(2, size=7)
    gray = x.mean(1, keepdim=True)
    p = F.pad(gray, (1, 1, 1, 1), mode="reflect")[:, 0]
    gx = torch.zeros_like(gray[:, 0])
    gy = torch.zeros_like(gray[:, 0])
    kx = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    for i in range(7):
        for j in range(7):
            for u in range(3):
                for v in range(3):
                    gx[:, i, j] += kx[u][v] * p[:, i + u, j + v]
                    gy[:, i, j] += kx[v][u] * p[:, i + u, j + v]
    expected = (0.5 * gx.abs() + 0.5 * gy.abs()).unsqueeze(1)
    torch.testing.assert_close(ek.explain(make(GapNet), x, None, method="Sobel"), expected)
    luma = ek.explain(make(GapNet), x, None, method="Sobel", grayscale="luma")
    assert luma.shape == (2, 1, 7, 7) and not torch.allclose(luma, expected)
    # quantus' name resolves; the map ignores the model and the labels
    torch.testing.assert_close(
        ek.explain(make(GapNet, seed=5), x, [0, 1], method="Control Var. Sobel Filter"), expected
    )
    with pytest.raises(ValueError, match=r"Sobel does not apply to tabular.*image, series"):
        ek.explain(make(GapNet), torch.rand(2, 5), None, method="Sobel")
    with pytest.raises(ValueError, match="grayscale"):
        ek.explain(make(GapNet), x, None, method="Sobel", grayscale="bt709")
    constant = ek.explain(make(GapNet), torch.ones_like(x), None, method="Sobel")
    assert bool((constant == 0).all())


def test_random_seeded_and_per_sample():
    x, _ = inputs(4)
    model = make(GapNet)
    a = ek.explain(model, x, None, method="Random", seed=3)
    assert a.shape == (4, 1, 8, 8) and bool(((a >= 0) & (a < 1)).all())
    torch.testing.assert_close(a, ek.explain(model, x, None, method="Random", seed=3))
    assert not torch.allclose(a, ek.explain(model, x, None, method="Random", seed=4))
    torch.testing.assert_close(ek.explain(model, x[2:3], None, method="Random", seed=3), a[2:3])
    assert ek.explain(model, x, None, method="Random", channels=3).shape == (4, 3, 8, 8)
    assert explainer_info("Random").stochastic


def test_constant():
    x, _ = inputs(2)
    a = ek.explain(make(GapNet), x, None, method="Control Var. Constant", constant_value=0.5)
    assert a.shape == (2, 1, 8, 8) and bool((a == 0.5).all())


def test_ground_truth_returns_the_masks_in_chunks():
    x, y = inputs(5)
    masks = (torch.rand((5, 1, 8, 8), generator=torch.Generator().manual_seed(0)) > 0.5)
    model = make(GapNet)
    a = ek.explain(model, x, y, method="GroundTruth", masks=masks, batch_size=2)
    torch.testing.assert_close(a, masks.to(x.dtype))
    # the metrics' name, NumPy masks, masks without the channel axis, soft masks
    b = ek.explain(model, x.numpy(), y.numpy(), method="GroundTruth", s=masks[:, 0].numpy(),
                   batch_size=3)
    np.testing.assert_array_equal(b, masks.double().numpy())
    soft = torch.rand((5, 3, 8, 8), dtype=torch.float64)
    torch.testing.assert_close(ek.explain(model, x, y, method="GroundTruth", masks=soft), soft)
    info = explainer_info("GroundTruth")
    assert info.needs_masks and "masks" in info.per_sample and info.model_free


def test_ground_truth_errors():
    x, y = inputs(3)
    model = make(GapNet)
    with pytest.raises(ValueError, match="masks=s"):
        ek.explain(model, x, y, method="GroundTruth")
    with pytest.raises(ValueError, match=r"one attribution per input|samples"):
        ek.explain(model, x, y, method="GroundTruth", masks=torch.ones(2, 1, 8, 8))
    with pytest.raises(ValueError, match="cannot be aligned"):
        ek.explain(model, x, y, method="GroundTruth", masks=torch.ones(3, 1, 4, 4))
    nan = torch.ones(3, 1, 8, 8)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ek.explain(model, x, y, method="GroundTruth", masks=nan)


def test_controls_need_no_labels_and_no_torch_model():
    x, _ = inputs(2)

    def black_box(batch):
        return np.zeros((len(batch), 3))

    for method in ("Random", "Constant", "Sobel"):
        a = ek.explain(black_box, x.numpy(), None, method=method)
        assert a.shape == (2, 1, 8, 8)
