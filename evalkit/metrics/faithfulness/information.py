"""Performance information curves, SIC and AIC (Kapishnikov et al. 2019, XRAI): the model's
score as the most important pixels are revealed on a blurred image, against the information
(compressed size) of the partially revealed image."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import torch

from ..._validation import check_bool, check_option, check_scalar
from ...perturb import make_grouping, make_imputer
from ...perturb.baselines import Baseline, Imputer, impute
from .._removal import RemovalPlan, order_groups, removal_curve, trapezoid_auc, window_scores
from .._ties import RanksFeatures
from ..base import MetricBatch
from ._views import prediction_view

#: the fractions of most important pixels revealed in the XRAI paper's reference code
PIC_THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75)
#: the lossless image formats whose compressed size estimates an image's information
COMPRESSIONS = ("webp", "png")

NO_INFORMATION_GAIN = ("the blurred image is not smaller than the image when compressed: there "
                       "is no information to reveal")
NO_SCORE_GAIN = ("the model scores the blurred image at least as high as the image: nothing to "
                 "recover (the reference code skips such images)")
LOW_SCORE = "the score of the unperturbed image is below `min_score`"


def to_uint8_planes(images: torch.Tensor, low: float, high: float) -> np.ndarray:
    """Images (T, C, *S) as 8-bit arrays for a codec: values mapped linearly from
    [``low``, ``high``] to [0, 255] and rounded (half to even); one channel gives (T, H, W),
    three give (T, H, W, 3) (RGB), any other number of channels (or a volume) is laid out as
    one grayscale image with the channel planes (and slices) stacked vertically,
    (T, C*D*H, W). Computed in NumPy, on the CPU the codec runs on."""
    low, high = float(low), float(high)
    span = high - low if high > low else 1.0
    arr = images.detach().cpu().numpy().astype(np.float64)
    planes = np.clip(np.rint((arr - low) / span * 255.0), 0, 255).astype(np.uint8)
    t, c = planes.shape[:2]
    if c == 3 and planes.ndim == 4:
        return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))
    return np.ascontiguousarray(planes.reshape(t, -1, planes.shape[-1]))


def compressed_size(image: np.ndarray, compression: str = "webp") -> int:
    """Bytes of an 8-bit image (H, W) or (H, W, 3) compressed losslessly with PIL: WebP
    (``lossless=True, quality=100``, as in the XRAI paper's code) or PNG (zlib level 6)."""
    # Pillow comes with matplotlib and scikit-image; imported here, on first use only
    from PIL import Image, features

    check_option("compression", compression, COMPRESSIONS)
    if compression == "webp" and not features.check("webp"):
        raise ValueError("This Pillow build has no WebP codec; pass compression='png'.")
    buffer = io.BytesIO()
    pil = Image.fromarray(image)
    if compression == "webp":
        pil.save(buffer, format="WEBP", lossless=True, quality=100)
    else:
        pil.save(buffer, format="PNG", compress_level=6)
    return buffer.tell()


def interpolate_on_grid(xs: torch.Tensor, ys: torch.Tensor, n_points: int) -> torch.Tensor:
    """Piecewise-linear curves through the points (``xs``, ``ys``) (N, P), read on the grid
    0, 1/n_points, ..., 1: the points are sorted by x (stably: at equal x the later point
    wins, so a plateau takes its last value), x = 1 reads 1.0 (the reference code's closing
    point). The first point must be at x = 0 and the last at x = 1."""
    order = torch.sort(xs, dim=1, stable=True).indices
    x_s = xs.gather(1, order)
    y_s = ys.gather(1, order)
    grid = torch.arange(n_points, dtype=torch.float64, device=xs.device) / n_points
    g = grid.expand(xs.shape[0], -1).contiguous()
    j = torch.searchsorted(x_s.contiguous(), g, right=True) - 1
    j = j.clamp(0, xs.shape[1] - 2)
    x0, x1 = x_s.gather(1, j), x_s.gather(1, j + 1)
    y0, y1 = y_s.gather(1, j), y_s.gather(1, j + 1)
    width = torch.where(x1 > x0, x1 - x0, torch.ones_like(x1))
    values = y0 + (g - x0).clamp(min=0) / width * (y1 - y0)
    ones = torch.ones((xs.shape[0], 1), dtype=torch.float64, device=xs.device)
    return torch.cat([values, ones], 1)


def aggregate_curves(curves: np.ndarray, curve_x: np.ndarray, method: str = "median"
                     ) -> tuple[np.ndarray, float]:
    """The paper's dataset result from per-image curves (``metric.curves_``, (N, P) on the
    grid ``metric.curve_x_``): the pointwise median (or ``method="mean"``) over the images
    whose curve is defined (rows with NaN, the undefined images, are left out as the reference
    code skips them) and the trapezoid area under that curve. NaN when no image is defined."""
    check_option("method", method, ("median", "mean"))
    curves = np.asarray(curves, dtype=np.float64)
    curve_x = np.asarray(curve_x, dtype=np.float64)
    ok = np.isfinite(curves).all(1)
    if not ok.any():
        return np.full(curve_x.shape, np.nan), float("nan")
    reduce = np.median if method == "median" else np.mean
    curve = reduce(curves[ok], axis=0)
    return curve, float(np.trapezoid(curve, curve_x))


class _InformationCurve(RanksFeatures):
    """The shared computation of SIC and AIC (see :class:`SIC`)."""

    family = "faithfulness"
    higher_is_better = True
    default_softmax = True
    modalities = ("image",)  # the information axis is an image codec's compressed size
    paper = ("Kapishnikov, Bolukbasi, Viégas & Terry, XRAI: Better Attributions Through "
             "Regions, ICCV 2019")
    _quantity = "score"

    def __init__(self, thresholds: Sequence[float] = PIC_THRESHOLDS,
                 perturb_baseline: Any = "blur", *, compression: str = "webp",
                 blur_sigma: float = 5.0, blur_kernel_size: int | None = 11,
                 keep_monotonous: bool = True, min_score: float = 0.0, n_points: int = 1000,
                 grouping: Any = "pixels", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        values = [check_scalar("thresholds", float(v) if isinstance(v, int) else v, float,
                               min_val=0, max_val=1, include_min=False, include_max=False)
                  for v in thresholds]
        if not values or any(b <= a for a, b in pairwise(values)):
            raise ValueError(f"`thresholds` must be increasing fractions in (0, 1); got "
                             f"{list(thresholds)}.")
        self.thresholds = tuple(thresholds)
        self.perturb_baseline = perturb_baseline
        self.compression = check_option("compression", compression, COMPRESSIONS)
        self.blur_sigma = blur_sigma
        self.blur_kernel_size = blur_kernel_size
        self.keep_monotonous = check_bool("keep_monotonous", keep_monotonous)
        self.min_score = check_scalar("min_score", min_score, (int, float))
        self.n_points = check_scalar("n_points", n_points, int, min_val=1)
        self.grouping = grouping
        self._grouping = make_grouping(grouping)
        self._imputer = self._make_imputer()

    @classmethod
    def conformance_params(cls) -> dict[str, Any]:
        """Cheap settings for :func:`evalkit.testing.check_metric` (8x8 images)."""
        return {"thresholds": (0.1, 0.25, 0.5), "blur_kernel_size": 3, "blur_sigma": 1.0,
                "compression": "png", "n_points": 100}

    def _make_imputer(self) -> Imputer:
        if isinstance(self.perturb_baseline, str) and self.perturb_baseline == "blur":
            return Baseline("blur", blur_sigma=self.blur_sigma,
                            blur_kernel_size=self.blur_kernel_size)
        return make_imputer(self.perturb_baseline)

    def _random_sources(self) -> dict[str, Any]:
        return {"baseline": self._imputer}

    def _y_values(self, batch: MetricBatch, ordering: Any, steps: torch.Tensor) -> torch.Tensor:
        """The model's value on every revealed image (N, T): the target score (SIC) or 1.0
        where the prediction is the unperturbed image's (AIC)."""
        if self._quantity == "score":
            plan = RemovalPlan(self._grouping, self._imputer, mode="insertion")
            scores, _, _ = removal_curve(batch, plan, steps, ordering=ordering,
                                         desc=type(self).__name__)
            return scores
        view, _ = prediction_view(batch)
        full = ordering.n_groups.to(batch.device).unsqueeze(1).expand_as(steps)
        return window_scores(view, ordering, self._imputer, steps, full, quantity="correct",
                             desc=type(self).__name__)

    def _sizes(self, batch: MetricBatch, ordering: Any, steps: torch.Tensor) -> torch.Tensor:
        """Compressed sizes (N, T) of the revealed images, rebuilt as the kernel builds them
        (the first ``steps[i, t]`` groups of x on the canvas), each mapped to 8 bits with the
        range of its sample's unperturbed image."""
        x = batch.x
        modality = batch.modality
        stochastic = self._imputer.stochastic
        base = None
        if isinstance(self._imputer, Baseline):
            base = modality.baseline_values(self._imputer, x, batch.keys if stochastic else None)
            base = base.expand_as(x) if base.shape[0] == 1 else base
        sizes = np.empty(tuple(steps.shape), dtype=np.float64)
        t_count = steps.shape[1]
        # identical 8-bit images (thresholds that reveal the same number of groups, as on small
        # images or coarse groupings; repeated samples) are encoded once per call
        known: dict[bytes, int] = {}
        for i in range(batch.n):
            rank = ordering.rank_map[i].unsqueeze(0)
            k = steps[i].reshape(-1, *([1] * (rank.ndim - 1)))
            hidden = rank >= k  # (T, Cg, *S): the groups not revealed yet
            xi = x[i].unsqueeze(0).expand(t_count, *x.shape[1:])
            if base is not None:
                images = modality.replace(xi, hidden, base[i])
            else:
                keys = batch.keys[i].expand(t_count) if stochastic else None
                images = impute(self._imputer, xi, hidden, keys=keys, modality=modality)
            planes = to_uint8_planes(images, float(x[i].min()), float(x[i].max()))
            for t in range(t_count):
                digest = hashlib.blake2b(repr(planes[t].shape).encode(), digest_size=16)
                digest.update(planes[t])
                key = digest.digest()
                if key not in known:
                    known[key] = self._encode(planes[t])
                sizes[i, t] = known[key]
        return torch.from_numpy(sizes).to(batch.device)

    def _encode(self, image: np.ndarray) -> int:
        """The compressed size of one 8-bit image with the metric's codec (the information
        axis' cost: :func:`compressed_size`)."""
        return compressed_size(image, self.compression)

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        ordering = order_groups(batch, self._grouping, "morf")
        g = ordering.n_groups.to(batch.device)
        frac = torch.tensor(self.thresholds, dtype=torch.float64, device=batch.device)
        revealed = torch.floor(frac.unsqueeze(0) * g.to(torch.float64).unsqueeze(1) + 0.5)
        revealed = torch.minimum(revealed.to(torch.int64), g.unsqueeze(1))
        # step 0: the blurred image; then the thresholds; last: the image itself
        steps = torch.cat([torch.zeros_like(g).unsqueeze(1), revealed, g.unsqueeze(1)], 1)
        values = self._y_values(batch, ordering, steps)
        sizes = self._sizes(batch, ordering, steps)

        blurred_info, full_info = sizes[:, :1], sizes[:, -1:]
        blurred_y, full_y = values[:, :1], values[:, -1:]
        batch.set_nan(full_y.squeeze(1) < self.min_score, LOW_SCORE)
        batch.set_nan((blurred_info >= full_info).squeeze(1), NO_INFORMATION_GAIN)
        batch.set_nan((blurred_y >= full_y).squeeze(1), NO_SCORE_GAIN)
        info_span = torch.where(full_info > blurred_info, full_info - blurred_info,
                                torch.ones_like(full_info))
        y_span = torch.where(full_y > blurred_y, full_y - blurred_y, torch.ones_like(full_y))
        info = ((sizes[:, 1:-1] - blurred_info) / info_span).clamp(0, 1)
        score = ((values[:, 1:-1] - blurred_y) / y_span).clamp(0, 1)
        if self.keep_monotonous:  # the running maximum over the thresholds, as in the paper
            score = score.cummax(1).values
        info = torch.nan_to_num(info, nan=0.0)
        score = torch.nan_to_num(score, nan=0.0)
        zeros = torch.zeros_like(blurred_info)
        xs = torch.cat([zeros, info, zeros + 1], 1)
        ys = torch.cat([zeros, score, zeros + 1], 1)
        curve = interpolate_on_grid(xs, ys, self.n_points)
        grid = torch.arange(self.n_points + 1, dtype=torch.float64,
                            device=batch.device) / self.n_points
        batch.set_curves(curve, grid)
        batch.record("information", info)
        batch.record("compressed_sizes", sizes)
        batch.record("normalised_scores", score)
        return trapezoid_auc(curve, grid)


class SIC(_InformationCurve):
    """Softmax information curve, SIC (Kapishnikov et al. 2019, XRAI): the area under the
    model's normalised softmax score against the normalised information of images on which the
    most important pixels are revealed. **Higher is better**.

    Protocol, per image (the paper's Sec. 4.2 and its reference code):

    * the canvas is a blurred copy of the image (``perturb_baseline="blur"``: Gaussian blur with
      ``blur_sigma``, ``blur_kernel_size``; the reference code fills from 1% random pixels by
      linear interpolation instead, a random canvas evalkit leaves out so the score is
      deterministic); the pixels (groups of ``grouping``) are ranked by attribution and, for
      each fraction f of ``thresholds`` (default the reference code's 0.5% ... 75%), the top
      round(f * G) are put back onto the canvas;
    * the information of each image is its lossless compressed size (``compression="webp"``,
      as in the paper, or ``"png"``; PIL through ``io.BytesIO``, the image mapped to 8 bits
      with its own range), normalised to [0, 1] between the blurred image's and the image's
      sizes, (size - size_blurred) / (size_image - size_blurred), clipped;
    * the y axis is the target score (the class-y probability with the default softmax),
      normalised the same way between the blurred image's and the image's scores and clipped;
      with ``keep_monotonous=True`` (the paper's setting) it is the running maximum over the
      thresholds;
    * the points, with (0, 0) and (1, 1), define a piecewise-linear curve of the information,
      read on a fixed grid of ``n_points`` + 1 points in [0, 1] (1000 + 1 in the paper); the
      score is the trapezoid area under it, in [0, 1]. ``curves_`` holds the curve over the
      grid (``curve_x_``), ``information_`` and ``normalised_scores_`` the points.

    An image is NaN with a reason where the curve is undefined, as the reference code skips
    it: the blurred image is not smaller than the image, or the model scores the blurred image
    at least as high as the image, or (``min_score``, default 0: no filter; the reference code
    uses 0.8) the image's score is below ``min_score``.

    Aggregation: the paper reports the area under the *median* curve over images; here each
    image gets its own area (a per-sample metric; the mean of the scores is the area under the
    mean curve). The paper's number is
    ``evalkit.metrics.faithfulness.information.aggregate_curves(m.curves_, m.curve_x_)``
    after a call (the median curve over the defined images and its area).

    Images only (``modalities``): the information axis is an image codec's compressed size.

    Reference: A. Kapishnikov, T. Bolukbasi, F. Viégas, M. Terry, "XRAI: Better Attributions
    Through Regions", ICCV 2019.
    """

    _quantity = "score"


class AIC(_InformationCurve):
    """Accuracy information curve, AIC (Kapishnikov et al. 2019, XRAI): as :class:`SIC`, with
    the y axis 1.0 where the model's prediction on the revealed image equals its prediction on
    the unperturbed image, else 0.0. **Higher is better**.

    The normalisation between the blurred image and the image leaves these values as they are
    when the blurred image loses the prediction; an image whose blurred copy keeps it has
    nothing to recover and is NaN with a reason (as the reference code skips it). The rest of
    the protocol (canvas, thresholds, compressed-size information, running maximum, grid,
    per-sample area and the paper's median aggregation) is :class:`SIC`'s. The softmax does not
    change predictions. Images only.

    Reference: A. Kapishnikov, T. Bolukbasi, F. Viégas, M. Terry, "XRAI: Better Attributions
    Through Regions", ICCV 2019.
    """

    _quantity = "correct"
    default_softmax = False

    @classmethod
    def conformance_params(cls) -> dict[str, Any]:
        """Cheap settings; a white canvas, on which the conformance fixture's small CNN loses
        its predictions (on the blurred one it keeps them all: every sample would be NaN)."""
        return {**super().conformance_params(), "perturb_baseline": "white"}
