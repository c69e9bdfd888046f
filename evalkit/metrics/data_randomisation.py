"""The data randomisation test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

A model trained on labels that were randomly permuted can only memorise: nothing it learned
relates the inputs to their true classes. An explanation method that explains what the model
learned should therefore give different maps for the model trained on the true labels and for
the one trained on permuted labels; maps that stay alike reflect the input (edges, the
architecture's inductive bias) rather than the model's knowledge.

Two pieces:

* :func:`train_on_permuted_labels` trains a **copy** of a (small) model on permuted labels: the
  user's model is deep-copied, the copy's layers re-initialised (each with its own
  ``reset_parameters`` under a seed derived from ``seed`` and the layer's name), the labels
  permuted by a seeded permutation (:func:`permuted_labels`: the class frequencies stay the
  same), and the copy trained with Adam and cross-entropy in seeded mini-batches. The user's
  model and the global random generators are left as they were (the training runs inside
  ``torch.random.fork_rng``, so dropout draws from a seeded, restored state). With
  ``permute=False`` the same procedure trains on the true labels: the control that says how
  much two trainings differ by their seeds alone.
* :class:`DataRandomisation` compares the explanations of the model with those of the
  permuted-label model, per sample, with a similarity (Spearman rank correlation of |a| by
  default, as :class:`~evalkit.metrics.MPRT`). **Lower is better.**

Retraining is the cost: the test fits small models (the shipped shapes CNN retrains in seconds
on a few hundred images); for a large model, train the permuted-label copy once with your own
training loop and pass the module.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._rng import derive_seed
from .._validation import as_tensor, check_bool, check_scalar, finite_rows
from ..models import ModelWrapper, wrap_model
from ..models._copy import copy_module
from .base import Metric, MetricBatch
from .randomisation import _lower_is_better, similarity_to_original
from .similarity import get_similarity

__all__ = [
    "DataRandomisation",
    "permuted_labels",
    "reinitialised_copy",
    "train_on_permuted_labels",
]


def permuted_labels(y: Any, seed: int = 0) -> torch.Tensor:
    """The labels ``y`` (N,) in a random order drawn from ``seed`` (a permutation: every class
    keeps its frequency). Draws from a generator of its own, never the global one."""
    yt = as_tensor(y, "y")
    gen = torch.Generator().manual_seed(int(seed) & ((1 << 63) - 1))
    perm = torch.randperm(yt.shape[0], generator=gen).to(yt.device)
    return yt[perm]


def _cuda_devices(module: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})


def _reinitialise(module: nn.Module, seed: int) -> None:
    """Re-initialise every submodule that has ``reset_parameters``, each under a seed of its
    own name (the caller restores the global generators). Values are drawn in float32 and cast
    to the layer's dtype, so a float64 copy of a model gets the same initial weights."""
    for name, sub in module.named_modules():
        reset = getattr(sub, "reset_parameters", None)
        if not callable(reset):
            continue
        own = list(sub.parameters(recurse=False))
        dtype = own[0].dtype if own else None
        torch.manual_seed(derive_seed(seed, "reinit", name) & ((1 << 63) - 1))
        if dtype is not None and dtype.is_floating_point and dtype != torch.float32:
            with torch.no_grad():
                drawn = copy.deepcopy(sub).to(torch.float32)
                drawn.reset_parameters()
                for mine, new in zip(own, drawn.parameters(recurse=False), strict=True):
                    mine.copy_(new.to(dtype))
                # what reset_parameters resets besides (a batch norm's running statistics)
                for mine, new in zip(sub.buffers(recurse=False), drawn.buffers(recurse=False),
                                     strict=True):
                    mine.copy_(new.to(mine.dtype))
        else:
            reset()


def reinitialised_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every layer re-initialised (seeded per layer name), in
    evaluation mode; the model and the global generators are left unchanged. An untrained
    reference (Adebayo et al.'s fully randomised network) and a cheap stand-in for a
    permuted-label model in tests of the metric's mechanics."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"reinitialised_copy needs a torch.nn.Module; got {type(model).__name__}.")
    work = copy_module(model)
    with torch.random.fork_rng(devices=_cuda_devices(work)):
        _reinitialise(work, seed)
    return work.eval()


def train_on_permuted_labels(
    model: nn.Module,
    x: Any,
    y: Any,
    *,
    epochs: int = 5,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    permute: bool = True,
    reinitialise: bool = True,
) -> nn.Module:
    """Train a copy of ``model`` on ``x`` with the labels ``y`` randomly permuted (Adebayo et
    al.'s data randomisation) and return it in evaluation mode.

    The copy is re-initialised first (``reinitialise``; per-layer seeds from ``seed``), then
    trained for ``epochs`` passes of Adam (``lr``, ``weight_decay``) on the cross-entropy of its
    outputs against :func:`permuted_labels` ``(y, seed)``, in mini-batches of ``batch_size``
    whose order is drawn from ``seed``. ``permute=False`` trains on the true labels instead (the
    control). The user's model is never modified, and the global random generators are
    restored afterwards. The same seed, torch version, thread count and device give the same
    weights.

    ``x`` (N, ...) and ``y`` (N,) class indices, NumPy or torch; they are moved to the model's
    device and dtype.
    """
    if not isinstance(model, nn.Module):
        raise TypeError("train_on_permuted_labels needs a torch.nn.Module; got "
                        f"{type(model).__name__}.")
    epochs = check_scalar("epochs", epochs, int, min_val=1)
    batch_size = check_scalar("batch_size", batch_size, int, min_val=1)
    lr = check_scalar("lr", lr, (int, float), min_val=0, include_min=False)
    weight_decay = check_scalar("weight_decay", weight_decay, (int, float), min_val=0)
    permute = check_bool("permute", permute)
    reinitialise = check_bool("reinitialise", reinitialise)
    xt, yt = training_data("train_on_permuted_labels", model, x, y)
    labels = permuted_labels(yt, seed) if permute else yt
    return fit_copy(model, xt, labels, epochs=epochs, batch_size=batch_size, lr=lr,
                    weight_decay=weight_decay, seed=seed,
                    prepare=(lambda work: _reinitialise(work, seed)) if reinitialise else None)


def training_data(caller: str, model: nn.Module, x: Any, y: Any
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (N, ...) and the class indices ``y`` (N,) as tensors on the device (and, for
    floating-point ``x``, in the dtype) of ``model``'s parameters, checked: one label per
    sample, finite inputs, a model with parameters. ``caller`` names the function in errors."""
    params = list(model.parameters())
    if not params:
        raise ValueError(f"{caller}: the model has no parameters to train.")
    device, dtype = params[0].device, params[0].dtype
    xt = as_tensor(x, "x", device=device)
    if xt.is_floating_point():
        xt = xt.to(dtype)
    yt = as_tensor(y, "y", device=device).to(torch.int64)
    if yt.ndim != 1 or yt.shape[0] != xt.shape[0]:
        raise ValueError(f"`y` must hold one class index per sample, shape ({xt.shape[0]},); "
                         f"got {tuple(yt.shape)}.")
    if not bool(finite_rows(xt.reshape(xt.shape[0], -1)).all()):
        raise ValueError("`x` contains NaN or Inf.")
    return xt, yt


def fit_copy(
    model: nn.Module,
    xt: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    prepare: Callable[[nn.Module], None] | None = None,
    transform: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
) -> nn.Module:
    """Train a deep copy of ``model`` on ``(xt, labels)`` (from :func:`training_data`) and
    return it in evaluation mode: the training loop of the helpers that train a copy.

    Adam (``lr``, ``weight_decay``) on the cross-entropy, ``epochs`` passes in mini-batches of
    ``batch_size`` whose order is drawn from ``seed``. Inside ``torch.random.fork_rng`` (the
    global generators are restored afterwards): ``prepare(copy)`` runs first (e.g. a seeded
    re-initialisation), then the global generator is seeded from ``seed`` for the randomness
    inside the model (dropout). ``transform(inputs, sample_idx, epoch)`` may replace each
    mini-batch's inputs (e.g. delete patches); it must draw its own random numbers from
    ``seed``, never from the global generator. The user's model is never modified.
    """
    work = copy_module(model)
    for p in work.parameters():
        p.requires_grad_(True)
    with torch.random.fork_rng(devices=_cuda_devices(work)):
        if prepare is not None:
            prepare(work)
        # dropout and other in-model randomness draw from the global generator: seeded here,
        # restored by fork_rng
        torch.manual_seed(derive_seed(seed, "training") & ((1 << 63) - 1))
        order = torch.Generator().manual_seed(derive_seed(seed, "order") & ((1 << 63) - 1))
        opt = torch.optim.Adam(work.parameters(), lr=float(lr), weight_decay=float(weight_decay))
        work.train()
        with torch.enable_grad():
            for epoch in range(epochs):
                for idx in torch.randperm(xt.shape[0], generator=order).split(batch_size):
                    idx = idx.to(xt.device)
                    inputs = xt[idx] if transform is None else transform(xt[idx], idx, epoch)
                    loss = F.cross_entropy(work(inputs), labels[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
    work.zero_grad(set_to_none=True)
    return work.eval()


class DataRandomisation(Metric):
    """Data randomisation test (Adebayo et al. 2018). **Lower is better.**

    The similarity between the explanation ``a`` of the model and the explanation, by the same
    explain function, of a model trained on randomly permuted labels (``randomised_model``). An
    explanation that depends on what the model learned from the labels changes: low similarity
    is good (with a registered distance such as ``"mse"`` high is good, and the instance's
    ``higher_is_better`` says so). See the module docstring and
    :func:`train_on_permuted_labels`.

    Parameters
    ----------
    randomised_model:
        The model trained on permuted labels: an ``nn.Module`` (or a
        :class:`~evalkit.models.ModelWrapper`) with the model's inputs and outputs, e.g.
        ``train_on_permuted_labels(model, x_train, y_train)``; or a callable
        ``f(model) -> nn.Module`` called with the evaluated model on every call (e.g.
        ``functools.partial(train_on_permuted_labels, x=x_train, y=y_train)``; it retrains on
        each call, so pass the trained module to reuse it). Required at call time.
    similarity_func:
        A registered similarity or distance (``"spearman"``, default, as MPRT; ``"pearson"``,
        ``"ssim"``, ``"hog"``, ``"mse"``...) or ``f(a, b) -> (N,)``.

    Explanations are preprocessed like ``a`` (``abs=True`` and ``normalise=True`` by default,
    per sample, as MPRT). The randomised model explains the same labels ``y`` with the model's
    softmax and target settings. A sample whose similarity is undefined (a constant map: a
    correlation is 0/0) or whose re-explanation is not finite is NaN with a reason.

    Reference: J. Adebayo, J. Gilmer, M. Muelly, I. Goodfellow, M. Hardt, B. Kim, "Sanity
    Checks for Saliency Maps", NeurIPS 2018 (section 5, the data randomisation test).
    """

    family = "randomisation"
    higher_is_better = False
    re_explains = True
    default_abs = True
    default_normalise = True
    paper = "Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018"
    aliases = ("DataRandomization", "DataRandomisationTest")
    #: token ids too: the explanations are re-computed by the explain function, which handles ids
    modalities = ("image", "series", "tabular", "tokens")

    def __init__(
        self,
        randomised_model: nn.Module | ModelWrapper | Callable[[Any], Any] | None = None,
        similarity_func: str | Callable[..., torch.Tensor] = "spearman",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if randomised_model is not None and not (
                isinstance(randomised_model, nn.Module | ModelWrapper) or callable(
                    randomised_model)):
            raise TypeError("`randomised_model` must be an nn.Module, a ModelWrapper or a "
                            f"callable f(model) -> nn.Module; got {type(randomised_model)}.")
        self.randomised_model = randomised_model
        self.similarity_func = similarity_func
        get_similarity(similarity_func)

    @classmethod
    def conformance_params(cls) -> dict[str, Any]:
        """For the conformance checks: a re-initialised copy stands in for the permuted-label
        model (the checks test the protocol, not the training)."""
        return {"randomised_model": reinitialised_copy}

    @property
    def reads_model(self) -> bool:
        """Whether the scores depend on the model the metric is called with (metaeval's
        applicability): only through a callable ``randomised_model``; a given module is
        explained instead of it (the model's own explanation, ``a``, comes from outside)."""
        return not isinstance(self.randomised_model, nn.Module | ModelWrapper)

    def _derived_metadata(self) -> dict[str, bool]:
        return {"higher_is_better": not _lower_is_better(self.similarity_func)}

    def _randomised_wrapper(self, batch: MetricBatch) -> ModelWrapper:
        model = batch.require_model()
        spec = self.randomised_model
        if spec is None:
            raise ValueError(
                "DataRandomisation needs the model trained on permuted labels: pass "
                "randomised_model=evalkit.metrics.data_randomisation.train_on_permuted_labels("
                "model, x_train, y_train) (or a callable f(model) -> nn.Module).")
        if not isinstance(spec, nn.Module | ModelWrapper):
            user_model = getattr(model, "model", None)
            spec = spec(user_model if isinstance(user_model, nn.Module) else batch.model_obj)
        if isinstance(spec, ModelWrapper):
            return spec.with_options(softmax=model.softmax, target=model.target)
        if spec is getattr(model, "model", None):
            raise ValueError("`randomised_model` is the evaluated model itself; pass the copy "
                             "trained on permuted labels.")
        return wrap_model(spec, softmax=model.softmax, target=model.target, device=model.device)

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        assert batch.a is not None
        other = self._randomised_wrapper(batch)
        raw = self._run_explain(batch, batch.x, batch.y, other)
        finite = finite_rows(raw).to(batch.device)
        a_r = self._preprocess_attributions(batch, raw, batch.x, flag_nan=False)
        s = similarity_to_original(
            batch, a_r, finite, self.similarity_func, who="DataRandomisation",
            nonfinite="the permuted-label model's explanation contains NaN or Inf")
        return torch.where(finite, s, torch.full_like(s, math.nan))
