"""Targets: which scalar of a model's output a metric or an explainer looks at.

A target is any callable ``target(outputs, y) -> Tensor[N]`` where ``outputs`` are the model's
outputs for N inputs (after the wrapper's optional softmax) and ``y`` holds one label (or label
row) per input. The default, :class:`ClassTarget`, picks ``outputs[i, y[i]]``: the class logit, or
the class probability when the wrapper applies a softmax. Other tasks plug in here: regression
(:class:`OutputIndex`), binary classifiers with one decision value per sample
(:class:`BinaryTarget`: scikit-learn's ``decision_function``, a single logit), multi-label
(:class:`MultiLabelTarget`), segmentation (:class:`SegmentationTarget`) or any custom callable.

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

__all__ = [
    "BaseTarget",
    "BinaryTarget",
    "ClassTarget",
    "MultiLabelTarget",
    "OutputIndex",
    "SegmentationTarget",
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
        return hit.masked_fill(~finite_outputs(outputs), math.nan)

    def predict_or_nan(self, outputs: torch.Tensor) -> torch.Tensor:
        """:meth:`predict` as float64, NaN for a row whose outputs are not all finite."""
        pred = self.predict(outputs).to(torch.float64)
        bad = ~finite_outputs(outputs)
        return pred.masked_fill(bad.reshape(-1, *([1] * (pred.ndim - 1))), math.nan)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


#: the base class to subclass for a new task's target (``__call__``, ``check``, and where the
#: task has its own notion of a prediction, ``predict``/``agree``)
BaseTarget = _BaseTarget


def finite_outputs(outputs: torch.Tensor) -> torch.Tensor:
    """(N,) bool: rows whose outputs are all finite."""
    return torch.isfinite(outputs.reshape(outputs.shape[0], -1)).all(1)


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
    """Segmentation models with outputs (N, n_classes, *S): the class-``y[i]`` map, reduced
    over a region (the whole image by default, or a fixed boolean ``region`` of shape S)."""

    uses_class_labels = True

    def __init__(self, region: torch.Tensor | None = None, reduction: str = "sum") -> None:
        if reduction not in ("sum", "mean"):
            raise ValueError(f"`reduction` must be 'sum' or 'mean'; got {reduction!r}.")
        self.region = None if region is None else torch.as_tensor(region).bool()
        self.reduction = reduction

    def __call__(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ValueError("SegmentationTarget needs a class index per sample in `y`.")
        idx = y.to(device=outputs.device, dtype=torch.long)
        maps = outputs[torch.arange(outputs.shape[0], device=outputs.device), idx]
        if self.region is not None:
            w = self.region.to(device=maps.device, dtype=maps.dtype)
            total = (maps * w).flatten(1).sum(1)
            return total / w.sum().clamp_min(1) if self.reduction == "mean" else total
        flat = maps.flatten(1)
        return flat.mean(1) if self.reduction == "mean" else flat.sum(1)

    def check(self, y: torch.Tensor | None, output_shape: tuple[int, ...]) -> None:
        ClassTarget().check(y, (output_shape[0],))

    def hits(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        raise ValueError("SegmentationTarget predicts a class per pixel (predict() gives maps), "
                         "so there is no single predicted label to compare with `y`; metrics "
                         "that score accuracy against labels (ROAD's score='accuracy') need "
                         "another target.")


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
