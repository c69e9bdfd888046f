"""Object detection: a fixed-shape wrapper for torchvision-style detectors and a box-score target.

A torchvision-style detector (Faster R-CNN, RetinaNet, SSD, FCOS...) takes a list of images and
returns, in evaluation mode, one dict per image with ``boxes`` (K, 4) as ``(x1, y1, x2, y2)``
in pixels of the input image, ``scores`` (K,) and ``labels`` (K,), K varying from image to
image. Metrics and explainers need one tensor per batch, so :class:`DetectionModel` pads each
image's detections to a fixed ``max_detections`` rows::

    outputs[i, d] = [x1, y1, x2, y2, score, label]      (N, D, 6)

sorted by decreasing score, padding rows ``[0, 0, 0, 0, 0, -1]``. Boxes and scores stay
differentiable wherever the detector's are (torchvision's Faster R-CNN: with respect to the
input and every backbone and head layer), so gradient explainers and gradient CAMs work.

:class:`BoxScoreTarget` scores, for each image, the detection that best matches a reference
box and label: ``max_d IoU(box_d, reference) * score_d`` over the detections ``d`` of the
reference's label that overlap it (IoU > ``iou_threshold``). The references come per sample in
``y`` of shape (N, 5) = ``[x1, y1, x2, y2, label]``, so metrics slice them with the inputs. A
detection that disappears (no detection of that label overlaps the reference box any more)
scores **0**: removal curves fall to 0 when the object is no longer found.

Example (random weights, as in the tests; see docs/tutorials/detection.md)::

    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn
    detector = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None,
                                                     box_score_thresh=0.0)
    model = wrap_model(DetectionModel(detector), target=BoxScoreTarget())
    y = model.target.predict(model.predict(x))     # each image's top detection, (N, 5)
    a = explain(model, x, y, "GradCAM")            # layer: the end of the backbone

**Random weights and** ``box_score_thresh``: torchvision keeps only detections whose class
score exceeds ``box_score_thresh`` (default 0.05). An untrained detector spreads its scores over
all classes (about 1/91 each for COCO's 91), so it returns no box at all; build such a detector
with ``box_score_thresh=0.0`` in its constructor (the tests and the tutorial do).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

import torch
from torch import nn

from .targets import BaseTarget

__all__ = ["DETECTION_FIELDS", "BoxScoreTarget", "DetectionModel", "box_iou"]

#: the columns of :class:`DetectionModel`'s output rows
DETECTION_FIELDS = ("x1", "y1", "x2", "y2", "score", "label")
#: the label of a padding row (no detection)
PADDING_LABEL = -1

_MODULE_BASE_ATTRIBUTES = frozenset(vars(nn.Module()))
#: names of detector attributes that are settings (see DetectionModel.fingerprint_config)
_SETTING = re.compile(r"thresh|top_?n|topk|detections|size|mean|std")
_PLAIN = (type(None), bool, int, float, str)


class DetectionModel(nn.Module):
    """A torchvision-style detector as a model with a fixed-shape output, (N, D, 6).

    ``forward(x)`` passes the images of the batch ``x`` (N, C, H, W) to the detector as a list
    (as torchvision's detectors take them; their own transform normalises and resizes each
    image) and stacks the detections: row ``d`` of image ``i`` is ``[x1, y1, x2, y2, score,
    label]``, by decreasing score; images with fewer than ``max_detections`` detections are
    padded with ``[0, 0, 0, 0, 0, -1]`` (no box of any label), and those with more keep their
    ``max_detections`` best.

    Parameters
    ----------
    detector:
        A module mapping a list of (C, H, W) images to a list of dicts with ``boxes`` (K, 4),
        ``scores`` (K,) and ``labels`` (K,) (torchvision's detection models in evaluation
        mode; the wrapper's forward passes run in evaluation mode). An untrained torchvision
        detector needs ``box_score_thresh=0.0`` (see the module docstring).
    max_detections:
        Rows per image, D (default 100, torchvision's ``box_detections_per_img``).
    cam_layer:
        The default layer of CAM methods (a name of ``self.named_modules()``). ``None``: the
        last block of ``detector.backbone.body`` (torchvision's backbones), else the last
        convolution of ``detector.backbone``, else the CAM methods' own default.

    The detector's settings that are not parameters (score and NMS thresholds, proposal
    counts, image sizes, ``max_detections``) change the outputs without changing the weights,
    so they are part of the model's fingerprint in the result store
    (:meth:`fingerprint_config`).

    Gradient CAMs map the layer's activations back to the input by resizing; torchvision's
    transform resizes each image (to ``min_size``) and pads the batch to a multiple of 32, so
    a CAM lines up with the image when the resized image needs no padding (e.g. square images;
    pytorch-grad-cam has the same limitation).
    """

    def __init__(self, detector: nn.Module, max_detections: int = 100,
                 cam_layer: str | None = None) -> None:
        super().__init__()
        if not isinstance(detector, nn.Module):
            raise TypeError("`detector` must be a torch.nn.Module mapping a list of images to a "
                            "list of dicts (boxes, scores, labels); got "
                            f"{type(detector).__name__}.")
        if isinstance(max_detections, bool) or not isinstance(max_detections, int) \
                or max_detections < 1:
            raise ValueError(f"`max_detections` must be an int >= 1; got {max_detections!r}.")
        self.detector = detector
        self.max_detections = max_detections
        layer = cam_layer if cam_layer is not None else _default_cam_layer(detector)
        if layer is not None:
            names = dict(self.named_modules())
            if layer not in names:
                raise ValueError(f"`cam_layer` {layer!r} is not a module of the model; names "
                                 "start with 'detector.' (e.g. 'detector.backbone.body').")
            self.cam_layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"DetectionModel takes a batch of images (N, C, H, W); got {shape}.")
        detections = self.detector(list(x))
        if not isinstance(detections, list | tuple) or len(detections) != x.shape[0]:
            got = (f"{len(detections)} items" if isinstance(detections, list | tuple)
                   else type(detections).__name__)
            raise TypeError(f"The detector must return one dict per image ({x.shape[0]}); got "
                            f"{got}. Is it in evaluation mode?")
        rows = [self._rows(i, det, x) for i, det in enumerate(detections)]
        return torch.stack(rows, 0)

    def _rows(self, i: int, det: Any, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(det, dict) or not {"boxes", "scores", "labels"} <= set(det):
            keys = sorted(det) if isinstance(det, dict) else type(det).__name__
            raise TypeError(f"The detector's output for image {i} must be a dict with 'boxes', "
                            f"'scores' and 'labels'; got {keys}.")
        boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
        k = int(scores.shape[0]) if scores.ndim == 1 else -1
        if k < 0 or tuple(boxes.shape) != (k, 4) or tuple(labels.shape) != (k,):
            raise ValueError(f"The detector's output for image {i} has boxes "
                             f"{tuple(boxes.shape)}, scores {tuple(scores.shape)}, labels "
                             f"{tuple(labels.shape)}; expected (K, 4), (K,), (K,).")
        dtype = x.dtype if x.is_floating_point() else torch.float32
        # a stable sort keeps the detector's order among equal scores
        order = torch.sort(scores.detach(), descending=True, stable=True).indices
        order = order[: self.max_detections]
        found = torch.cat([boxes[order].to(dtype), scores[order].to(dtype).unsqueeze(1),
                           labels[order].to(dtype).unsqueeze(1)], 1)
        pad = self.max_detections - found.shape[0]
        if pad == 0:
            return found
        padding = torch.zeros((pad, 6), dtype=dtype, device=found.device)
        padding[:, 5] = PADDING_LABEL
        return torch.cat([found, padding], 0)

    def fingerprint_config(self) -> dict[str, Any]:
        """What changes the outputs besides the parameters and buffers: ``max_detections`` and
        a digest of the detector's settings, i.e. every plain attribute (numbers, strings, and
        lists, tuples and dicts of them) of its modules whose name speaks of thresholds,
        proposal and detection counts, sizes or normalisation (``score_thresh``,
        ``nms_thresh``, ``_post_nms_top_n``, ``detections_per_img``, ``topk_candidates``,
        ``min_size``, ``image_mean``...). Other attributes are left out: some are caches
        that a forward pass fills (torchvision's ``MultiScaleRoIAlign.scales``)."""
        settings: dict[str, Any] = {}
        for name, module in self.detector.named_modules():
            own = {k: v for k, v in vars(module).items()
                   if k not in _MODULE_BASE_ATTRIBUTES and _SETTING.search(k) and _is_plain(v)}
            if own:
                settings[name] = own
        text = json.dumps(settings, sort_keys=True, default=repr)
        return {"max_detections": self.max_detections,
                "detector_settings": hashlib.blake2b(text.encode(), digest_size=16).hexdigest()}

    def extra_repr(self) -> str:
        return f"max_detections={self.max_detections}"


def _is_plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, list | tuple):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return bool(value) and all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _default_cam_layer(detector: nn.Module) -> str | None:
    backbone = getattr(detector, "backbone", None)
    if not isinstance(backbone, nn.Module):
        return None
    body = getattr(backbone, "body", None)
    if isinstance(body, nn.Module):
        children = [name for name, _ in body.named_children()]
        if children:
            return f"detector.backbone.body.{children[-1]}"
    convs = [name for name, m in backbone.named_modules()
             if isinstance(m, nn.modules.conv._ConvNd)]
    return f"detector.backbone.{convs[-1]}" if convs else None


def box_iou(boxes: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Intersection over union of boxes ``(..., 4)`` as ``(x1, y1, x2, y2)``, broadcast
    against each other: (...,). 0 where the union is empty (two degenerate boxes).

    Differentiable; at a box identical to the other, the gradient of the IoU is 0 (the
    maximum; ``torch.minimum``/``maximum`` split the gradient of ties)."""
    lo = torch.maximum(boxes[..., :2], others[..., :2])
    hi = torch.minimum(boxes[..., 2:], others[..., 2:])
    wh = (hi - lo).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    union = _area(boxes) + _area(others) - inter
    ok = union > 0
    return torch.where(ok, inter / torch.where(ok, union, torch.ones_like(union)),
                       torch.zeros_like(inter))


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return ((boxes[..., 2] - boxes[..., 0]).clamp_min(0)
            * (boxes[..., 3] - boxes[..., 1]).clamp_min(0))


class BoxScoreTarget(BaseTarget):
    """The detection that best matches a reference box and label, scored as IoU x class score.

    For image i with reference ``y[i] = [x1, y1, x2, y2, label]`` and detections ``d`` (the rows
    of :class:`DetectionModel`'s output, (N, D, 6))::

        target_i = max over d with label_d == label_i and IoU(box_d, box_i) > iou_threshold
                   of IoU(box_d, box_i) * score_d

    and **0 when no detection qualifies**: a detection that disappears (no detection of that
    label overlapping the reference box) scores 0, so removing the evidence for an object
    drives its score to 0, and the score never exceeds 1 (IoU and a probability). The gradient
    flows through the matched detection's score and box only.

    ``y`` holds one reference per sample, shape (N, 5): ``[x1, y1, x2, y2, label]`` in pixels of
    the input (torchvision's box convention), label an integer >= 0. Several objects of one
    image are several samples (the image repeated, one reference each). The references are
    often the model's own detections on the clean images: ``y = target.predict(outputs)``.

    Predictions (:meth:`predict`) are each image's top-scoring detection, ``[x1, y1, x2, y2,
    label]`` (the layout of ``y``); two predictions of the same image agree (:meth:`agree`) when
    their labels are equal and their IoU is at least ``agree_iou`` (0.5, the PASCAL VOC
    criterion), or when neither image has a detection. Across images only labels compare
    (:meth:`codes`, :meth:`agree_pairwise`: set-level metrics). :meth:`hits` asks whether the
    reference object is detected: some detection of its label with IoU >= ``agree_iou`` (the
    recall of that object), not whether it is the top detection. No softmax applies to
    detection outputs (their scores are probabilities already): a metric's default softmax is
    switched off, an explicit ``softmax=True`` is refused.

    Compared with pytorch-grad-cam's ``FasterRCNNBoxScoreTarget(labels, bounding_boxes,
    iou_threshold=0.5)``: that target takes the detection of highest IoU whatever its label,
    then counts ``IoU + score`` if the label matches and IoU > 0.5, summed over several
    reference boxes of one image. Here the best match among detections of the reference's label
    is chosen by IoU x score, which is continuous in the IoU (no jump at a threshold) and 0
    when the object disappears. For a reference that is one of the model's own detections,
    both choose that detection and both gradients equal the gradient of its score (the IoU is
    at its maximum), so gradient CAMs agree (tests/test_detection.py).

    Parameters
    ----------
    iou_threshold:
        Detections overlapping the reference by no more than this IoU do not count (default 0:
        any overlap counts).
    agree_iou:
        The IoU at which two boxes are the same object, for :meth:`agree` and :meth:`hits`.
    """

    uses_class_labels = False
    #: detection scores are probabilities already; a softmax over the detections is
    #: meaningless (:meth:`~evalkit.models.ModelWrapper.check_softmax` reads this)
    softmax_applies = False

    def __init__(self, iou_threshold: float = 0.0, agree_iou: float = 0.5) -> None:
        self.iou_threshold = _fraction("iou_threshold", iou_threshold, upper_open=True)
        self.agree_iou = _fraction("agree_iou", agree_iou, lower_open=True)

    # ------------------------------------------------------------------ scores
    @staticmethod
    def _detections(outputs: torch.Tensor) -> torch.Tensor:
        if outputs.ndim != 3 or outputs.shape[2] != len(DETECTION_FIELDS):
            raise ValueError(
                "BoxScoreTarget expects detection outputs (N, D, 6) = [x1, y1, x2, y2, score, "
                f"label] per detection; got {tuple(outputs.shape)}. Wrap the detector in "
                "evalkit.models.DetectionModel."
            )
        return outputs

    def match_values(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N, D): IoU x score of every detection with its image's reference, 0 for detections
        of another label or overlapping by no more than ``iou_threshold``."""
        det = self._detections(outputs)
        ref = y.to(device=det.device, dtype=det.dtype)
        iou = box_iou(det[..., :4], ref[:, None, :4])
        valid = (det[..., 5] == ref[:, None, 4]) & (iou > self.iou_threshold)
        return torch.where(valid, iou * det[..., 4], torch.zeros_like(iou))

    def match(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N,) int64: the index of each image's matched detection, -1 where none qualifies."""
        values = self.match_values(outputs, y)
        best = values.max(1)
        return torch.where(best.values > 0, best.indices, torch.full_like(best.indices, -1))

    def __call__(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ValueError("BoxScoreTarget needs a reference per sample in `y`, shape (N, 5) "
                             "= [x1, y1, x2, y2, label].")
        # max(dim) sends the gradient to the one matched detection (0 when none matches)
        return self.match_values(outputs, y).max(1).values

    def check(self, y: torch.Tensor | None, output_shape: tuple[int, ...]) -> None:
        if len(output_shape) != 2 or output_shape[1] != len(DETECTION_FIELDS):
            raise ValueError(
                f"BoxScoreTarget expects detection outputs with per-sample shape (D, 6); the "
                f"model's are {tuple(output_shape)}. Wrap the detector in "
                "evalkit.models.DetectionModel."
            )
        if y is None:
            raise ValueError("`y` is required: one reference per sample, shape (N, 5) = "
                             "[x1, y1, x2, y2, label].")
        if y.ndim != 2 or y.shape[1] != 5:
            raise ValueError("BoxScoreTarget needs one reference per sample in `y`, shape "
                             f"(N, 5) = [x1, y1, x2, y2, label]; got {tuple(y.shape)}.")
        if y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"`y` must hold numbers; got dtype {y.dtype}.")
        yf = y.to(torch.float64)
        if not bool(torch.isfinite(yf).all()):
            raise ValueError("`y` (reference boxes and labels) contains NaN or Inf.")
        labels = yf[:, 4]
        if bool((labels < 0).any()) or bool((labels != torch.round(labels)).any()):
            bad = labels[(labels < 0) | (labels != torch.round(labels))][0].item()
            raise ValueError(f"`y[:, 4]` must hold integer labels >= 0; got {bad}.")
        bad_box = (yf[:, 2] < yf[:, 0]) | (yf[:, 3] < yf[:, 1])
        if bool(bad_box.any()):
            i = int(bad_box.nonzero()[0, 0])
            raise ValueError(f"`y[{i}]` is not a box (x1, y1, x2, y2) with x1 <= x2 and y1 <= "
                             f"y2: {yf[i, :4].tolist()}.")

    # ------------------------------------------------------------------ predictions
    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """(N, 5): each image's top-scoring detection, ``[x1, y1, x2, y2, label]`` (label -1
        and a zero box where the image has none)."""
        det = self._detections(outputs)
        top = det[..., 4].argmax(1)
        rows = det[torch.arange(det.shape[0], device=det.device), top]
        return torch.cat([rows[:, :4], rows[:, 5:6]], 1)

    def agree(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        if p.shape != q.shape or p.ndim != 2 or p.shape[1] != 5:
            raise ValueError(f"BoxScoreTarget: predictions of shape {tuple(p.shape)} and "
                             f"{tuple(q.shape)} cannot be compared; both must be (N, 5).")
        same_label = p[:, 4] == q[:, 4]
        none = p[:, 4] == PADDING_LABEL
        return same_label & (none | (box_iou(p[:, :4], q[:, :4]) >= self.agree_iou))

    def codes(self, p: torch.Tensor) -> torch.Tensor:
        """(N,) int64: the predicted labels (boxes of different images do not compare)."""
        return p[:, 4].to(torch.int64)

    def agree_pairwise(self, p: torch.Tensor) -> torch.Tensor:
        labels = p[:, 4]
        return labels.unsqueeze(0) == labels.unsqueeze(1)

    def hits(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """(N,) float64: 1.0 where some detection of the reference's label overlaps the
        reference box with IoU >= ``agree_iou`` (the object is found), else 0.0; NaN where the
        outputs are not finite."""
        if y is None:
            raise ValueError("BoxScoreTarget: comparing detections with references needs `y`.")
        det = self._detections(outputs)
        ref = y.to(device=det.device, dtype=det.dtype)
        iou = box_iou(det[..., :4], ref[:, None, :4])
        found = ((det[..., 5] == ref[:, None, 4]) & (iou >= self.agree_iou)).any(1)
        finite = torch.isfinite(det.reshape(det.shape[0], -1)).all(1)
        return found.to(torch.float64).masked_fill(~finite, math.nan)


def _fraction(name: str, value: float, *, lower_open: bool = False,
              upper_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be a number in [0, 1]; got {value!r}.")
    v = float(value)
    low_ok = v > 0 if lower_open else v >= 0
    high_ok = v < 1 if upper_open else v <= 1
    if not (low_ok and high_ok and math.isfinite(v)):
        interval = f"{'(' if lower_open else '['}0, 1{')' if upper_open else ']'}"
        raise ValueError(f"`{name}` must be in {interval}; got {value!r}.")
    return v
