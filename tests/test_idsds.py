"""IDSDS (Hesse, Schaub-Meyer and Roth 2024): known answers on a model whose output is a
weighted sum of patch means, edge cases, the patch-deletion fine-tuning helper (a seeded copy;
the user's model and the global RNG untouched), and the protocol on the shipped shapes model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import evalkit as ek
from evalkit.datasets import make_shapes
from evalkit.metrics import IDSDS, list_metrics
from evalkit.metrics._ties import CONSTANT_MAP
from evalkit.metrics.faithfulness import finetune_on_patch_deletions
from evalkit.metrics.faithfulness.idsds import (
    CONSTANT_SUMS,
    DELETION_ATTRIBUTE,
    patch_deletion_selection,
)
from evalkit.perturb import Patches
from evalkit.testing import check_metric
from evalkit.zoo import load_shapes_cnn

pytestmark = pytest.mark.filterwarnings("ignore::evalkit.UndefinedScoreWarning")

#: the weights of the four 2 x 2 patches of a 4 x 4 image (raster order)
WEIGHTS = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)


class PatchSum(nn.Module):
    """logit_0 = sum_g w_g mean(x over patch g) of a (N, 1, 4, 4) input, logit_1 = -logit_0:
    deleting patch g (replacing it by 0) lowers logit_0 by exactly w_g mean(x_g). Float64
    (its parameter gives the wrapper the dtype), so the known answers hold to 1e-12."""

    def __init__(self, weights: torch.Tensor = WEIGHTS) -> None:
        super().__init__()
        self.weights = nn.Parameter(weights.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = F.avg_pool2d(x, 2).flatten(1)  # (N, 4) patch means in raster order
        s = means @ self.weights
        return torch.stack([s, -s], 1)


def _patch_map(values: torch.Tensor) -> torch.Tensor:
    """(N, 4) per-patch values spread evenly over each patch's 4 pixels: (N, 1, 4, 4) whose
    per-patch sums are ``values``."""
    return F.interpolate((values / 4).reshape(-1, 1, 2, 2), scale_factor=2, mode="nearest")


@pytest.fixture(scope="module")
def patch_data():
    g = torch.Generator().manual_seed(0)
    x = 0.5 + torch.rand((5, 1, 4, 4), generator=g, dtype=torch.float64)
    y = torch.zeros(5, dtype=torch.int64)
    means = F.avg_pool2d(x, 2).flatten(1)
    return x, y, WEIGHTS * means  # the exact drops d_g = w_g mean(x_g)


# ------------------------------------------------------------------------- known answers
def test_single_deletion_drops_are_exact_and_a_proportional_map_scores_one(patch_data):
    x, y, drops = patch_data
    metric = IDSDS(patch_size=2)
    s = metric(PatchSum(), x, y, _patch_map(drops))
    np.testing.assert_allclose(metric.patch_drops_, drops.numpy(), rtol=1e-12)
    np.testing.assert_allclose(s, np.ones(5), atol=1e-12)
    # ranks only: any increasing transform of the drops scores 1 too, the reversed order -1
    np.testing.assert_allclose(metric(PatchSum(), x, y, _patch_map(drops ** 3)), 1, atol=1e-12)
    np.testing.assert_allclose(metric(PatchSum(), x, y, _patch_map(-drops)), -1, atol=1e-12)


def test_a_swap_of_two_patches_gives_the_hand_computed_spearman():
    # equal patch means: the drops rank as the weights, 1 < 2 < 3 < 4; an attribution that
    # swaps the last two: d = (0, 0, 1, 1), rho = 1 - 6 * 2 / (4 * (16 - 1)) = 0.8
    x = torch.ones((1, 1, 4, 4), dtype=torch.float64)
    a = _patch_map(torch.tensor([[1.0, 2.0, 4.0, 3.0]], dtype=torch.float64))
    s = IDSDS(patch_size=2)(PatchSum(), x, torch.zeros(1, dtype=torch.int64), a)
    np.testing.assert_allclose(s, [0.8], atol=1e-12)
    # Pearson on the same map: corr((1, 2, 3, 4), (1, 2, 4, 3)) = 0.8 as well (equal spacing)
    p = IDSDS(patch_size=2, similarity_func="pearson")(PatchSum(), x,
                                                        torch.zeros(1, dtype=torch.int64), a)
    np.testing.assert_allclose(p, [0.8], atol=1e-12)


def test_signed_attributions_are_correlated_as_they_are():
    """abs=False by default: a patch that raises the output when deleted must get a negative
    attribution; abs=True forgets the sign and loses the order."""
    xx = torch.ones((1, 1, 4, 4), dtype=torch.float64)
    signed = torch.tensor([[-2.0, -1.0, 1.0, 2.0]], dtype=torch.float64)

    model = PatchSum(signed[0])
    y1 = torch.zeros(1, dtype=torch.int64)
    np.testing.assert_allclose(IDSDS(patch_size=2)(model, xx, y1, _patch_map(signed)), [1.0],
                               atol=1e-12)
    assert IDSDS(patch_size=2, abs=True)(model, xx, y1, _patch_map(signed))[0] < 0.5


def test_the_deletion_value_is_the_baseline(patch_data):
    """perturb_baseline=0.5: deleting patch g lowers logit_0 by w_g (mean(x_g) - 0.5)."""
    x, y, _ = patch_data
    metric = IDSDS(patch_size=2, perturb_baseline=0.5)
    metric(PatchSum(), x, y, _patch_map(torch.ones((5, 4), dtype=torch.float64)
                                        + torch.arange(4.0, dtype=torch.float64)))
    want = WEIGHTS * (F.avg_pool2d(x, 2).flatten(1) - 0.5)
    np.testing.assert_allclose(metric.patch_drops_, want.numpy(), rtol=1e-12)


# ------------------------------------------------------------------------------ edge cases
def test_constant_maps_and_constant_sums_are_nan_with_reasons(patch_data):
    x, y, drops = patch_data
    a = _patch_map(drops)
    a[0] = 0.0
    a[1] = 0.3
    metric = IDSDS(patch_size=2)
    s = metric(PatchSum(), x, y, a)
    assert np.isnan(s[:2]).all() and np.isfinite(s[2:]).all()
    assert metric.nan_reasons_[0] == metric.nan_reasons_[1] == CONSTANT_MAP
    # scored in tie order, the equal patches still have equal sums: undefined
    scored = IDSDS(patch_size=2, constant_maps="score")
    s2 = scored(PatchSum(), x, y, a)
    assert np.isnan(s2[:2]).all() and scored.nan_reasons_[1] == CONSTANT_SUMS
    np.testing.assert_allclose(s2[2:], s[2:], rtol=1e-12)


def test_nan_attributions_and_insensitive_models(patch_data):
    x, y, drops = patch_data
    a = _patch_map(drops)
    a[3, 0, 1, 1] = float("nan")
    metric = IDSDS(patch_size=2)
    s = metric(PatchSum(), x, y, a)
    assert np.isnan(s[3]) and "NaN or Inf" in metric.nan_reasons_[3]
    np.testing.assert_allclose(np.delete(s, 3), 1, atol=1e-12)

    s = metric(PatchSum(torch.zeros(4, dtype=torch.float64)), x, y, _patch_map(drops))
    assert np.isnan(s).all()
    assert len(metric.nan_reasons_) == 5
    assert all("did not change" in r for r in metric.nan_reasons_.values())


def test_patch_size_larger_than_the_input_is_refused(patch_data):
    x, y, drops = patch_data
    with pytest.raises(ValueError, match="patch_size"):
        IDSDS(patch_size=8)(PatchSum(), x, y, _patch_map(drops))


def test_registered_with_metadata_and_conformance():
    frame = list_metrics("faithfulness")
    row = {k: frame[k][list(frame["name"]).index("IDSDS")] for k in frame}
    assert row["higher_is_better"] and "Hesse" in row["paper"]
    assert tuple(row["modalities"]) == ("image", "series")
    assert ek.metrics.get("InDomainSingleDeletionScore") is IDSDS
    check_metric(IDSDS)  # every declared modality, cheap settings (conformance_params)


def test_deletions_are_shared_between_explanations_in_a_forward_cache(patch_data):
    """The single deletions do not depend on the attribution: a second explanation of the same
    model and inputs runs no new rows."""
    x, y, drops = patch_data
    model = PatchSum()
    metric = IDSDS(patch_size=2)
    with ek.forward_cache() as cache:
        first = metric(model, x, y, _patch_map(drops))
        misses = cache.stats().misses
        second = metric(model, x, y, _patch_map(-drops))
        assert cache.stats().misses == misses and cache.stats().hits >= 5 * 4
    np.testing.assert_allclose(first, -second, atol=1e-12)


# ------------------------------------------------------------------------- the fine-tuning
def test_deletion_selection_is_seeded_and_follows_its_parameters():
    sel = patch_deletion_selection(4000, 16, seed=3, epoch=0)
    assert sel.shape == (4000, 16) and sel.dtype == torch.bool
    per_image = sel.sum(1)
    assert set(per_image.unique().tolist()) == {0, 1}  # clean or one patch
    assert abs(float((per_image > 0).double().mean()) - 0.5) < 0.03
    # every patch is chosen about as often
    counts = sel.sum(0).double()
    assert float(counts.min()) > 0.7 * float(counts.mean())
    assert torch.equal(sel, patch_deletion_selection(4000, 16, seed=3, epoch=0))
    assert not torch.equal(sel, patch_deletion_selection(4000, 16, seed=3, epoch=1))
    assert not torch.equal(sel, patch_deletion_selection(4000, 16, seed=4, epoch=0))
    several = patch_deletion_selection(2000, 16, seed=0, epoch=0, deletion_probability=1.0,
                                       max_deleted=3)
    assert set(several.sum(1).unique().tolist()) == {1, 2, 3}


class Recorder(nn.Module):
    """A linear classifier that keeps the inputs it was trained on."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.linear = nn.Linear(int(np.prod(shape)), 2)
        self.seen: list[torch.Tensor] = []

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(inp.detach().clone())
        return self.linear(inp.flatten(1))


@pytest.mark.parametrize("shape,patch", [((1, 4, 4), 2), ((2, 12), 3)], ids=["image", "series"])
def test_fine_tuning_deletes_whole_patches_by_the_baseline(shape, patch):
    torch.manual_seed(0)
    model = Recorder(shape)
    x = torch.ones((64, *shape))
    y = torch.arange(64) % 2
    tuned = finetune_on_patch_deletions(model, x, y, patch_size=patch, epochs=2, batch_size=16)
    seen = torch.cat(tuned.seen)
    assert seen.shape == (128, *shape) and not model.seen  # the user's model never trained
    labels = Patches(patch)(x[:1]).labels  # (1, 1, ...) shared patch ids
    zero = (seen == 0).expand(-1, *seen.shape[1:])
    # the zeros of an input are one whole patch (all channels) or nothing
    n_zero = zero.flatten(1).sum(1)
    patch_elems = shape[0] * int((labels == 0).sum())
    assert set(n_zero.unique().tolist()) == {0, patch_elems}
    for row in seen[n_zero > 0]:
        ids = labels.expand(1, *shape)[0][row == 0].unique()
        assert ids.numel() == 1
    assert 0.3 < float((n_zero > 0).double().mean()) < 0.7


@pytest.fixture(scope="module")
def shapes():
    """The shipped shapes CNN fine-tuned on 256 images with 8 x 8 patches deleted (2 epochs:
    well under a second on a CPU)."""
    model = load_shapes_cnn()
    train, test = make_shapes(256, seed=21), make_shapes(48, seed=22)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    before = copy.deepcopy(model.state_dict())
    rng_before = torch.random.get_rng_state()
    tuned = finetune_on_patch_deletions(model, x, y, patch_size=8, epochs=2, seed=0)
    return {"model": model, "tuned": tuned, "before": before, "rng_before": rng_before,
            "x": x, "y": y, "x_test": torch.from_numpy(test.x),
            "y_test": torch.from_numpy(test.y), "masks": torch.from_numpy(test.masks)}


def test_fine_tuning_leaves_the_user_model_and_the_global_rng_alone(shapes):
    model, tuned = shapes["model"], shapes["tuned"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, shapes["before"][name]), name
    assert torch.equal(torch.random.get_rng_state(), shapes["rng_before"])
    assert tuned is not model and not tuned.training
    assert not hasattr(model, DELETION_ATTRIBUTE)
    assert getattr(tuned, DELETION_ATTRIBUTE)["patch_size"] == (8, 8)
    changed = [n for n, v in tuned.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, shapes["before"][n])]
    assert changed


def test_fine_tuning_is_reproducible_per_seed(shapes):
    x, y = shapes["x"][:64], shapes["y"][:64]
    model = shapes["model"]
    a = finetune_on_patch_deletions(model, x, y, patch_size=8, seed=5)
    b = finetune_on_patch_deletions(model, x, y, patch_size=8, seed=5)
    c = finetune_on_patch_deletions(model, x, y, patch_size=8, seed=6)
    for (name, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), name
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(),
                                                         c.state_dict().values(), strict=True)
               if va.is_floating_point())


def _single_deletions(x: torch.Tensor, patch: int) -> torch.Tensor:
    labels = Patches(patch)(x[:1]).labels
    return torch.cat([torch.where(labels == g, torch.zeros(()), x)
                      for g in range(int(labels.max()) + 1)])


def test_the_fine_tuned_copy_keeps_its_accuracy_and_learns_the_deletions(shapes):
    model, tuned = shapes["model"], shapes["tuned"]
    x, y = shapes["x_test"], shapes["y_test"]
    xd = _single_deletions(x, 8)
    yd = y.repeat(xd.shape[0] // x.shape[0])
    with torch.inference_mode():
        acc = [float((m(x).argmax(1) == y).double().mean()) for m in (model, tuned)]
        loss = [float(F.cross_entropy(m(xd), yd)) for m in (model, tuned)]
    assert acc[1] >= acc[0] - 0.05 and acc[1] >= 0.9
    # in-domain: the copy fits single-deletion inputs better than the original model
    assert loss[1] < loss[0]


def test_idsds_ranks_faithful_maps_above_a_random_map(shapes):
    tuned = shapes["tuned"]
    x, y = shapes["x_test"], shapes["y_test"]
    metric = IDSDS(patch_size=8)
    scores = {}
    for method, kw in (("IntegratedGradients", {}), ("Random", {}),
                       ("GroundTruth", {"masks": shapes["masks"]})):
        a = ek.explain(tuned, x, y, method=method, reduce_channels="sum", **kw)
        scores[method] = float(np.nanmean(metric(tuned, x, y, a)))
    assert abs(scores["Random"]) < 0.15, scores
    assert scores["IntegratedGradients"] > scores["Random"] + 0.3, scores
    assert scores["GroundTruth"] > scores["Random"] + 0.3, scores


def test_a_model_fine_tuned_with_other_deletions_is_refused(shapes):
    tuned = shapes["tuned"]
    x, y = shapes["x_test"][:4], shapes["y_test"][:4]
    a = torch.rand((4, 1, 32, 32))
    IDSDS(patch_size=8)(tuned, x, y, a)  # the settings it was tuned with
    IDSDS(patch_size=(8, 8))(tuned, x, y, a)  # the same patches, spelled per axis
    with pytest.raises(ValueError, match="fine-tuned with"):
        IDSDS(patch_size=4)(tuned, x, y, a)
    with pytest.raises(ValueError, match="fine-tuned with"):
        IDSDS(patch_size=8, perturb_baseline="mean")(tuned, x, y, a)


def test_fine_tuning_argument_checks(shapes):
    model, x, y = shapes["model"], shapes["x"][:8], shapes["y"][:8]
    with pytest.raises(TypeError, match=r"nn\.Module"):
        finetune_on_patch_deletions(lambda t: t, x, y)
    with pytest.raises(ValueError, match="max_deleted"):
        finetune_on_patch_deletions(model, x, y, patch_size=16, max_deleted=5)
    with pytest.raises(ValueError, match="deletion_probability"):
        finetune_on_patch_deletions(model, x, y, patch_size=8, deletion_probability=1.5)
    with pytest.raises(ValueError, match="`y`"):
        finetune_on_patch_deletions(model, x, y[:4], patch_size=8)


# ------------------------------------------------------------- the authors' default grid
def test_default_is_the_authors_4_by_4_grid(patch_data):
    # evaluate.py / train.py of Hesse et al.: --grid_rows_and_cols 4 (16 cells whatever the
    # image size), --sd_baseline zeros, logits, Spearman
    metric = IDSDS()
    assert metric.patch_size is None and metric.grid == 4
    assert metric.perturb_baseline == "zero" and metric.similarity_func == "spearman"
    assert not metric.softmax
    # on 8 x 8 inputs the 4 x 4 grid is the 2 x 2 patches
    g = torch.Generator().manual_seed(1)
    x = torch.rand((3, 1, 8, 8), generator=g, dtype=torch.float64)
    a = torch.rand((3, 1, 8, 8), generator=g, dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.int64)

    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.rand((64,), generator=g, dtype=torch.float64),
                                  requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = x.flatten(1) @ self.w
            return torch.stack([s, -s], 1)

    model = Linear()
    default = metric(model, x, y, a)
    np.testing.assert_allclose(default, IDSDS(patch_size=2)(model, x, y, a), rtol=1e-12)
    assert metric.patch_drops_.shape == (3, 16)


def test_grid_cells_by_hand():
    from evalkit.metrics.faithfulness.idsds import GridCells

    # a 10-step series in 4 windows: floor(i * 4 / 10) = 0 0 0 1 1 2 2 2 3 3
    labels = GridCells(4)(torch.zeros((2, 3, 10))).labels
    assert labels.flatten().tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    # a 4 x 6 image in 2 x 3 cells of 2 x 2 pixels, raster order
    labels = GridCells((2, 3))(torch.zeros((1, 1, 4, 6))).labels[0, 0]
    expected = torch.tensor([[0, 0, 1, 1, 2, 2]] * 2 + [[3, 3, 4, 4, 5, 5]] * 2)
    assert torch.equal(labels, expected)
    with pytest.raises(ValueError, match="grid"):
        GridCells(5)(torch.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match="grid"):
        GridCells(0)


def test_a_grid_and_the_same_patch_size_are_the_same_deletions(shapes):
    # the shapes fixture was fine-tuned with 8 x 8 patches of 32 x 32 images: the default
    # 4 x 4 grid deletes the same patches, a 2 x 2 grid does not
    tuned = shapes["tuned"]
    x, y = shapes["x_test"][:4], shapes["y_test"][:4]
    a = torch.rand((4, 1, 32, 32))
    np.testing.assert_allclose(IDSDS()(tuned, x, y, a), IDSDS(patch_size=8)(tuned, x, y, a),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="fine-tuned with"):
        IDSDS(grid=2)(tuned, x, y, a)
    # the helper's default is the grid too, and IDSDS' default accepts its copy
    by_default = finetune_on_patch_deletions(shapes["model"], shapes["x"][:16],
                                             shapes["y"][:16], epochs=1, seed=0)
    assert getattr(by_default, DELETION_ATTRIBUTE)["grid"] == (4, 4)
    assert np.isfinite(IDSDS()(by_default, x, y, a)).all()
