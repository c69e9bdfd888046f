"""SRG and R-OMS (Blücher, Vielhaben, Strodthoff 2024): the symmetric relevance gain of an
explanation, and the reference-out-of-model-scope score of an occlusion strategy (imputer)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ... import _rng
from ..._validation import check_scalar
from ...perturb import Imputer, make_grouping, make_imputer, rank_groups
from ...perturb.baselines import impute
from .._removal import baseline_values, trapezoid_auc
from ..base import Metric, MetricBatch
from ._common import set_curves
from .abpc import _TwoCurves
from .rationales import removal_modalities

__all__ = ["SRG", "r_oms", "rank_occlusion_strategies"]


class SRG(_TwoCurves):
    """Symmetric relevance gain, SRG (Blücher, Vielhaben and Strodthoff 2024), over the
    features of any modality (pixels, time steps, columns, tokens).

    Pixel flipping is run twice on the same occlusion strategy (``perturb_baseline``): most
    influential first (MIF, the MoRF curve f(x_M^(k))) and least influential first (LIF, the
    LeRF curve f(x_L^(k))), features removed ``features_in_step`` at a time. Each curve is
    integrated over the fraction of features occluded in [0, 1] (trapezoid rule, as the
    paper's AUC over the occlusion fraction), and

        SRG(x) = AUC[LIF](x) - AUC[MIF](x),

    the area between the two curves: **higher is better** (removing the top features destroys
    the prediction, removing the bottom ones keeps it). The paper shows that MIF is the more
    informative measure for occlusion strategies that the model perceives as out of scope
    (low R-OMS, see :func:`r_oms`) and LIF for in-scope ones, and that their difference ranks
    explanations consistently across 40 occlusion strategies, which neither curve alone does.
    ``curves_`` holds f(x_L^(k)) - f(x_M^(k)) over the occluded fraction. With the default
    ``features_in_step=1`` the curves run over every feature; :class:`ABPC` is the same gap
    averaged over steps instead of integrated over the fraction. Ties are removed in feature
    order; a constant map is NaN with a reason (``constant_maps``).

    Parameters
    ----------
    features_in_step:
        Features occluded per step.
    n_steps:
        Steps L (None: every feature occluded at the end, the paper's full [0, 1] range).
    perturb_baseline:
        The occlusion strategy (a name, number, array, ``"delete"`` for token deletion, or an
        :class:`~evalkit.perturb.Imputer`).
    grouping:
        The features (the paper's are superpixels: ``grouping="slic"`` or a patch size).

    Reference: S. Blücher, J. Vielhaben, N. Strodthoff, "Decoupling Pixel Flipping and
    Occlusion Strategy for Consistent XAI Benchmarks", TMLR 2024.
    """

    paper = ("Blücher, Vielhaben and Strodthoff, Decoupling Pixel Flipping and Occlusion "
             "Strategy for Consistent XAI Benchmarks, TMLR 2024")

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        morf, lerf, fractions, _ = self._curves(batch)
        gap = morf - lerf  # f(x_L) - f(x_M)
        set_curves(batch, gap, fractions)
        return trapezoid_auc(gap, fractions)


# ------------------------------------------------------------------------------------ R-OMS
#: the default occluded fractions of :func:`r_oms` (the paper: ten cardinalities from one
#: feature to all of them)
ROMS_FRACTIONS = tuple(float(f) for f in np.linspace(0.1, 1.0, 10))
_DRAW_STREAM = 0x0A05


class _OcclusionScope(Metric):
    """R-OMS of one occlusion strategy on a batch (see :func:`r_oms`). Not an explanation
    metric (it reads no attributions), hence not registered."""

    default_softmax = True
    stochastic = True

    def __init__(self, imputer: Any = "black", *, reference: Any = "unoccluded",
                 fractions: Sequence[float] = ROMS_FRACTIONS, n_draws: int = 1,
                 grouping: Any = "pixels", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.imputer = imputer
        self._imputer = make_imputer(imputer)
        self.reference = reference
        self._reference: Imputer | Callable | None
        if isinstance(reference, str) and reference == "unoccluded":
            self._reference = None
        elif callable(reference) and not isinstance(reference, Imputer):
            self._reference = reference
        else:
            self._reference = make_imputer(reference)
        f = torch.as_tensor([float(v) for v in fractions], dtype=torch.float64)
        if f.numel() == 0 or bool(((f <= 0) | (f > 1)).any()) or bool((f.diff() <= 0).any()):
            raise ValueError("`fractions` must be increasing values in (0, 1]; got "
                             f"{list(fractions)!r}.")
        self.fractions = tuple(f.tolist())
        self.n_draws = check_scalar("n_draws", n_draws, int, min_val=1)
        self.grouping = grouping
        self._grouping = make_grouping(grouping)

    def _derived_metadata(self) -> dict[str, Any]:
        return {"modalities": removal_modalities(self._imputer)}

    def _fill(self, batch: MetricBatch, imputer: Imputer, base, i, mask):
        if base is not None:
            return batch.modality.replace(batch.x.index_select(0, i), mask,
                                          base.index_select(0, i))
        keys = batch.keys[i] if imputer.stochastic else None
        return impute(imputer, batch.x[i], mask, keys=keys, modality=batch.modality)

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        batch.require_model()
        x, dev, n = batch.x, batch.device, batch.n
        grp = self._grouping.for_modality(batch.modality)(x)
        g = grp.n_groups.to(dev)
        valid = grp.valid().to(dev)
        frac = torch.tensor(self.fractions, dtype=torch.float64, device=dev)
        # features occluded per fraction: at least one, at most all
        k = torch.floor(frac.unsqueeze(0) * g.unsqueeze(1) + 0.5).to(torch.int64)
        k = torch.minimum(k.clamp(min=1), g.unsqueeze(1))
        # one random order per draw and sample (seeded per sample): the occluded sets of the
        # fractions are nested within a draw
        ranks = []
        for d in range(self.n_draws):
            keys = _rng.permutation_keys(_rng.combine(batch.keys, _DRAW_STREAM + d),
                                         grp.max_groups)
            order = rank_groups(keys.to(torch.float64), valid, "random", random_keys=keys)
            ranks.append(torch.empty_like(order).scatter_(
                1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
                .contiguous()))
        rank = torch.stack(ranks)  # (D, N, G)
        n_f, n_d = frac.numel(), self.n_draws

        def mask_of(index: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
            i, fi, di = index
            selected = rank[di, i] < k[i, fi].unsqueeze(1)
            return i, grp.mask(selected, i)

        base = baseline_values(self._imputer, x, batch.keys, batch.modality)

        def build(index):
            i, mask = mask_of(index)
            return self._fill(batch, self._imputer, base, i, mask)

        def identity(outputs: torch.Tensor, index) -> torch.Tensor:
            return outputs

        runner = batch.runner
        shape = (n, n_f, n_d)
        occluded = runner.run(build, shape, reduce=identity, row_shape=tuple(x.shape[1:]),
                              desc="R-OMS").to(torch.float64)
        if self._reference is None:
            ref = runner.run(lambda index: x[index[0]], (n,), reduce=identity,
                             row_shape=tuple(x.shape[1:]), desc="R-OMS reference")
            ref = ref.to(torch.float64)[:, None, None].expand_as(occluded)
        elif isinstance(self._reference, Imputer):
            ref_imputer = self._reference
            ref_base = baseline_values(ref_imputer, x, batch.keys, batch.modality)

            def build_ref(index):
                i, mask = mask_of(index)
                return self._fill(batch, ref_imputer, ref_base, i, mask)

            ref = runner.run(build_ref, shape, reduce=identity, row_shape=tuple(x.shape[1:]),
                             desc="R-OMS reference").to(torch.float64)
        else:
            ref = self._callable_reference(batch, shape, mask_of).to(occluded)
        occluded = occluded.reshape(n, n_f, n_d, -1)
        ref = ref.reshape(n, n_f, n_d, -1)
        sims = torch.nn.functional.cosine_similarity(occluded, ref, dim=-1, eps=1e-12)
        bad = ~torch.isfinite(sims).reshape(n, -1).all(1)
        if bool(bad.any()):
            batch.set_nan(bad, "the model's output is not finite on an occluded input")
        sims = sims.mean(2)  # (N, F): the mean over draws
        fractions = (k.to(torch.float64) / g.unsqueeze(1).to(torch.float64))
        set_curves(batch, sims, fractions)
        if n_f == 1:
            return sims[:, 0]
        span = (fractions[:, -1] - fractions[:, 0]).clamp(min=1e-12)
        auc = trapezoid_auc(sims, fractions) / span
        # a sample with one feature occludes it at every fraction: its mean similarity
        return torch.where(fractions[:, -1] > fractions[:, 0], auc, sims.mean(1))

    def _callable_reference(self, batch: MetricBatch, shape, mask_of) -> torch.Tensor:
        """The user's in-model occlusion ``reference(x, mask) -> outputs`` on every row, in
        chunks of the batch size (softmax applied when the metric scores probabilities)."""
        n, n_f, n_d = shape
        total = n * n_f * n_d
        flat = torch.arange(total, device=batch.device)
        index = (flat // (n_f * n_d), (flat // n_d) % n_f, flat % n_d)
        step = max(1, n)
        outs = []
        for start in range(0, total, step):
            part = tuple(t[start:start + step] for t in index)
            i, mask = mask_of(part)
            with torch.no_grad():
                out = torch.as_tensor(self._reference(batch.x[i], mask))  # type: ignore[misc]
            if batch.model is not None and getattr(batch.model, "softmax", False):
                out = torch.softmax(out.to(torch.float64), dim=-1)
            outs.append(out.to(torch.float64).reshape(part[0].shape[0], -1))
        return torch.cat(outs).reshape(n, n_f, n_d, -1)


def _dummy_attributions(x: Any) -> torch.Tensor:
    return torch.zeros(tuple(np.shape(x)), dtype=torch.float64)


def r_oms(model: Any, x: Any, y: Any, imputer: Any = "black", *,
          reference: Any = "unoccluded", fractions: Sequence[float] = ROMS_FRACTIONS,
          n_draws: int = 1, grouping: Any = "pixels", seed: int = 0,
          **kwargs: Any) -> np.ndarray:
    """The R-OMS score of an occlusion strategy (Blücher, Vielhaben and Strodthoff 2024): how
    close the model's output on inputs occluded with ``imputer`` stays to a reference output,
    per sample (N,) float64. Higher is better: the model perceives the occluded inputs as
    within its scope, so removal metrics on this imputer measure the features, not the
    imputer's artefacts.

    For each sample and each occluded fraction in ``fractions``, a random set of that share
    of its features (``grouping``; ``n_draws`` random sets, seeded per sample) is occluded,
    and the cosine similarity between the model's output (class probabilities, by default)
    and the reference output is taken; the score is the area under that curve over the
    occluded fraction divided by the fraction range (the mean similarity; 1 for an imputer the
    model cannot tell from the reference). ``curves_`` of the underlying metric holds the
    similarities.

    ``reference`` is what the occluded output is compared with:

    * a callable ``reference(x, mask) -> outputs``: the model's own, in-scope way of leaving
      features out (the paper's reference: e.g. a vision transformer that drops the occluded
      patches' tokens), called on the same inputs and masks (True: occluded);
    * an imputer (a name or :class:`~evalkit.perturb.Imputer`, e.g. a strong inpainter):
      the same occlusion filled by the reference imputer;
    * ``"unoccluded"`` (default, evalkit's proxy where the model has no in-model occlusion,
      as a CNN): the output on the unoccluded input, so the score measures how little the
      occlusion strategy moves the prediction away from the original.

    ``kwargs`` go to the metric call and constructor (``softmax``, ``batch_size``,
    ``modality``...).
    """
    call_keys = {"batch_size", "device", "modality", "channel_first", "explain_fn"}
    call_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in call_keys}
    metric = _OcclusionScope(imputer, reference=reference, fractions=fractions,
                             n_draws=n_draws, grouping=grouping, seed=seed,
                             disable_warnings=True, **kwargs)
    return metric(model, x, y, _dummy_attributions(x), **call_kwargs)


def _imputer_name(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, int | float):
        return f"constant {spec}"
    return repr(spec) if isinstance(spec, Imputer) else type(spec).__name__


def rank_occlusion_strategies(model: Any, x: Any, y: Any, imputers: Sequence[Any] = (
        "black", "mean", "blur", "uniform"), **kwargs: Any):
    """Rank occlusion strategies (baselines or imputers) by their R-OMS (:func:`r_oms`) on a
    model and data: a tidy :class:`pandas.DataFrame` with one row per imputer, the mean
    R-OMS, its standard error over the samples and the rank (1: the strategy the model
    perceives as least destructive, the one removal metrics should use), best first.
    ``kwargs`` go to :func:`r_oms` (``reference``, ``fractions``, ``n_draws``,
    ``grouping``, ``seed``...)."""
    import pandas as pd

    rows = []
    for spec in imputers:
        scores = r_oms(model, x, y, spec, **kwargs)
        finite = scores[np.isfinite(scores)]
        sem = (float(finite.std(ddof=1) / np.sqrt(finite.size)) if finite.size > 1
               else float("nan"))
        rows.append({"imputer": _imputer_name(spec),
                     "r_oms": float(finite.mean()) if finite.size else float("nan"),
                     "sem": sem, "n": int(finite.size)})
    frame = pd.DataFrame(rows).sort_values("r_oms", ascending=False, kind="stable")
    frame["rank"] = np.arange(1, len(frame) + 1)
    return frame.reset_index(drop=True)
