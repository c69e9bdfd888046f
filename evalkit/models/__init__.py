"""Framework-agnostic model wrappers and targets.

>>> import evalkit as ek
>>> wrapped = ek.models.wrap_model(torch_module, softmax=True)         # doctest: +SKIP
>>> wrapped = ek.models.wrap_model(sklearn_clf.predict_proba)          # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import ForwardCounter, ModelWrapper, same_device
from .callable_model import CallableModel
from .detection import BoxScoreTarget, DetectionModel, box_iou
from .targets import (
    BaseTarget,
    BinaryTarget,
    ClassTarget,
    MultiLabelTarget,
    OutputIndex,
    SegmentationTarget,
    SimilarityTarget,
    Target,
    as_target,
)
from .torch_model import TorchModel, randomisable_layers

__all__ = [
    "BaseTarget",
    "BinaryTarget",
    "BoxScoreTarget",
    "CallableModel",
    "ClassTarget",
    "DetectionModel",
    "ForwardCounter",
    "ModelWrapper",
    "MultiLabelTarget",
    "OutputIndex",
    "SegmentationTarget",
    "SimilarityTarget",
    "Target",
    "TorchModel",
    "as_target",
    "box_iou",
    "randomisable_layers",
    "wrap_model",
]


def wrap_model(
    obj: Any,
    *,
    softmax: bool | None = None,
    target: object = None,
    device: torch.device | str | None = None,
    **kwargs: Any,
) -> ModelWrapper:
    """Wrap a model so every metric and explainer can use it.

    - ``torch.nn.Module`` -> :class:`TorchModel`;
    - an object with ``predict_proba`` (scikit-learn) -> :class:`CallableModel` on it (no
      softmax: the outputs are probabilities already);
    - any other callable -> :class:`CallableModel` (NumPy in, scores out);
    - a :class:`ModelWrapper` is returned as is, or as a view with the given options.

    Extra keyword arguments go to the wrapper's constructor (e.g. ``eval_mode``,
    ``output_fn``, ``input_type``, ``channels_last``, ``batch_size``).

    Outputs that are probabilities already (any wrapper) never get a second softmax from a
    metric's default: the metric switches it off and warns (``softmax=False`` here says so once;
    see :class:`ModelWrapper`). A model with one output per sample (a regression head, a binary
    ``decision_function``) needs ``target=BinaryTarget()`` or ``target=OutputIndex()``. A
    function of torch tensors needs ``input_type="torch"``.
    """
    if isinstance(obj, ModelWrapper):
        if kwargs:
            raise TypeError(
                f"Options {sorted(kwargs)} cannot be applied to an existing wrapper; "
                "wrap the raw model instead."
            )
        if device is not None and not same_device(device, obj.device):
            raise ValueError(
                f"The wrapper runs on {obj.device}; device={device!r} was requested."
            )
        options: dict[str, Any] = {}
        if softmax is not None:
            options["softmax"] = softmax
        if target is not None:
            options["target"] = target
        return obj.with_options(**options) if options else obj
    if isinstance(obj, nn.Module):
        return TorchModel(obj, softmax=softmax, target=target, device=device, **kwargs)
    if not callable(obj) and callable(getattr(obj, "predict_proba", None)):
        # predict_proba already returns probabilities: never soften them again by default
        return CallableModel(obj.predict_proba, softmax=bool(softmax), target=target,
                             device=device, **kwargs)
    if callable(obj):
        return CallableModel(obj, softmax=softmax, target=target, device=device, **kwargs)
    if callable(getattr(obj, "decision_function", None)):
        raise TypeError(
            f"{type(obj).__name__} has no predict_proba; wrap its decision function: "
            "wrap_model(clf.decision_function, target=BinaryTarget()) for a binary classifier "
            "(one value per sample), wrap_model(clf.decision_function) for (N, n_classes) "
            "scores."
        )
    raise TypeError(
        "`model` must be a torch.nn.Module, a callable mapping a batch to outputs, an object "
        f"with predict_proba, or a ModelWrapper; got {type(obj).__name__}."
    )
