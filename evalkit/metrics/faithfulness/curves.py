"""Removal and insertion curves: Pixel-Flipping, Deletion/Insertion, Region Perturbation,
Selectivity, IROF and Monotonicity."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..._validation import check_option, check_scalar
from ...perturb import Columns, Patches, Superpixels, Windows, make_grouping, make_imputer
from ...perturb.baselines import Baseline, Imputer
from .._removal import (
    RemovalPlan,
    clean_scores,
    order_groups,
    removal_curve,
    trapezoid_auc,
)
from .._ties import RanksFeatures
from ..base import MetricBatch
from ._common import (
    set_curves,
)
from .rationales import FollowsRemovalPlan, removal_modalities

#: the modalities of a removal metric whose default replacement is deterministic (token ids:
#: the mask token; see :func:`~evalkit.metrics.faithfulness.rationales.removal_modalities`)
_EVERY_MODALITY = ("image", "series", "tabular", "tokens")


class PixelFlipping(FollowsRemovalPlan, RanksFeatures):
    """Pixel-Flipping (Bach et al. 2015): remove features in order of decreasing relevance.

    Features (groups of ``grouping``, pixels by default) are replaced by ``perturb_baseline``
    cumulatively, ``features_in_step`` at a time, most relevant first; the curve records the
    target score after each step, starting with the unperturbed input. The score is the area
    under that curve over the fraction of features removed. A faithful explanation makes the
    score fall fast: **lower is better**.

    Deviations from Quantus (``quantus.PixelFlipping``):

    * a feature is a pixel (all channels together) by default; ``grouping="channel_values"``
      counts channel values as Quantus does;
    * the curve starts at the unperturbed input and the area is taken over the fraction of
      features removed (Quantus integrates with unit spacing over its T steps without the
      unperturbed point); the raw curve is in ``curves_``;
    * the return value is always the per-sample area; ``return_auc_per_sample=False`` is not
      supported (read ``curves_`` instead).

    Parameters
    ----------
    features_in_step:
        Groups removed per step.
    perturb_baseline:
        Replacement: a name (``"black"``, ``"mean"``, ``"uniform"``, ...), a number, an array,
        or an :class:`~evalkit.perturb.Imputer`. See :mod:`evalkit.perturb.baselines`.
    grouping:
        ``"pixels"`` (default), ``"channel_values"``, a patch size, ``"slic"``, a label
        array, or a :class:`~evalkit.perturb.FeatureGrouping`.

    Validity (``docs/validity.md``, report card): on an AND of two regions, removing one region
    already zeroes the output, so it ranks a map of one region above a map of both.

    Reference: S. Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions
    by Layer-Wise Relevance Propagation", PLoS ONE 10(7), 2015.
    """

    family = "faithfulness"
    higher_is_better = False
    default_softmax = True
    paper = (
        "Bach et al., On Pixel-Wise Explanations for Non-Linear Classifier Decisions by "
        "Layer-Wise Relevance Propagation, PLoS ONE 2015"
    )
    modalities = _EVERY_MODALITY

    def __init__(
        self,
        features_in_step: int = 1,
        perturb_baseline: Any = "black",
        *,
        grouping: Any = "pixels",
        **kwargs: Any,
    ) -> None:
        if kwargs.pop("return_auc_per_sample", True) is False:
            raise ValueError(
                "evalkit's PixelFlipping always returns the per-sample area under the curve; "
                "the curves themselves are in `metric.curves_` after the call."
            )
        super().__init__(**kwargs)
        self.features_in_step = check_scalar("features_in_step", features_in_step, int,
                                             min_val=1)
        self.perturb_baseline = perturb_baseline
        self.grouping = grouping
        self._plan = RemovalPlan(make_grouping(grouping), make_imputer(perturb_baseline))

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        curve, fractions, _ = removal_curve(
            batch, self._plan, features_in_step=self.features_in_step, desc=type(self).__name__
        )
        set_curves(batch, curve, fractions)
        return trapezoid_auc(curve, fractions)


class Deletion(FollowsRemovalPlan, RanksFeatures):
    """Deletion (Petsiuk, Das & Saenko 2018, RISE): the target probability as the most relevant
    features are deleted. **Lower is better**.

    The same computation as :class:`PixelFlipping` with RISE's defaults: the target is the
    class probability (softmax), deleted pixels become 0 (``perturb_baseline="zero"``; on
    standardised inputs that is the data mean), and about ``n_steps`` steps are taken (RISE
    deletes 224 pixels per step on 224x224 images, i.e. 224 steps). The score is the area under
    the curve over the fraction deleted, as in RISE (its ``auc`` is the trapezoid rule on an
    x-axis from 0 to 1 that includes the unperturbed input). In RISE the x-axis is the step
    index / number of steps; here it is the exact fraction of features deleted, which differs
    only at the last step when the number of features is not a multiple of the step.

    Parameters
    ----------
    features_in_step:
        Features deleted per step; ``None`` (default) uses ``ceil(G / n_steps)``.
    n_steps:
        Number of steps when ``features_in_step`` is None.
    perturb_baseline, grouping:
        As in :class:`PixelFlipping`.

    Reference: V. Petsiuk, A. Das, K. Saenko, "RISE: Randomized Input Sampling for Explanation
    of Black-box Models", BMVC 2018.
    """

    family = "faithfulness"
    higher_is_better = False
    default_softmax = True
    paper = "Petsiuk, Das & Saenko, RISE: Randomized Input Sampling for Explanation, BMVC 2018"
    modalities = _EVERY_MODALITY
    _mode = "deletion"

    def __init__(
        self,
        features_in_step: int | None = None,
        n_steps: int = 100,
        perturb_baseline: Any = "zero",
        *,
        grouping: Any = "pixels",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.features_in_step = check_scalar("features_in_step", features_in_step, int,
                                             min_val=1, allow_none=True)
        self.n_steps = check_scalar("n_steps", n_steps, int, min_val=1)
        self.perturb_baseline = perturb_baseline
        self.grouping = grouping
        self._plan = RemovalPlan(make_grouping(grouping), self._imputer(), mode=self._mode)

    def _imputer(self) -> Imputer:
        return make_imputer(self.perturb_baseline)

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        ordering = order_groups(batch, self._plan.grouping, "morf")
        fis = self.features_in_step
        if fis is None:
            fis = max(1, -(-int(ordering.n_groups.max()) // self.n_steps))
        curve, fractions, _ = removal_curve(batch, self._plan, features_in_step=fis,
                                            ordering=ordering, desc=type(self).__name__)
        set_curves(batch, curve, fractions)
        return trapezoid_auc(curve, fractions)


class Insertion(Deletion):
    """Insertion (Petsiuk, Das & Saenko 2018, RISE): the target probability as the most
    relevant features are inserted onto a blurred copy of the input. **Higher is better**.

    The curve starts at the canvas (``perturb_baseline``, by default a Gaussian blur of the
    input with RISE's sigma 5 and 11-pixel kernel) and ends at the unperturbed input; the score
    is its area over the fraction of features inserted. Other parameters as in
    :class:`Deletion`; ``blur_sigma`` and ``blur_kernel_size`` set the canvas blur.

    Deliberate differences from the RISE code (Quantus has no Insertion): RISE's kernel is
    ``scipy.ndimage.gaussian_filter`` of an 11x11 delta (reflected at the kernel's border) applied
    with zero padding, which darkens the image border; here it is the truncated, normalised
    Gaussian applied with reflect padding, so a constant image stays constant. The x-axis is the
    exact fraction of features inserted (see :class:`Deletion`).

    Validity (``docs/validity.md``, report card): the blurred canvas keeps the evidence of a
    region-only model (undecided) and ranks gradient x input above Integrated Gradients on a
    saturating one; ``perturb_baseline="black"`` recovers both.

    Reference: V. Petsiuk, A. Das, K. Saenko, "RISE: Randomized Input Sampling for Explanation
    of Black-box Models", BMVC 2018.
    """

    higher_is_better = True
    _mode = "insertion"
    modalities = ("image", "series")  # the default blurred canvas; another baseline widens it

    def __init__(
        self,
        features_in_step: int | None = None,
        n_steps: int = 100,
        perturb_baseline: Any = "blur",
        *,
        blur_sigma: float = 5.0,
        blur_kernel_size: int | None = 11,
        grouping: Any = "pixels",
        **kwargs: Any,
    ) -> None:
        self.blur_sigma = blur_sigma
        self.blur_kernel_size = blur_kernel_size
        super().__init__(features_in_step, n_steps, perturb_baseline, grouping=grouping,
                         **kwargs)

    def _imputer(self) -> Imputer:
        if self._blurs():
            return Baseline("blur", blur_sigma=self.blur_sigma,
                            blur_kernel_size=self.blur_kernel_size)
        return make_imputer(self.perturb_baseline)

    def _blurs(self) -> bool:
        return isinstance(self.perturb_baseline, str) and self.perturb_baseline == "blur"

    def _derived_metadata(self) -> dict[str, Any]:
        # a blurred canvas needs neighbouring pixels or time steps: not tabular columns, not
        # token ids (a blurred id is no id); another canvas is a removal baseline
        derived = dict(super()._derived_metadata())
        if self._blurs():
            derived["modalities"] = ("image", "series")
        return derived


class RegionPerturbation(RanksFeatures):
    """Region perturbation (Samek et al. 2016): remove ``regions_evaluation`` patches
    cumulatively in ``order`` and record the drop of the target score.

    The curve (``curves_``) holds the drops ``f(x) - f(x with the first k regions replaced)``
    for k = 0..L (L = min(regions_evaluation, number of patches)), over the fraction of regions
    replaced k / G. The score is the area under it (``score="auc"``, default) or the AOPC of
    the paper, the mean drop over k = 0..L (``score="aopc"``).

    Direction: with ``order="morf"`` a faithful explanation drops the score fast, so the drops
    are large: **higher is better** (Quantus declares LOWER for these drops, deviation C17). With
    ``order="lerf"`` small drops are better (the instance's ``higher_is_better`` is False);
    ``order="random"`` is a reference curve.

    Deviations from Quantus: patches at the border of inputs whose size is not a multiple of
    ``patch_size`` are smaller (Quantus pads the attribution with zeros and the input with its
    edge values, which gives the same sums and replacements); a patch holds all channels of
    its pixels, as in Quantus. The random order comes from ``seed``; after a call,
    ``order_`` (N, G) holds each sample's patch ids (raster order) in the order replaced.

    Reference: W. Samek et al., "Evaluating the Visualization of What a Deep Neural Network
    Has Learned", IEEE TNNLS 28(11), 2017 (arXiv 2015).
    """

    family = "faithfulness"
    higher_is_better = True
    default_softmax = True
    paper = ("Samek et al., Evaluating the Visualization of What a Deep Neural Network Has "
             "Learned, IEEE TNNLS 2017")
    modalities = _EVERY_MODALITY

    def __init__(
        self,
        patch_size: int = 8,
        order: str = "morf",
        regions_evaluation: int = 100,
        perturb_baseline: Any = "black",
        *,
        score: str = "auc",
        grouping: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.patch_size = check_scalar("patch_size", patch_size, int, min_val=1)
        self.order = check_option("order", order, ("morf", "lerf", "random"))
        self.regions_evaluation = check_scalar("regions_evaluation", regions_evaluation, int,
                                               min_val=1)
        self.perturb_baseline = perturb_baseline
        self.score = check_option("score", score, ("auc", "aopc"))
        self.grouping = grouping
        self._imputer = make_imputer(perturb_baseline)
        self.order_: np.ndarray | None = None

    def _derived_metadata(self) -> dict[str, Any]:
        return {"higher_is_better": self.order != "lerf",
                "modalities": removal_modalities(self._imputer)}

    def _random_sources(self) -> dict[str, Any]:
        return {"random order": self.order == "random", "baseline": self._imputer}

    def _ranks_attributions(self) -> bool:
        return self.order != "random"

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        grouping = Patches(self.patch_size) if self.grouping is None else make_grouping(
            self.grouping)
        ordering = order_groups(batch, grouping, self.order)
        batch.record("order", ordering.order, per_sample=True)
        g = ordering.n_groups
        last = torch.clamp(g, max=self.regions_evaluation)
        t = torch.arange(int(last.max()) + 1, device=g.device)
        steps = torch.minimum(t.unsqueeze(0), last.unsqueeze(1))
        plan = RemovalPlan(grouping, self._imputer, self.order)
        scores, fractions, _ = removal_curve(batch, plan, steps, ordering=ordering,
                                             desc=type(self).__name__)
        drops = clean_scores(batch).unsqueeze(1) - scores
        set_curves(batch, drops, fractions)
        if self.score == "aopc":
            valid = t.unsqueeze(0) <= last.unsqueeze(1)
            return (drops * valid).sum(1) / valid.sum(1)
        return trapezoid_auc(drops, fractions)


class Selectivity(RanksFeatures):
    """Selectivity (Montavon, Samek & Müller 2018): remove all patches of ``patch_size``,
    most relevant first, and record the target score. **Lower is better** (a fast fall).

    The curve starts with the unperturbed input and ends with every patch replaced; the score
    is its area over the fraction of patches removed (Quantus returns the curve without the
    unperturbed point; its ``get_auc_score`` integrates with unit spacing).

    Reference: G. Montavon, W. Samek, K.-R. Müller, "Methods for Interpreting and
    Understanding Deep Neural Networks", Digital Signal Processing 73, 2018.
    """

    family = "faithfulness"
    higher_is_better = False
    default_softmax = True
    paper = ("Montavon, Samek & Müller, Methods for Interpreting and Understanding Deep Neural "
             "Networks, Digital Signal Processing 2018")
    modalities = _EVERY_MODALITY

    def __init__(self, patch_size: int = 8, perturb_baseline: Any = "black", *,
                 grouping: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.patch_size = check_scalar("patch_size", patch_size, int, min_val=1)
        self.perturb_baseline = perturb_baseline
        self.grouping = grouping
        self._imputer = make_imputer(perturb_baseline)

    def _derived_metadata(self) -> dict[str, Any]:
        return {"modalities": removal_modalities(self._imputer)}

    def _random_sources(self) -> dict[str, Any]:
        return {"baseline": self._imputer}

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        grouping = Patches(self.patch_size) if self.grouping is None else make_grouping(
            self.grouping)
        plan = RemovalPlan(grouping, self._imputer)
        curve, fractions, _ = removal_curve(batch, plan, desc=type(self).__name__)
        set_curves(batch, curve, fractions)
        return trapezoid_auc(curve, fractions)


class IROF(RanksFeatures):
    """Iterative Removal Of Features (Rieger & Hansen 2020): remove superpixels in order of
    decreasing mean attribution; **higher is better**.

    Each image is segmented with scikit-image (``segmentation_method`` ``"slic"`` or
    ``"felzenszwalb"``; keyword arguments in ``segmentation_kwargs``; one image at a time on the
    CPU, the only per-sample loop). Segments are ranked by their mean attribution and replaced
    cumulatively with ``perturb_baseline``; the curve is ``f(x_k) / f(x)`` for k = 0..G
    segments removed (starting at 1). The score is the area *over* that curve on the unit
    square, ``1 - AUC`` over the fraction of segments removed: near 1 when the score collapses
    after the first segments, near 0 when it never falls.

    Deviations from Quantus: Quantus returns ``G - trapz(curve[1:])`` with unit spacing (which
    grows with the number of segments and skips the first interval) and pads shorter curves
    with zeros inside a batch; here the score lies in [0, 1] for a score that falls
    monotonically, curves of samples with fewer segments end at their own last point, and the
    curves are in ``curves_``. Quantus' ``"mean"`` baseline is recomputed from the partly
    perturbed batch at every step; here it is the mean of each original input. The
    segmentation runs on each image min-max scaled to [0, 1] (see
    :class:`~evalkit.perturb.Superpixels`). A non-positive ``f(x)`` gives NaN.

    Segments per modality (``grouping=None``; any ``grouping=`` replaces them):

    * **image**: superpixels as above;
    * **series** (N, C, T): ``n_segments`` contiguous windows of time steps (all channels of a
      step together), of ``ceil(T / n_segments)`` steps each, the last one shorter when T is
      not a multiple (:class:`~evalkit.perturb.Windows`); ``n_segments`` comes from
      ``segmentation_kwargs`` (default 10). Fixed windows, not a signal-adaptive segmentation:
      the same segments for every sample and method, so a score compares maps, not
      segmentations;
    * **tabular** (N, F): one segment per column (:class:`~evalkit.perturb.Columns`; pass
      ``grouping=Columns(groups)`` for one-hot or other column groups). The default ``"mean"``
      baseline is each row's mean over its columns, which mixes column scales: on tables pass
      a per-column replacement, e.g. ``perturb_baseline=MarginalMeanImputer(reference=rows)``
      (:mod:`evalkit.perturb.imputation`).

    Validity (``docs/validity.md``, report card): wrong on saturating models (gradient x input
    beats Integrated Gradients), undecided on region-only ones.

    Reference: L. Rieger, L. K. Hansen, "IROF: a low resource evaluation metric for
    explanation methods", arXiv:2003.08747, 2020.
    """

    family = "faithfulness"
    higher_is_better = True
    default_softmax = True
    modalities = ("image", "series", "tabular")  # superpixels, windows, columns
    #: the number of windows a series is cut into by default
    series_segments = 10
    paper = ("Rieger & Hansen, IROF: a low resource evaluation metric for explanation methods, "
             "arXiv 2020")

    def __init__(self, segmentation_method: str = "slic", perturb_baseline: Any = "mean", *,
                 segmentation_kwargs: dict[str, Any] | None = None, grouping: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.segmentation_method = check_option("segmentation_method", segmentation_method,
                                                ("slic", "felzenszwalb"))
        self.perturb_baseline = perturb_baseline
        self.segmentation_kwargs = dict(segmentation_kwargs or {})
        self.grouping = grouping
        self._imputer = make_imputer(perturb_baseline)

    def _random_sources(self) -> dict[str, Any]:
        return {"baseline": self._imputer}

    def _segments(self, batch: MetricBatch) -> Any:
        """The default segmentation of the batch's modality (see the class docstring)."""
        name = batch.modality.name
        if name == "series":
            n_segments = self.segmentation_kwargs.get("n_segments", self.series_segments)
            if isinstance(n_segments, bool) or not isinstance(n_segments, int) or n_segments < 1:
                raise ValueError(f"IROF: `n_segments` must be a positive integer; got "
                                 f"{n_segments!r}.")
            steps = batch.x.shape[-1]
            return Windows(-(-steps // min(n_segments, steps)))
        if name == "tabular":
            return Columns()
        return Superpixels(self.segmentation_method, **self.segmentation_kwargs)

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        if self.grouping is None:
            grouping = self._segments(batch)
        else:
            grouping = make_grouping(self.grouping)
        ordering = order_groups(batch, grouping, "morf", "mean")
        plan = RemovalPlan(grouping, self._imputer, "morf", "mean")
        scores, fractions, _ = removal_curve(batch, plan, ordering=ordering,
                                             desc=type(self).__name__)
        clean = clean_scores(batch)
        bad = clean <= 0
        batch.set_nan(bad, "the unperturbed target score is not positive")
        curve = scores / torch.where(bad, torch.ones_like(clean), clean).unsqueeze(1)
        set_curves(batch, curve, fractions)
        return 1.0 - trapezoid_auc(curve, fractions)


class Monotonicity(FollowsRemovalPlan, RanksFeatures):
    """Monotonicity (Arya et al. 2019, AIX360): starting from the baseline, add the features
    back in *ascending* order of attribution; the explanation is monotonic when the target
    score never decreases. Returns 1.0 (monotonic) or 0.0 per sample: **higher is better**
    (the share of monotonic samples is the mean).

    The curve (``curves_``) starts at the all-baseline input and ends at x; as in the AIX360
    reference code, the check covers the points after each addition (the all-baseline point is
    not compared). ``tolerance`` allows decreases of at most that size (0 by default, as in the
    paper).

    What it can tell apart: with ``abs=True`` (the default, as in Quantus) the order ignores
    signs, so on a model with evidence against the class (features that lower the score) a
    faithful map puts those features among the last added and is not monotonic, like any
    other map; on a model with only positive evidence every order is monotonic. Use
    ``abs=False`` on signed attributions for a check that rewards them (the sanity test in
    ``tests/test_faithfulness_sanity.py`` shows both).

    Quantus 0.6 re-applies the baseline instead of restoring the features (deviation C2), so its
    result never depends on the attribution; here the features of x really are restored.
    Quantus returns booleans; here 1.0/0.0 floats. As in Quantus (and unlike AIX360, which
    scores the predicted class), the scored class is ``y``; pass the predictions as ``y`` for
    AIX360's choice.

    Validity (``docs/validity.md``, report card): a binary score, so candidates tie on almost
    every testbed and no pair is decided.

    Reference: V. Arya et al., "One Explanation Does Not Fit All: A Toolkit and Taxonomy of AI
    Explainability Techniques", arXiv:1909.03012, 2019; R. Luss et al., 2019.
    """

    family = "faithfulness"
    higher_is_better = True
    default_softmax = True
    default_abs = True
    paper = ("Arya et al., One Explanation Does Not Fit All: A Toolkit and Taxonomy of AI "
             "Explainability Techniques, arXiv 2019")
    modalities = _EVERY_MODALITY

    def __init__(self, features_in_step: int = 1, perturb_baseline: Any = "black", *,
                 tolerance: float = 0.0, grouping: Any = "pixels", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.features_in_step = check_scalar("features_in_step", features_in_step, int,
                                             min_val=1)
        self.perturb_baseline = perturb_baseline
        self.tolerance = check_scalar("tolerance", tolerance, (int, float), min_val=0)
        self.grouping = grouping
        self._plan = RemovalPlan(make_grouping(grouping), make_imputer(perturb_baseline),
                                 "lerf", mode="insertion")

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        curve, fractions, _ = removal_curve(batch, self._plan,
                                            features_in_step=self.features_in_step,
                                            desc=type(self).__name__)
        set_curves(batch, curve, fractions)
        after = curve[:, 1:]
        if after.shape[1] < 2:
            return torch.ones(batch.n, dtype=torch.float64, device=batch.device)
        diffs = after[:, 1:] - after[:, :-1]
        return (diffs >= -self.tolerance).all(1).to(torch.float64)
