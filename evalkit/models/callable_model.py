"""Wrapper for plain callables: scikit-learn ``predict_proba``, ONNX Runtime, JAX, Keras..."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._validation import as_tensor, check_option
from .base import ModelCallError, ModelWrapper

__all__ = ["CallableModel"]

TORCH_INPUT_HINT = ("If the function computes on torch tensors, wrap it with "
                    "evalkit.models.wrap_model(fn, input_type='torch'): it then receives tensors "
                    "and gradients flow through it.")


class CallableModel(ModelWrapper):
    """Any callable mapping a batch of inputs to a batch of outputs.

    Parameters
    ----------
    fn:
        ``fn(batch) -> outputs``. With ``input_type="numpy"`` (the default) the batch is a
        float32 ``numpy.ndarray`` and the outputs anything ``numpy.asarray`` accepts (one row
        per input). With ``input_type="torch"`` it receives and returns tensors (then gradients
        flow through it if ``fn`` is differentiable). A function of torch tensors wrapped with
        the default ``"numpy"`` gets no gradients: gradient explainers then say to pass
        ``input_type="torch"``.
    channels_last:
        evalkit's arrays are channel-first, (N, C, H, W); set this if ``fn`` expects (N, H, W, C)
        (Keras, JAX/Flax conventions). The batch is transposed before the call.
    device:
        Where the outputs are put and the metric maths runs (default CPU).

    A function that returns probabilities (``predict_proba``) gets no second softmax from a
    metric's default (see :class:`~evalkit.models.ModelWrapper`); a binary
    ``decision_function`` (one value per sample) is scored with
    ``target=BinaryTarget()``.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        *,
        input_type: str = "numpy",
        channels_last: bool = False,
        softmax: bool | None = None,
        target: object = None,
        device: torch.device | str | None = None,
        batch_size: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"CallableModel needs a callable; got {type(fn).__name__}.")
        super().__init__(softmax=softmax, target=target, batch_size=batch_size)
        self.fn = fn
        self.input_type = check_option("input_type", input_type, ("numpy", "torch"))
        self.channels_last = bool(channels_last)
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self._dtype = dtype
        self.differentiable = self.input_type == "torch"
        self._returned_tensor = False

    def _accepts_tensors(self, x: torch.Tensor) -> bool:
        try:
            with torch.no_grad():
                out = self.fn(x.detach())
        except Exception:
            return False
        return isinstance(out, torch.Tensor)

    @property
    def not_differentiable_hint(self) -> str:
        """Why no gradient reaches the inputs, and the fix (for gradient explainers' errors)."""
        if self.input_type == "torch":
            return ""
        seen = (" (it returned a torch tensor, so it probably does)" if self._returned_tensor
                else "")
        return ("This CallableModel passes NumPy arrays to its function, so no gradient can "
                f"flow through it{seen}. " + TORCH_INPUT_HINT)

    @property
    def model(self) -> Callable[[Any], Any]:
        return self.fn

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim >= 3:
            x = x.movedim(1, -1)
        if self.input_type == "torch":
            out = self.fn(x)
            if not isinstance(out, torch.Tensor):
                out = as_tensor(out, "model output", device=self._device)
        else:
            try:
                out = self.fn(np.ascontiguousarray(x.detach().cpu().numpy()))
            except (TypeError, AttributeError, RuntimeError) as exc:
                # a function of torch tensors fed NumPy arrays fails deep inside itself; on
                # this error path only, one call with the tensor tells whether that is why
                if self._accepts_tensors(x):
                    raise ModelCallError(
                        f"The model function fails on NumPy arrays ({type(exc).__name__}: "
                        f"{exc}) but runs on torch tensors. " + TORCH_INPUT_HINT) from exc
                raise
            if isinstance(out, torch.Tensor):
                self._returned_tensor = True
                out = out.detach()
            out = as_tensor(out if isinstance(out, torch.Tensor) else np.asarray(out),
                            "model output", device=self._device)
        if out.shape[:1] != x.shape[:1]:
            raise ValueError(
                f"The model returned {tuple(out.shape)} for a batch of {x.shape[0]} inputs; "
                "it must return one row per input."
            )
        if not out.is_floating_point():
            out = out.to(self._dtype)
        return out
