"""Localisation: does the explanation point at the ground-truth region?

Model-free (a model is used only to explain when ``a`` is None), per sample, vectorised over the
batch in torch.

Shared conventions
------------------
* **The unit is the pixel.** After the shared preprocessing (per-sample ``normalise``, then
  ``abs``, applied to every element), a C-channel attribution (N, C, ...) is reduced to one value
  per pixel by **summing over the channel axis** (as Quantus' ``explain`` does with its default
  ``reduce_axes=(1,)``). A 1-channel map (N, 1, H, W) on 3-channel inputs is used as it is.
  Tabular inputs (N, D) have no channel axis: each column is a "pixel".
* **Masks** ``s`` are binary, (N, 1, ...), (N, ...) or (N, C, ...) with identical channels
  (per-channel masks are rejected). Instead of masks, every localisation metric accepts
  ``boxes=`` (N, 4) ``(x0, y0, x1, y1)`` end-exclusive pixel boxes, or (N, K, 4) / a list for
  several objects, turned into masks with :func:`evalkit.masks.masks_from_boxes`.
* **Undefined scores are NaN with a reason** (``metric.nan_reasons_``), never True or 0: an
  empty mask, a map whose total relevance is zero, a mask covering everything where the score
  needs pixels outside it (AUC), attribution rows with NaN/Inf.
* **Ties** are handled deliberately: rank-based scores (TopKIntersection,
  RelevanceRankAccuracy, PointingGame's default) give the *expected* score under a uniformly
  random order of tied values, AUC gives ties half credit (average ranks), instead of depending
  on a sort's arbitrary tie order (Quantus). A map with nothing to rank (constant or all zero)
  is NaN with a reason in these four metrics; ``constant_maps="score"`` gives its chance-level
  score (:mod:`evalkit.metrics._ties`).

Mosaics for Focus, boxes-to-masks and the CAM paper's box-localisation protocol live in
:mod:`evalkit.masks`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._validation import as_tensor, check_bool, check_option, check_scalar, check_top_k
from ..masks import boxes_from_masks, cam_localisation, dilate, masks_from_boxes, quadrant_masks
from ._sorting import sort_rows
from ._ties import RanksFeatures
from .base import Metric, MetricBatch

__all__ = [
    "AUC",
    "AUPRC",
    "IOUF1",
    "AttributionLocalisation",
    "BoxLocalisation",
    "EnergyPointingGame",
    "Focus",
    "PointingGame",
    "RelevanceMassAccuracy",
    "RelevanceRankAccuracy",
    "TokenF1",
    "TopKIntersection",
    "interval_boxes",
    "masks_from_intervals",
]


# --------------------------------------------------------------------------- shared pieces
def _pixel_maps(batch: MetricBatch) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Attributions as (N, P) per-pixel values (channels summed) and the spatial shape (empty
    for tabular inputs (N, D), whose columns have no spatial arrangement)."""
    assert batch.a is not None
    return batch.modality.feature_maps(batch.a)


def _pixel_masks(batch: MetricBatch, s: torch.Tensor | None = None) -> torch.Tensor:
    """Masks as bool (N, P); a channel axis must be 1 or hold identical channels."""
    s = batch.s if s is None else s
    if s is None:
        raise ValueError(f"{type(batch.metric).__name__} needs ground-truth masks `s`.")
    return batch.modality.feature_masks(s)


def _flag_mask_sizes(batch: MetricBatch, s: torch.Tensor, *, full_undefined: bool = False) -> None:
    count = s.sum(1)
    batch.set_nan(count == 0, "ground-truth mask is empty")
    if full_undefined:
        batch.set_nan(count == s.shape[1],
                      "ground-truth mask covers the whole input (no pixels outside it)")


def _scored_pair(batch: MetricBatch, *, full_undefined: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Per-pixel maps (N, P), masks (N, P) and the spatial shape; empty masks (and, if asked,
    full ones) are flagged NaN with a reason."""
    a, spatial = _pixel_maps(batch)
    s = _pixel_masks(batch)
    _flag_mask_sizes(batch, s, full_undefined=full_undefined)
    return a, s, spatial


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return num / torch.where(den != 0, den, torch.ones_like(den))


def _positive_mass_ratio(batch: MetricBatch, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Share of the positive relevance that falls inside the mask (NaN reason if none)."""
    pos = a.clamp_min(0)
    total = pos.sum(1)
    batch.set_nan(total == 0, "no positive attribution (total positive relevance is zero)")
    # a share by construction; the clamp only absorbs summation-order rounding (1 ulp)
    return _safe_div((pos * s).sum(1), total).clamp(0.0, 1.0)


def _signed_mass_ratio(batch: MetricBatch, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """sum_in a / sum a of signed maps, NaN with a reason where it is not a share in [0, 1]
    (a total <= 0, or more (or less than no) relevance inside the mask than in the map)."""
    total = a.sum(1)
    batch.set_nan(total <= 0, "total attribution is not positive")
    mu = _safe_div((a * s).sum(1), total)
    batch.set_nan((total > 0) & ((mu < 0) | (mu > 1)),
                  "inside/total ratio outside [0, 1] (signed attributions; use "
                  "positive_attributions=True or abs=True)")
    return mu


def _expected_top_hits(a: torch.Tensor, s: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Expected number of mask pixels among the ``k`` (N,) largest values of ``a`` (N, P),
    with ties at the cut broken uniformly at random (exact expectation, no sampling)."""
    p = a.shape[1]
    kk = k.clamp(1, p).to(torch.int64)
    kth = sort_rows(a).gather(1, (p - kk).unsqueeze(1))  # the k-th largest value
    above, tied = a > kth, a == kth
    n_above = above.sum(1)
    n_tied = tied.sum(1)
    hits_above = (above & s).sum(1).to(torch.float64)
    hits_tied = (tied & s).sum(1).to(torch.float64)
    return hits_above + (kk - n_above).to(torch.float64) * hits_tied / n_tied.to(torch.float64)


def _average_ranks_sorted(v: torch.Tensor) -> torch.Tensor:
    """1-based average ranks of the (N, P) rows ``v``, already sorted ascending: a run of tied
    values at positions first..last all get (first + last) / 2 + 1."""
    n, p = v.shape
    starts = torch.ones_like(v, dtype=torch.bool)
    starts[:, 1:] = v[:, 1:] != v[:, :-1]
    idx = torch.arange(p, device=v.device).expand(n, p)
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(1).values
    group = starts.cumsum(1) - 1 + torch.arange(n, device=v.device).unsqueeze(1) * p
    size = torch.bincount(group.flatten(), minlength=n * p)[group]
    return first.to(torch.float64) + (size - 1).to(torch.float64) / 2 + 1


class _LocalisationMetric(Metric):
    """Shared metadata and the ``boxes=`` shortcut of the localisation family."""

    family = "localisation"
    modalities = ("image", "series", "tabular", "tokens")
    higher_is_better = True
    needs_masks = True
    needs_model = False

    def __call__(self, model: Any = None, x: Any = None, y: Any = None, a: Any = None, *,
                 s: Any = None, boxes: Any = None, **kwargs: Any) -> np.ndarray:
        """Score as :meth:`Metric.__call__`; ``boxes`` (N, 4) may replace the masks ``s``."""
        if boxes is not None:
            if s is not None or kwargs.get("s_batch") is not None:
                raise TypeError("Give either masks `s` or `boxes`, not both.")
            xx = x if x is not None else kwargs.get("x_batch")
            if xx is None:
                raise TypeError(f"{type(self).__name__}() missing the inputs `x`.")
            shape = tuple(np.shape(xx))
            if len(shape) not in (3, 4):
                raise ValueError("`boxes` need image inputs (N, C, H, W) (boxes (N, 4)) or "
                                 "series (N, C, T) (intervals (N, 2)); give masks `s` for other "
                                 "data.")
            channels_last = kwargs.get("channel_first") is False
            if len(shape) == 3:
                steps = shape[1] if channels_last else shape[2]
                s = masks_from_intervals(boxes, steps)
                if channels_last:  # (N, 1, T) -> (N, T, 1)
                    s = s.movedim(1, -1)
            else:
                s = masks_from_boxes(boxes, shape[1:3] if channels_last else shape[2:])
                if channels_last:  # (N, 1, H, W) -> (N, H, W, 1), the layout of x
                    s = (s.movedim(1, -1) if isinstance(s, torch.Tensor)
                         else np.moveaxis(s, 1, -1))
            if "boxes" in self.call_options:
                kwargs["boxes"] = boxes
        return super().__call__(model, x, y, a, s=s, **kwargs)


def interval_boxes(intervals: Any) -> torch.Tensor:
    """Time intervals ``(t0, t1)`` (end-exclusive) as the boxes ``(t0, 0, t1, 1)`` of a
    1-pixel-high image: float64 (N, K, 4). Takes (N, 2), (N, K, 2) (rows of NaN are padding)
    or a list of (K_i, 2) arrays."""
    if isinstance(intervals, list | tuple) and intervals and np.ndim(intervals[0]) >= 1 \
            and not isinstance(intervals[0], int | float):
        parts = [as_tensor(v, f"intervals[{i}]", dtype=torch.float64).reshape(-1, 2)
                 for i, v in enumerate(intervals)]
        k = max(1, max(p.shape[0] for p in parts))
        t = torch.full((len(parts), k, 2), math.nan, dtype=torch.float64)
        for i, p in enumerate(parts):
            t[i, : p.shape[0]] = p.cpu()
    else:
        t = as_tensor(intervals, "intervals", dtype=torch.float64)
        if t.ndim == 2:
            t = t.unsqueeze(1)
    if t.ndim != 3 or t.shape[-1] != 2:
        raise ValueError("Series intervals must be (N, 2) (t0, t1) pairs, (N, K, 2) or a list of "
                         f"(K_i, 2) arrays; got shape {tuple(t.shape)}.")
    nan_row = torch.isnan(t).any(-1, keepdim=True)
    ones = torch.ones_like(t[..., :1])
    boxes = torch.cat([t[..., :1], 0 * ones, t[..., 1:], ones], -1)
    return torch.where(nan_row, torch.full_like(boxes, math.nan), boxes)


def masks_from_intervals(intervals: Any, steps: int) -> torch.Tensor:
    """Bool masks (N, 1, T) covering time intervals ``(t0, t1)`` (end-exclusive; several per
    sample are united), the series counterpart of :func:`evalkit.masks.masks_from_boxes`."""
    masks = masks_from_boxes(interval_boxes(intervals), (1, int(steps)))
    return masks.reshape(masks.shape[0], 1, int(steps))


# --------------------------------------------------------------------------- PointingGame
class PointingGame(RanksFeatures, _LocalisationMetric):
    """Pointing game (Zhang et al. 2018): is the attribution's maximum on the object?

    A hit when the position of the map's maximum lies within ``tolerance`` pixels (Euclidean
    distance between pixel centres, ``<=``) of the ground-truth mask; the score is 1.0 for a hit
    and 0.0 for a miss. **Higher is better**.

    Parameters
    ----------
    tolerance:
        Radius in pixels. ``0`` (default): the maximum must lie in the mask itself, as in
        Quantus. Zhang et al. (and TorchRay) use 15 px on PASCAL VOC / COCO images of about
        224 px and more; that protocol is ``PointingGame(tolerance=15)``. The default is 0
        because a fixed pixel radius means very different things at different resolutions (on
        28x28 inputs 15 px covers most of the image). TorchRay's acceptance test is strict
        (distance < 15); here it is ``<=``, so ``tolerance=14.99`` reproduces TorchRay exactly.
        Needs 1-D or 2-D spatial inputs when > 0 (the mask is dilated with a disk,
        :func:`evalkit.masks.dilate`).
    weighted:
        Multiply each hit by ``1 - |hit region| / |input|``, the chance of a uniformly random
        point missing, so that hits on large objects count less (the intent of Quantus'
        ``weighted``, which crashes there, deviation C7). The hit region is the mask dilated by
        ``tolerance``.
    ties:
        Several positions sharing the maximum value: ``"mean"`` (default) scores the share of
        them that hit, i.e. the expected score of breaking the tie uniformly at random, so a
        constant map scores at chance level; ``"any"`` counts a hit if any of them hits
        (Quantus); ``"first"`` uses the first maximum in row-major order (``torch.argmax``).

    With ``tolerance=0, ties="any"`` the result equals Quantus' (as 1.0/0.0 instead of bools)
    except for empty masks: Quantus returns True there (NaN cast to bool, deviation C7); evalkit
    returns NaN with a reason. A mask covering the whole input is a guaranteed hit (1.0).

    Reference: J. Zhang et al., "Top-down Neural Attention by Excitation Backprop", IJCV 126,
    2018 (ECCV 2016).
    """

    paper = "Zhang et al., Top-down Neural Attention by Excitation Backprop, IJCV 2018"
    aliases = ("pointing_game",)

    def __init__(self, tolerance: float = 0, weighted: bool = False, ties: str = "mean",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tolerance = check_scalar("tolerance", tolerance, (int, float), min_val=0)
        self.weighted = check_bool("weighted", weighted)
        self.ties = check_option("ties", ties, ("mean", "any", "first"))

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        a, s, spatial = _scored_pair(batch)
        region = s
        if self.tolerance > 0:
            if len(spatial) not in (1, 2):
                raise ValueError("PointingGame(tolerance > 0) needs 1-D or 2-D spatial inputs "
                                 f"(got per-sample shape {spatial}); use tolerance=0.")
            region = dilate(s.reshape(-1, *spatial), self.tolerance,
                            ndim=len(spatial)).reshape(s.shape)
        if self.ties == "first":
            hit = region.gather(1, a.argmax(1, keepdim=True)).squeeze(1).to(torch.float64)
        else:
            is_max = a == a.amax(1, keepdim=True)
            on = (is_max & region).sum(1)
            if self.ties == "any":
                hit = (on > 0).to(torch.float64)
            else:
                hit = on.to(torch.float64) / is_max.sum(1).to(torch.float64)
        if self.weighted:
            hit = hit * (1 - region.sum(1).to(torch.float64) / region.shape[1])
        return hit


# --------------------------------------------------------------------------- mass-based
_ARRAS = ("Arras, Osman & Samek, CLEVR-XAI: A benchmark dataset for the ground truth "
          "evaluation of neural network explanations, Information Fusion 2022")

class AttributionLocalisation(_LocalisationMetric):
    """Attribution localisation (Kohlbrenner et al. 2020): the inside-total relevance ratio
    mu = R_in / R_tot, the share of the (positive) relevance that falls inside the mask.
    **Higher is better**; 1 when all relevance is on the object.

    Parameters
    ----------
    positive_attributions:
        Use only positive relevance, max(a, 0), as the paper does (default True).
    weighted:
        The size-weighted ratio mu_w = mu * |input| / |mask|: a uniform map scores 1 whatever
        the object's size, and > 1 means better than chance.
    max_size:
        Samples whose mask covers more than this fraction of the input are NaN (the paper
        restricts the evaluation to objects below a size; default 1.0 keeps all).

    Deviations from Quantus (``quantus.AttributionLocalisation``, defaults ``abs=True,
    positive_attributions=False``): the defaults here follow the paper, ``abs=False`` and
    ``positive_attributions=True`` (Quantus issue #211); ``AttributionLocalisation(abs=True)``
    is Quantus' default computation (|a| is already positive). Quantus' ``weighted`` multiplies
    by |mask| / ``x_batch[2:].size``, i.e. by the size of *samples 2..N of the batch*
    (deviation C8), so its value depends on the batch size and shrinks big objects' scores further;
    here the weight is |input| / |mask| per sample. A zero total gives NaN (Quantus: 0 through its
    +1e-9); a ratio outside [0, 1] (only possible with signed attributions) is NaN, as in
    Quantus; ``max_size`` excludes (Quantus only warns).

    Reference: M. Kohlbrenner et al., "Towards Best Practice in Explaining Neural Network
    Decisions with LRP", IJCNN 2020.
    """

    paper = ("Kohlbrenner et al., Towards Best Practice in Explaining Neural Network Decisions "
             "with LRP, IJCNN 2020")

    def __init__(self, weighted: bool = False, max_size: float = 1.0,
                 positive_attributions: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weighted = check_bool("weighted", weighted)
        self.max_size = check_scalar("max_size", max_size, (int, float), min_val=0, max_val=1,
                                     include_min=False)
        self.positive_attributions = check_bool("positive_attributions", positive_attributions)

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        a, s, _ = _scored_pair(batch)
        frac = s.sum(1).to(torch.float64) / s.shape[1]
        batch.set_nan(frac > self.max_size, f"mask covers more than max_size={self.max_size} "
                                            "of the input")
        if self.positive_attributions:
            mu = _positive_mass_ratio(batch, a, s)
        else:
            mu = _signed_mass_ratio(batch, a, s)
        if self.weighted:
            mu = _safe_div(mu, frac)
        return mu


class EnergyPointingGame(_LocalisationMetric):
    """Energy-based pointing game (Wang et al. 2020, Score-CAM): the share of the positive
    saliency energy inside the ground-truth mask or box, sum_in max(a, 0) / sum max(a, 0).
    **Higher is better**.

    The same quantity as ``AttributionLocalisation()`` and ``RelevanceMassAccuracy()`` with
    their default ``positive_attributions=True`` (a naming difference);
    provided under the Score-CAM name, typically with ``boxes=`` (the paper scores bounding
    boxes). An all-zero (or all-negative) map is NaN with a reason.

    Reference: H. Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional
    Neural Networks", CVPR Workshops 2020.
    """

    paper = ("Wang et al., Score-CAM: Score-Weighted Visual Explanations for Convolutional "
             "Neural Networks, CVPRW 2020")

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        a, s, _ = _scored_pair(batch)
        return _positive_mass_ratio(batch, a, s)


class RelevanceMassAccuracy(_LocalisationMetric):
    """Relevance mass accuracy (Arras et al. 2022): R_within / R_total, the share of the
    *positive* relevance that lies inside the mask. **Higher is better**; in [0, 1], 1 when all
    positive relevance is in the mask.

    Arras et al. define both sums over positive relevance only, R_within = sum of R_p over mask
    pixels p with R_p > 0 and R_total = sum of R_p over all pixels with R_p > 0, so the score
    is a share and never leaves [0, 1]. The sign is read per pixel, after the channel sum
    (module docstring): pass ``abs=True`` (or a 1-channel pooling of your choice) to score the
    magnitude instead, one of the channel poolings the CLEVR-XAI paper compares.

    Parameters
    ----------
    positive_attributions:
        ``True`` (default): the paper's positive-relevance sums. ``False``: the raw ratio
        sum_in a / sum a of the signed map; samples where it is not a share (a total <= 0, or a
        ratio outside [0, 1], possible only with signed maps) are NaN with a reason.

    Deviation from Quantus (``quantus.RelevanceMassAccuracy`` 0.6, ``abs=False``): Quantus
    divides the signed sums (its docstring speaks of positive attributions, its code does not
    clip), so a signed map such as InputXGradient summed over channels can score above 1 (more
    relevance inside the mask than in the whole map) or below 0, and a zero total gives NaN
    from 0/0 without a reason. The two agree on non-negative maps (Saliency, ``abs=True``, CAMs
    after their ReLU). A map without positive relevance is NaN with a reason here.

    Reference: L. Arras, A. Osman, W. Samek, "CLEVR-XAI: A benchmark dataset for the ground
    truth evaluation of neural network explanations", Information Fusion 81, 2022.
    """

    paper = _ARRAS

    def __init__(self, positive_attributions: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.positive_attributions = check_bool("positive_attributions", positive_attributions)

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        a, s, _ = _scored_pair(batch)
        if self.positive_attributions:
            return _positive_mass_ratio(batch, a, s)
        return _signed_mass_ratio(batch, a, s)


# --------------------------------------------------------------------------- rank-based
class RelevanceRankAccuracy(RanksFeatures, _LocalisationMetric):
    """Relevance rank accuracy (Arras et al. 2022): with K = |mask|, the share of the K
    highest-relevance pixels that lie in the mask. **Higher is better**.

    Ties at the K-th value count fractionally: the score is the expected share under a
    uniformly random order of the tied pixels (Quantus uses ``np.argsort``'s arbitrary order).
    A mask covering the whole input scores 1; an empty mask is NaN.

    Reference: L. Arras, A. Osman, W. Samek, Information Fusion 81, 2022.
    """

    paper = _ARRAS

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        a, s, _ = _scored_pair(batch)
        k = s.sum(1)
        return _safe_div(_expected_top_hits(a, s, k), k.to(torch.float64))


class TopKIntersection(RanksFeatures, _LocalisationMetric):
    """Top-k intersection (Theiner et al. 2021): the share of the ``k`` highest-relevance
    pixels that lie in the mask. **Higher is better**.

    Parameters
    ----------
    k:
        Number of pixels (int, default 1000 as in Quantus), or a fraction of the input's pixels
        (float in (0, 1], rounded half up, at least 1). An int larger than the number of pixels
        is an error.
    concept_influence:
        Divide by the mask's share of the input, |mask| / |input| (Theiner et al.'s concept
        influence: 1 is chance level).

    Ties at the k-th value count fractionally (the expected score under a uniformly random order
    of tied pixels; Quantus uses ``np.argsort``'s arbitrary order: 0.38 instead of 0.40 on its own
    ``none_in_gt_zeros`` fixture). Empty masks are NaN (with ``concept_influence`` Quantus
    divides by zero before masking).

    Validity (``docs/validity.md``, report card): on an XOR of two regions (the mask: both) it
    ranks a map of one region above a map of both, since the top k fit inside one region.

    Reference: J. Theiner, E. Müller-Budack, R. Ewerth, "Interpretable Semantic Photo
    Geolocation", WACV 2022 (arXiv:2104.14995).
    """

    paper = ("Theiner, Müller-Budack & Ewerth, Interpretable Semantic Photo Geolocation, "
             "WACV 2022")

    def __init__(self, k: int | float = 1000, concept_influence: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = check_top_k(k)
        self.concept_influence = check_bool("concept_influence", concept_influence)

    def _resolve_k(self, p: int) -> int:
        if isinstance(self.k, float):
            return max(1, math.floor(self.k * p + 0.5))
        if self.k > p:
            raise ValueError(f"TopKIntersection: k={self.k} exceeds the {p} pixels per sample; "
                             "use a smaller k or a fraction such as k=0.1.")
        return self.k

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        a, s, _ = _scored_pair(batch)
        k = self._resolve_k(a.shape[1])
        kt = torch.full((a.shape[0],), k, dtype=torch.int64, device=a.device)
        score = _expected_top_hits(a, s, kt) / k
        if self.concept_influence:
            score = _safe_div(score * s.shape[1], s.sum(1).to(torch.float64))
        return score


class AUC(RanksFeatures, _LocalisationMetric):
    """Area under the ROC curve of the attributions as a classifier of mask pixels (Fawcett
    2006). **Higher is better**: 1 when every mask pixel outranks every other pixel, 0.5 at
    chance.

    Computed for the whole batch at once with the Mann-Whitney rank formula
    AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg), R_pos the sum of the (average, so
    ties count half) ranks of the mask pixels; identical to ``sklearn.metrics.roc_auc_score``
    (which Quantus calls in a per-sample loop). Undefined (NaN) for an empty mask or a mask
    covering the whole input (no negatives).

    Reference: T. Fawcett, "An introduction to ROC analysis", Pattern Recognition Letters 27,
    2006.
    """

    paper = "Fawcett, An introduction to ROC analysis, Pattern Recognition Letters 2006"

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        a, s, _ = _scored_pair(batch, full_undefined=True)
        v, order = sort_rows(a, indices=True)
        ranks = _average_ranks_sorted(v)
        pos_sorted = s.gather(1, order)
        r_pos = (ranks * pos_sorted).sum(1)
        n_pos = s.sum(1).to(torch.float64)
        n_neg = s.shape[1] - n_pos
        return _safe_div(r_pos - n_pos * (n_pos + 1) / 2, n_pos * n_neg)


# --------------------------------------------------------------------------- Focus
class Focus(_LocalisationMetric):
    """Focus (Arias-Duart et al. 2022): on 2x2 mosaics whose quadrants hold images of the target
    class or of other classes, the share of the positive relevance that falls in the target
    quadrants. **Higher is better**; a class-insensitive map scores about 0.5.

    Build the mosaics with :func:`evalkit.masks.make_mosaics`, explain them for
    ``mosaics.y``, and call ``Focus()(model, mosaics.x, mosaics.y, a,
    quadrants=mosaics.quadrants)``. ``quadrants`` is (M, 4) 0/1 flags in the order top-left,
    top-right, bottom-left, bottom-right (Quantus' ``custom_batch`` tuples are accepted too);
    alternatively pass target-region masks as ``s``. Quadrants split the map at H // 2, W // 2.

    Deviation from Quantus: a map without positive relevance is NaN with a reason (Quantus: 0
    through its +1e-9).

    Reference: A. Arias-Duart et al., "Focus! Rating XAI Methods and Finding Biases", FUZZ-IEEE
    2022.
    """

    needs_masks = False
    modalities = ("image",)  # quadrants of a mosaic
    call_options = ("quadrants", "custom_batch")
    paper = "Arias-Duart et al., Focus! Rating XAI Methods and Finding Biases, FUZZ-IEEE 2022"

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        quadrants = batch.extra.get("quadrants")
        custom = batch.extra.get("custom_batch")
        if quadrants is not None and custom is not None:
            raise TypeError("Give `quadrants` or Quantus' `custom_batch`, not both.")
        quadrants = quadrants if quadrants is not None else custom
        if quadrants is not None and batch.s is not None:
            raise TypeError("Give either `quadrants` or masks `s` to Focus, not both.")
        if quadrants is None and batch.s is None:
            raise ValueError("Focus needs the target quadrants of each mosaic: "
                             "quadrants=mosaics.quadrants (see evalkit.masks.make_mosaics), "
                             "or target masks `s`.")
        a, spatial = _pixel_maps(batch)
        if quadrants is not None:
            if len(spatial) != 2:
                raise ValueError("Focus needs image mosaics (N, C, H, W).")
            q = as_tensor(np.asarray(quadrants) if isinstance(quadrants, list | tuple)
                          else quadrants, "quadrants", device=batch.device)
            if q.shape[:1] != (batch.n,):
                raise ValueError(f"`quadrants` has {q.shape[0] if q.ndim else 0} rows but there "
                                 f"are {batch.n} mosaics.")
            s = quadrant_masks(q, spatial).reshape(batch.n, -1)
        else:
            s = _pixel_masks(batch)
        _flag_mask_sizes(batch, s)
        return _positive_mass_ratio(batch, a, s)


# --------------------------------------------------------------------------- CAM boxes
class BoxLocalisation(_LocalisationMetric):
    """Box localisation, the weakly supervised localisation protocol of the CAM paper (Zhou et
    al. 2016): threshold the map (default: keep pixels >= 20 % of its maximum), take the largest
    connected component, and compare its bounding box with the ground-truth box. The score is
    1.0 when IoU >= ``iou_threshold`` (0.5), else 0.0, or the IoU itself with
    ``return_iou=True``. **Higher is better**.

    Ground truth: ``boxes=`` (N, 4) (or several per sample: the best match counts), or masks
    ``s`` (each mask's tight bounding box). See :func:`evalkit.masks.cam_localisation` for
    ``threshold``, ``mode`` and ``connectivity`` (the functional form, which also returns the
    predicted boxes). A map that keeps no pixel is a failed localisation (IoU 0); NaN maps and
    empty ground truth are NaN. Components are labelled with ``scipy.ndimage.label`` on the CPU
    (one call for the whole batch).

    Series (N, C, T): the same protocol in one dimension, with *intervals* for boxes: keep
    the time steps above the threshold, take the longest run of kept steps (the largest
    connected component), and compare that interval with the ground-truth interval (the tight
    interval of each mask's steps, or ``boxes=`` (N, 2) ``(t0, t1)`` end-exclusive, or (N, K, 2)
    for several): 1-D IoU = overlap / union of the two intervals. Masks are (N, T), (N, 1, T)
    or (N, C, T) with identical channels.

    Reference: B. Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR
    2016.
    """

    call_options = ("boxes",)
    modalities = ("image", "series")  # boxes (intervals) around the map's components
    paper = "Zhou et al., Learning Deep Features for Discriminative Localization, CVPR 2016"
    aliases = ("CAMLocalisation",)

    def __init__(self, threshold: float = 0.2, mode: str = "max", iou_threshold: float = 0.5,
                 connectivity: int = 2, return_iou: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = check_scalar("threshold", threshold, (int, float), min_val=0, max_val=1)
        self.mode = check_option("mode", mode, ("max", "minmax", "top"))
        self.iou_threshold = check_scalar("iou_threshold", iou_threshold, (int, float),
                                          min_val=0, max_val=1)
        self.connectivity = check_option("connectivity", connectivity, (1, 2))
        self.return_iou = check_bool("return_iou", return_iou)

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        a, spatial = _pixel_maps(batch)
        if len(spatial) not in (1, 2):
            raise ValueError("BoxLocalisation needs images (N, C, H, W) or series (N, C, T).")
        boxes = batch.extra.get("boxes")
        if len(spatial) == 1:
            # a series is an image one pixel high: intervals are boxes (t0, 0, t1, 1)
            spatial = (1, spatial[0])
            if boxes is not None:
                boxes = interval_boxes(boxes)
        if boxes is None:
            s = _pixel_masks(batch)
            _flag_mask_sizes(batch, s)
            boxes = boxes_from_masks(s.reshape(-1, *spatial))
        result = cam_localisation(a.reshape(-1, *spatial), boxes, threshold=self.threshold,
                                  mode=self.mode, iou_threshold=self.iou_threshold,
                                  connectivity=self.connectivity)
        for reason in set(result.nan_reasons.values()):
            rows = [i for i, r in result.nan_reasons.items() if r == reason]
            batch.set_nan(np.isin(np.arange(batch.n), rows), reason)
        out = result.iou if self.return_iou else result.correct
        return torch.as_tensor(out, dtype=torch.float64, device=batch.device)



# --------------------------------------------------------------------------- plausibility
# Token-level plausibility against human rationales (DeYoung et al. 2020, ERASER): the masks
# ``s`` are the rationales, (N, L) booleans for token ids; the metrics work on the features of
# any modality (pixels, time steps, columns), IOUF1's spans on 1-D sequences only.
_ERASER = ("DeYoung et al., ERASER: A Benchmark to Evaluate Rationalized NLP Models, "
           "ACL 2020")


def _f1(hits: torch.Tensor, n_pred: torch.Tensor, n_true: torch.Tensor) -> torch.Tensor:
    """2 P R / (P + R) = 2 hits / (|pred| + |true|) (0 without hits, as ERASER's _f1)."""
    return _safe_div(2 * hits, (n_pred + n_true).to(torch.float64))


def _rationale_size(k: int | float | None, threshold: float | None
                    ) -> tuple[int | float | None, float | None]:
    """``(k, threshold)`` checked: at most one of them; ``k`` a count (int >= 1) or a share
    (float in (0, 1])."""
    if k is not None and threshold is not None:
        raise ValueError("Give `k` or `threshold`, not both.")
    if k is not None:
        check_top_k(k)
    return k, check_scalar("threshold", threshold, (int, float), allow_none=True)


class TokenF1(RanksFeatures, _LocalisationMetric):
    """Token F1 (DeYoung et al. 2020, ERASER's "Token F1"): the F1 score of the predicted
    rationale (the top-k features by attribution) against the human rationale ``s``.
    **Higher is better**; in [0, 1].

    ``s`` are boolean rationale masks ((N, L) for token ids; masks of pixels, time steps or
    columns on other data: the metric scores features, so it applies to every modality).
    The predicted rationale is the ``k`` features with the largest attributions (after the
    shared ``normalise``/``abs``): by default k = the true rationale's length (then precision,
    recall and F1 coincide, as in RelevanceRankAccuracy), an int for a fixed k, a float in
    (0, 1] for a share of the features (rounded half up, at least 1); or, with ``threshold``,
    every feature whose attribution is at least ``threshold``. Precision and recall per
    sample are recorded as ``precision_`` and ``recall_`` (ERASER reports the macro F1 of the
    averaged precision and recall, which the recorded values give).

    Ties at the k-th value count fractionally: the score is the expected F1 under a uniformly
    random order of the tied features (exact; a constant map scores at chance level). An
    empty rationale is NaN with a reason; an empty prediction (``threshold`` above every
    value) scores 0, as ERASER's F1 with precision 0.

    Reference: J. DeYoung et al., "ERASER: A Benchmark to Evaluate Rationalized NLP Models",
    ACL 2020.
    """

    paper = _ERASER

    def __init__(self, k: int | float | None = None, threshold: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k, self.threshold = _rationale_size(k, threshold)

    def _ranks_attributions(self) -> bool:
        return self.threshold is None  # a threshold does not rank

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        a, s, _ = _scored_pair(batch)
        n_true = s.sum(1)
        p = a.shape[1]
        if self.threshold is not None:
            pred = a >= self.threshold
            hits = (pred & s).sum(1).to(torch.float64)
            n_pred = pred.sum(1)
        else:
            if self.k is None:
                n_pred = n_true.clamp(min=1)
            elif isinstance(self.k, float):
                n_pred = torch.full_like(n_true, max(1, math.floor(self.k * p + 0.5)))
            else:
                if self.k > p:
                    raise ValueError(f"TokenF1: k={self.k} exceeds the {p} features per "
                                     "sample; use a smaller k or a share such as k=0.1.")
                n_pred = torch.full_like(n_true, self.k)
            hits = _expected_top_hits(a, s, n_pred)
        batch.record("precision", _safe_div(hits, n_pred.to(torch.float64)), per_sample=True)
        batch.record("recall", _safe_div(hits, n_true.to(torch.float64)), per_sample=True)
        return _f1(hits, n_pred, n_true)


def _spans(mask: torch.Tensor) -> list[list[tuple[int, int]]]:
    """The contiguous runs of True of each row of (N, L) bool, as [start, end) pairs."""
    m = mask.to(torch.int8)
    pad = torch.nn.functional.pad(m, (1, 1))
    diff = pad[:, 1:] - pad[:, :-1]
    starts = [row.nonzero().flatten().tolist() for row in diff == 1]
    ends = [row.nonzero().flatten().tolist() for row in diff == -1]
    return [list(zip(s_, e_, strict=True)) for s_, e_ in zip(starts, ends, strict=True)]


def _iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union else 0.0


class IOUF1(_LocalisationMetric):
    """IOU F1 (DeYoung et al. 2020, ERASER's "IOU F1"): span-level F1 of the predicted
    rationale against the human rationale, a predicted span matching a true span when their
    intersection over union is at least ``iou_threshold`` (0.5). **Higher is better**; in
    [0, 1].

    Spans are the contiguous runs of the rationale masks along the sequence (token ids, or
    the time steps of a series). The predicted rationale is the top-k features by attribution
    (k = the true rationale's length by default, an int, or a share in (0, 1]), or with
    ``threshold`` every feature whose attribution is at least it; its runs are the predicted
    spans. Precision = matched predicted spans / predicted spans, recall = matched true spans
    / true spans (recorded as ``precision_``, ``recall_``), F1 their harmonic mean (0 when
    either is 0). With one true span and one predicted span the score is 1 when IOU >= 0.5,
    else 0.

    Ties at the k-th value are broken in feature order (the earlier position first), which is
    deterministic; a constant map ranks no feature above another and is NaN with a reason (as
    are empty rationales).

    Deliberate differences from the ERASER scorer: the match is IOU >= threshold as in its
    code (the paper says "more than"); recall counts true spans that some prediction matches
    (the scorer counts matching predicted spans, so two predictions matching one true span
    could give a recall above 1); the score is per sample (ERASER's macro F1 is the F1 of the
    averaged precision and recall: average ``precision_`` and ``recall_``).

    Reference: J. DeYoung et al., "ERASER: A Benchmark to Evaluate Rationalized NLP Models",
    ACL 2020.
    """

    paper = _ERASER
    modalities = ("series", "tokens")  # spans of a 1-D sequence

    def __init__(self, iou_threshold: float = 0.5, k: int | float | None = None,
                 threshold: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.iou_threshold = check_scalar("iou_threshold", iou_threshold, (int, float),
                                          min_val=0, max_val=1, include_min=False)
        self.k, self.threshold = _rationale_size(k, threshold)

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        a, s, spatial = _scored_pair(batch)
        if len(spatial) > 1:
            raise ValueError("IOUF1 needs 1-D sequences (token ids or a series).")
        n, p = a.shape
        n_true = s.sum(1)
        if self.threshold is not None:
            pred = a >= self.threshold
        else:
            batch.set_nan(a.amax(1) == a.amin(1), "the attribution is constant: no feature "
                                                  "ranks above another")
            if self.k is None:
                k = n_true.clamp(min=1)
            elif isinstance(self.k, float):
                k = torch.full_like(n_true, max(1, math.floor(self.k * p + 0.5)))
            else:
                if self.k > p:
                    raise ValueError(f"IOUF1: k={self.k} exceeds the {p} features per sample.")
                k = torch.full_like(n_true, self.k)
            # a stable descending sort: ties keep feature order (the earlier first)
            order = torch.sort(-a, dim=1, stable=True).indices
            rank = torch.empty_like(order).scatter_(
                1, order, torch.arange(p, device=a.device).expand(n, p).contiguous())
            pred = rank < k.unsqueeze(1)
        true_spans, pred_spans = _spans(s.cpu()), _spans(pred.cpu())
        precision = torch.zeros(n, dtype=torch.float64)
        recall = torch.zeros(n, dtype=torch.float64)
        t = self.iou_threshold
        for i in range(n):
            tr, pr = true_spans[i], pred_spans[i]
            if not tr or not pr:
                continue
            iou = [[_iou(u, v) for v in tr] for u in pr]
            precision[i] = sum(max(row) >= t for row in iou) / len(pr)
            recall[i] = sum(max(col) >= t for col in zip(*iou, strict=True)) / len(tr)
        precision, recall = precision.to(a.device), recall.to(a.device)
        batch.record("precision", precision, per_sample=True)
        batch.record("recall", recall, per_sample=True)
        return _safe_div(2 * precision * recall, precision + recall)


class AUPRC(RanksFeatures, _LocalisationMetric):
    """Area under the precision-recall curve of the attributions as a classifier of rationale
    features, as average precision (DeYoung et al. 2020, ERASER's "AUPRC" for soft token
    scores). **Higher is better**; in (0, 1], 1 when every rationale feature outranks every
    other.

    AP = sum_n (R_n - R_{n-1}) P_n over the distinct attribution values in decreasing order
    (``sklearn.metrics.average_precision_score``): tied features enter the prediction together,
    so ties have a fixed, documented effect and a constant map scores the rationale's share of
    the features (chance level). ``s`` are boolean rationale masks ((N, L) for token ids; any
    modality's feature masks work). An empty rationale, or one covering every feature (one
    class only: ERASER's scorer discards these), is NaN with a reason.

    Reference: J. DeYoung et al., "ERASER: A Benchmark to Evaluate Rationalized NLP Models",
    ACL 2020.
    """

    paper = _ERASER

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        a, s, _ = _scored_pair(batch, full_undefined=True)
        v, order = sort_rows(-a, indices=True)  # decreasing attribution
        pos = s.gather(1, order).to(torch.float64)
        n, p = a.shape
        # the last position of each run of tied values closes a threshold
        last = torch.ones_like(v, dtype=torch.bool)
        last[:, :-1] = v[:, 1:] != v[:, :-1]
        tp = pos.cumsum(1)
        seen = torch.arange(1, p + 1, device=a.device, dtype=torch.float64).expand(n, p)
        n_pos = s.sum(1).to(torch.float64)
        precision = tp / seen
        recall = _safe_div(tp, n_pos.unsqueeze(1))
        prev = torch.where(last, recall, torch.full_like(recall, math.nan))
        # recall at the previous threshold: the last closed recall before each position
        closed = torch.cat([torch.zeros(n, 1, dtype=torch.float64, device=a.device),
                            prev[:, :-1]], 1)
        idx = torch.arange(p, device=a.device).expand(n, p)
        src = torch.where(~torch.isnan(closed), idx, torch.zeros_like(idx)).cummax(1).values
        r_prev = closed.nan_to_num(0.0).gather(1, src)
        return torch.where(last, (recall - r_prev) * precision, torch.zeros_like(recall)).sum(1)
