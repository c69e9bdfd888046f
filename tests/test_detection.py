"""Object detection (issue 20): DetectionModel, BoxScoreTarget, and detectors through explain(),
the metrics and evaluate().

The first part runs everywhere: the target on hand-made detector outputs, and a tiny detector
(an nn.Module returning torchvision's list of dicts) whose scores are known in closed form. The
second part uses torchvision's Faster R-CNN with random weights (the ``torchvision`` fixture)
and pytorch-grad-cam 1.5.7 as a test-only oracle.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit.masks import masks_from_boxes
from evalkit.models import BoxScoreTarget, DetectionModel, box_iou, wrap_model
from evalkit.perturb import Noise
from evalkit.store import model_fingerprint

SIZE = 16
#: the tiny detector's candidate boxes (x1, y1, x2, y2) and their labels
BOX_A, BOX_B = [2.0, 2.0, 8.0, 8.0], [4.0, 4.0, 12.0, 12.0]
LABEL_A, LABEL_B = 1, 2
GAIN = 8.0


class TinyDetector(nn.Module):
    """Two candidate detections per image, in torchvision's output format: label 1 at BOX_A and
    label 2 at BOX_B, each scored ``sigmoid(gain * (m - 0.5))`` with ``m`` the mean of the
    channel-mean image inside the box; detections scoring <= ``score_thresh`` are dropped (as
    torchvision's ``box_score_thresh``), so darkening a box makes its detection disappear.
    Detections come in ascending score order (the wrapper sorts them)."""

    def __init__(self, score_thresh: float = 0.05) -> None:
        super().__init__()
        self.mix = nn.Conv2d(3, 1, 1)  # the channel mean: a layer to randomise and to CAM
        with torch.no_grad():
            self.mix.weight.fill_(1 / 3)
            self.mix.bias.zero_()
        self.gain = nn.Parameter(torch.tensor(GAIN))
        self.score_thresh = score_thresh
        self.register_buffer("boxes", torch.tensor([BOX_A, BOX_B]))
        self.register_buffer("labels", torch.tensor([LABEL_A, LABEL_B]))

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        gray = self.mix(torch.stack(list(images)))[:, 0]
        out = []
        for img in gray:
            means = torch.stack([img[2:8, 2:8].mean(), img[4:12, 4:12].mean()])
            scores = torch.sigmoid(self.gain * (means - 0.5))
            keep = (scores > self.score_thresh).nonzero().flatten()
            keep = keep[torch.argsort(scores[keep])]
            out.append({"boxes": self.boxes[keep], "scores": scores[keep],
                        "labels": self.labels[keep]})
        return out


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def _tiny_model(max_detections: int = 4) -> ek.models.ModelWrapper:
    return wrap_model(DetectionModel(TinyDetector(), max_detections=max_detections),
                      target=BoxScoreTarget())


def _images() -> torch.Tensor:
    """Image 0: 0.75 with box A's region at 1.0 (box A: mean 1.0, score sigmoid(4); box B:
    mean (16 * 1.0 + 48 * 0.75) / 64 = 0.8125, score sigmoid(2.5)); image 1: 0.9 with box A's
    region dark (its detection disappears; box B: mean 48 * 0.9 / 64 = 0.675)."""
    x = torch.full((2, 3, SIZE, SIZE), 0.75)
    x[0, :, 2:8, 2:8] = 1.0
    x[1] = 0.9
    x[1, :, 2:8, 2:8] = 0.0
    return x


# ============================================================================ the target
def test_box_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert box_iou(a, torch.tensor([[5.0, 0.0, 15.0, 10.0]])).item() == pytest.approx(50 / 150)
    assert box_iou(a, a).item() == 1.0
    assert box_iou(a, torch.tensor([[20.0, 20.0, 30.0, 30.0]])).item() == 0.0
    # two degenerate boxes: empty union, IoU 0 (not NaN)
    point = torch.tensor([[3.0, 3.0, 3.0, 3.0]])
    assert box_iou(point, point).item() == 0.0
    # broadcasting (N, D, 4) against (N, 1, 4)
    assert box_iou(torch.zeros(2, 5, 4), torch.zeros(2, 1, 4)).shape == (2, 5)


def _hand_outputs() -> torch.Tensor:
    """(2, 4, 6) detections. Image 0: an exact match of label 1 (score 0.8), a larger box of
    label 1 (IoU 0.5 with the reference, score 0.9), an exact box of label 2 (score 0.95), and
    a padding row. Image 1: label-1 boxes that do not overlap its reference, a label-2 box on
    it."""
    pad = [0.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    return torch.tensor([
        [[0, 0, 10, 10, 0.8, 1], [0, 0, 10, 20, 0.9, 1], [0, 0, 10, 10, 0.95, 2], pad],
        [[0, 0, 10, 10, 0.7, 1], [40, 40, 50, 50, 0.6, 1], [20, 20, 30, 30, 0.9, 2], pad],
    ], dtype=torch.float32)


def test_target_scores_iou_times_score_by_hand():
    out = _hand_outputs()
    y = torch.tensor([[0, 0, 10, 10, 1], [20, 20, 30, 30, 1]], dtype=torch.float32)
    target = BoxScoreTarget()
    # image 0: max(1.0 * 0.8, 0.5 * 0.9) = 0.8, the label-2 box (0.95) does not count;
    # image 1: no label-1 box overlaps the reference: the detection disappeared, 0
    assert target(out, y).tolist() == pytest.approx([0.8, 0.0])
    assert target.match(out, y).tolist() == [0, -1]
    # the reference with label 2 takes the label-2 box: 1.0 * 0.95
    y2 = torch.tensor([[0, 0, 10, 10, 2], [20, 20, 30, 30, 2]], dtype=torch.float32)
    assert target(out, y2).tolist() == pytest.approx([0.95, 0.9])
    # a reference half-covered by the larger box: IoU(ref, [0,0,10,10]) = 0.5,
    # IoU(ref, [0,0,10,20]) = 1.0 -> max(0.5 * 0.8, 1.0 * 0.9) = 0.9
    y3 = torch.tensor([[0, 0, 10, 20, 1], [0, 0, 10, 20, 1]], dtype=torch.float32)
    assert target(out, y3)[0].item() == pytest.approx(0.9)
    # image 1 with that reference: its [0,0,10,10] box of label 1, IoU 0.5, score 0.7
    assert target(out, y3)[1].item() == pytest.approx(0.35)
    # iou_threshold: boxes overlapping by no more than it do not count
    assert BoxScoreTarget(iou_threshold=0.5)(out, y3).tolist() == pytest.approx([0.9, 0.0])
    # a label no detection has scores 0
    y9 = torch.tensor([[0, 0, 10, 10, 9], [0, 0, 10, 10, 9]], dtype=torch.float32)
    assert target(out, y9).tolist() == [0.0, 0.0]


def test_target_gradient_reaches_only_the_matched_detection():
    out = _hand_outputs().requires_grad_(True)
    y = torch.tensor([[0, 0, 10, 10, 1], [20, 20, 30, 30, 1]], dtype=torch.float32)
    BoxScoreTarget()(out, y).sum().backward()
    grad = out.grad
    # d(IoU * s)/ds = IoU = 1 at the matched row; the IoU is at its maximum (1): zero box
    # gradient
    assert grad[0, 0, 4].item() == pytest.approx(1.0)
    assert torch.count_nonzero(grad[0, 0, :4]) == 0
    assert torch.count_nonzero(grad[0, 1:]) == 0
    assert torch.count_nonzero(grad[1]) == 0  # disappeared: 0 with no gradient


def test_target_predictions_agreement_and_hits():
    out = _hand_outputs()
    target = BoxScoreTarget()
    pred = target.predict(out)  # the top-scoring detection, in the layout of y
    assert pred.tolist() == [[0, 0, 10, 10, 2], [20, 20, 30, 30, 2]]
    moved = pred.clone()
    moved[0, 2] = 12.0  # IoU 100 / 120 >= 0.5: the same object
    moved[1, :4] = torch.tensor([25.0, 25.0, 35.0, 35.0])  # IoU 25 / 175 < 0.5
    assert target.agree(pred, moved).tolist() == [True, False]
    relabelled = pred.clone()
    relabelled[:, 4] = 1
    assert target.agree(pred, relabelled).tolist() == [False, False]
    none = torch.tensor([[0, 0, 0, 0, -1.0]])
    assert target.agree(none, none).tolist() == [True]  # neither image has a detection
    # across images only labels compare
    assert target.codes(pred).tolist() == [2, 2]
    assert target.agree_pairwise(torch.tensor([[0, 0, 1, 1, 3.0], [5, 5, 9, 9, 3.0],
                                               [0, 0, 1, 1, 4.0]])).tolist() == [
        [True, True, False], [True, True, False], [False, False, True]]
    # hits: is the reference object detected (IoU >= 0.5, its label), not only the top one
    y = torch.tensor([[0, 0, 10, 10, 1], [20, 20, 30, 30, 1]], dtype=torch.float32)
    assert target.hits(out, y).tolist() == [1.0, 0.0]
    bad = out.clone()
    bad[1, 0, 4] = math.nan
    assert np.isnan(target.hits(bad, y)[1].item())
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        target.agree(pred[:, :4], pred[:, :4])


def test_target_validates_references_and_outputs():
    target = BoxScoreTarget()
    good = torch.tensor([[0, 0, 10, 10, 1.0]])
    target.check(good, (4, 6))
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        target.check(torch.tensor([1]), (4, 6))
    with pytest.raises(ValueError, match="integer labels >= 0"):
        target.check(torch.tensor([[0, 0, 10, 10, -1.0]]), (4, 6))
    with pytest.raises(ValueError, match="integer labels >= 0"):
        target.check(torch.tensor([[0, 0, 10, 10, 1.5]]), (4, 6))
    with pytest.raises(ValueError, match="x1 <= x2"):
        target.check(torch.tensor([[10, 0, 0, 10, 1.0]]), (4, 6))
    with pytest.raises(ValueError, match="NaN or Inf"):
        target.check(torch.tensor([[0, 0, math.nan, 10, 1.0]]), (4, 6))
    with pytest.raises(ValueError, match="DetectionModel"):
        target.check(good, (10,))
    with pytest.raises(ValueError, match="DetectionModel"):
        target(torch.zeros(1, 10), good)
    with pytest.raises(ValueError, match="needs a reference"):
        target(torch.zeros(1, 4, 6), None)
    with pytest.raises(ValueError, match=r"iou_threshold"):
        BoxScoreTarget(iou_threshold=1.0)
    with pytest.raises(ValueError, match=r"agree_iou"):
        BoxScoreTarget(agree_iou=0.0)
    # part of the configuration: a stable repr of its settings
    assert repr(BoxScoreTarget(iou_threshold=0.1)) == \
        "BoxScoreTarget(iou_threshold=0.1, agree_iou=0.5)"


# ============================================================================ the wrapper
def test_wrapper_pads_sorts_and_truncates():
    x = _images()
    with torch.no_grad():
        out = DetectionModel(TinyDetector(), max_detections=4)(x)
    assert out.shape == (2, 4, 6)
    # image 0: both detections by decreasing score (the detector gives them ascending), and
    # two padding rows
    np.testing.assert_allclose(out[0, :2], [[*BOX_A, _sigmoid(GAIN * 0.5), LABEL_A],
                                            [*BOX_B, _sigmoid(GAIN * 0.3125), LABEL_B]],
                               rtol=1e-6)
    assert out[0, 2:].tolist() == [[0.0, 0.0, 0.0, 0.0, 0.0, -1.0]] * 2
    # image 1: box A is dark (score sigmoid(-4) < 0.05: dropped); one detection, label 2
    assert out[1, 0].tolist() == pytest.approx([*BOX_B, _sigmoid(GAIN * 0.175), LABEL_B])
    assert out[1, 1:, 5].tolist() == [-1.0] * 3
    # more detections than rows: the best ones are kept
    one = DetectionModel(TinyDetector(), max_detections=1)(x)
    assert one.shape == (2, 1, 6) and one[:, 0, 5].tolist() == [LABEL_A, LABEL_B]


def test_wrapper_is_differentiable_and_checks_the_detector():
    x = _images().requires_grad_(True)
    out = DetectionModel(TinyDetector())(x)
    out[0, 0, 4].backward()
    assert x.grad[0].abs().sum() > 0 and x.grad[1].abs().sum() == 0

    class NoDicts(nn.Module):
        def forward(self, images):
            return torch.zeros(len(images), 3)

    class MissingKeys(nn.Module):
        def forward(self, images):
            return [{"boxes": torch.zeros(0, 4)} for _ in images]

    with pytest.raises(TypeError, match="one dict per image"):
        DetectionModel(NoDicts())(_images())
    with pytest.raises(TypeError, match="'boxes', 'scores' and 'labels'"):
        DetectionModel(MissingKeys())(_images())
    with pytest.raises(ValueError, match="max_detections"):
        DetectionModel(TinyDetector(), max_detections=0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        DetectionModel(TinyDetector())(torch.zeros(3, SIZE, SIZE))
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        DetectionModel(lambda images: [])
    with pytest.raises(ValueError, match="cam_layer"):
        DetectionModel(TinyDetector(), cam_layer="nowhere")


def test_no_softmax_over_detections():
    x = _images()
    y = torch.tensor([[*BOX_A, LABEL_A], [*BOX_B, LABEL_B]])
    model = _tiny_model()
    # PixelFlipping's default softmax would mix boxes, scores and labels: switched off, so
    # the unperturbed point of the curve is the target itself
    metric = ek.metrics.PixelFlipping(features_in_step=64)
    a = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    metric(model, x, y, a)
    expected = model.target(model.predict(x), y)
    assert metric.curves_[:, 0] == pytest.approx(expected.numpy())
    with pytest.raises(ValueError, match="softmax over them is not meaningful"):
        metric(model, x, y, a, softmax=True)
    with pytest.raises(ValueError, match="softmax over them is not meaningful"):
        wrap_model(DetectionModel(TinyDetector()), target=BoxScoreTarget(), softmax=True)


# ============================================================================ end to end (tiny)
def test_saliency_of_the_matched_detection_by_hand():
    """x = 0.5 everywhere: m = 0.5, s = 1/2, ds/dm = gain / 4; each of box A's 36 pixels and 3
    channels has dm/dx = 1 / (3 * 36), so |grad| = gain / 432 there and 0 elsewhere."""
    x = torch.full((1, 3, SIZE, SIZE), 0.5)
    y = torch.tensor([[*BOX_A, LABEL_A]])
    a = ek.explain(_tiny_model(), x, y, "Saliency")
    inside = masks_from_boxes(y[:, :4], (SIZE, SIZE)).expand(-1, 3, -1, -1)
    assert a[inside].tolist() == pytest.approx([GAIN / 432] * (3 * 36), rel=1e-5)
    assert torch.count_nonzero(a[~inside]) == 0


def test_removal_makes_the_detection_disappear():
    """Removing every pixel (replaced by 0) darkens the box: the detection is dropped by the
    detector's score threshold and the target is 0, the last point of the curve."""
    x = _images()
    y = torch.tensor([[*BOX_A, LABEL_A], [*BOX_B, LABEL_B]])
    a = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    metric = ek.metrics.PixelFlipping(features_in_step=64, perturb_baseline="zero")
    metric(_tiny_model(), x, y, a)
    assert metric.curves_[:, -1].tolist() == [0.0, 0.0]
    assert metric.curves_[0, 0] == pytest.approx(_sigmoid(GAIN * 0.5))


def test_robustness_checks_detections_with_agree():
    x = _images()
    model = _tiny_model()
    y = model.target.predict(model.predict(x))
    # small noise keeps each image's top detection: agree() says so, every score is defined
    small = ek.metrics.MaxSensitivity(nr_samples=3, lower_bound=0.01,
                                      on_prediction_change="nan_sample")
    scores = small(model, x, y, explain_kwargs={"method": "Saliency"})
    assert np.isfinite(scores).all()
    assert not small.prediction_changed_.any()
    # a perturbation that darkens box A changes image 0's top detection (box A's mean 0.4,
    # score sigmoid(-0.8); box B's mean 0.6625, score sigmoid(1.3)); image 1's stays box B
    big = ek.metrics.MaxSensitivity(nr_samples=2, perturb_func=_DarkenBoxA(),
                                    on_prediction_change="nan_sample", disable_warnings=True)
    got = big(model, x, y, explain_kwargs={"method": "Saliency"})
    assert big.prediction_changed_.tolist() == [[True, True], [False, False]]
    assert np.isnan(got[0]) and "changed" in big.nan_reasons_[0] and np.isfinite(got[1])


class _DarkenBoxA(Noise):
    """Additive 'noise' that lowers box A's region by 0.6 in every draw."""

    def sample(self, keys: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype):
        n = torch.zeros((keys.shape[0], *shape), dtype=dtype)
        n[..., 2:8, 2:8] = -0.6
        return n


def test_randomisation_keeps_the_target_with_a_users_explain_function():
    """A randomised copy re-explained by the user's explain function is a wrapper with the
    detection target (it was the raw module, scored with the class target, before)."""
    x = _images()
    model = _tiny_model()
    y = torch.tensor([[*BOX_A, LABEL_A], [*BOX_B, LABEL_B]])
    a = ek.explain(model, x, y, "Saliency")
    metric = ek.metrics.EfficientMPRT(layer_names=["detector.mix"], disable_warnings=True)
    with_fn = metric(model, x, y, a, explain_fn=ek.explain,
                     explain_kwargs={"method": "Saliency"})
    without = ek.metrics.EfficientMPRT(layer_names=["detector.mix"], disable_warnings=True)(
        model, x, y, a, explain_kwargs={"method": "Saliency"})
    np.testing.assert_array_equal(with_fn, without)


def test_evaluate_and_store_key_the_target_and_detector_settings(tmp_path):
    x = _images()
    y = torch.tensor([[*BOX_A, LABEL_A], [*BOX_B, LABEL_B]])
    s = masks_from_boxes(y[:, :4], (SIZE, SIZE))
    metrics = {"PF": ek.metrics.PixelFlipping(features_in_step=64),
               "RMA": ek.metrics.RelevanceMassAccuracy()}
    methods = {"Saliency": {"method": "Saliency"}, "GradCAM": {"method": "GradCAM"}}
    store = tmp_path / "det.sqlite"
    first = ek.evaluate(metrics, methods, _tiny_model(), x, y, s, store=store)
    assert np.isfinite(first.to_frame()["score"]).all()
    again = ek.evaluate(metrics, methods, _tiny_model(), x, y, s, store=store)
    assert set(again.resumed.values()) == {1}
    # the target and the detector's settings are part of the key
    other_target = wrap_model(DetectionModel(TinyDetector(), max_detections=4),
                              target=BoxScoreTarget(agree_iou=0.7))
    other_thresh = wrap_model(DetectionModel(TinyDetector(score_thresh=0.2), max_detections=4),
                              target=BoxScoreTarget())
    other_rows = wrap_model(DetectionModel(TinyDetector(), max_detections=5),
                            target=BoxScoreTarget())
    for other in (other_target, other_thresh, other_rows):
        res = ek.evaluate(metrics, methods, other, x, y, s, store=store)
        assert set(res.config_hashes.values()).isdisjoint(first.config_hashes.values())
    fp = model_fingerprint(_tiny_model())
    assert fp["target"]["state"] == {"iou_threshold": 0.0, "agree_iou": 0.5}
    assert fp["model"]["config"]["max_detections"] == 4


# ============================================================================ torchvision
def _faster_rcnn(tv):
    """torchvision's Faster R-CNN (MobileNetV3 FPN) with random weights, made small and fast:
    160-pixel images, 20 proposals and detections. ``box_score_thresh=0.0``: an untrained
    detector's class scores are about 1/91 each, below the default 0.05, so it would return
    no box at all. The class head is scaled up so that the scores differ between boxes (as a
    trained detector's do)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        det = tv.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None, weights_backbone=None, box_score_thresh=0.0, min_size=160,
            max_size=160, rpn_pre_nms_top_n_test=40, rpn_post_nms_top_n_test=20,
            box_detections_per_img=20)
    with torch.no_grad():
        det.roi_heads.box_predictor.cls_score.weight.mul_(100)
    return det.eval()


@pytest.fixture(scope="module")
def faster_rcnn(torchvision):
    det = _faster_rcnn(torchvision)
    model = wrap_model(DetectionModel(det), target=BoxScoreTarget())
    x = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    y = model.target.predict(model.predict(x))  # each image's top detection
    return det, model, x, y


# the fully randomised detector no longer finds the reference object: its GradCAM map is zero
# (EfficientMPRT re-explains it), and the explainer warns about the zero gradient
@pytest.mark.filterwarnings("ignore:The gradient of the target score:UserWarning")
def test_faster_rcnn_explain_and_metrics_end_to_end(faster_rcnn):
    _, model, x, y = faster_rcnn
    assert model.model.cam_layer == "detector.backbone.body.16"
    assert (y[:, 4] >= 1).all()  # real detections (labels of COCO classes, not padding)
    score = model.target(model.predict(x), y)
    assert (score > 0).all() and (score <= 1).all()
    maps = {}
    for method, kw in [("GradCAM", {}), ("Saliency", {}), ("IntegratedGradients",
                                                           {"n_steps": 4})]:
        a = ek.explain(model, x, y, method, **kw)
        assert a.shape[0] == 2 and torch.isfinite(a).all() and (a.abs().flatten(1).sum(1) > 0).all()
        maps[method] = a
    a = maps["GradCAM"]
    s = masks_from_boxes(y[:, :4], (160, 160))
    gradcam = {"method": "GradCAM"}
    results = {
        "PixelFlipping": ek.metrics.PixelFlipping(features_in_step=3200)(model, x, y, a),
        "ROAD": ek.metrics.ROAD(percentages=[20, 60])(model, x, y, a),
        "MaxSensitivity": ek.metrics.MaxSensitivity(nr_samples=2)(
            model, x, y, a, explain_kwargs=gradcam),
        "EfficientMPRT": ek.metrics.EfficientMPRT(disable_warnings=True)(
            model, x, y, a, explain_kwargs=gradcam),
        "RelevanceMassAccuracy": ek.metrics.RelevanceMassAccuracy()(model, x, y, a, s=s),
    }
    for name, scores in results.items():
        assert scores.shape == (2,) and np.isfinite(scores).all(), name


def test_faster_rcnn_through_evaluate(faster_rcnn, tmp_path):
    _, model, x, y = faster_rcnn
    s = masks_from_boxes(y[:, :4], (160, 160))
    res = ek.evaluate({"Deletion": ek.metrics.Deletion(features_in_step=3200),
                       "Insertion": ek.metrics.Insertion(features_in_step=3200),
                       "PointingGame": ek.metrics.PointingGame()},
                      {"GradCAM": {"method": "GradCAM"}, "Saliency": {"method": "Saliency"}},
                      model, x, y, s, store=tmp_path / "frcnn.sqlite")
    frame = res.to_frame()
    assert len(frame) == 2 * 3 * 2 and np.isfinite(frame["score"]).all()
    board = res.leaderboard(n_boot=0)
    assert set(board.table.index) == {"GradCAM", "Saliency"}


def test_gradcam_against_pytorch_grad_cam_box_score_target(faster_rcnn):
    """GradCAM on the end of the backbone with pytorch-grad-cam's FasterRCNNBoxScoreTarget and
    with BoxScoreTarget give the same maps: for a reference that is one of the model's own
    detections both targets' gradients are that detection's score gradient."""
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
    except Exception:
        pytest.skip("the optional pytorch-grad-cam 1.5.7 oracle is absent")
    det, model, x, y = faster_rcnn
    ours = ek.explain(model, x, y, "GradCAM", layer="detector.backbone.body.16")[:, 0]
    layer = list(det.backbone.body.children())[-1]
    for i in range(x.shape[0]):
        target = FasterRCNNBoxScoreTarget(labels=[int(y[i, 4])],
                                          bounding_boxes=[y[i, :4].numpy()])
        with GradCAM(model=det, target_layers=[layer]) as cam:
            ref = cam(x[i : i + 1], targets=[target])[0]
        mine = ours[i].numpy()
        assert mine.max() > 0
        assert np.corrcoef(mine.ravel(), ref.ravel())[0, 1] > 0.999


def test_faster_rcnn_fingerprint_keys_settings_not_caches(torchvision):
    """The detector's thresholds are part of the store key; caches a forward pass fills
    (MultiScaleRoIAlign.scales) are not, so the key is the same before and after."""
    model = DetectionModel(_faster_rcnn(torchvision), max_detections=20)
    before = model_fingerprint(model)
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert model.detector.roi_heads.box_roi_pool.scales is not None  # the cache was filled
    assert model_fingerprint(model) == before
    model.detector.roi_heads.score_thresh = 0.05
    assert model_fingerprint(model) != before
