"""Confidence change under the explanation's mask: Average Drop, Increase and Gain."""

from __future__ import annotations

from typing import Any

import torch

from ..._validation import check_bool, check_scalar
from ...cache import active_cache, row_hashes
from ...modality import Modality
from ...perturb import make_imputer
from .._removal import (
    RowWriter,
    baseline_values,
    cached_rows,
    clean_scores,
    row_range,
    sample_fingerprints,
)
from ..base import Metric, MetricBatch
from ._common import (
    row_percentile,
)
from .rationales import removal_modalities

#: inputs up to this size are perturbed whole before the forward chunks (larger ones chunk by
#: chunk, so that memory stays bounded)
_WHOLE_BYTES = 8 << 20


class _ConfidenceChange(Metric):
    """Shared machinery of the Grad-CAM++ confidence metrics: score the input multiplied by
    the explanation map.

    The map e is the attribution min-max normalised to [0, 1] per sample (as CAMs are); with
    ``threshold_percentile=p`` it becomes the binary mask of the elements at or above the
    sample's p-th percentile (the top (100 - p) % kept); ``invert=True`` uses 1 - e (removes the
    explanation instead of keeping it, as the CAM tutorial's "inverse CAM" and thresholded
    examples do). The perturbed input is ``b + e * (x - b)`` with b = ``perturb_baseline``
    (default 0: x * e on the input tensor as given; pass the tensor value of black to multiply
    the image before its normalisation, as the Grad-CAM++ figures do). A constant attribution
    cannot be normalised: NaN with a reason. Each metric returns the per-sample quantity whose
    mean over samples is the published number.

    On token ids only the binary map of ``threshold_percentile`` is defined: it keeps the
    tokens at or above the percentile and *removes* the others, replaced through the modality
    (the mask token for a named baseline, or an explicit id, e.g. the default 0); a continuous
    map would mix ids, so without ``threshold_percentile`` the metrics refuse token ids.
    """

    family = "faithfulness"
    default_softmax = True
    default_normalise = False
    default_abs = False

    def __init__(self, threshold_percentile: float | None = None, invert: bool = False,
                 perturb_baseline: Any = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold_percentile = check_scalar("threshold_percentile", threshold_percentile,
                                                 (int, float), min_val=0, max_val=100,
                                                 allow_none=True)
        self.invert = check_bool("invert", invert)
        self.perturb_baseline = perturb_baseline
        self._imputer = make_imputer(perturb_baseline)

    def _derived_metadata(self) -> dict[str, Any]:
        # removing the explanation instead of keeping it flips the direction
        derived: dict[str, Any] = {"higher_is_better": type(self).higher_is_better != self.invert}
        if self.threshold_percentile is not None:
            # a binary map keeps or removes features: a removal, defined where its replacement is
            derived["modalities"] = removal_modalities(self._imputer)
        return derived

    def _check_modality(self, modality: Modality) -> None:
        if modality.integer_inputs and self.threshold_percentile is None:
            raise ValueError(
                f"{type(self).__name__} multiplies the input by the explanation map, which "
                f"mixes token ids; on {modality.name} inputs pass `threshold_percentile=` (a "
                "binary map that keeps the top tokens and replaces the others by the mask "
                "token)."
            )

    def _random_sources(self) -> dict[str, Any]:
        return {"baseline": self._imputer}

    def _maps(self, batch: MetricBatch) -> torch.Tensor:
        a = batch.a
        assert a is not None
        flat = a.reshape(batch.n, -1)
        lo = flat.amin(1)
        hi = flat.amax(1)
        const = hi <= lo
        batch.set_nan(const, "the explanation is constant and cannot be normalised to [0, 1]")
        per_sample = batch.modality.per_sample
        span = torch.where(const, torch.ones_like(hi), hi - lo)
        e = (a - per_sample(lo, a)).div_(per_sample(span, a))
        if self.threshold_percentile is not None:
            t = row_percentile(e.reshape(batch.n, -1), self.threshold_percentile)
            e = (e >= per_sample(t, e)).to(e.dtype)
        if self.invert:
            e = 1 - e
        return e

    def _scores(self, batch: MetricBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(x), f(x * e)) per sample, float64."""
        x = batch.x
        modality = batch.modality
        e = self._maps(batch)
        base = baseline_values(self._imputer, x, batch.keys if self.stochastic else None,
                               modality)
        if base is None:
            raise ValueError("The confidence metrics need a mask-independent perturb_baseline.")
        n = batch.n
        idx = torch.arange(n, device=x.device)
        if modality.integer_inputs:
            # token ids: the binary map (threshold_percentile) keeps a token or replaces it
            removed = e < 0.5

            def build(m: torch.Tensor) -> torch.Tensor:
                return modality.replace(x[m], removed[m], base[m])

            tag = b"cam-keep"
        else:
            e = e.to(x.dtype)
            if x.numel() * x.element_size() <= _WHOLE_BYTES:
                # small inputs (a table, a few series): every perturbed input at once, the same
                # values as chunk by chunk (b + e * (x - b), written into one new tensor); the
                # runner forwards views of it (no copy; a chunk that also holds clean rows
                # copies its part)
                build = (x - base).mul_(e).add_(base)
            elif base.dtype == x.dtype:
                def write(m: torch.Tensor, out: torch.Tensor) -> None:
                    # b + e * (x - b) of the rows, written into the runner's chunk (chunks are
                    # consecutive rows: slices, no gathers); elementwise, so the same values
                    # as all rows at once
                    span = row_range(m)
                    if span is None:
                        b = base.index_select(0, m)
                        rows, scale = x.index_select(0, m), e.index_select(0, m)
                    else:
                        b = base[span[0]:span[1]]
                        rows, scale = x[span[0]:span[1]], e[span[0]:span[1]]
                    torch.sub(rows, b, out=out).mul_(scale).add_(b)

                build = RowWriter(write, tuple(x.shape[1:]), x.dtype, x.device)
            else:
                def build(m: torch.Tensor) -> torch.Tensor:
                    # index_select: several times faster than advanced indexing on the CPU,
                    # which matters where the model is small (a table's MLP)
                    b = base.index_select(0, m)
                    return b + e.index_select(0, m) * (x.index_select(0, m) - b)

            tag = b"cam-mult"
        # hash the maps only for an active forward cache: per-row hashing costs more than the
        # forward pass of a small model (the W4 benchmark's MLP)
        fps = (sample_fingerprints(batch, row_hashes(e, n), row_hashes(base, n), tag)
               if active_cache() is not None else None)
        # the unperturbed rows run in the same pass (or come from the forward cache)
        y1 = cached_rows(batch, idx, [()] * n, fps, build, desc=type(self).__name__,
                         with_clean=True)
        return clean_scores(batch), y1


class AverageDrop(_ConfidenceChange):
    """Average Drop (Chattopadhay et al. 2018, Grad-CAM++): the relative drop of the target
    confidence when the input is multiplied by the explanation map,
    ``max(0, Y - O) / Y`` per sample (Y: confidence on x, O: on x * e). **Lower is better**.
    The mean over samples, times 100, is the paper's "Average Drop %".

    ``relative=False`` gives the absolute drop ``max(0, Y - O)`` (pytorch-grad-cam's
    ``DropInConfidence``). See :class:`_ConfidenceChange` for the map, ``threshold_percentile``,
    ``invert`` (then a large drop is good: ``higher_is_better`` True) and ``perturb_baseline``.
    A non-positive Y gives NaN in relative mode.

    Reference: A. Chattopadhay et al., "Grad-CAM++: Generalized Gradient-based Visual
    Explanations for Deep Convolutional Networks", WACV 2018.
    """

    higher_is_better = False
    paper = ("Chattopadhay et al., Grad-CAM++: Generalized Gradient-based Visual Explanations "
             "for Deep Convolutional Networks, WACV 2018")

    def __init__(self, threshold_percentile: float | None = None, invert: bool = False,
                 perturb_baseline: Any = 0.0, *, relative: bool = True, **kwargs: Any) -> None:
        super().__init__(threshold_percentile, invert, perturb_baseline, **kwargs)
        self.relative = check_bool("relative", relative)

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        y0, y1 = self._scores(batch)
        drop = (y0 - y1).clamp_min(0)
        if not self.relative:
            return drop
        bad = y0 <= 0
        batch.set_nan(bad, "the unperturbed confidence is not positive")
        return drop / torch.where(bad, torch.ones_like(y0), y0)


class AverageIncrease(_ConfidenceChange):
    """Increase in Confidence (Chattopadhay et al. 2018, Grad-CAM++): 1 if the target
    confidence on x * e is higher than on x, else 0 (pytorch-grad-cam's
    ``IncreaseInConfidence``). **Higher is better** (with ``invert=True``, lower is better);
    the mean over samples is the paper's "% Increase in Confidence" / 100. See
    :class:`AverageDrop` for the options. Quantus has no such metric.

    Reference: A. Chattopadhay et al., "Grad-CAM++: Generalized Gradient-based Visual
    Explanations for Deep Convolutional Networks", WACV 2018.
    """

    higher_is_better = True
    paper = AverageDrop.paper

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        y0, y1 = self._scores(batch)
        return (y1 > y0).to(torch.float64)


class AverageGain(_ConfidenceChange):
    """Average Gain (Zhang et al. 2024, Opti-CAM): ``max(0, O - Y) / (1 - Y)`` per sample,
    the gain of confidence when the input is multiplied by the explanation map, relative to
    the room left. **Higher is better**; the mean over samples (x 100) is the paper's AG.
    Needs probabilities (the default ``softmax=True``); Y = 1 gives NaN. See
    :class:`AverageDrop` for the options.

    Reference: H. Zhang et al., "Opti-CAM: Optimizing saliency maps for interpretability",
    Computer Vision and Image Understanding, 2024.
    """

    higher_is_better = True
    paper = ("Zhang et al., Opti-CAM: Optimizing saliency maps for interpretability, CVIU "
             "2024")

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        y0, y1 = self._scores(batch)
        room = 1 - y0
        bad = room <= 0
        batch.set_nan(bad, "the unperturbed confidence is 1 (no room for a gain)")
        return (y1 - y0).clamp_min(0) / torch.where(bad, torch.ones_like(room), room)
