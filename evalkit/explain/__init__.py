"""``explain()``: attributions from a registry of explanation methods.

>>> a = evalkit.explain(model, x, y, method="IntegratedGradients", n_steps=32)  # doctest: +SKIP

NumPy in gives NumPy out; tensors in give tensors out (on the model's device). Every method
honours the wrapper's target (class index per sample, probabilities with ``softmax=True``, or a
custom score callable): the explained quantity is the scored quantity.
"""

from .core import (
    available_methods,
    explain,
    get_explainer,
    numpy_explain_fn,
    register_explainer,
)

__all__ = [
    "available_methods",
    "explain",
    "get_explainer",
    "numpy_explain_fn",
    "register_explainer",
]
