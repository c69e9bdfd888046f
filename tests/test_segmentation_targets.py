"""Semantic segmentation end to end: SegmentationTarget's scores by hand, its regions and label
maps, explain(), the metric families and evaluate() on a tiny segmentation net (no
torchvision), a torchvision LR-ASPP / DeepLabV3 with random weights, and pytorch-grad-cam's
SemanticSegmentationTarget as an oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit.models import SegmentationTarget, wrap_model

N_CLASSES = 3


class TinySeg(nn.Module):
    """Two 3x3 conv layers and a 1x1 classifier: per-pixel logits (N, 3, H, W)."""

    def __init__(self, as_dict: bool = False) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, N_CLASSES, 1)
        self.as_dict = as_dict

    def forward(self, x: torch.Tensor):
        out = self.head(self.backbone(x))
        return {"out": out} if self.as_dict else out


def tiny_seg(as_dict: bool = False) -> TinySeg:
    torch.manual_seed(0)
    return TinySeg(as_dict).eval()


def images(n: int = 4, size: int = 12) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def centre_classes(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The class each image's centre pixel is predicted as: a class with a non-empty
    predicted region."""
    with torch.no_grad():
        out = model(x)
    out = out["out"] if isinstance(out, dict) else out
    return out.argmax(1)[:, x.shape[-2] // 2, x.shape[-1] // 2]


# ============================================================================ known answers
OUT = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]],      # class 0
                     [[0.0, 5.0], [1.0, 0.0]],      # class 1
                     [[2.0, 0.0], [0.0, 9.0]]]])    # class 2; argmax map [[2, 1], [0, 2]]


def test_class_index_whole_map_region_and_predicted():
    y = torch.tensor([2])
    assert SegmentationTarget()(OUT, y).item() == 11.0
    assert SegmentationTarget(reduction="mean")(OUT, y).item() == 11.0 / 4
    region = torch.tensor([[True, False], [False, True]])
    assert SegmentationTarget(region=region)(OUT, y).item() == 11.0
    assert SegmentationTarget(region=region)(OUT, torch.tensor([0])).item() == 5.0
    # predicted region of class 2: pixels (0, 0) and (1, 1)
    assert SegmentationTarget(region="predicted")(OUT, y).item() == 11.0
    assert SegmentationTarget(region="predicted")(OUT, torch.tensor([1])).item() == 5.0
    assert SegmentationTarget(region="predicted", reduction="mean")(
        OUT, torch.tensor([0])).item() == 3.0
    expected = torch.tensor([[[True, False], [False, True]]])
    assert torch.equal(SegmentationTarget(region="predicted").regions(OUT, y), expected)


def test_a_tie_belongs_to_every_class_that_attains_the_maximum():
    out = torch.zeros(1, 3, 1, 2)
    out[0, :, 0, 1] = torch.tensor([1.0, 4.0, 4.0])  # pixel 1: classes 1 and 2 tie
    t = SegmentationTarget(region="predicted")
    assert t(out, torch.tensor([1])).item() == 4.0
    assert t(out, torch.tensor([2])).item() == 4.0
    assert t(out, torch.tensor([0])).item() == 0.0  # pixel 0: all three tie at 0
    assert t.regions(out, torch.tensor([0])).tolist() == [[[True, False]]]


def test_empty_region_scores_zero():
    # class 0 predicted nowhere in row 2 (all class 1)
    out = torch.stack([OUT[0], torch.stack([torch.zeros(2, 2), torch.ones(2, 2),
                                             torch.zeros(2, 2)])])
    t = SegmentationTarget(region="predicted", reduction="mean")
    got = t(out, torch.tensor([0, 0]))
    assert got.tolist() == [3.0, 0.0]
    assert not t.regions(out, torch.tensor([0, 0]))[1].any()


def test_label_maps():
    lab = torch.tensor([[[2, 1], [-1, -1]]])  # pixel classes 2 and 1, bottom row outside
    assert SegmentationTarget()(OUT, lab).item() == 2.0 + 5.0
    assert SegmentationTarget(reduction="mean")(OUT, lab).item() == 3.5
    # the model's own prediction as labels: every pixel's winning logit
    pred = SegmentationTarget().predict(OUT)
    assert pred.tolist() == [[[2, 1], [0, 2]]]
    assert SegmentationTarget()(OUT, pred).item() == 2 + 5 + 3 + 9
    # a fixed region restricts label maps too
    region = torch.tensor([[False, True], [True, True]])
    assert SegmentationTarget(region=region)(OUT, lab).item() == 5.0
    assert torch.equal(SegmentationTarget(region=region).regions(OUT, lab),
                       torch.tensor([[[False, True], [False, False]]]))
    # hits: every labelled pixel predicted as labelled
    t = SegmentationTarget()
    assert t.hits(OUT, lab).tolist() == [1.0]
    assert t.hits(OUT, torch.tensor([[[0, 1], [-1, -1]]])).tolist() == [0.0]
    nan_out = OUT.clone()
    nan_out[0, 0, 0, 0] = float("nan")
    assert np.isnan(t.hits(nan_out, lab).item())
    with pytest.raises(ValueError, match="label maps"):
        t.hits(OUT, torch.tensor([1]))


def test_gradient_is_the_region_sum():
    x = OUT.clone().requires_grad_(True)
    SegmentationTarget(region="predicted")(x, torch.tensor([2])).sum().backward()
    want = torch.zeros_like(OUT)
    want[0, 2, 0, 0] = want[0, 2, 1, 1] = 1.0
    assert torch.equal(x.grad, want)


def test_checks_name_the_problem():
    t = SegmentationTarget()
    with pytest.raises(ValueError, match="contains the label 3"):
        t.check(torch.tensor([3]), (3, 2, 2))
    with pytest.raises(ValueError, match="label maps `y` contain the label 5"):
        t.check(torch.tensor([[[5, 0], [0, 0]]]), (3, 2, 2))
    with pytest.raises(ValueError, match=r"\(N, 2, 2\) \(label maps\)"):
        t.check(torch.zeros(1, 3, 3, dtype=torch.long), (3, 2, 2))
    with pytest.raises(ValueError, match="spatial axes"):
        t.check(torch.tensor([0]), (3,))
    with pytest.raises(ValueError, match="integer class indices"):
        t.check(torch.full((1, 2, 2), 0.5), (3, 2, 2))
    with pytest.raises(ValueError, match="`region` has shape"):
        SegmentationTarget(region=torch.ones(3, 3, dtype=torch.bool)).check(
            torch.tensor([0]), (3, 2, 2))
    with pytest.raises(ValueError, match="'predicted'"):
        SegmentationTarget(region="largest")
    with pytest.raises(ValueError, match="`y` is required"):
        t.check(None, (3, 2, 2))
    t.check(torch.tensor([[[-1, 2], [0, 1]]]), (3, 2, 2))  # negative: outside the region


# ============================================================================ end to end
def wrapped(as_dict: bool = False, **kw) -> ek.models.ModelWrapper:
    model = tiny_seg(as_dict)
    opts = {"output_fn": (lambda out: out["out"])} if as_dict else {}
    return wrap_model(model, target=SegmentationTarget(**kw), **opts)


def test_dict_outputs_through_output_fn():
    x, y = images(), torch.tensor([0, 1, 2, 1])
    plain, via_dict = wrapped(region="predicted"), wrapped(True, region="predicted")
    assert torch.allclose(plain.score(x, y), via_dict.score(x, y))
    with pytest.raises(ValueError, match="output_fn"):
        wrap_model(tiny_seg(True), target=SegmentationTarget()).score(x, y)


@pytest.mark.parametrize("method,kw", [("GradCAM", {"layer": "backbone.2"}),
                                       ("Saliency", {}),
                                       ("IntegratedGradients", {"n_steps": 8})])
def test_explain_matches_the_target_gradient(method, kw):
    w = wrapped(region="predicted")
    x = images()
    y = centre_classes(w.model, x)
    a = ek.explain(w, x, y, method=method, **kw)
    assert a.shape[0] == 4 and torch.isfinite(torch.as_tensor(a)).all()
    if method == "Saliency":  # |d score / d x|, the score being the predicted-region sum
        xg = x.clone().requires_grad_(True)
        w.target(w.model(xg), y).sum().backward()
        want = xg.grad.abs().amax(1, keepdim=True)
        got = torch.as_tensor(a)
        got = got.amax(1, keepdim=True) if got.shape[1] == 3 else got
        assert torch.allclose(got, want, atol=1e-6)


def test_metric_families_on_a_segmentation_net():
    w = wrapped(region="predicted")
    x = images()
    y = centre_classes(w.model, x)
    s = w.target.regions(w.predict(x), y).unsqueeze(1)  # localise against the scored region
    a = ek.explain(w, x, y, method="Saliency")
    scores = {
        "PixelFlipping": ek.metrics.PixelFlipping(features_in_step=24)(w, x, y, a),
        "ROAD": ek.metrics.ROAD(score="confidence", percentages=[0.2, 0.5])(w, x, y, a),
        "PointingGame": ek.metrics.PointingGame()(w, x, y, a, s=s),
        "RRA": ek.metrics.RelevanceRankAccuracy()(w, x, y, a, s=s),
        "MaxSensitivity": ek.metrics.MaxSensitivity(nr_samples=3)(
            w, x, y, explain_kwargs={"method": "Saliency"}),
        "MPRT": ek.metrics.MPRT(layer_order="independent")(
            w, x, y, a, explain_kwargs={"method": "Saliency"}),
        # another class's whole map (its predicted region is usually empty: a zero map)
        "RandomLogit": ek.metrics.RandomLogit(similarity_func="pearson")(
            wrapped(), x, y, a, explain_kwargs={"method": "Saliency"}),
    }
    for name, v in scores.items():
        v = np.asarray(v)
        assert v.shape == (4,) and np.isfinite(v).all(), (name, v)
    # Saliency of a sum over a region lies in the region's receptive field: the pointing game
    # hits the region in most images
    assert np.mean(scores["PointingGame"]) >= 0.5


def test_metric_scores_the_label_map_of_the_prediction():
    """metaeval-style labels: the model's own per-pixel prediction as label maps."""
    w = wrapped()
    x = images()
    pred = w.target.predict(w.predict(x))
    a = ek.explain(w, x, pred, method="Saliency")
    v = ek.metrics.PixelFlipping(features_in_step=24)(w, x, pred, a)
    assert np.isfinite(v).all()
    road = ek.metrics.ROAD(percentages=[0.2], score="accuracy")(w, x, pred, a)
    assert set(np.unique(road)) <= {0.0, 0.5, 1.0}


def test_random_logit_refuses_label_maps():
    """RandomLogit shifts one class index per sample: label maps have none (and an (N,)
    offset would broadcast against a map's last axis when it happens to have N pixels)."""
    w = wrapped()
    x = images(n=12)
    pred = w.target.predict(w.predict(x))
    with pytest.raises(ValueError, match=r"class-index labels `y` \(N,\)"):
        ek.metrics.RandomLogit()(w, x, pred, torch.rand(12, 1, 12, 12),
                                 explain_kwargs={"method": "Saliency"})


def test_evaluate_with_a_segmentation_target():
    model = tiny_seg()
    x = images()
    y = centre_classes(model, x)
    target = SegmentationTarget(region="predicted")
    w = wrap_model(model, target=target)
    s = target.regions(w.predict(x), y).unsqueeze(1).numpy()
    res = ek.evaluate(
        {"PF": ek.metrics.PixelFlipping(features_in_step=24),
         "PG": ek.metrics.PointingGame(),
         "Sparseness": ek.metrics.Sparseness()},
        {"GradCAM": {"layer": "backbone.2"}, "Saliency": {}, "Random": {}},
        model, x, y, s, target=target, progress=False)
    frame = res.to_frame()
    assert set(frame["method"]) == {"GradCAM", "Saliency", "Random"}
    assert frame["score"].notna().all()
    # the same as passing the wrapper
    res2 = ek.evaluate({"PF": ek.metrics.PixelFlipping(features_in_step=24)},
                       {"Saliency": {}}, w, x, y, progress=False)
    got = res.to_frame().query("method == 'Saliency' and metric == 'PF'")["score"].to_numpy()
    np.testing.assert_allclose(got, res2.to_frame()["score"].to_numpy())


# ============================================================================ torchvision
def _tv_model(tv, name: str) -> nn.Module:
    torch.manual_seed(0)
    factory = getattr(tv.models.segmentation, name)
    return factory(weights=None, weights_backbone=None, num_classes=4).eval()


@pytest.mark.parametrize("name,layer", [("lraspp_mobilenet_v3_large", "backbone.16"),
                                        ("deeplabv3_mobilenet_v3_large", "backbone.16")])
def test_torchvision_segmentation_end_to_end(torchvision, name, layer):
    model = _tv_model(torchvision, name)
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    y = centre_classes(model, x)
    w = wrap_model(model, target=SegmentationTarget(region="predicted"),
                   output_fn=lambda out: out["out"])
    out = w.predict(x)
    assert out.shape == (2, 4, 128, 128)
    a = ek.explain(w, x, y, method="GradCAM", layer=layer)
    assert a.shape[-2:] == (128, 128) and np.isfinite(np.asarray(a)).all()
    s = w.target.regions(out, y).unsqueeze(1)
    pf = ek.metrics.PixelFlipping(features_in_step=128 * 16)(w, x, y, a)
    pg = ek.metrics.PointingGame()(w, x, y, a, s=s)
    assert pf.shape == pg.shape == (2,)
    assert np.isfinite(pf).all()


def _pytorch_grad_cam():
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
    except Exception:
        pytest.skip("the optional pytorch-grad-cam 1.5.7 oracle is absent")
    return pytorch_grad_cam, SemanticSegmentationTarget


class _OutTensor(nn.Module):
    """The ``out`` entry of a torchvision segmentation model (pytorch-grad-cam's models must
    return tensors)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_gradcam_matches_pytorch_grad_cam(torchvision, name):
    cam_lib, SemanticSegmentationTarget = _pytorch_grad_cam()
    model = _tv_model(torchvision, name)
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    wrapped_model = _OutTensor(model).eval()
    with torch.no_grad():
        pred = wrapped_model(x).argmax(1)
    category = centre_classes(model, x)  # a class each image predicts somewhere
    targets = [SemanticSegmentationTarget(int(category[i]),
                                          (pred[i] == category[i]).float().numpy())
               for i in range(2)]
    layer = model.backbone["16"]
    with cam_lib.GradCAM(model=wrapped_model, target_layers=[layer]) as cam:
        theirs = cam(input_tensor=x, targets=targets)  # (N, H, W), ReLU, min-max scaled
    # the same region per sample as label maps: class 2 where predicted, outside elsewhere
    labels = torch.where(pred == category.view(2, 1, 1), category.view(2, 1, 1), -1)
    w = wrap_model(model, target=SegmentationTarget(), output_fn=lambda out: out["out"])
    ours = torch.as_tensor(ek.explain(w, x, labels, method="GradCAM", layer="backbone.16"))
    ours = ours.reshape(2, 128, 128).numpy()
    # pytorch-grad-cam min-max scales each map after its ReLU: compare shapes of the maps
    for i in range(2):
        assert np.ptp(theirs[i]) > 0 and np.ptp(ours[i]) > 0
        r = np.corrcoef(ours[i].ravel(), theirs[i].ravel())[0, 1]
        assert r > 0.999, (name, i, r)
    # the predicted region gives the same maps (argmax is constant near the input)
    w_pred = wrap_model(model, target=SegmentationTarget(region="predicted"),
                        output_fn=lambda out: out["out"])
    ours_pred = ek.explain(w_pred, x, category, method="GradCAM", layer="backbone.16")
    np.testing.assert_allclose(np.asarray(ours_pred).reshape(2, 128, 128), ours,
                               rtol=1e-5, atol=1e-6)


# ============================================================================ benchmark row
def test_w8_workload_and_its_specs_run(tmp_path):
    """The segmentation benchmark workload (plain torch) and every spec of its family, in a
    quick run: each row runs, and the model-bound rows have a floor."""
    from benchmarks.run import main
    from benchmarks.workloads import make_w8

    w = make_w8(n=2)
    assert w.x.shape == (2, 3, 128, 128) and w.y.shape == (2,)
    assert w.s.shape == (2, 1, 128, 128) and w.s.flatten(1).any(1).all()
    assert torch.equal(make_w8(n=2).y, w.y)  # seeded
    results, _ = main(["--quick", "--no-quantus", "--workloads", "W8", "--families",
                       "tasks_segmentation", "--metrics", "PixelFlipping[segmentation]",
                       "GradCAM[segmentation]", "RelevanceMassAccuracy[segmentation]",
                       "--out", str(tmp_path / "bench.md")])
    assert {r.metric for r in results} == {"PixelFlipping[segmentation]",
                                           "GradCAM[segmentation]",
                                           "RelevanceMassAccuracy[segmentation]"}
    for r in results:
        assert not r.error, (r.metric, r.error)
        assert (r.metric == "RelevanceMassAccuracy[segmentation]") == (not r.floor_s > 0)
