"""Targets: which scalar of a model's output a metric or an explainer looks at.

A target is any callable ``target(outputs, y) -> Tensor[N]`` where ``outputs`` are the model's
outputs for N inputs (after the wrapper's optional softmax) and ``y`` holds one label (or label
row) per input. The default, :class:`ClassTarget`, picks ``outputs[i, y[i]]``: the class logit, or
the class probability when the wrapper applies a softmax. Other tasks plug in here: regression
(:class:`OutputIndex`), binary classifiers with one decision value per sample
(:class:`BinaryTarget`: scikit-learn's ``decision_function``, a single logit), multi-label
(:class:`MultiLabelTarget`), segmentation (:class:`SegmentationTarget`), embeddings
(:class:`SimilarityTarget`) or any custom callable.

A target also says what the model *predicts* and when two predictions *agree*: metrics that
check predictions (ROAD's accuracy, robustness metrics' ``on_prediction_change``,
Sufficiency, Consistency, metaeval's prediction checks) ask the target, never ``argmax``
themselves:

* ``predict(outputs) -> (N, ...)``: the prediction of each row (the class index by default);
* ``agree(p, q) -> (N,) bool``: whether two predictions of the same rows are the same;
* ``agree_pairwise(p) -> (N, N) bool``: whether the predictions of rows i and j are the same,
  and ``codes(p) -> (N,)`` integer codes shared by agreeing predictions;
* ``hits(outputs, y) -> (N,) float64``: 1.0 where the prediction is the label ``y``, 0.0
  where it is not, NaN where the outputs are not finite (there is no prediction).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from .._validation import all_finite, finite_rows

__all__ = [
    "BaseTarget",
    "BinaryTarget",
    "ClassTarget",
    "MultiLabelTarget",
    "OutputIndex",
    "SegmentationTarget",
    "SimilarityTarget",
    "Target",
    "as_target",
    "finite_outputs",
]


@runtime_checkable
class Target(Protocol):
    """Protocol of a target: ``(outputs, y) -> scores`` of shape (N,)."""

    def __call__(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor: ...


class _BaseTarget:
    #: whether ``y`` must hold integer class indices checked against the number of outputs
    uses_class_labels: bool = False
    #: whether a softmax over dim 1 of the outputs means anything (False for embeddings: a
    #: metric's default softmax is then switched off, and an explicit one refused)
    softmax_applies: bool = True

    def check(self, y: torch.Tensor | None, output_shape: tuple[int, ...]) -> None:
        """Validate ``y`` against the model's per-sample output shape before any heavy work."""

    # ------------------------------------------------------------------ predictions
    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """The prediction of each row: the index of the largest output along the class axis
        (dim 1). Targets of other tasks override this."""
        if outputs.ndim < 2:
            raise ValueError(
                f"The model's outputs have shape {tuple(outputs.shape)}: no class axis to take "
                f"a prediction from. {type(self).__name__} does not define predictions for "
                "such outputs; give a target whose predict() does (or, for robustness metrics, "
                "on_prediction_change='keep')."
            )
        return outputs.argmax(1)

    def agree(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """(N,) bool: whether the predictions ``p`` and ``q`` of the same N rows are equal."""
        if p.shape != q.shape:
            raise ValueError(f"{type(self).__name__}: predictions of shape {tuple(p.shape)} and "
                             f"{tuple(q.shape)} cannot be compared.")
        same = p == q
        return same.reshape(same.shape[0], -1).all(1) if same.ndim > 1 else same

    def codes(self, p: torch.Tensor) -> torch.Tensor:
        """(N,) int64 codes of the predictions ``p``: rows whose predictions agree share a
        code (set-level metrics count agreeing pairs through them in O(N))."""
        if p.ndim == 1 and not p.is_floating_point():
            return p.to(torch.int64)
        flat = p.reshape(p.shape[0], -1)
        if flat.shape[1] == 1:
            # one value per row (a class as float64, NaN where undefined): a 1-D unique, ~100x
            # faster than torch.unique(dim=0), which also splits equal rows once a NaN is
            # among them; codes agree with `agree` (NaN agrees with nothing, -0.0 with 0.0)
            return torch.unique(flat[:, 0], return_inverse=True)[1]
        return torch.unique(flat, dim=0, return_inverse=True)[1]

    def agree_pairwise(self, p: torch.Tensor) -> torch.Tensor:
        """(N, N) bool: whether the predictions of rows i and j agree."""
        if p.ndim == 1:
            return p.unsqueeze(0) == p.unsqueeze(1)
        codes = self.codes(p)
        return codes.unsqueeze(0) == codes.unsqueeze(1)

    def hits(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """(N,) float64: 1.0 where the prediction equals the label ``y``, else 0.0; NaN for a
        row whose outputs are not all finite (an argmax would pick a NaN)."""
        if y is None:
            raise ValueError(f"{type(self).__name__}: comparing predictions with labels needs "
                             "the labels `y`.")
        pred = self.predict(outputs)
        hit = self.agree(pred, y.to(device=pred.device, dtype=pred.dtype)).to(torch.float64)
        return nan_where_not_finite(hit, outputs)

    def predict_or_nan(self, outputs: torch.Tensor) -> torch.Tensor:
        """:meth:`predict` as float64, NaN for a row whose outputs are not all finite."""
        return nan_where_not_finite(self.predict(outputs).to(torch.float64), outputs)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


#: the base class to subclass for a new task's target (``__call__``, ``check``, and where the
#: task has its own notion of a prediction, ``predict``/``agree``)
BaseTarget = _BaseTarget


def finite_outputs(outputs: torch.Tensor) -> torch.Tensor:
    """(N,) bool: rows whose outputs are all finite."""
    flat = outputs.reshape(outputs.shape[0], -1)
    if flat.device.type == "cpu":  # one whole-tensor sum decides where all are finite
        return finite_rows(flat)
    # on an accelerator, no host sync per chunk
    return torch.isfinite(flat).all(1)


def nan_where_not_finite(values: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """``values`` (N, ...) derived from ``outputs`` (N, ...) with NaN in the rows whose
    outputs are not all finite (they have no prediction), as a new tensor. On the CPU one
    whole-tensor sum of the outputs decides the common case of all finite (a row-wise test
    costs several times more for a small model's chunk)."""
    if outputs.device.type == "cpu" and all_finite(outputs):
        return values.clone() if values is outputs else values
    # some row is not finite (or an accelerator): the row-wise test, without finite_outputs'
    # whole-tensor sum again
    bad = ~torch.isfinite(outputs.reshape(outputs.shape[0], -1)).all(1)
    return values.masked_fill(bad.reshape(-1, *([1] * (values.ndim - 1))), math.nan)


class ClassTarget(_BaseTarget):
    """``outputs[i, y[i]]``: the logit (or probability, with softmax) of class ``y[i]``."""

    uses_class_labels = True

    def __call__(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ValueError("ClassTarget needs class labels `y`, one per sample.")
        if outputs.ndim != 2:
            raise ValueError(
                f"ClassTarget expects outputs of shape (N, n_classes); got {tuple(outputs.shape)}."
                " Use OutputIndex, SegmentationTarget or a custom target for other outputs."
            )
        idx = y.to(device=outputs.device, dtype=torch.long).reshape(-1, 1)
        return outputs.gather(1, idx).squeeze(1)

    def check(self, y: torch.Tensor | None, output_shape: tuple[int, ...]) -> None:
        if y is None:
            raise ValueError("`y` is required: one class index per sample.")
        if y.ndim != 1:
            raise ValueError(
                f"`y` must hold one class index per sample, shape (N,); got {tuple(y.shape)}."
            )
        if y.is_floating_point():
            if not bool((y == torch.round(y)).all()):
                raise ValueError("`y` must hold integer class indices; got non-integer values.")
        elif y.dtype == torch.bool or y.is_complex():
            raise ValueError(f"`y` must hold integer class indices; got dtype {y.dtype}.")
        if len(output_shape) == 0:
            raise ValueError(
                "The model returns one value per sample (outputs of shape (N,)): there is no "
                "class axis to read class y[i] from. " + ONE_OUTPUT_HINT
            )
        if len(output_shape) != 1:
            raise ValueError(
                f"The model's outputs have per-sample shape {output_shape}, not (n_classes,); "
                "pass a target for this output, e.g. SegmentationTarget() or a callable."
            )
        n_classes = output_shape[0]
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"`y` contains the label {bad}, but the model outputs {n_classes} classes "
                f"(valid labels are 0 to {n_classes - 1})."
                + (" " + ONE_OUTPUT_HINT if n_classes == 1 else "")
            )


#: what to do with a model that returns one value per sample
ONE_OUTPUT_HINT = (
    "Pass a target that reads one value per sample: target=BinaryTarget() for a binary "
    "classifier's decision_function or single logit (labels 0/1), target=OutputIndex() for a "
    "regression output (the value itself); e.g. wrap_model(model, target=BinaryTarget())."
)


class BinaryTarget(_BaseTarget):
    """Binary classifiers that return one decision value ``d`` per sample, (N,) or (N, 1):
    scikit-learn's ``decision_function``, a single logit. Labels ``y`` are 0/1.

    The score of class ``y[i]`` is ``d`` for ``y = 1`` and ``-d`` for ``y = 0`` (for a logistic
    model, the log-odds of class ``y`` against the other), so removing evidence for the labelled
    class lowers the score whichever class it is. A prediction is ``d > threshold`` (default 0,
    scikit-learn's rule). No softmax applies (there is no class axis); a metric's default
    softmax is switched off for such outputs.
    """

    uses_class_labels = True

    def __init__(self, threshold: float = 0.0) -> None:
        self.threshold = float(threshold)

    @staticmethod
    def _values(outputs: torch.Tensor) -> torch.Tensor:
        if outputs.ndim == 2 and outputs.shape[1] == 1:
            return outputs[:, 0]
        if outputs.ndim != 1:
            raise ValueError(f"BinaryTarget expects one value per sample, outputs (N,) or "
                             f"(N, 1); got {tuple(outputs.shape)}. Use ClassTarget (the "
                             "default) for (N, n_classes) outputs.")
        return outputs

    def __call__(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ValueError("BinaryTarget needs labels `y` (0 or 1), one per sample.")
        d = self._values(outputs)
        sign = y.to(device=d.device, dtype=d.dtype) * 2 - 1
        return d * sign

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return (self._values(outputs) > self.threshold).to(torch.int64)

    def check(self, y: torch.Tensor | None, output_shape: tuple[int, ...]) -> None:
        if tuple(output_shape) not in ((), (1,)):
            raise ValueError(f"BinaryTarget expects one value per sample; the model's outputs "
                             f"have per-sample shape {tuple(output_shape)}. Use ClassTarget "
                             "(the default) for (N, n_classes) outputs.")
        if y is None:
            raise ValueError("`y` is required: one label (0 or 1) per sample.")
        if y.ndim != 1 or not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("BinaryTarget needs labels 0 or 1, shape (N,); got "
                             f"shape {tuple(y.shape)} with values such as "
                             f"{torch.unique(y)[:5].tolist()}.")


class OutputIndex(_BaseTarget):
    """A fixed output: ``outputs[:, index]`` (regression heads, a fixed class); ignores ``y``.

    Its predictions are those of a classifier (the argmax over dim 1) when the outputs have a
    class axis; a regression output (N,) has none, and metrics that compare predictions say so.
    """

    def __init__(self, index: int = 0) -> None:
        self.index = int(index)

    def __call__(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if outputs.ndim == 1:
            if self.index != 0:
                raise ValueError("The model returns one value per sample; use index=0.")
            return outputs
        return outputs.reshape(outputs.shape[0], -1)[:, self.index]


class MultiLabelTarget(_BaseTarget):
    """Multi-label models: sum (or mean) of the outputs of the labels marked in a multi-hot ``y``.

    ``y`` has shape (N, n_labels) with 0/1 entries. A prediction is the multi-hot set of labels
    whose output exceeds ``threshold`` (default 0: a logit of 0 is a probability of 0.5); two
    predictions agree when the sets are equal, and a prediction hits ``y`` when it equals it.
    """

    def __init__(self, reduction: str = "sum", threshold: float = 0.0) -> None:
        if reduction not in ("sum", "mean"):
            raise ValueError(f"`reduction` must be 'sum' or 'mean'; got {reduction!r}.")
        self.reduction = reduction
        self.threshold = float(threshold)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return (outputs > self.threshold).to(torch.int64)

    def __call__(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ValueError("MultiLabelTarget needs a multi-hot `y` of shape (N, n_labels).")
        w = y.to(device=outputs.device, dtype=outputs.dtype)
        total = (outputs * w).sum(1)
        if self.reduction == "mean":
            total = total / w.sum(1).clamp_min(1)
        return total

    def check(self, y: torch.Tensor | None, output_shape: tuple[int, ...]) -> None:
        if y is None or y.ndim != 2 or (y.shape[1],) != tuple(output_shape):
            got = None if y is None else tuple(y.shape)
            raise ValueError(
                f"MultiLabelTarget needs a multi-hot `y` of shape (N, {output_shape[0]}); "
                f"got {got}."
            )


class SegmentationTarget(_BaseTarget):
    """Semantic segmentation models with outputs (N, n_classes, *S) (per-pixel logits, or
    probabilities with the wrapper's softmax): the logit of a class summed (``reduction="sum"``)
    or averaged (``"mean"``) over a region: the score Seg-Grad-CAM explains (Vinogradova,
    Dibrov, Myers, "Towards Interpretable Semantic Segmentation via Gradient-Weighted Class
    Activation Mapping", AAAI 2020; see ``docs/tutorials/segmentation.md``).

    What ``y`` holds, one row per input:

    * **class indices** (N,): the map of class ``y[i]`` over ``region``: ``None`` (default) every
      pixel; a boolean mask of shape S shared by every input; ``"predicted"`` the pixels that
      the scored outputs themselves predict as class ``y[i]``: where its score is the maximum
      over classes (a pixel where several classes tie for the maximum belongs to each). The
      predicted region follows the outputs: a metric that removes features re-scores the class
      over the pixels still predicted as that class;
    * **label maps** (N, *S) of integers: pixel p of row i scores the logit of class
      ``y[i, p]``; negative entries mark pixels outside the region. Per-sample regions
      (``torch.where(mask, c, -1)`` for class ``c`` over a mask) travel with the data this way:
      chunked and subset like labels, and part of a stored evaluation's data fingerprint. The
      model's own prediction (:meth:`predict`, what ``MetaEvaluation(target="prediction")``
      passes) is such a map: its score is the logit of each pixel's predicted class.

    A fixed ``region`` or ``"predicted"`` also restricts label maps. An empty region scores 0
    (for ``"sum"`` and ``"mean"``): a class that disappears from the predicted region under a
    perturbation scores 0. :meth:`regions` gives the scored pixels, to pass as the masks ``s``
    of localisation metrics. Predictions are per-pixel class maps (N, *S); two agree when every
    pixel does, and a prediction hits a label map when every labelled pixel is predicted as
    labelled (class-index labels have no single predicted label to compare with).
    """

    uses_class_labels = True

    def __init__(self, region: torch.Tensor | str | None = None,
                 reduction: str = "sum") -> None:
        if reduction not in ("sum", "mean"):
            raise ValueError(f"`reduction` must be 'sum' or 'mean'; got {reduction!r}.")
        if isinstance(region, str):
            if region != "predicted":
                raise ValueError("`region` must be None, a boolean mask of the outputs' "
                                 f"spatial shape, or 'predicted'; got {region!r}.")
            self.region: torch.Tensor | str | None = region
        else:
            self.region = None if region is None else torch.as_tensor(region).bool()
        self.reduction = reduction

    # ------------------------------------------------------------------ scoring
    @staticmethod
    def _class_values(outputs: torch.Tensor, y: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(M, *S) scores of each pixel's scored class, and the (M, *S) bool pixels inside
        label maps (None for class indices)."""
        idx = y.to(device=outputs.device, dtype=torch.long)
        if idx.ndim == 1:
            return outputs[torch.arange(outputs.shape[0], device=outputs.device), idx], None
        labelled = idx >= 0
        return outputs.gather(1, idx.clamp_min(0).unsqueeze(1)).squeeze(1), labelled

    def _weights(self, outputs: torch.Tensor, maps: torch.Tensor,
                 labelled: torch.Tensor | None) -> torch.Tensor | None:
        """(M, *S) or S bool pixels scored; None for every pixel."""
        w: torch.Tensor | None = labelled
        if isinstance(self.region, torch.Tensor):
            fixed = self.region.to(outputs.device)
            w = fixed if w is None else w & fixed
        elif self.region == "predicted":
            # the class's score is the maximum over classes (a max over the class axis is
            # ~100x faster than an argmax over it on CPU; the two differ only on exact ties)
            hit = maps.detach() >= outputs.detach().amax(1)
            w = hit if w is None else w & hit
        return w

    def __call__(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ValueError("SegmentationTarget needs a class index (N,) or a label map "
                             "(N, *S) per sample in `y`.")
        maps, labelled = self._class_values(outputs, y)
        w = self._weights(outputs, maps, labelled)
        if w is None:
            flat = maps.flatten(1)
            return flat.mean(1) if self.reduction == "mean" else flat.sum(1)
        wf = w.to(dtype=maps.dtype)
        total = (maps * wf).flatten(1).sum(1)
        if self.reduction == "sum":
            return total
        count = wf.sum() if wf.ndim == maps.ndim - 1 else wf.flatten(1).sum(1)
        return total / count.clamp_min(1)

    def regions(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """(N, *S) bool: the pixels each row's score sums over (for outputs at the input's
        resolution, the ground-truth masks ``s`` of localisation metrics against that region)."""
        if y is None:
            raise ValueError("SegmentationTarget.regions needs the labels `y`.")
        maps, labelled = self._class_values(outputs, y)
        w = self._weights(outputs, maps, labelled)
        if w is None:
            return torch.ones_like(maps, dtype=torch.bool)
        return w.expand_as(maps).clone()

    # ------------------------------------------------------------------ checks
    def check(self, y: torch.Tensor | None, output_shape: tuple[int, ...]) -> None:
        if len(output_shape) < 2:
            raise ValueError(
                f"SegmentationTarget expects outputs (N, n_classes, *S) with spatial axes; the "
                f"model's outputs have per-sample shape {tuple(output_shape)}. Use ClassTarget "
                "(the default) for (N, n_classes) outputs.")
        spatial = tuple(output_shape[1:])
        if isinstance(self.region, torch.Tensor) and tuple(self.region.shape) != spatial:
            raise ValueError(f"`region` has shape {tuple(self.region.shape)}, but the model's "
                             f"outputs have spatial shape {spatial}.")
        if y is None:
            raise ValueError("`y` is required: a class index (N,) or a label map (N, *S) per "
                             "sample.")
        if y.ndim == 1:
            ClassTarget().check(y, (output_shape[0],))
            return
        if tuple(y.shape[1:]) != spatial:
            raise ValueError(
                f"SegmentationTarget needs `y` of shape (N,) (class indices) or (N, *S) = "
                f"(N, {', '.join(map(str, spatial))}) (label maps); got {tuple(y.shape)}.")
        if y.dtype == torch.bool or y.is_complex() or (
                y.is_floating_point() and not bool((y == torch.round(y)).all())):
            raise ValueError("Label maps `y` must hold integer class indices (negative: outside "
                             f"the region); got dtype {y.dtype} with non-integer values.")
        n_classes = output_shape[0]
        hi = int(y.max())
        if hi >= n_classes:
            raise ValueError(f"The label maps `y` contain the label {hi}, but the model outputs "
                             f"{n_classes} classes (valid labels are 0 to {n_classes - 1}; "
                             "negative labels mark pixels outside the region).")

    def hits(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None or y.ndim == 1:
            raise ValueError(
                "SegmentationTarget predicts a class per pixel (predict() gives maps), so a "
                "class index per sample is no single predicted label to compare with; metrics "
                "that score accuracy against labels (ROAD's score='accuracy') need label maps "
                "`y` (N, *S) or another target.")
        pred = self.predict(outputs)
        lab = y.to(device=pred.device, dtype=torch.long)
        ok = ((pred == lab) | (lab < 0)).flatten(1).all(1).to(torch.float64)
        return nan_where_not_finite(ok, outputs)


class SimilarityTarget(_BaseTarget):
    """Embedding models with outputs (N, D) (or (N, *E), flattened): the cosine similarity of
    each input's embedding to a reference embedding, so that a metric evaluates explanations
    of "why is x similar to r" (Stylianou, Souvenir, Pless, "Visualizing Deep Similarity
    Networks", WACV 2019; see ``docs/tutorials/similarity.md``). Higher scores mean more
    similar (in [-1, 1]).

    ``reference``: a concept vector (D,) shared by every input (``y`` is then ignored), or
    ``None``: per-sample references in ``y`` (N, D), e.g. the embeddings of other images.
    Per-sample references travel with the data like labels (chunked, subset, repeated for
    every perturbed copy of their input, part of a stored evaluation's data fingerprint), which
    is why they are ``y`` and not an argument here. An embedding of norm 0 scores 0.

    The prediction of an embedding model is its embedding: :meth:`predict` gives the
    unit-normalised embeddings (N, D), and two predictions **agree** when their cosine
    similarity is at least ``agreement`` (default 0.9): a perturbation changed the prediction
    when it turned the embedding by more than about 25 degrees (robustness metrics'
    ``on_prediction_change``, metaeval's input tests, Sufficiency). :meth:`hits` says whether
    an embedding agrees with ``y``'s rows when they are embeddings (per-sample references, or
    earlier predictions), else with the concept. Agreement within a tolerance does not split
    samples into classes, so :meth:`codes` (Consistency) refuses. No softmax applies: a
    metric's default softmax is switched off, and an explicit ``softmax=True`` is refused.
    """

    softmax_applies = False

    def __init__(self, reference: torch.Tensor | None = None, *, agreement: float = 0.9) -> None:
        if reference is not None:
            ref = torch.as_tensor(reference)
            if not ref.is_floating_point():
                ref = ref.to(torch.get_default_dtype())
            if ref.ndim == 2 and ref.shape[0] == 1:
                ref = ref[0]
            if ref.ndim != 1:
                raise ValueError(
                    f"`reference` must be one concept vector (D,); got shape {tuple(ref.shape)}. "
                    "Per-sample references (N, D) go in `y` with SimilarityTarget() (no "
                    "reference), so that they follow their inputs through every metric.")
            if not bool(torch.isfinite(ref).all()):
                raise ValueError("`reference` contains NaN or Inf.")
            if float(ref.norm()) == 0.0:
                raise ValueError("`reference` has norm 0: its cosine similarity is undefined.")
            reference = ref.detach().clone()
        agreement = float(agreement)
        if not -1.0 <= agreement <= 1.0:
            raise ValueError(f"`agreement` is a cosine similarity in [-1, 1]; got {agreement}.")
        self.reference: torch.Tensor | None = reference
        self.agreement = agreement

    def _references(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if self.reference is not None:
            return self.reference.to(device=outputs.device, dtype=outputs.dtype).unsqueeze(0)
        if y is None:
            raise ValueError("SimilarityTarget() without a `reference` needs per-sample "
                             "reference embeddings `y` (N, D).")
        return y.to(device=outputs.device, dtype=outputs.dtype).reshape(y.shape[0], -1)

    def __call__(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        emb = outputs.reshape(outputs.shape[0], -1)
        ref = self._references(outputs, y)
        if ref.shape[1] != emb.shape[1]:
            raise ValueError(f"SimilarityTarget: the reference embeddings have D = "
                             f"{ref.shape[1]}, the model's embeddings D = {emb.shape[1]}.")
        return torch.nn.functional.cosine_similarity(emb, ref, dim=1)

    def check(self, y: torch.Tensor | None, output_shape: tuple[int, ...]) -> None:
        if len(output_shape) == 0:
            raise ValueError("SimilarityTarget needs an embedding per sample, outputs (N, D); "
                             "the model returns one value per sample.")
        d = math.prod(output_shape)
        if self.reference is not None:
            if self.reference.numel() != d:
                raise ValueError(
                    f"`reference` has D = {self.reference.numel()} values, but the model's "
                    f"embeddings have per-sample shape {tuple(output_shape)} (D = {d}).")
            return
        if y is None:
            raise ValueError("SimilarityTarget() without a `reference` needs per-sample "
                             f"reference embeddings `y` of shape (N, {d}).")
        if not y.is_floating_point() or y.ndim < 2 or math.prod(y.shape[1:]) != d:
            raise ValueError(
                f"SimilarityTarget() needs reference embeddings `y` of shape (N, {d}) (the "
                f"model's embedding size), floating point; got shape {tuple(y.shape)}, dtype "
                f"{y.dtype}.")
        flat = y.reshape(y.shape[0], -1)
        if not bool(torch.isfinite(flat).all()):
            raise ValueError("The reference embeddings `y` contain NaN or Inf.")
        zero = (flat.norm(dim=1) == 0).nonzero().flatten()
        if zero.numel():
            raise ValueError(f"The reference embeddings `y` of rows {zero[:5].tolist()} have "
                             "norm 0: their cosine similarity is undefined.")

    # ------------------------------------------------------------------ predictions
    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """The unit-normalised embeddings (N, D)."""
        return torch.nn.functional.normalize(outputs.reshape(outputs.shape[0], -1), dim=1)

    def agree(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """(N,) bool: cosine similarity of the rows of ``p`` and ``q`` >= ``agreement``
        (NaN rows agree with nothing)."""
        if p.shape[0] != q.shape[0] or p[0].numel() != q[0].numel():
            raise ValueError(f"SimilarityTarget: predictions of shape {tuple(p.shape)} and "
                             f"{tuple(q.shape)} cannot be compared.")
        cos = torch.nn.functional.cosine_similarity(
            p.reshape(p.shape[0], -1), q.reshape(q.shape[0], -1).to(p.dtype), dim=1)
        return cos >= self.agreement

    def agree_pairwise(self, p: torch.Tensor) -> torch.Tensor:
        unit = torch.nn.functional.normalize(p.reshape(p.shape[0], -1), dim=1)
        return unit @ unit.T >= self.agreement

    def codes(self, p: torch.Tensor) -> torch.Tensor:
        raise ValueError(
            "SimilarityTarget: embeddings agree within a tolerance (cosine >= "
            f"{self.agreement}), which does not split samples into classes, so metrics that "
            "count samples with the same predicted class (Consistency) are not defined for "
            "them.")

    def hits(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        emb = outputs.reshape(outputs.shape[0], -1)
        if y is not None and y.is_floating_point() and y.ndim >= 2 \
                and y[0].numel() == emb.shape[1]:
            ref = y.to(device=emb.device).reshape(y.shape[0], -1)
        elif self.reference is not None:
            ref = self.reference.to(device=emb.device).expand(emb.shape[0], -1)
        else:
            raise ValueError("SimilarityTarget.hits needs reference embeddings `y` (N, D) or a "
                             "`reference`.")
        hit = self.agree(emb, ref).to(torch.float64)
        return nan_where_not_finite(hit, outputs)


class _CallableTarget(_BaseTarget):
    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]) -> None:
        self.fn = fn

    def __call__(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        out = self.fn(outputs, y)
        if not isinstance(out, torch.Tensor) or out.shape != (outputs.shape[0],):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"A custom target must return a tensor of shape (N,) = ({outputs.shape[0]},); "
                f"got {shape}."
            )
        return out

    def __repr__(self) -> str:
        return f"{getattr(self.fn, '__name__', type(self.fn).__name__)}"


def as_target(target: object) -> _BaseTarget:
    """Resolve ``None`` (class index), an int (fixed output index) or a callable to a target."""
    if target is None:
        return ClassTarget()
    if isinstance(target, _BaseTarget):
        return target
    if isinstance(target, int) and not isinstance(target, bool):
        return OutputIndex(target)
    if callable(target):
        return _CallableTarget(target)
    raise TypeError(
        "`target` must be None, an int, a Target object or a callable (outputs, y) -> (N,) "
        f"scores; got {type(target).__name__}."
    )
