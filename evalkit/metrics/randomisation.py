"""Randomisation: does the explanation depend on what the model learned?

Sanity checks (Adebayo et al. 2018) re-explain the inputs with modified models (layers
re-initialised) or for other outputs (a random class) and compare with the original explanation.
An explanation that does not change when the model's parameters are destroyed cannot be
explaining the model.

Every metric here works on copies of the model (``TorchModel.randomise_layers``); the user's
model is never touched. A layer is re-initialised with its own ``reset_parameters`` under a seed
derived from the metric's ``seed`` and the layer's name, so the same seed gives the same
randomised weights on every run, in every layer order, and in all three MPRT variants. The
explanations of each modified copy are computed for the whole batch in chunks (never per
sample), with the metric's explain function (``explain_fn``, or :func:`evalkit.explain` with
``explain_kwargs``).

Normalisation layers (the ``norm_layers`` option of the MPRT family)
-------------------------------------------------------------------
Adebayo et al. re-initialise each layer's weights *randomly*. Most layers' ``reset_parameters``
draws random values, but that of a normalisation layer (batch, instance, group, layer or RMS
norm) is deterministic: weight 1, bias 0, and for batch norm also running mean 0 and variance 1.
"Randomising" such a layer the torch way (Quantus' way) therefore gives the same layer for every
seed: with reset statistics an almost-identity map (x / sqrt(1 + eps) in evaluation mode), a
change of scale rather than destroyed learned information. The options:

* ``"random"`` (default): a random initialisation, seeded per layer like every other layer:
  the affine weight is drawn from U(0, 1) (the initialiser torch used for batch-norm weights
  before version 1.2) and the bias set to 0; the running statistics are kept, so the layer
  still normalises its inputs and only loses its learned per-channel gain and shift, scrambled
  by random gains.
* ``"reinit"``: the initial values of the trainable parameters only (weight 1, bias 0), running
  statistics kept (TensorFlow's ``initialize_variables(trainable_variables)`` in Adebayo et
  al.'s code). Deterministic: the same for every seed.
* ``"reset"``: torch's ``reset_parameters``, also resetting the running statistics (Quantus).
* ``"skip"``: normalisation layers stay trained and are not in the layer list.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import _quantus_compat, _rng
from .._progress import tqdm
from .._rng import derive_seed
from .._validation import check_bool, check_option, check_scalar, finite_rows
from ..models import ModelWrapper, randomisable_layers
from .base import Metric, MetricBatch, call_explain_fn, explain_call_rows
from .similarity import (
    _centred_rows,
    _pearson_rows,
    _pearson_with_ranks_of,
    get_similarity,
    rank,
    similarity_info,
    spearman,
    undefined_reason,
)

__all__ = ["MPRT", "EfficientMPRT", "ModelParameterRandomisation", "RandomLogit", "SmoothMPRT"]

LAYER_ORDERS = ("top_down", "bottom_up", "independent")
NORM_LAYER_MODES = ("random", "reinit", "reset", "skip")
SUMMARIES = ("mean", "last")
N_BINS_RULES = ("freedman_diaconis", "scott", "sqrt", "sturges", "rice")

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

# Quantus' n_bins rule names, accepted as aliases
_RULE_ALIASES = {
    "freedman diaconis": "freedman_diaconis",
    "freedman_diaconis_rule": "freedman_diaconis",
    "scotts": "scott",
    "scotts_rule": "scott",
    "square root": "sqrt",
    "square_root_choice": "sqrt",
    "sturges formula": "sturges",
    "sturges_formula": "sturges",
    "rice_rule": "rice",
}


def _is_norm_layer(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES)


def _random_norm_init(module: nn.Module, seed: int) -> None:
    """``norm_layers="random"``: affine weight ~ U(0, 1), bias 0, from a generator of the
    layer's own (no global RNG); buffers (running statistics) are left as they are."""
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    with torch.no_grad():
        if isinstance(weight, torch.Tensor):
            gen = torch.Generator(device=weight.device)
            gen.manual_seed(seed & ((1 << 63) - 1))
            weight.uniform_(0.0, 1.0, generator=gen)
        if isinstance(bias, torch.Tensor):
            bias.zero_()


def _reset_is_overwritten(layer: nn.Module) -> bool:
    """Whether ``norm_layers="random"`` leaves nothing of the layer's re-initialisation with
    ``keep_buffers``: a torch normalisation layer (torch's own class, so torch's
    ``reset_parameters``) whose parameters are only ``weight`` and ``bias``. That reset is
    deterministic (weight 1, bias 0, running statistics reset) and draws nothing; the kept
    buffers are restored after it, and :func:`_random_norm_init` then overwrites the weight and
    the bias whole, so the copy is the same without running it."""
    if not _is_norm_layer(layer) or not type(layer).__module__.startswith("torch.nn.modules."):
        return False
    params = dict(layer.named_parameters(recurse=False))
    return isinstance(params.get("weight"), torch.Tensor) and set(params) <= {"weight", "bias"}


def _lower_is_better(similarity_func: Any) -> bool:
    """Direction of a score that is ``similarity_func`` of two explanations which should
    differ: lower is better for a similarity, higher for a registered distance (``"mse"``,
    ``"euclidean"``...). A callable is taken to be a similarity."""
    if isinstance(similarity_func, str):
        try:
            return similarity_info(similarity_func).kind != "distance"
        except ValueError:
            return True
    return True


def _similarity_name(func: Any) -> str:
    if isinstance(func, str):
        try:
            return similarity_info(func).name
        except ValueError:
            return func
    return getattr(func, "__name__", type(func).__name__)


def _same_shapes(copy: ModelWrapper, model: ModelWrapper) -> ModelWrapper:
    """A randomised copy has the model's architecture: share the per-sample output shapes the
    wrapper already probed, so that explaining with the copy does not probe again."""
    shapes = getattr(model, "_output_shapes", None)
    if isinstance(shapes, dict) and isinstance(getattr(copy, "_output_shapes", None), dict):
        copy._output_shapes.update(shapes)
    return copy


class _NoBar:
    """The progress bar of a call without one: its methods do nothing."""

    def update(self, _n: int = 1) -> None:
        pass

    def set_description(self, _desc: str) -> None:
        pass

    def close(self) -> None:
        pass


_NO_BAR = _NoBar()


class _ModelRandomisation(Metric):
    """Shared machinery of the MPRT family: which layers, in which order, and the explanations
    of each randomised copy (whole batch, chunked, non-finite rows detected)."""

    family = "randomisation"
    higher_is_better = False
    re_explains = True
    # the seed draws the re-initialised layers' weights (every norm_layers mode re-initialises
    # the linear and convolution layers), so another seed gives other scores
    stochastic = True
    paper = ("Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018")

    def __init__(
        self,
        *,
        layer_order: str = "top_down",
        layer_names: list[str] | None = None,
        norm_layers: str = "random",
        seed: int | torch.Generator | None = 42,
        **kwargs: Any,
    ) -> None:
        super().__init__(seed=seed, **kwargs)
        self.layer_order = check_option("layer_order", layer_order, LAYER_ORDERS)
        self.norm_layers = check_option("norm_layers", norm_layers, NORM_LAYER_MODES)
        if layer_names is not None:
            if isinstance(layer_names, str) or not all(isinstance(n, str) for n in layer_names):
                raise TypeError("`layer_names` must be a list of layer names (str).")
            layer_names = list(layer_names)
            if not layer_names:
                raise ValueError("`layer_names` must not be empty.")
        self.layer_names = layer_names
        self.layer_scores_: pd.DataFrame | None = None

    # ------------------------------------------------------------------ layers
    def _layers(self, model: ModelWrapper) -> list[str]:
        """The randomised layers in definition order (the order of a bottom-up cascade)."""
        module = getattr(model, "model", None)
        if not isinstance(module, nn.Module):
            raise NotImplementedError(
                f"{type(self).__name__} needs a torch.nn.Module: it re-initialises the model's "
                f"layers; got a {type(model).__name__} around {type(module).__name__}."
            )
        layers = randomisable_layers(module)
        known = [name for name, _ in layers]
        if self.layer_names is not None:
            missing = [n for n in self.layer_names if n not in known]
            if missing:
                raise ValueError(f"Unknown or parameter-free layers {missing}; randomisable "
                                 f"layers are {known}.")
            wanted = set(self.layer_names)
            layers = [(n, m) for n, m in layers if n in wanted]
        if self.norm_layers == "skip":
            layers = [(n, m) for n, m in layers if not _is_norm_layer(m)]
        if not layers:
            raise ValueError(f"{type(self).__name__}: the model has no layers to randomise.")
        return [name for name, _ in layers]

    def _ordered(self, names: list[str]) -> list[str]:
        return names[::-1] if self.layer_order == "top_down" else list(names)

    def _randomised_models(
        self, model: ModelWrapper, names: list[str], seed: int, *, only_last: bool = False
    ) -> Iterator[tuple[str, ModelWrapper]]:
        """``(layer, copy)`` in the metric's order; ``only_last`` yields only the final step
        (the fully randomised model of a cascade), built directly."""
        keep = self.norm_layers in ("random", "reinit")
        if only_last:
            last = self._ordered(names)[-1]
            reset = names
            if self.norm_layers == "random":
                module = model.model
                reset = [n for n in names
                         if not _reset_is_overwritten(module.get_submodule(n))]
            with model.randomised(reset, seed=seed, keep_buffers=keep) as copy:
                self._randomise_norm_layers(copy, names, seed)
                yield last, _same_shapes(copy, model)
            return
        for name, copy in model.randomise_layers(self.layer_order, seed=seed, layer_names=names,
                                                 keep_buffers=keep):
            # the copies of a cascade share one module, so a layer drawn here stays drawn
            self._randomise_norm_layers(copy, [name], seed)
            yield name, _same_shapes(copy, model)

    def _randomise_norm_layers(self, copy: ModelWrapper, names: list[str], seed: int) -> None:
        """Give the normalisation layers among ``names`` of the copy their random
        initialisation (``norm_layers="random"``), each from a seed of its own name."""
        if self.norm_layers != "random":
            return
        for name in names:
            layer = copy.model.get_submodule(name)  # not a dict of every module per step
            if _is_norm_layer(layer):
                _random_norm_init(layer, derive_seed(seed, "norm_layer", name))

    def _progress(self, total: int, desc: str):
        if not self.progress:  # a disabled bar draws nothing; building one costs a call ~0.5 ms
            return _NO_BAR
        return tqdm(total=total, desc=desc, leave=False)

    # ------------------------------------------------------------------ explanations
    def _explain_checked(
        self,
        batch: MetricBatch,
        x: torch.Tensor,
        y: torch.Tensor | None,
        model: ModelWrapper | None,
        like: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Explanations (after ``normalise``/``abs``) and a (N,) mask of finite rows."""
        raw = self._run_explain(batch, x, y, model)
        finite = finite_rows(raw).to(batch.device)
        a = self._preprocess_attributions(batch, raw, x, flag_nan=False)
        if like is not None and a.shape != like.shape:
            raise ValueError(
                f"{type(self).__name__}: the explain function returns attributions of shape "
                f"{tuple(a.shape)} after alignment, but `a` has shape {tuple(like.shape)}. "
                "Compute `a` with the same explain function, or make it return the same shape "
                "(e.g. explain_kwargs={'reduce_channels': 'sum'} for 1-channel maps)."
            )
        return a, finite


class MPRT(_ModelRandomisation):
    """Model Parameter Randomisation Test (Adebayo et al. 2018). **Lower is better**.

    The model's layers are re-initialised one after the other, cascading from the output to the
    input (``layer_order="top_down"``, the default), from the input (``"bottom_up"``), or one
    at a time with all others trained (``"independent"``). After each step the inputs are
    explained again with the modified copy and compared with the original explanation ``a``
    by ``similarity_func`` (Spearman rank correlation by default). An explanation that depends
    on the learned parameters becomes dissimilar: low similarity is good.

    Returns one number per sample, the ``summary`` of its per-layer similarities: their
    ``"mean"`` (default) or the ``"last"`` step (the fully randomised model for the cascading
    orders). The per-layer values are in ``layer_scores_`` (a DataFrame, one row per randomised
    layer in randomisation order, one column per sample) and ``curves_`` (N, L).
    A similarity that is undefined at some layer (e.g. a constant map: a correlation is 0/0)
    makes that cell NaN, and the sample's summary NaN with the layer named in ``nan_reasons_``.

    Parameters
    ----------
    similarity_func:
        A registered name (``"spearman"``, ``"pearson"``, ``"ssim"``, ``"hog"``, ``"cosine"``,
        ``"mse"``...; see :mod:`evalkit.metrics.similarity`) or ``f(a, b) -> (N,)`` on
        (N, ...) float64 tensors. With a registered distance (``"mse"``, ``"euclidean"``...)
        *higher* means less similar, and the instance's ``higher_is_better`` is True.
    layer_order:
        ``"top_down"``, ``"bottom_up"`` or ``"independent"``.
    summary:
        ``"mean"`` over the randomised layers or the ``"last"`` step.
        Quantus' ``return_average_correlation=True`` / ``return_last_correlation=True`` are
        accepted.
    skip_layers:
        Explain only the final, fully randomised model of a cascading order (one explanation
        pass instead of one per layer); implies ``summary="last"``.
    layer_names:
        Randomise only these layers (names from ``model.named_modules()``), in the order.
    norm_layers:
        What randomising a normalisation layer means: ``"random"`` (default; a seeded random
        affine weight U(0, 1) and bias 0, running statistics kept), ``"reinit"`` (the initial
        values 1 and 0, running statistics kept, as in Adebayo et al.'s code; deterministic),
        ``"reset"`` (torch's ``reset_parameters``, also resetting the running statistics; what
        Quantus does; deterministic), ``"skip"`` (never randomised, not listed). See the module
        docstring.
    include_original:
        Also compare ``a`` with a fresh explanation of the unmodified model, reported as the
        row ``"original"`` of ``layer_scores_`` (a check of the explainer's determinism, never
        part of the summary).
    stop_layer:
        Progressive randomisation with a stop layer (Xplique's progressive layer
        randomisation): randomise the layers in the metric's order (from the output for
        ``"top_down"``) up to *and including* this layer (a name from
        ``model.named_modules()``), then stop; the layers after it stay trained. ``None``
        (default): every layer. The summary (``"mean"``/``"last"``), ``skip_layers`` and
        ``layer_scores_`` then cover the randomised layers only. A name that is not among
        the randomised layers (after ``layer_names`` and ``norm_layers="skip"``) is an error
        that lists them. Combine with ``similarity_func="ssim"`` or ``"hog"`` for the
        structural similarities of the variant.
    seed:
        Seeds the layer re-initialisation (per layer, from the seed and the layer's name).

    Deviations from Quantus (``quantus.MPRT`` 0.6):

    * the summary excludes the self-comparison of the un-randomised model (Quantus' average
      skips a key ``"orig"`` that does not exist, so the ~1.0 ``"original"`` value enters the
      mean, deviation C5); the self-comparison is not computed unless ``include_original=True``;
    * each layer gets its own seed (from ``seed`` and its name) in a forked RNG; Quantus calls
      ``torch.manual_seed(seed + 1)`` before every layer (the same seed for all layers) and
      leaves the global RNG reseeded (deviation C22);
    * normalisation layers get a random initialisation and keep their running statistics
      (``norm_layers="random"``; Quantus' ``reset_parameters`` gives every seed the same
      identity-like layer; ``"reset"`` reproduces it);
    * a layer is a module that owns parameters (Quantus: any module with ``reset_parameters``;
      the same for standard layers);
    * normalisation and ``abs`` are per sample (Quantus normalises ``a`` by the maximum over
      the whole batch, deviation C1; rank correlations are unaffected);
    * the result is a per-sample array; the Quantus-style dict is
      ``metric.layer_scores_.T.to_dict("list")``.

    Reference: J. Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018.
    """

    #: token ids too: the explanations are re-computed by the explain function, which handles ids
    modalities = ("image", "series", "tabular", "tokens")

    aliases = ("ModelParameterRandomisation", "ModelParameterRandomization")
    default_abs = True
    default_normalise = True

    def __init__(
        self,
        similarity_func: str | Callable[..., torch.Tensor] = "spearman",
        layer_order: str = "top_down",
        seed: int | torch.Generator | None = 42,
        *,
        summary: str = "mean",
        skip_layers: bool = False,
        layer_names: list[str] | None = None,
        norm_layers: str = "random",
        include_original: bool = False,
        stop_layer: str | None = None,
        **kwargs: Any,
    ) -> None:
        avg = kwargs.pop("return_average_correlation", None)
        last = kwargs.pop("return_last_correlation", None)
        if avg and last:
            raise ValueError("`return_average_correlation` and `return_last_correlation` cannot "
                             "both be True.")
        if avg:
            summary = "mean"
        elif last:
            summary = "last"
        super().__init__(layer_order=layer_order, layer_names=layer_names,
                         norm_layers=norm_layers, seed=seed, **kwargs)
        self.similarity_func = similarity_func
        get_similarity(similarity_func)
        self.summary = check_option("summary", summary, SUMMARIES)
        self.skip_layers = check_bool("skip_layers", skip_layers)
        if self.skip_layers and self.layer_order == "independent":
            raise ValueError("`skip_layers=True` evaluates the fully randomised model of a "
                             "cascading order; it cannot be used with layer_order='independent'.")
        if self.skip_layers and avg:
            raise ValueError("`skip_layers=True` computes only the last layer; it cannot be "
                             "combined with `return_average_correlation=True`.")
        self.include_original = check_bool("include_original", include_original)
        if stop_layer is not None and not isinstance(stop_layer, str):
            raise TypeError(f"`stop_layer` must be a layer name (str) or None; got "
                            f"{stop_layer!r}.")
        self.stop_layer = stop_layer

    def _derived_metadata(self) -> dict[str, bool]:
        # with a distance, explanations that differ more score higher: this instance's
        # direction flips (metaeval and anyone reading ``metric.higher_is_better`` rank by it)
        return {"higher_is_better": not _lower_is_better(self.similarity_func)}

    def _layers(self, model: ModelWrapper) -> list[str]:
        """The randomised layers in definition order, cut after ``stop_layer`` in the
        metric's order."""
        names = super()._layers(model)
        if self.stop_layer is None:
            return names
        ordered = self._ordered(names)
        if self.stop_layer not in ordered:
            raise ValueError(
                f"{type(self).__name__}: unknown `stop_layer` {self.stop_layer!r}; the layers "
                f"randomised here ({self.layer_order} order) are {ordered}.")
        kept = set(ordered[: ordered.index(self.stop_layer) + 1])
        return [name for name in names if name in kept]

    # ------------------------------------------------------------------ hooks
    def _reference(self, batch: MetricBatch) -> torch.Tensor:
        """The explanation the randomised ones are compared with: ``a``."""
        assert batch.a is not None
        return batch.a

    def _similarity(
        self, ref: torch.Tensor, other: torch.Tensor, finite: torch.Tensor,
        cache: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, list[str | None]]:
        fn = get_similarity(self.similarity_func)
        if fn is spearman and cache is not None:
            # the reference is ranked once for all layers
            if "ref_rank" not in cache:
                flat = ref.reshape(ref.shape[0], -1).to(torch.float64)
                ref_rank = rank(flat)
                # on the CPU the centred reference ranks are kept too (the same arithmetic)
                cache["ref_rank"] = (_centred_rows(ref_rank) if ref_rank.device.type == "cpu"
                                     else ref_rank)
                cache["ref_finite"] = finite_rows(flat)
            flat = other.reshape(other.shape[0], -1)
            if flat.dtype not in (torch.float32, torch.float64):
                flat = flat.to(torch.float64)
            # float32 maps are ranked as they are: their float64 values are the same numbers,
            # so the same order and ties (no widening copy per layer)
            if isinstance(cache["ref_rank"], tuple):
                s = _pearson_with_ranks_of(cache["ref_rank"], flat.detach().numpy())
            else:
                s = _pearson_rows(cache["ref_rank"], rank(flat))
            ok = cache["ref_finite"] & finite_rows(flat)
            s = torch.where(ok, s, torch.full_like(s, math.nan))
        else:
            s = torch.as_tensor(fn(ref, other))
        if s.shape != (ref.shape[0],):
            raise RuntimeError(f"similarity_func returned shape {tuple(s.shape)}; expected "
                               f"({ref.shape[0]},).")
        s = s.to(device=ref.device, dtype=torch.float64)
        reasons: list[str | None] = [None] * ref.shape[0]
        bad = ~torch.isfinite(s)
        if bool(bad.any()):
            known = undefined_reason(ref, other, _similarity_name(self.similarity_func))
            for i in torch.nonzero(bad).flatten().tolist():
                reasons[i] = known[i] or "similarity is not finite"
        for i in torch.nonzero(~finite).flatten().tolist():
            reasons[i] = "the randomised model's explanation contains NaN or Inf"
        s = torch.where(finite, s, torch.full_like(s, math.nan))
        return s, reasons

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        self.layer_scores_ = None
        model = batch.require_model()
        names = self._layers(model)
        ref = self._reference(batch)
        rows: list[tuple[str, torch.Tensor, list[str | None]]] = []
        cache: dict[str, Any] = {}
        original = None
        if self.include_original:
            a0, finite = self._explain_checked(batch, batch.x, batch.y, None, like=ref)
            original = self._similarity(ref, a0, finite, cache)
        steps = 1 if self.skip_layers else len(names)
        bar = self._progress(steps, type(self).__name__)
        try:
            for name, copy in self._randomised_models(model, names, batch.seed,
                                                      only_last=self.skip_layers):
                bar.set_description(f"{type(self).__name__} {name}")
                a_r, finite = self._explain_checked(batch, batch.x, batch.y, copy, like=ref)
                s, reasons = self._similarity(ref, a_r, finite, cache)
                rows.append((name, s, reasons))
                bar.update(1)
        finally:
            bar.close()

        table = torch.stack([s for _, s, _ in rows])  # (L, N)
        index = [name for name, _, _ in rows]
        frame = table.T.cpu().numpy()
        layer_scores = pd.DataFrame(table.cpu().numpy(), index=index)
        if original is not None:
            orig_row = pd.DataFrame(original[0].cpu().numpy()[None, :], index=["original"])
            layer_scores = pd.concat([orig_row, layer_scores])
        layer_scores.index.name = "layer"
        layer_scores.columns.name = "sample"
        batch.record("layer_scores", layer_scores, per_sample=False)
        batch.set_curves(torch.as_tensor(frame), torch.arange(1, len(rows) + 1))

        summary = table[-1] if (self.summary == "last" or self.skip_layers) else table.mean(0)
        used = rows[-1:] if (self.summary == "last" or self.skip_layers) else rows
        reasons = [None] * batch.n
        for name, _, layer_reasons in used:
            if not any(layer_reasons):  # the usual case: no undefined row (no per-row loop)
                continue
            for i, r in enumerate(layer_reasons):
                if r is not None and reasons[i] is None:
                    reasons[i] = f"similarity undefined after randomising {name!r}: {r}"
        if not any(reasons):
            return summary
        for i, r in enumerate(reasons):
            if r is not None:
                batch.set_nan(torch.arange(batch.n) == i, r)
        return summary


# ============================================================================ SmoothMPRT
class SmoothMPRT(MPRT):
    """Smooth MPRT (sMPRT; Hedström et al. 2023). **Lower is better**.

    MPRT with denoised explanations: every explanation (of the original and of each randomised
    model) is the mean over ``nr_samples`` explanations of noisy copies of the input,
    x + N(0, sigma_i^2) with sigma_i = ``noise_magnitude`` * (max(x_i) - min(x_i)); the last
    copy is the input itself (so ``nr_samples=1`` is plain MPRT). Averaging removes the
    gradient noise that makes MPRT's similarities unreliable.

    All N x ``nr_samples`` noisy inputs are explained in large chunks with the metric's own
    explain function (``explain_fn``; Quantus always calls ``quantus.explain`` instead, deviation
    C6). The noise of each sample is drawn once per call from that sample's key
    (:mod:`evalkit._rng`: the seed and the sample's values) and reused for the original and
    every randomised model, so the layers are compared on the same noisy inputs.

    Parameters
    ----------
    nr_samples:
        Noisy copies per explanation (default 50, Quantus' ImageNet setting).
    noise_magnitude:
        Noise standard deviation relative to each input's value range.
    reference:
        ``"smoothed"`` (default): the reference is the denoised explanation of the original
        model, as in the paper, also when ``a`` is given (it is then re-computed with the
        explain function, and ``a`` must have the shape that function returns); ``"given"``:
        ``a`` as given (Quantus' behaviour when ``a_batch`` is passed). With ``a=None`` both
        compute the denoised explanation once.
    Other parameters as :class:`MPRT` (``layer_order`` defaults to ``"bottom_up"`` and
    ``normalise_func`` to ``"second_moment"``, as in Quantus).

    Deviations from Quantus (``quantus.SmoothMPRT`` 0.6), besides MPRT's: the user's
    ``explain_fn`` is used (deviation C6); the noise is keyed per sample and shared by all models
    (Quantus draws new global-RNG noise for every model); the reference is smoothed by default.

    Reference: A. Hedström, L. Weber, S. Lapuschkin, M. M.-C. Höhne, "Sanity Checks Revisited:
    An Exploration to Repair the Model Parameter Randomisation Test", XAI in Action workshop,
    NeurIPS 2023.
    """

    #: the noisy copies are x + N(0, sigma^2): not defined for token ids
    modalities = ("image", "series", "tabular")

    aliases = ("sMPRT",)
    stochastic = True
    default_normalise_func = "second_moment"
    paper = ("Hedström et al., Sanity Checks Revisited: An Exploration to Repair the Model "
             "Parameter Randomisation Test, XAI in Action (NeurIPS workshop) 2023")

    #: bytes of noisy inputs (N x nr_samples rows) kept for a call; above it, they are re-built
    #: per chunk from the same per-sample noise (slower, bounded memory)
    noise_cache_bytes: int = 512 * 2**20

    def __init__(
        self,
        similarity_func: str | Callable[..., torch.Tensor] = "spearman",
        layer_order: str = "bottom_up",
        seed: int | torch.Generator | None = 42,
        nr_samples: int = 50,
        noise_magnitude: float = 0.1,
        *,
        reference: str = "smoothed",
        **kwargs: Any,
    ) -> None:
        super().__init__(similarity_func=similarity_func, layer_order=layer_order, seed=seed,
                         **kwargs)
        self.nr_samples = check_scalar("nr_samples", nr_samples, int, min_val=1)
        self.noise_magnitude = check_scalar("noise_magnitude", noise_magnitude, (int, float),
                                            min_val=0)
        self.reference = check_option("reference", reference, ("smoothed", "given"))

    def _prepare(self, model, x, y, a, *args, **kwargs):
        batch = super()._prepare(model, x, y, a, *args, **kwargs)
        batch.extra["_a_given"] = a is not None
        return batch

    def _reference(self, batch: MetricBatch) -> torch.Tensor:
        assert batch.a is not None
        if self.reference == "given" or not batch.extra.get("_a_given", False):
            return batch.a
        ref, finite = self._explain_checked(batch, batch.x, batch.y, None, like=batch.a)
        batch.set_nan(~finite, "the denoised explanation contains NaN or Inf")
        return ref

    # ------------------------------------------------------------------ smoothing
    def _noise(self, batch: MetricBatch, x: torch.Tensor, samples: slice) -> torch.Tensor:
        """Unit Gaussian noise (n, K-1, *x.shape[1:]) of ``x[samples]``, each sample's block
        drawn from its own key (the same in any batch)."""
        keys = batch.keys if x is batch.x else _rng.sample_keys(x, batch.seed)
        shape = (self.nr_samples - 1, *x.shape[1:])
        return _rng.normal(keys[samples], shape, dtype=x.dtype, stream=0x534D5054).to(x.device)

    def _noisy_rows(self, batch: MetricBatch, x: torch.Tensor, first: int, last: int
                    ) -> torch.Tensor:
        """The K inputs of samples ``first..last-1``, sample-major: K - 1 noisy copies with
        sigma_i = noise_magnitude * (max x_i - min x_i), then x_i itself; ((last-first) K, ...).
        """
        k = self.nr_samples
        xs = x[first:last]
        flat = xs.reshape(xs.shape[0], -1)
        std = self.noise_magnitude * (flat.amax(1) - flat.amin(1))
        std = batch.modality.per_sample(std, x).unsqueeze(1)
        rows = torch.empty((xs.shape[0], k, *x.shape[1:]), dtype=x.dtype, device=x.device)
        torch.addcmul(xs.unsqueeze(1), self._noise(batch, x, slice(first, last)), std,
                      out=rows[:, : k - 1])
        rows[:, k - 1] = xs
        return rows.reshape(-1, *x.shape[1:])

    def _run_explain(
        self,
        batch: MetricBatch,
        x: torch.Tensor,
        y: torch.Tensor | None,
        model: ModelWrapper | None = None,
    ) -> torch.Tensor:
        k = self.nr_samples
        if k == 1:
            return super()._run_explain(batch, x, y, model)
        fn, kwargs = self._explain_callable(batch)
        if model is not None:
            # as Metric._run_explain: a user who gave a wrapper gets the copy's wrapper (it
            # carries their target), a user who gave a module gets the copied module
            model_arg: Any = (model.model if batch.explain_fn is not None
                              and not isinstance(batch.model_obj, ModelWrapper) else model)
        else:
            model_arg = batch.model_obj if batch.explain_fn is not None else batch.model
        n = x.shape[0]
        total = n * k
        # the noisy inputs of the whole batch are built once per call and reused by every
        # model when they fit the budget; otherwise per chunk (the same values)
        cached = batch.extra.get("_smooth_rows")
        rows_all = cached[1] if cached is not None and cached[0] is x else None
        if rows_all is None and total * x[0].numel() * x.element_size() <= self.noise_cache_bytes:
            rows_all = self._noisy_rows(batch, x, 0, n)
            batch.extra["_smooth_rows"] = (x, rows_all)
        y_rows = None if y is None else y.repeat_interleave(k)
        size = (batch.batch_size or explain_call_rows(batch, x)
                or (batch.model.resolve_batch_size(x) if batch.model else n))
        # the calling convention is read from the function's signature once, not per chunk
        quantus_style = _quantus_compat.is_quantus_explain_func(fn)
        parts = []
        start = 0
        while start < total:
            stop = min(total, start + size)
            if rows_all is not None:
                xs = rows_all[start:stop]
            else:
                first, last = start // k, (stop - 1) // k + 1
                xs = self._noisy_rows(batch, x, first, last)[start - first * k : stop - first * k]
            ys = None if y_rows is None else y_rows[start:stop]
            out = torch.as_tensor(call_explain_fn(fn, model_arg, xs, ys, kwargs, quantus_style),
                                  device=x.device)
            if out.ndim == 0 or out.shape[0] != stop - start:
                raise RuntimeError(
                    f"The explain function returned shape {tuple(out.shape)} for "
                    f"{stop - start} inputs; it must return one attribution per input."
                )
            parts.append(out.detach())
            start = stop
        out = torch.cat(parts) if len(parts) > 1 else parts[0]
        return out.reshape(n, k, *out.shape[1:]).to(torch.float64).mean(1)


# ============================================================================ EfficientMPRT
def _histogram_entropy(a: torch.Tensor, n_bins: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row's histogram with ``n_bins[i]`` equal-width bins over
    the row's own [min, max], binned as ``numpy.histogram`` does; (N,) float64."""
    flat = a.reshape(a.shape[0], -1).to(torch.float64)
    n, d = flat.shape
    p = torch.arange(d + 1, dtype=torch.float64, device=flat.device) / d
    if flat.device.type == "cpu" and n and d:
        # NumPy's single-threaded element-wise passes over many short rows are several times
        # faster than torch's CPU kernels; the same IEEE operations give the same bins
        counts = torch.from_numpy(_histogram_counts_numpy(flat.numpy(), n_bins.cpu().numpy()))
    else:
        counts = _histogram_counts_torch(flat, n_bins)
    # a bin's term depends only on its count k in 0..d: the d + 1 terms computed once (the
    # same xlogy of the same k / d) and gathered, instead of xlogy on every bin of every row
    terms = torch.special.xlogy(p, p).index_select(0, counts.reshape(-1))
    return -terms.reshape(counts.shape).sum(1)


def _histogram_counts_torch(flat: torch.Tensor, n_bins: torch.Tensor) -> torch.Tensor:
    """:func:`_histogram_entropy`'s counts (N, max bins), int64, with torch (any device):
    equal-width bins over each row's [min, max], binned as ``numpy.histogram`` does."""
    n = flat.shape[0]
    lo = flat.amin(1, keepdim=True)
    hi = flat.amax(1, keepdim=True)
    const = hi == lo
    # numpy widens a zero range to [v - 0.5, v + 0.5]
    lo = torch.where(const, lo - 0.5, lo)
    hi = torch.where(const, hi + 0.5, hi)
    bins = n_bins.to(device=flat.device, dtype=torch.int64).reshape(-1, 1)
    norm = bins.to(torch.float64) / (hi - lo)
    idx = ((flat - lo) * norm).to(torch.int64)
    idx = torch.where(idx == bins, idx - 1, idx)
    # numpy's correction against the exact linspace edges
    width = (hi - lo) / bins
    edge = lambda j: lo + j.to(torch.float64) * width  # noqa: E731
    idx = torch.where(flat < edge(idx), idx - 1, idx)
    idx = torch.where((flat >= edge(idx + 1)) & (idx != bins - 1), idx + 1, idx)
    idx = idx.clamp(min=0).minimum(bins - 1)
    counts = torch.zeros((n, int(bins.max())), dtype=torch.int64, device=flat.device)
    counts.scatter_add_(1, idx, torch.ones_like(idx))
    return counts


def _histogram_counts_numpy(flat: np.ndarray, n_bins: np.ndarray) -> np.ndarray:
    """:func:`_histogram_entropy`'s counts (N, max bins), int64, with NumPy on the CPU: the
    same float64 operations in the same order, so the same bin of every value.

    numpy.histogram's bin is floor(t), t = (x - lo) * bins / span, corrected against the exact
    edges lo + j * span / bins. A correction can only move a value whose t lies within
    rounding error of an integer: with t and the edges each off by a few ulps, in bin units
    at most eps (6 bins + |lo| bins / span). So the corrections run on those values only (the
    candidates: t's fractional part within a generous ``slack`` of 0 or 1, t at the last edge,
    and every value of a row whose range is not finite or whose slack is not small); every
    other value keeps floor(t), which is what the corrections leave it."""
    # C order: the corrections are written through idx.reshape(-1), a view only then
    flat = np.ascontiguousarray(flat)
    n, d = flat.shape
    bins = n_bins.astype(np.int64).reshape(-1, 1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lo = flat.min(1, keepdims=True)
        hi = flat.max(1, keepdims=True)
        const = hi == lo
        # numpy widens a zero range to [v - 0.5, v + 0.5]
        lo = np.where(const, lo - 0.5, lo)
        hi = np.where(const, hi + 0.5, hi)
        span = hi - lo
        norm = bins.astype(np.float64) / span
        t = np.subtract(flat, lo)
        t *= norm  # (flat - lo) * norm, without a second array of the maps' size
        idx = t.astype(np.int64)
        width = span / bins
        # 64 times the bound above, and |hi| as well as |lo|
        slack = 64 * np.finfo(np.float64).eps * (6 * bins + (np.abs(lo) + np.abs(hi)) * norm)
        exact_rows = ~(np.isfinite(slack) & (span > 0) & (slack < 0.25))
        # t within slack of an integer: its fractional part at least 1/2 - slack from 1/2
        # (also t at the last edge, idx == bins: its fractional part is within rounding of
        # 0); computed in t's array, whose values are not needed any more
        dist = np.subtract(t, idx, out=t)
        dist -= 0.5
        np.abs(dist, out=dist)
        near = dist > 0.5 - slack
        if exact_rows.any():
            near[exact_rows[:, 0]] = True
        cand = np.flatnonzero(near)
        if cand.size:
            rows = cand // d
            x = flat.reshape(-1)[cand]
            j = idx.reshape(-1)[cand]
            b, low, w = bins[rows, 0], lo[rows, 0], width[rows, 0]
            np.subtract(j, 1, out=j, where=j == b)
            # numpy's correction against the exact linspace edges
            np.subtract(j, 1, out=j, where=x < low + j * w)
            np.add(j, 1, out=j, where=(x >= low + (j + 1) * w) & (j != b - 1))
            np.maximum(j, 0, out=j)
            np.minimum(j, b - 1, out=j)
            idx.reshape(-1)[cand] = j
    width_all = int(bins.max())
    idx += np.arange(0, n * width_all, width_all)[:, None]
    return np.bincount(idx.reshape(-1), minlength=n * width_all).reshape(n, width_all)


def _n_bins(a: torch.Tensor, rule: str | int, lo: int, hi: int) -> torch.Tensor:
    """Bins per sample from a rule applied to the sample's own map (n = its element count)."""
    flat = a.reshape(a.shape[0], -1).to(torch.float64)
    n_el = flat.shape[1]
    if isinstance(rule, int):
        return torch.full((flat.shape[0],), rule, dtype=torch.int64, device=flat.device)
    spread = flat.amax(1) - flat.amin(1)
    if rule == "sqrt":
        bins = torch.full_like(spread, math.ceil(math.sqrt(n_el)))
    elif rule == "sturges":
        bins = torch.full_like(spread, math.ceil(math.log2(n_el) + 1))
    elif rule == "rice":
        bins = torch.full_like(spread, math.ceil(2 * n_el ** (1 / 3)))
    else:
        if rule == "scott":
            width = 3.5 * flat.std(1, unbiased=False) / n_el ** (1 / 3)
        else:  # freedman_diaconis
            q = torch.quantile(flat, torch.tensor([0.25, 0.75], dtype=torch.float64,
                                                  device=flat.device), dim=1)
            width = 2 * (q[1] - q[0]) / n_el ** (1 / 3)
        bins = torch.where(width > 0, torch.ceil(spread / width.clamp_min(1e-300)),
                           torch.full_like(spread, float(hi)))
    return bins.nan_to_num(float(hi)).clamp(lo, hi).to(torch.int64)


def _output_entropy(outputs: torch.Tensor) -> torch.Tensor:
    """Entropy of |outputs| normalised to sum 1 per row (Quantus' ``entropy`` on predictions)."""
    p = outputs.reshape(outputs.shape[0], -1).abs().to(torch.float64)
    total = p.sum(1, keepdim=True)
    p = p / torch.where(total > 0, total, torch.ones_like(total))
    return -torch.special.xlogy(p, p).sum(1)


class EfficientMPRT(_ModelRandomisation):
    """Efficient MPRT (eMPRT; Hedström et al. 2023). **Higher is better**.

    The relative rise in explanation complexity when the model is fully randomised:
    (H(a_random) - H(a)) / H(a), where H is the Shannon entropy (nats) of the histogram of a
    map's values and a_random the explanation of the model with every layer re-initialised. An
    explanation that reflects the model loses structure (gains entropy) when the model is
    destroyed. A map with zero entropy (constant) gives NaN with a reason.

    Histogram bins (``n_bins``): an int (default 100, Quantus' default), or a rule applied to
    each sample's original map with n = the map's number of elements: ``"freedman_diaconis"``
    (width 2 IQR / n^(1/3)), ``"scott"`` (3.5 std / n^(1/3)), ``"sqrt"`` (ceil sqrt n),
    ``"sturges"`` (ceil log2 n + 1) or ``"rice"`` (ceil 2 n^(1/3)), the bin count being
    ceil(range / width) as in ``numpy.histogram_bin_edges``, clipped to
    [``min_n_bins``, ``max_n_bins``] = [10, 200] (Quantus' clip). The same count is used for the
    sample's randomised map. Quantus' rules use ``a_batch[0].ndim`` (3 for a (1, 28, 28) map)
    as n and one count for the whole batch, so they return 1-2 bins before its clip (deviation C14).

    With ``skip_layers=True`` (default) only the fully randomised model is explained (built
    directly: one explanation pass); with ``False`` every cascading step is, and
    ``layer_scores_`` holds the explanation entropy per layer (row ``"original"`` first).
    ``compute_extra_scores=True`` also fills ``extra_scores_`` (a DataFrame, one row per
    sample): the explanation and model-output entropies of the original and the fully
    randomised model, their deltas and fractions (Quantus' ``scores_extra``), and, with
    ``skip_layers=False``, the mean explanation entropy over the layers and the correlation
    (``similarity_func``, Pearson by default; Quantus' default is Spearman) between
    model-output and explanation entropies across the layers. The
    model-output entropy is that of the class probabilities (a softmax is applied to the
    outputs unless the model was wrapped with ``softmax=True``); explanations explain the
    logits by default, as in Quantus, whose ``softmax=True`` default only affects predictions.

    Deviations from Quantus (``quantus.EfficientMPRT`` 0.6): the bin rules use the number of
    elements and are per sample (deviation C14); the original explanation is ``a`` (Quantus
    re-explains the original model and uses ``a_batch`` only for the bin rule); layer seeding and
    normalisation layers as in :class:`MPRT`.

    Reference: A. Hedström et al., "Sanity Checks Revisited: An Exploration to Repair the Model
    Parameter Randomisation Test", XAI in Action workshop, NeurIPS 2023.
    """

    #: token ids too: the explanations are re-computed by the explain function, which handles ids
    modalities = ("image", "series", "tabular", "tokens")

    aliases = ("eMPRT",)
    higher_is_better = True
    default_abs = False
    default_normalise = False
    default_normalise_func = "second_moment"
    paper = SmoothMPRT.paper

    def __init__(
        self,
        layer_order: str = "bottom_up",
        seed: int | torch.Generator | None = 42,
        n_bins: int | str = 100,
        *,
        min_n_bins: int = 10,
        max_n_bins: int = 200,
        skip_layers: bool = True,
        compute_extra_scores: bool = False,
        layer_names: list[str] | None = None,
        norm_layers: str = "random",
        similarity_func: str | Callable[..., torch.Tensor] = "pearson",
        **kwargs: Any,
    ) -> None:
        legacy = kwargs.pop("complexity_func_kwargs", None)
        if legacy:
            if "n_bins" in legacy:
                n_bins = legacy["n_bins"]
            elif "rule" in legacy:
                n_bins = legacy["rule"]
            min_n_bins = legacy.get("min_n_bins", min_n_bins)
            max_n_bins = legacy.get("max_n_bins", max_n_bins)
        complexity_func = kwargs.pop("complexity_func", None)
        # Quantus' discrete_entropy (by function or name) is what EfficientMPRT computes
        if complexity_func is not None and _quantus_compat.function_name(
                complexity_func) != "discrete_entropy":
            raise TypeError("`complexity_func` is not supported: EfficientMPRT uses the "
                            "histogram entropy (Quantus' discrete_entropy); choose its bins "
                            "with `n_bins`.")
        super().__init__(layer_order=layer_order, layer_names=layer_names,
                         norm_layers=norm_layers, seed=seed, **kwargs)
        if isinstance(n_bins, str):
            key = _RULE_ALIASES.get(n_bins.lower(), n_bins.lower())
            n_bins = check_option("n_bins", key, N_BINS_RULES)
        else:
            n_bins = check_scalar("n_bins", n_bins, int, min_val=1)
        self.n_bins = n_bins
        self.min_n_bins = check_scalar("min_n_bins", min_n_bins, int, min_val=1)
        self.max_n_bins = check_scalar("max_n_bins", max_n_bins, int, min_val=self.min_n_bins)
        self.skip_layers = check_bool("skip_layers", skip_layers)
        if not self.skip_layers and self.layer_order == "independent":
            raise ValueError("EfficientMPRT compares with the fully randomised model: "
                             "layer_order must be 'top_down' or 'bottom_up'.")
        self.compute_extra_scores = check_bool("compute_extra_scores", compute_extra_scores)
        similarity_func = _quantus_compat.similarity_name(similarity_func)
        get_similarity(similarity_func)
        self.similarity_func = similarity_func
        self.extra_scores_: pd.DataFrame | None = None

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        self.layer_scores_ = self.extra_scores_ = None
        model = batch.require_model()
        names = self._layers(model)
        assert batch.a is not None
        a = batch.a
        bins = _n_bins(a, self.n_bins, self.min_n_bins, self.max_n_bins)
        h_orig = _histogram_entropy(a, bins)
        ent_rows = [("original", h_orig)]
        out_rows: list[tuple[str, torch.Tensor]] = []
        need_outputs = self.compute_extra_scores
        if need_outputs:
            out_rows.append(("original", self._output_entropy(model, batch.x)))
        bad_any = torch.zeros(batch.n, dtype=torch.bool, device=batch.device)
        bar = self._progress(1 if self.skip_layers else len(names), type(self).__name__)
        try:
            for name, copy in self._randomised_models(model, names, batch.seed,
                                                      only_last=self.skip_layers):
                a_r, finite = self._explain_checked(batch, batch.x, batch.y, copy, like=a)
                bad_any |= ~finite
                h = _histogram_entropy(a_r, bins)
                ent_rows.append((name, torch.where(finite, h, torch.full_like(h, math.nan))))
                if need_outputs:
                    out_rows.append((name, self._output_entropy(copy, batch.x)))
                bar.update(1)
        finally:
            bar.close()
        h_rand = ent_rows[-1][1]
        batch.set_nan(~torch.isfinite(h_rand), "the fully randomised model's explanation "
                                               "contains NaN or Inf")
        batch.set_nan(h_orig == 0, "the original explanation has zero histogram entropy "
                                   "(a constant map): the relative rise is undefined")
        score = (h_rand - h_orig) / torch.where(h_orig != 0, h_orig, torch.ones_like(h_orig))
        score = torch.where(h_orig != 0, score, torch.full_like(score, math.nan))
        layer_scores = pd.DataFrame(torch.stack([h for _, h in ent_rows]).cpu().numpy(),
                                    index=[n for n, _ in ent_rows])
        layer_scores.index.name = "layer"
        layer_scores.columns.name = "sample"
        batch.record("layer_scores", layer_scores, per_sample=False)
        batch.record("extra_scores", self._extras(ent_rows, out_rows) if need_outputs else None,
                     per_sample=False)
        return score

    @staticmethod
    def _output_entropy(model: ModelWrapper, x: torch.Tensor) -> torch.Tensor:
        outputs = model.predict(x)
        if not model.softmax:
            outputs = torch.softmax(outputs.to(torch.float64), dim=1)
        return _output_entropy(outputs)

    def _extras(self, ent_rows, out_rows) -> pd.DataFrame:
        def frac(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            return torch.where(a != 0, b / torch.where(a != 0, a, torch.ones_like(a)),
                               torch.full_like(a, math.nan))

        e0, e1 = ent_rows[0][1], ent_rows[-1][1]
        m0, m1 = out_rows[0][1], out_rows[-1][1]
        cols: dict[str, torch.Tensor] = {
            "explanation_entropy_original": e0,
            "explanation_entropy_randomised": e1,
            "model_entropy_original": m0,
            "model_entropy_randomised": m1,
            "scores_delta_explanation": e1 - e0,
            "scores_fraction_explanation": frac(e1, e0),
            "scores_delta_model": m1 - m0,
            "scores_fraction_model": frac(m1, m0),
        }
        cols["scores_delta_explanation_vs_models"] = frac(cols["scores_fraction_explanation"],
                                                          cols["scores_fraction_model"])
        if len(ent_rows) > 2:
            ent = torch.stack([h for _, h in ent_rows], 1)
            outs = torch.stack([h for _, h in out_rows], 1)
            cols["scores_average_complexity"] = ent.mean(1)
            cols["scores_correlation_model_vs_explanation_complexity"] = get_similarity(
                self.similarity_func)(outs, ent)
        return pd.DataFrame({k: v.cpu().numpy() for k, v in cols.items()})


# ============================================================================ RandomLogit
class RandomLogit(Metric):
    """Random Logit test (Sixt, Granz & Landgraf 2020). **Lower is better**.

    Explains each sample again for a random *other* class y' != y and compares that map with
    the explanation of y by ``similarity_func`` (SSIM by default). A class-sensitive explanation
    changes with the class: low similarity is good (with a registered distance such as
    ``"mse"`` high is good, and the instance's ``higher_is_better`` says so).

    The number of classes comes from the model's output (Quantus defaults to
    ``num_classes=1000`` and crashes on smaller models, deviation C11); ``num_classes`` is accepted
    and checked against it. y' is drawn uniformly from the other classes per sample from the
    sample's key (the seed and the sample's values), so it is the same in any batch; the global
    RNG is never touched (Quantus reseeds NumPy's global RNG on every batch).

    SSIM is computed on the maps' own shape (2-D windows on (N, 1, H, W) maps); Quantus applies
    it to the flattened maps (a 1-D window over the raster order). Pass
    ``similarity_func=lambda a, b: ssim(a.flatten(1), b.flatten(1))`` for Quantus' variant.

    Needs class-index labels (the default class target, or a segmentation target).

    Reference: L. Sixt, M. Granz, T. Landgraf, "When Explanations Lie: Why Many Modified BP
    Attributions Fail", ICML 2020.
    """

    #: token ids too: the explanations are re-computed by the explain function, which handles ids
    modalities = ("image", "series", "tabular", "tokens")

    family = "randomisation"
    higher_is_better = False
    re_explains = True
    stochastic = True
    default_abs = False
    default_normalise = True
    paper = ("Sixt, Granz & Landgraf, When Explanations Lie: Why Many Modified BP Attributions "
             "Fail, ICML 2020")

    def __init__(
        self,
        similarity_func: str | Callable[..., torch.Tensor] = "ssim",
        num_classes: int | None = None,
        seed: int | torch.Generator | None = 42,
        **kwargs: Any,
    ) -> None:
        super().__init__(seed=seed, **kwargs)
        self.similarity_func = similarity_func
        get_similarity(similarity_func)
        if num_classes is not None:
            num_classes = check_scalar("num_classes", num_classes, int, min_val=2)
        self.num_classes = num_classes
        self.y_off_: np.ndarray | None = None

    def _derived_metadata(self) -> dict[str, bool]:
        # with a distance, explanations that differ more score higher: this instance's
        # direction flips (metaeval and anyone reading ``metric.higher_is_better`` rank by it)
        return {"higher_is_better": not _lower_is_better(self.similarity_func)}

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        self.y_off_ = None
        model = batch.require_model()
        if not getattr(model.target, "uses_class_labels", False) or batch.y is None \
                or batch.y.ndim != 1:  # e.g. segmentation label maps: no one class to shift
            raise ValueError("RandomLogit explains other classes: it needs class-index labels "
                             "`y` (N,) and a class target (the default).")
        n_classes = int(model.output_shape(batch.x)[0])
        if self.num_classes is not None and self.num_classes != n_classes:
            raise ValueError(f"`num_classes`={self.num_classes} but the model has {n_classes} "
                             "outputs; leave num_classes=None to use the model's.")
        if n_classes < 2:
            raise ValueError("RandomLogit needs a model with at least 2 classes.")
        y = batch.y.to(torch.int64)
        u = _rng.scalar_uniform(batch.keys, stream=0x524C4F47)  # "RLOG"
        offset = 1 + torch.floor(u * (n_classes - 1)).to(torch.int64).clamp(max=n_classes - 2)
        y_off = (y + offset.to(y.device)) % n_classes
        batch.record("y_off", y_off, per_sample=True)
        raw = self._run_explain(batch, batch.x, y_off.to(batch.y.dtype))
        finite = finite_rows(raw)
        a_off = self._preprocess_attributions(batch, raw, batch.x, flag_nan=False)
        return similarity_to_original(
            batch, a_off, finite, self.similarity_func, who="RandomLogit",
            nonfinite="the explanation for the random class contains NaN or Inf")


#: Quantus' former name of :class:`MPRT` (the same class; also a registry alias).
ModelParameterRandomisation = MPRT


def similarity_to_original(batch: MetricBatch, other: torch.Tensor, finite: torch.Tensor,
                           similarity_func: Any, *, who: str, nonfinite: str) -> torch.Tensor:
    """(N,) ``similarity_func(a, other)`` of the batch's explanations ``a`` and another
    explanation of the same inputs (for a random class, by a retrained model...), float64.

    ``other`` must have ``a``'s shape (it comes from the same explain function). Samples whose
    ``other`` is not ``finite`` are NaN with the reason ``nonfinite``; a similarity that is not
    finite is NaN with the similarity's own reason where it has one."""
    assert batch.a is not None
    if other.shape != batch.a.shape:
        raise ValueError(
            f"{who}: the explain function returns attributions of shape "
            f"{tuple(other.shape)} but `a` has shape {tuple(batch.a.shape)}; compute `a` "
            "with the same explain function."
        )
    fn = get_similarity(similarity_func)
    s = torch.as_tensor(fn(batch.a, other)).to(device=batch.device, dtype=torch.float64)
    if s.shape != (batch.n,):
        raise RuntimeError(f"similarity_func returned shape {tuple(s.shape)}; expected "
                           f"({batch.n},).")
    batch.set_nan(~finite, nonfinite)
    bad = ~torch.isfinite(s)
    if bool(bad.any()):
        known = undefined_reason(batch.a, other, _similarity_name(similarity_func))
        for i in torch.nonzero(bad).flatten().tolist():
            batch.set_nan(torch.arange(batch.n) == i, known[i] or "similarity is not finite")
    return s
