"""The domain layer: input modalities and what targets predict.

Modalities own the layout of ``x`` (and of ``a`` and ``s``), the replacement of features and
which metrics apply; targets own what a prediction is and when two agree. Metrics ask them and
never read ``x.ndim`` or take an ``argmax`` themselves (a source check below keeps it so).
"""

from __future__ import annotations

import ast
import math
import pathlib
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit.metrics import (
    IROF,
    ROAD,
    Consistency,
    Focus,
    MaxSensitivity,
    PixelFlipping,
    Sparseness,
    Sufficiency,
)
from evalkit.modality import (
    ImageModality,
    SeriesModality,
    TabularModality,
    TokensModality,
    as_modality,
    infer_modality,
)
from evalkit.models.targets import (
    ClassTarget,
    OutputIndex,
    SegmentationTarget,
)

warnings.filterwarnings("ignore", category=ek.UndefinedScoreWarning)

ROOT = pathlib.Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- inference
@pytest.mark.parametrize(("x", "name"), [
    (np.zeros((3, 5), np.float32), "tabular"),
    (torch.zeros((3, 5), dtype=torch.float64), "tabular"),
    (np.zeros((3, 7), np.int64), "tokens"),
    (torch.zeros((3, 7), dtype=torch.int32), "tokens"),
    (np.zeros((3, 2, 9), np.float32), "series"),
    (np.zeros((3, 3, 4, 4), np.float32), "image"),
    (np.zeros((3, 3, 4, 4), np.uint8), "image"),
    (np.zeros((3, 1, 2, 4, 4), np.float32), "image"),
])
def test_modality_is_inferred_from_shape_and_dtype(x, name):
    assert infer_modality(x).name == name


def test_a_batch_without_a_sample_axis_has_no_modality():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        infer_modality(np.zeros(5))


def test_modalities_resolve_from_names_classes_and_instances():
    assert as_modality("series") == SeriesModality()
    assert as_modality(TabularModality) == TabularModality()
    tok = TokensModality(mask_token_id=103)
    assert as_modality(tok) is tok
    assert as_modality(None, np.zeros((2, 3, 4, 4))) == ImageModality()
    with pytest.raises(ValueError, match="Unknown modality 'audio'"):
        as_modality("audio")
    with pytest.raises(TypeError, match="must be a name"):
        as_modality(3)


# --------------------------------------------------------------------------- layout
def test_check_rejects_data_of_another_layout():
    with pytest.raises(ValueError, match=r"not image data: expected \(N, C, H, W\)"):
        ImageModality().check(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="integer ids"):
        TokensModality().check(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="NaN or Inf"):
        TabularModality().check(torch.tensor([[1.0, math.nan]]))


def test_integer_images_need_a_range_and_token_ids_stay_integers():
    raw = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"x.float\(\) / 255.*value_range=\(0, 255\)"):
        ImageModality().check(raw)
    img = ImageModality(value_range=(0, 255)).check(raw)
    assert img.dtype == torch.float32 and float(img[0, 0, 3, 3]) == 15.0
    with pytest.raises(ValueError, match="outside the stated value_range"):
        ImageModality(value_range=(0, 9)).check(raw)
    ids = torch.tensor([[5, 2, 9]])
    out = TokensModality().check(ids)
    assert out.dtype == torch.int64 and torch.equal(out, ids)


def test_feature_maps_sum_channels_and_keep_the_arrangement():
    a = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).reshape(2, 3, 2, 2)
    maps, spatial = ImageModality().feature_maps(a)
    assert spatial == (2, 2)
    assert torch.equal(maps, a.sum(1).reshape(2, 4))
    one = a[:, :1]
    assert torch.equal(ImageModality().feature_maps(one)[0], one.reshape(2, 4))
    t = torch.arange(6.0).reshape(2, 3)
    flat, arrangement = TabularModality().feature_maps(t)
    assert torch.equal(flat, t) and arrangement == ()
    series = torch.ones(2, 2, 5)
    assert SeriesModality().feature_maps(series)[1] == (5,)


def test_feature_masks_refuse_per_channel_masks():
    s = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    s[0, 0, 0, 0] = True
    with pytest.raises(ValueError, match="different masks per channel"):
        ImageModality().feature_masks(s)
    assert ImageModality().feature_masks(s[:, :1]).tolist() == [[True, False, False, False]]


def test_display_map_is_two_dimensional():
    assert ImageModality().display_map(torch.ones(3, 4, 5)).shape == (4, 5)
    assert SeriesModality().display_map(torch.ones(2, 7)).shape == (1, 7)
    assert TabularModality().display_map(torch.ones(6)).shape == (1, 6)


# --------------------------------------------------------------------------- replacement
def test_replace_is_out_of_place_and_broadcasts_per_sample_fills():
    x = torch.zeros(2, 1, 2, 2)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[0, 0, 0, 0] = True
    mask[1, 0, 1, 1] = True
    fill = ImageModality.per_sample(torch.tensor([7.0, 9.0]), x)
    out = ImageModality().replace(x, mask, fill)
    assert float(x.abs().sum()) == 0.0
    assert out[0, 0, 0, 0] == 7 and out[1, 0, 1, 1] == 9 and float(out.sum()) == 16


def test_tokens_are_replaced_by_the_mask_token():
    x = torch.tensor([[4, 5, 6]])
    mask = torch.tensor([[False, True, False]])
    assert TokensModality(mask_token_id=103).replace(x, mask).tolist() == [[4, 103, 6]]
    assert TokensModality().replace(x, mask, 1).dtype == torch.int64


def test_translation_axes():
    img = torch.zeros(1, 3, 4, 5)
    assert ImageModality().translation_axis(img, "x") == 3
    assert ImageModality().translation_axis(img, "y") == 2
    assert SeriesModality().translation_axis(torch.zeros(1, 2, 9), "x") == 2
    with pytest.raises(ValueError, match="only has a time axis"):
        SeriesModality().translation_axis(torch.zeros(1, 2, 9), "y")
    with pytest.raises(ValueError, match="Translations need"):
        TabularModality().translation_axis(torch.zeros(1, 4), "x")


# --------------------------------------------------------------------------- metrics
class Embed(nn.Module):
    """A bag-of-embeddings classifier over token ids (it fails on float inputs)."""

    def __init__(self, vocab: int = 12, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, 4)
        self.out = nn.Linear(4, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(ids).mean(1))


def test_the_wrapper_carries_token_ids_to_the_model_unchanged():
    seen = []
    model = Embed()
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    out = ek.wrap_model(model).predict(ids)
    assert out.shape == (2, 3) and seen == [torch.int64]


def test_metrics_declare_their_modalities_and_refuse_others():
    ids = np.array([[1, 2, 3, 0], [4, 5, 6, 7]])
    a = np.random.default_rng(0).random(ids.shape)
    # model-free metrics read the map only: defined for tokens
    out = Sparseness()(None, ids, None, a)
    assert np.isfinite(out).all()
    # a random baseline is no token id (the mask-token default is: see test_tokens_removal)
    with pytest.raises(ValueError, match="PixelFlipping does not apply to tokens inputs"):
        PixelFlipping(perturb_baseline="uniform")(Embed(), ids, np.array([0, 1]), a)
    with pytest.raises(ValueError, match="additive noise, which is not defined for tokens"):
        MaxSensitivity(nr_samples=2)(Embed(), ids, np.array([0, 1]), a)
    tab = np.random.default_rng(0).random((4, 6)).astype(np.float32)
    mlp = nn.Sequential(nn.Linear(6, 3))
    with pytest.raises(ValueError, match="IROF does not apply to tokens"):
        IROF()(Embed(), ids, np.array([0, 1]), a)
    with pytest.raises(ValueError, match="Focus does not apply to series"):
        Focus()(None, np.zeros((4, 1, 8), np.float32), None, np.ones((4, 1, 8)))
    with pytest.raises(ValueError, match=r"ROAD imputes removed table columns .* `background=`"):
        ROAD()(mlp, tab, np.zeros(4, int), tab)


def test_an_explicit_modality_overrides_the_inferred_one():
    tab = np.random.default_rng(0).random((4, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="not image data"):
        Sparseness()(None, tab, None, tab, modality="image")
    assert np.isfinite(Sparseness()(None, tab, None, tab, modality="tabular")).all()


def test_uint8_images_with_a_stated_range_score_as_their_float_values():
    rng = np.random.default_rng(1)
    x8 = rng.integers(0, 255, (3, 1, 4, 4), dtype=np.uint8)
    a = rng.random((3, 1, 4, 4))
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    y = np.zeros(3, int)
    with pytest.raises(ValueError, match="integer images"):
        PixelFlipping(features_in_step=4)(model, x8, y, a)
    got = PixelFlipping(features_in_step=4)(model, x8, y, a,
                                            modality=ImageModality(value_range=(0, 255)))
    ref = PixelFlipping(features_in_step=4)(model, x8.astype(np.float32), y, a)
    np.testing.assert_array_equal(got, ref)


# --------------------------------------------------------------------------- targets
def test_class_target_predictions_agreement_and_hits():
    t = ClassTarget()
    out = torch.tensor([[0.1, 2.0, 0.3], [5.0, 0.0, 1.0], [math.nan, 1.0, 0.0]])
    assert t.predict(out)[:2].tolist() == [1, 0]
    assert t.agree(torch.tensor([1, 0]), torch.tensor([1, 2])).tolist() == [True, False]
    hits = t.hits(out, torch.tensor([1, 1, 1]))
    assert hits[:2].tolist() == [1.0, 0.0] and math.isnan(hits[2])
    pred = t.predict_or_nan(out)
    assert pred[:2].tolist() == [1.0, 0.0] and math.isnan(pred[2])
    assert t.agree_pairwise(torch.tensor([2, 1, 2])).tolist() == [
        [True, False, True], [False, True, False], [True, False, True]]
    assert t.codes(torch.tensor([2, 1, 2])).tolist() == [2, 1, 2]


def test_a_regression_output_has_no_prediction():
    with pytest.raises(ValueError, match="no class axis"):
        OutputIndex().predict(torch.ones(4))


def test_segmentation_predictions_are_maps():
    t = SegmentationTarget()
    out = torch.zeros(2, 3, 2, 2)
    out[0, 1] = 1.0
    out[1, 2, 0, 0] = 1.0
    pred = t.predict(out)
    assert pred.shape == (2, 2, 2)
    assert t.agree(pred, pred.clone()).tolist() == [True, True]
    other = pred.clone()
    other[1, 1, 1] = 2
    assert t.agree(pred, other).tolist() == [True, False]
    codes = t.codes(torch.stack([pred[0], pred[1], pred[0]]))
    assert codes[0] == codes[2] and codes[0] != codes[1]


class _FirstClass(ClassTarget):
    """Scores like ClassTarget, but 'predicts' class 0 for every input."""

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(outputs.shape[0], dtype=torch.int64, device=outputs.device)


class _AlwaysAgree(ClassTarget):
    def agree(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return torch.ones(p.shape[0], dtype=torch.bool, device=p.device)


def _image_data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 1, 4, 4), generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    torch.nn.init.normal_(model[1].weight, generator=g)
    y = model(x).argmax(1).detach()
    a = torch.rand((n, 1, 4, 4), generator=g)
    return model, x, y, a


def test_road_accuracy_reads_the_targets_prediction():
    model, x, y, a = _image_data()
    y0 = torch.zeros_like(y)
    wrapped = ek.wrap_model(model, target=_FirstClass())
    out = ROAD(percentages=[10, 50], order="morf", noise=0.0)(wrapped, x, y0, a)
    # every prediction is class 0 = y0: accuracy 1 at every percentage
    np.testing.assert_array_equal(out, np.ones(len(x)))


def test_prediction_checks_in_robustness_go_through_the_target():
    model, x, y, _ = _image_data()
    kwargs = dict(nr_samples=6, lower_bound=0.5, on_prediction_change="nan_sample", seed=0)
    plain = MaxSensitivity(**kwargs)
    plain(model, x, y, explain_fn=lambda m, xx, yy: xx)
    assert plain.prediction_changed_.any()  # large noise flips some predictions
    agreeing = MaxSensitivity(**kwargs)
    out = agreeing(ek.wrap_model(model, target=_AlwaysAgree()), x, y,
                   explain_fn=lambda m, xx, yy: xx)
    assert not agreeing.prediction_changed_.any() and np.isfinite(out).all()


def test_set_level_prediction_equality_goes_through_the_target():
    model, x, y, a = _image_data(n=8)
    wrapped = ek.wrap_model(model, target=_FirstClass())
    suff = Sufficiency(threshold=10.0)(wrapped, x, y, a)
    np.testing.assert_array_equal(suff, np.ones(len(x)))  # everyone agrees with everyone
    cons = Consistency(discretise_func="sign")(wrapped, x, y, a)
    defined = np.isfinite(cons)
    np.testing.assert_array_equal(cons[defined], np.ones(int(defined.sum())))


# --------------------------------------------------------------------------- source rules
def _metric_sources():
    return sorted((ROOT / "evalkit" / "metrics").rglob("*.py"))


def test_no_metric_reads_the_rank_of_x():
    offenders = []
    for path in _metric_sources():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "ndim":
                base = node.value
                name = (base.id if isinstance(base, ast.Name)
                        else base.attr if isinstance(base, ast.Attribute) else "")
                if name in ("x", "xt", "xs", "xi"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, "metrics ask batch.modality instead of x.ndim: " + ", ".join(offenders)


@pytest.mark.parametrize("folder", ["evalkit/metrics", "metaeval"])
def test_no_kernel_takes_an_argmax_of_model_outputs(folder):
    offenders = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "argmax"):
                target = ast.unparse(node.func.value)
                if "out" in target or "fwd" in target or "clean" in target or "predict" in target:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {target}")
    assert not offenders, "predictions come from Target.predict: " + ", ".join(offenders)


def test_evaluate_keeps_token_ids_and_takes_an_explicit_modality():
    ids = np.array([[1, 2, 3, 0], [4, 5, 6, 7], [2, 2, 9, 1]])
    a = np.random.default_rng(0).random(ids.shape)
    res = ek.evaluate({"Sparseness": Sparseness()}, {"given": a}, Embed(), ids,
                      np.array([0, 1, 2]), progress=False)
    assert np.isfinite(res.scores["given", "Sparseness"]).all()
    from evalkit.evaluate import Evaluation

    ev = Evaluation({"Sparseness": Sparseness()}, {"given": a}, Embed(), ids, np.array([0, 1, 2]))
    assert ev.x.dtype == torch.int64 and ev.modality.name == "tokens"
    # integer features that are not token ids: say so, and the metrics treat them as a table
    counts = np.random.default_rng(1).integers(0, 5, (6, 4))
    mlp = nn.Sequential(nn.Linear(4, 3))
    pf = {"PF": PixelFlipping(perturb_baseline="uniform")}  # numeric data only
    with pytest.warns(ek.EvalkitWarning, match="cells failed"):
        failed = ek.evaluate(pf, {"given": counts * 1.0}, mlp, counts, np.zeros(6, int),
                             progress=False)
    assert "does not apply to tokens" in failed.errors["given", "PF"].message
    res = ek.evaluate(pf, {"given": counts * 1.0}, mlp, counts, np.zeros(6, int),
                      modality="tabular", progress=False)
    assert np.isfinite(res.scores["given", "PF"]).all()


def test_predictions_of_other_shapes_are_not_compared_by_broadcasting():
    t = ClassTarget()
    with pytest.raises(ValueError, match="cannot be compared"):
        t.agree(torch.zeros(3, dtype=torch.int64), torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="no single predicted label"):
        SegmentationTarget().hits(torch.zeros(2, 3, 2, 2), torch.tensor([0, 1]))


def test_multi_label_predictions_are_label_sets():
    from evalkit.models.targets import MultiLabelTarget

    t = MultiLabelTarget()
    out = torch.tensor([[2.0, -1.0, 0.5], [-3.0, -2.0, -1.0], [1.0, 1.0, 1.0]])
    assert t.predict(out).tolist() == [[1, 0, 1], [0, 0, 0], [1, 1, 1]]
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1]])
    assert t.hits(out, y).tolist() == [1.0, 0.0, 1.0]  # exact-match per sample
    assert MultiLabelTarget(threshold=1.5).predict(out).tolist()[0] == [1, 0, 0]


def test_rank_with_a_valid_mask_ranks_a_valid_infinity_among_the_valid():
    from evalkit.metrics.similarity import rank

    r = rank(torch.tensor([[1.0, math.inf, 2.0, 0.0]]),
             valid=torch.tensor([[True, True, True, False]]))
    assert r[0, :3].tolist() == [1.0, 3.0, 2.0]


def test_reserved_names_are_not_diagnostics():
    from evalkit.metrics.base import MetricBatch

    batch = MetricBatch(metric=Sparseness(), x=torch.zeros(2, 3), y=None, a=None, s=None,
                        model=None, runner=None, seed=0, modality=TabularModality())
    with pytest.raises(ValueError, match="not a diagnostic name"):
        batch.record("scores", torch.zeros(2))


class _NaNForSample(nn.Module):
    """A linear classifier whose outputs are NaN for inputs whose first value is above 0.9."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x.flatten(1))
        bad = x.flatten(1)[:, 0] > 0.9
        return torch.where(bad.unsqueeze(1), torch.full_like(out, math.nan), out)


def test_consistency_leaves_a_sample_without_prediction_out_of_the_set():
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _NaNForSample()
    x = torch.rand((8, 1, 4, 4), generator=g) * 0.8
    x[3, 0, 0, 0] = 0.95  # this sample's outputs are NaN
    a = torch.sign(torch.randn((8, 1, 4, 4), generator=g))
    a[:4] = a[0]  # shared discretised explanations
    a[4:] = a[4]
    y = torch.zeros(8, dtype=torch.int64)
    m = Consistency(discretise_func="sign")
    out = m(model, x, y, a)
    assert np.isnan(out[3]) and "not finite" in m.nan_reasons_[3]
    keep = [i for i in range(8) if i != 3]
    ref = Consistency(discretise_func="sign")(model, x[keep], y[keep], a[keep])
    np.testing.assert_array_equal(out[keep], ref)
