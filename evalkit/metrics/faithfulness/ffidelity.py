"""F-Fidelity (Zheng et al., ICLR 2025): removal fidelity on a model fine-tuned with random
masking, with R-Fidelity's stochastic partial removal.

Removal metrics read the model on inputs it never saw in training (an image with a black hole
in it): the drop they measure mixes the explanation's quality with the model's surprise at
the removal (the out-of-distribution problem). F-Fidelity removes that surprise in two steps:

1. :func:`fine_tune_with_random_masking` fine-tunes a **copy** of the model on inputs with a
   random fraction, drawn uniformly in [0, ``beta``], of their features removed (explanation
   agnostic: no explainer is involved, so no information about any explanation leaks into the
   model, unlike ROAR's retraining).
2. :class:`FFidelity` measures the fidelity on that copy with removals of at most a ``beta``
   fraction of the features, so every evaluated input looks like a training input. FFid+
   removes random subsets of the explanation (the ``alpha`` fraction of features with the
   highest attribution): the prediction should fall (**higher is better**); FFid- removes
   random subsets of the rest (the least important features): it should not (**lower is
   better**). The random subsets are R-Fidelity's stochastic partial removal (Zheng et al.,
   ICLR 2024): each draw removes a ``removal_ratio`` share of the part (the paper's alpha,
   0.5 in the authors' code), at most a ``beta`` fraction of the input;
   ``stochastic_removal=False`` removes the whole part instead (the classic Fidelity+/-).

Defaults against the paper and its authors' code: ``beta=0.1``, ``removal_ratio=0.5``,
``n_draws=50`` and ``quantity="correct"`` are theirs. Deliberate differences: ``alpha`` here is
the explanation size (the paper's sparsity s, which it sweeps from 5 % to 100 % and reports
as curves; the default averages 10 % to 50 %, pass ``alpha=[k / 20 for k in range(1, 21)]``
for the paper's sweep); a draw removes an exact count of features, ceil(``removal_ratio`` *
|part|) capped at ceil(``beta`` * G), where the authors' code removes each feature with that
probability (the same count on average, without its variance); and
:func:`fine_tune_with_random_masking` removes a rate drawn uniformly in [0, ``beta``) ("at most
beta", as the paper states it; the authors' script removes exactly ``beta``) for 2 epochs of
Adam at lr 1e-4 (their script trains 100 epochs with weight decay 1e-4: pass ``epochs``,
``weight_decay`` for theirs).

Fine-tuning costs a few epochs of training: do it once per model with the helper and pass the
copy (``fine_tuned_model=``); the metric can also fine-tune on data you pass
(``fine_tune_data=``), once per model (the copy is cached on the metric instance), but never on
the batch it evaluates.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ... import _rng
from ..._validation import check_bool, check_option, check_scalar
from ...modality import Modality, as_modality
from ...models import ModelWrapper, wrap_model
from ...perturb import make_grouping, make_imputer
from ...perturb.baselines import impute
from .._removal import QUANTITIES, baseline_values, clean_scores, order_groups, run_rows
from .._ties import RanksFeatures
from ..base import MetricBatch
from ..data_randomisation import fit_copy, training_data
from ._views import batch_view
from .rationales import removal_modalities

__all__ = ["FFidelity", "fine_tune_with_random_masking", "random_removal_masks"]

#: ``fine_tuned_model="none"``: evaluate the model as given (no fine-tuning)
NO_FINE_TUNING = "none"


def _fraction(name: str, value: Any, *, allow_one: bool = True) -> float:
    v = check_scalar(name, value, (int, float), min_val=0, include_min=False)
    if not math.isfinite(float(v)) or float(v) > 1 or (not allow_one and float(v) == 1):
        raise ValueError(f"`{name}` must be a fraction in (0, 1]; got {value!r}.")
    return float(v)


def random_removal_masks(x: torch.Tensor, keys: torch.Tensor, *, beta: float,
                         grouping: Any = "pixels", modality: Modality | str | None = None
                         ) -> torch.Tensor:
    """The fine-tuning masks of F-Fidelity: for sample i, a rate r_i drawn uniformly in
    [0, ``beta``) and floor(r_i * G_i) of its G_i features (groups of ``grouping``) drawn
    uniformly without replacement; (N, ...) bool, True where an element is removed,
    broadcastable against ``x``. Every draw is a function of ``keys[i]`` (one int64 key per
    sample, :mod:`evalkit._rng`) alone: the global generators are not used."""
    mod = as_modality(modality, x)
    grp = make_grouping(grouping).for_modality(mod)(x)
    g = grp.n_groups.to(x.device)
    rate = _rng.scalar_uniform(keys, stream=1).to(x.device) * beta
    count = torch.floor(rate * g).to(torch.int64)
    u = _rng.uniform(keys.cpu(), (grp.max_groups,), dtype=torch.float64, stream=2).to(x.device)
    u = u.masked_fill(~grp.valid(), math.inf)
    order = u.argsort(1)
    pos = torch.arange(grp.max_groups, device=x.device).expand_as(order).contiguous()
    rank = torch.empty_like(order).scatter_(1, order, pos)
    return grp.expand(rank < count.unsqueeze(1))


def fine_tune_with_random_masking(
    model: nn.Module,
    x: Any,
    y: Any,
    *,
    beta: float = 0.1,
    grouping: Any = "pixels",
    perturb_baseline: Any = "black",
    modality: Modality | str | None = None,
    epochs: int = 2,
    batch_size: int = 32,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> nn.Module:
    """Fine-tune a copy of ``model`` with F-Fidelity's explanation-agnostic random masking
    (Zheng et al., ICLR 2025, step 1) and return it in evaluation mode.

    For ``epochs`` passes over ``x`` (N, ...) with labels ``y`` (N,) class indices, in
    mini-batches of ``batch_size`` whose order is drawn from ``seed``, every input has a
    random fraction of its features removed (:func:`random_removal_masks`: a rate drawn
    uniformly in [0, ``beta``), the features, groups of ``grouping``, drawn uniformly; new
    draws every epoch) and replaced by ``perturb_baseline`` through the data's ``modality``
    (inferred from ``x`` by default; token ids get the mask token), and the copy takes an Adam
    step (``lr``, ``weight_decay``) on the cross-entropy of its outputs. Use the same
    ``beta``, ``grouping`` and ``perturb_baseline`` as the :class:`FFidelity` that evaluates
    on the copy, so that its removals look like the fine-tuning's.

    The user's model is never modified (a deep copy is trained), and the global random
    generators are restored afterwards (the loop runs inside ``torch.random.fork_rng``; dropout
    draws from a state seeded by ``seed``; the masks come from :mod:`evalkit._rng` keys of
    ``seed``, the epoch and the sample's position). The same seed, torch version, thread count
    and device give the same weights. Fine-tune on training data, not on the inputs you
    evaluate.
    """
    if not isinstance(model, nn.Module):
        raise TypeError("fine_tune_with_random_masking needs a torch.nn.Module; got "
                        f"{type(model).__name__}.")
    beta = _fraction("beta", beta)
    epochs = check_scalar("epochs", epochs, int, min_val=1)
    batch_size = check_scalar("batch_size", batch_size, int, min_val=1)
    lr = check_scalar("lr", lr, (int, float), min_val=0, include_min=False)
    weight_decay = check_scalar("weight_decay", weight_decay, (int, float), min_val=0)
    xt, yt = training_data("fine_tune_with_random_masking", model, x, y)
    mod = as_modality(modality, xt)
    imputer = make_imputer(perturb_baseline)
    n = xt.shape[0]
    mask_seed = torch.full((n,), _rng.derive_seed(seed, "ffidelity-masks"), dtype=torch.int64)
    positions = torch.arange(n, dtype=torch.int64)

    def mask_randomly(xb: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        # each sample's masks come from its position and the epoch: batch-independent
        rows = idx.cpu()
        kb = _rng.combine(mask_seed[rows], positions[rows], epoch)
        mask = random_removal_masks(xb, kb, beta=beta, grouping=grouping, modality=mod)
        base = baseline_values(imputer, xb, kb.to(xb.device), mod)
        return (mod.replace(xb, mask, base) if base is not None
                else impute(imputer, xb, mask, keys=kb.to(xb.device), modality=mod))

    return fit_copy(model, xt, yt, epochs=epochs, batch_size=batch_size, lr=lr,
                    weight_decay=weight_decay, seed=seed, transform=mask_randomly)


def _module_version(module: nn.Module) -> tuple:
    """Changes when the module's weights are replaced or modified in place."""
    return tuple((id(t), t._version, t.data_ptr())
                 for t in [*module.parameters(), *module.buffers()])


class FFidelity(RanksFeatures):
    """F-Fidelity, FFid+ and FFid- (Zheng et al., ICLR 2025): the prediction drop when random
    subsets of the explanation (FFid+, **higher is better**) or of the rest of the input
    (FFid-, **lower is better**) are removed, read on a copy of the model fine-tuned with
    random masking. See the module docstring.

    For sample i with G features (groups of ``grouping``), the explanation E is its
    ceil(``alpha`` * G) features of highest attribution (at least 1); FFid+ removes from E,
    FFid- from its complement (the least important features). With
    ``stochastic_removal=True`` (the paper's removal, R-Fidelity's stochastic partial removal)
    each of ``n_draws`` draws removes a uniformly random subset of min(ceil(``removal_ratio``
    * |part|), ceil(``beta`` * G)) features of that part, replaced by ``perturb_baseline``; with
    ``stochastic_removal=False`` the whole part is removed once (Fidelity+/-). On the
    fine-tuned model f',

        FFid(x) = q(f', x) - mean over draws of q(f', x with the subset removed),

    averaged over the ``alpha`` values when several are given (the paper reports over a range
    of explanation sizes; ``drops_per_alpha_`` keeps each), where q is ``quantity``:
    ``"correct"`` (default, the paper's: 1 when f' predicts the label y, else 0) or
    ``"score"`` (the target's score, the softmax probability of y by default). The dataset
    FFid is the mean of the scores.

    Parameters
    ----------
    sign:
        ``"+"`` (FFid+, default) or ``"-"`` (FFid-).
    alpha:
        The explanation size, a fraction of the features in (0, 1], or a sequence of them
        (default 10 % to 50 %, averaged: no single size is assumed to be the true one). The
        paper's sparsity s, not its alpha (that is ``removal_ratio``).
    beta:
        The most features one removal takes, as a fraction of G: the fine-tuning's ``beta``
        (default 0.1, the paper's).
    n_draws:
        Random subsets per sample and ``alpha`` (``stochastic_removal=True``; default 50, the
        authors' number of samples).
    stochastic_removal:
        Remove random subsets (default) or the whole part (one draw). (Not ``stochastic``:
        that name is the metadata every metric has, true when its score depends on the seed.)
    fine_tuned_model:
        The fine-tuned copy: an ``nn.Module`` or :class:`~evalkit.models.ModelWrapper`
        (e.g. ``fine_tune_with_random_masking(model, x_train, y_train)``); or a callable
        ``f(model) -> nn.Module``, called once per model (the result is cached on the
        instance, keyed by the model and its weights' versions); or ``"none"``: evaluate the
        model as given (no fine-tuning: R-Fidelity, or Fidelity with
        ``stochastic_removal=False``).
        None (default): fine-tune on ``fine_tune_data`` (required then).
    fine_tune_data:
        ``(x_train, y_train)``: the metric fine-tunes a copy of the evaluated model on them
        with :func:`fine_tune_with_random_masking` (``beta``, ``grouping``,
        ``perturb_baseline``, the metric's ``seed`` (0 when it is None) and
        ``fine_tune_kwargs``) on its first call with that model, and reuses the copy
        afterwards. It never trains on the evaluated batch.
    fine_tune_kwargs:
        More arguments of :func:`fine_tune_with_random_masking` (``epochs``, ``lr``...).
    quantity:
        ``"correct"`` or ``"score"`` (see above).
    perturb_baseline, grouping:
        Replacement and features, as for :class:`AOPC`.
    removal_ratio:
        The share of the part one draw removes, in (0, 1] (default 0.5: the paper's alpha, the
        authors' ``robust_ratio``), before the ``beta`` cap.

    When a draw removes the whole part (``removal_ratio=1`` and FFid+ with ``alpha <= beta``)
    the score is deterministic. Each draw is a function of the seed and the
    sample's values (:mod:`evalkit._rng`). Ties in the attribution are ordered by feature id; a
    constant map is NaN (``constant_maps``).

    Reference: X. Zheng, F. Shirani, Z. Chen, C. Lin, W. Cheng, W. Guo, D. Luo, "F-Fidelity: A
    Robust Framework for Faithfulness Evaluation of Explainable AI", ICLR 2025
    (arXiv:2410.02970); the stochastic removal: X. Zheng, F. Shirani, T. Wang, W. Cheng, Z.
    Chen, H. Chen, H. Wei, D. Luo, "Towards Robust Fidelity for Evaluating Explainability of
    GNNs", ICLR 2024.
    """

    family = "faithfulness"
    higher_is_better = True
    default_softmax = True
    modalities = ("image", "series", "tabular", "tokens")
    paper = ("Zheng et al., F-Fidelity: A Robust Framework for Faithfulness Evaluation of "
             "Explainable AI, ICLR 2025")
    aliases = ("FFid",)
    stochastic = True

    def __init__(
        self,
        sign: str = "+",
        alpha: float | Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5),
        beta: float = 0.1,
        n_draws: int = 50,
        stochastic_removal: bool = True,
        fine_tuned_model: nn.Module | ModelWrapper | Callable[[Any], Any] | str | None = None,
        fine_tune_data: tuple[Any, Any] | None = None,
        fine_tune_kwargs: dict[str, Any] | None = None,
        quantity: str = "correct",
        perturb_baseline: Any = "black",
        *,
        grouping: Any = "pixels",
        removal_ratio: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sign = check_option("sign", sign, ("+", "-"))
        self.removal_ratio = _fraction("removal_ratio", removal_ratio)
        alphas = (alpha,) if isinstance(alpha, int | float) else tuple(alpha)
        if not alphas:
            raise ValueError("`alpha` must hold at least one fraction.")
        self._alphas = tuple(_fraction("alpha", a) for a in alphas)
        self.alpha = alpha
        self.beta = _fraction("beta", beta)
        self.n_draws = check_scalar("n_draws", n_draws, int, min_val=1)
        self.stochastic_removal = check_bool("stochastic_removal", stochastic_removal)
        if isinstance(fine_tuned_model, str) and fine_tuned_model != NO_FINE_TUNING:
            raise ValueError(f"`fine_tuned_model` as a string must be {NO_FINE_TUNING!r}; got "
                             f"{fine_tuned_model!r}.")
        if not (fine_tuned_model is None or isinstance(fine_tuned_model, str | nn.Module
                                                       | ModelWrapper)
                or callable(fine_tuned_model)):
            raise TypeError("`fine_tuned_model` must be an nn.Module, a ModelWrapper, a "
                            f"callable f(model) -> nn.Module or 'none'; got "
                            f"{type(fine_tuned_model).__name__}.")
        if fine_tune_data is not None and (not isinstance(fine_tune_data, tuple | list)
                                           or len(fine_tune_data) != 2):
            raise TypeError("`fine_tune_data` must be a pair (x_train, y_train).")
        self.fine_tuned_model = fine_tuned_model
        self.fine_tune_data = fine_tune_data
        self.fine_tune_kwargs = fine_tune_kwargs
        self.quantity = check_option("quantity", quantity, QUANTITIES)
        self.perturb_baseline = perturb_baseline
        self.grouping = grouping
        self._grouping = make_grouping(grouping)
        self._imputer = make_imputer(perturb_baseline)
        # fine-tuned copies per user module: (weights' version, copy)
        self._copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __getstate__(self) -> dict[str, Any]:
        # the fine-tuned copies are a cache of this process (weak references cannot be
        # pickled): a pickled metric fine-tunes again, with the same seed, where it needs to
        state = self.__dict__.copy()
        state["_copies"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._copies = weakref.WeakKeyDictionary()

    @classmethod
    def conformance_params(cls) -> dict[str, Any]:
        """For the conformance checks: an untrained deep copy stands in for the fine-tuned
        model (the checks test the protocol, not the training), two draws."""
        return {"fine_tuned_model": copy.deepcopy, "n_draws": 2, "quantity": "score"}

    @property
    def reads_model(self) -> bool:
        """Whether the scores depend on the model the metric is called with (metaeval's
        applicability): not when the fine-tuned copy is given as a module, which every forward
        then goes to."""
        return not isinstance(self.fine_tuned_model, nn.Module | ModelWrapper)

    def _derived_metadata(self) -> dict[str, Any]:
        return {"higher_is_better": self.sign == "+",
                "modalities": removal_modalities(self._imputer)}

    def _random_sources(self) -> dict[str, Any]:
        # a draw is random only where the part is larger than the cap of a removal
        part = max(self._alphas) if self.sign == "+" else 1.0 - min(self._alphas)
        return {"random subsets": self.stochastic_removal and (self.removal_ratio < 1
                                                               or part > self.beta),
                "baseline": self._imputer}

    # ----------------------------------------------------------------- the fine-tuned model
    def _fine_tuned_wrapper(self, batch: MetricBatch) -> ModelWrapper:
        model = batch.require_model()
        spec = self.fine_tuned_model
        if isinstance(spec, str):  # "none": the model as given
            return model
        if isinstance(spec, ModelWrapper):
            return spec.with_options(softmax=model.softmax, target=model.target)
        if isinstance(spec, nn.Module):
            return wrap_model(spec, softmax=model.softmax, target=model.target,
                              device=model.device)
        user = getattr(model, "model", None)
        if not isinstance(user, nn.Module):
            raise TypeError("FFidelity can fine-tune torch models only; pass the fine-tuned "
                            "model as fine_tuned_model=.")
        if spec is None and self.fine_tune_data is None:
            raise ValueError(
                "FFidelity needs the fine-tuned model: pass fine_tuned_model="
                "evalkit.metrics.faithfulness.ffidelity.fine_tune_with_random_masking(model, "
                "x_train, y_train), or fine_tune_data=(x_train, y_train) to fine-tune once per "
                "model, or fine_tuned_model='none' to evaluate the model as given.")
        version = _module_version(user)
        cached = self._copies.get(user)
        if cached is None or cached[0] != version:
            if spec is None:
                x_train, y_train = self.fine_tune_data  # type: ignore[misc]
                options = {"beta": self.beta, "grouping": self.grouping,
                           "perturb_baseline": self.perturb_baseline,
                           "seed": self.seed if isinstance(self.seed, int) else 0,
                           **(self.fine_tune_kwargs or {})}
                tuned = fine_tune_with_random_masking(user, x_train, y_train, **options)
            else:
                tuned = spec(user)
            if not isinstance(tuned, nn.Module):
                raise TypeError("`fine_tuned_model` returned "
                                f"{type(tuned).__name__}; expected an nn.Module.")
            self._copies[user] = cached = (version, tuned)
        return wrap_model(cached[1], softmax=model.softmax, target=model.target,
                          device=model.device)

    # ----------------------------------------------------------------------- the metric
    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        view = batch_view(batch, model=self._fine_tuned_wrapper(batch))
        x = batch.x
        dev = x.device
        ordering = order_groups(view, self._grouping, "morf")
        grp = ordering.grouping
        g = ordering.n_groups.to(dev)  # (N,)
        n, g_max = batch.n, grp.max_groups
        alphas = torch.tensor(self._alphas, dtype=torch.float64, device=dev)
        n_alpha = alphas.shape[0]
        # explanation sizes (N, A): ceil(alpha * G), at least 1, at most G (the 1e-9 keeps
        # 0.1 * 30 at 3)
        k = torch.ceil(alphas.unsqueeze(0) * g.unsqueeze(1) - 1e-9).to(torch.int64)
        k = torch.minimum(k.clamp(min=1), g.unsqueeze(1))
        # the part removed from, as rank positions [lo, hi) of the MoRF order
        lo = torch.zeros_like(k) if self.sign == "+" else k
        hi = k if self.sign == "+" else g.unsqueeze(1).expand_as(k)
        part = hi - lo
        if self.stochastic_removal:
            cap = torch.ceil(self.beta * g.to(torch.float64) - 1e-9).to(torch.int64).clamp(min=1)
            share = torch.ceil(self.removal_ratio * part.to(torch.float64) - 1e-9).to(
                torch.int64).clamp(min=1)
            take = torch.minimum(torch.minimum(share, cap.unsqueeze(1)), part)
            draws = self.n_draws
        else:
            take, draws = part, 1
        keys = _rng.combine(batch.keys, 0xFF1D)
        pos = torch.arange(g_max, device=dev)

        def positions_of(m: torch.Tensor) -> torch.Tensor:
            """(B, G) bool over rank positions: the positions removed by the run rows m
            (draw d of alpha a of sample i)."""
            hi_m = run_hi.index_select(0, m)
            if not self.stochastic_removal:
                out_part = pos >= hi_m.unsqueeze(1)
                if not from_start:
                    out_part |= pos < run_lo.index_select(0, m).unsqueeze(1)
                return ~out_part
            # positions at or past every row's part are never drawn from: a row's stream is
            # drawn up to the chunk's last part end only (a prefix of the same numbers)
            width = int(hi_m.max())
            head = pos[:width]
            out_part = head >= hi_m.unsqueeze(1)
            if not from_start:
                out_part |= head < run_lo.index_select(0, m).unsqueeze(1)
            u = _rng.uniform(run_row_keys.index_select(0, m.cpu()), (width,),
                             dtype=torch.float64).to(dev)
            u = u.masked_fill_(out_part, math.inf)
            # the `take` positions of the part with the smallest draws: those up to the take-th
            # smallest value (take <= the part's size, so it is finite; one sort, no scatter
            # of ranks). Only two equal 53-bit draws at that value (odds about G^2 / 2^54 a
            # row) would keep one more position, where the ranks kept an arbitrary one.
            take_m = run_take.index_select(0, m).unsqueeze(1) - 1
            if u.device.type == "cpu":  # NumPy sorts short rows several times faster
                ordered = torch.from_numpy(np.sort(u.numpy(), axis=1))
            else:
                ordered = u.sort(1).values
            removed = u <= ordered.gather(1, take_m)
            if width == g_max:
                return removed
            out = torch.zeros((m.shape[0], g_max), dtype=torch.bool, device=dev)
            out[:, :width] = removed
            return out

        imputer = self._imputer
        modality = batch.modality
        base = baseline_values(imputer, x, batch.keys, modality)
        sample_keys = batch.keys if imputer.stochastic else None

        # rows (sample, alpha, draw); a row that removes nothing scores the clean input
        rows = torch.stack(torch.meshgrid(torch.arange(n, device=dev),
                                          torch.arange(n_alpha, device=dev),
                                          torch.arange(draws, device=dev), indexing="ij"),
                           -1).reshape(-1, 3)
        removes = take[rows[:, 0], rows[:, 1]] > 0
        run = rows[removes]
        # each run row's part, size and keys gathered once, not per chunk (per-chunk indexing
        # is the cost that matters next to a small model)
        run_i, run_a = run[:, 0].contiguous(), run[:, 1]
        run_lo, run_hi, run_take = lo[run_i, run_a], hi[run_i, run_a], take[run_i, run_a]
        # each run row's key (sample, alpha, draw), combined once for the call
        run_row_keys = _rng.combine(keys.cpu().index_select(0, run_i.cpu()), run_a.cpu(),
                                    run[:, 2].cpu())
        from_start = not bool(run_lo.any())  # FFid+: every part starts at rank 0

        def build(m: torch.Tensor) -> torch.Tensor:
            i = run_i.index_select(0, m)
            removed_pos = positions_of(m)
            removed_groups = torch.zeros_like(removed_pos).scatter_(
                1, ordering.order.index_select(0, i), removed_pos)
            mask = grp.expand(removed_groups, i)
            xi = x.index_select(0, i)
            if base is not None:
                return modality.replace(xi, mask, base[i])
            k_rows = None if sample_keys is None else sample_keys[i]
            return impute(imputer, xi, mask, keys=k_rows, modality=modality)

        clean = clean_scores(view, self.quantity)
        scores = clean[rows[:, 0]].clone()
        if run.shape[0]:
            scores[removes] = run_rows(view, build, run[:, 0], quantity=self.quantity,
                                       desc=type(self).__name__)
        scores = scores.reshape(n, n_alpha, draws)
        drops = clean.reshape(n, 1) - scores.mean(2)
        batch.record("drops_per_alpha", drops, per_sample=True)
        return drops.mean(1)
