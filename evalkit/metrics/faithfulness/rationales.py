"""Rationale fidelity: ERASER comprehensiveness and sufficiency (DeYoung et al. 2020) and
their soft variants (Zhao & Aletras 2023).

A *rationale* is the part of the input an explanation points at: the top k % of the features
(tokens for text) by attribution. Comprehensiveness asks whether the prediction falls without
it, sufficiency whether the rationale alone keeps it. The soft variants replace the hard top-k
cut by a random, importance-proportional dropout of each token's embedding.

Not to be confused with :class:`~evalkit.metrics.faithfulness.Sufficiency` (Dasgupta et al.
2022), a set-level metric of neighbouring explanations: hence the names
:class:`ERASERComprehensiveness`, :class:`ERASERSufficiency`, :class:`SoftComprehensiveness`
and :class:`SoftSufficiency`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ... import _rng
from ..._hook_handles import HookHandles
from ..._validation import check_bool, check_scalar
from ...perturb import Imputer, TokenDeletion, make_grouping, make_imputer
from ...perturb._select import zero_unkept_
from .._removal import (
    RemovalPlan,
    RowWriter,
    clean_scores,
    group_scores,
    identity_groups,
    order_groups,
    run_row_sources,
    run_rows,
    window_scores,
)
from .._ties import RanksFeatures
from ..base import Metric, MetricBatch

#: the percentages of ERASER's AOPC bins (DeYoung et al. 2020, section 4.2)
ERASER_PERCENTAGES = (1, 5, 10, 20, 50)
#: rng stream of the soft metrics' dropout masks
_SOFT_STREAM = 0x50F7


def _check_percentages(value: Any) -> float | tuple[float, ...]:
    items = (value,) if isinstance(value, int | float) and not isinstance(value, bool) else value
    if not isinstance(items, Sequence) or isinstance(items, str) or len(items) == 0:
        raise TypeError(f"`percentages` must be a number or a non-empty sequence of numbers in "
                        f"(0, 100]; got {value!r}.")
    for p in items:
        check_scalar("percentages", p, (int, float), min_val=0, max_val=100, include_min=False)
    return value if not isinstance(value, list) else tuple(value)


def removal_modalities(imputer: Imputer) -> tuple[str, ...]:
    """The modalities a removal metric with this replacement is defined for: token deletion
    on token ids only, a random baseline on numeric data only (random values are no ids),
    anything else on every modality."""
    if isinstance(imputer, TokenDeletion):
        return ("tokens",)
    if imputer.stochastic:
        return ("image", "series", "tabular")
    return ("image", "series", "tabular", "tokens")


class FollowsRemovalPlan:
    """Mixin of the metrics that replace features through a :class:`RemovalPlan` held in
    ``self._plan``: the modalities follow its imputer (:func:`removal_modalities`), and the
    imputer is the metric's random source. Metrics whose direction also depends on a parameter
    add it to ``super()._derived_metadata()``."""

    _plan: RemovalPlan

    def _derived_metadata(self) -> dict[str, Any]:
        return {"modalities": removal_modalities(self._plan.imputer)}

    def _random_sources(self) -> dict[str, Any]:
        return {"baseline": self._plan.imputer}


def rationale_sizes(percentages: Sequence[float], n_features: torch.Tensor) -> torch.Tensor:
    """(N, B) int64 rationale sizes: p % of each sample's G features, rounded half up, at
    least 1 and at most G."""
    p = torch.tensor([float(v) for v in percentages], dtype=torch.float64,
                     device=n_features.device)
    g = n_features.to(torch.float64).unsqueeze(1)
    k = torch.floor(p.unsqueeze(0) * g / 100 + 0.5).to(torch.int64)
    return torch.minimum(k.clamp(min=1), n_features.unsqueeze(1))


class _ERASERFidelity(RanksFeatures):
    """The shared computation of ERASER comprehensiveness and sufficiency."""

    family = "faithfulness"
    default_softmax = True
    modalities = ("image", "series", "tabular", "tokens")
    paper = ("DeYoung et al., ERASER: A Benchmark to Evaluate Rationalized NLP Models, "
             "ACL 2020")
    #: True: the rationale is removed (comprehensiveness); False: only the rationale is kept
    _remove_rationale: bool = True

    def __init__(self, percentages: float | Sequence[float] = ERASER_PERCENTAGES,
                 perturb_baseline: Any = "black", *, grouping: Any = "pixels",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.percentages = _check_percentages(percentages)
        self.perturb_baseline = perturb_baseline
        self.grouping = grouping
        self._grouping = make_grouping(grouping)
        self._imputer = make_imputer(perturb_baseline)

    def _random_sources(self) -> dict[str, Any]:
        return {"baseline": self._imputer}

    def _derived_metadata(self) -> dict[str, Any]:
        return {"modalities": removal_modalities(self._imputer)}

    def _bins(self) -> tuple[float, ...]:
        p = self.percentages
        return (float(p),) if isinstance(p, int | float) else tuple(float(v) for v in p)

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        ordering = order_groups(batch, self._grouping, "morf")
        g = ordering.n_groups.to(batch.device)
        bins = self._bins()
        k = rationale_sizes(bins, g)
        if self._remove_rationale:  # x without its rationale: ranks [0, k) replaced
            lo, hi = torch.zeros_like(k), k
        else:  # the rationale alone: ranks [k, G) replaced
            lo, hi = k, g.unsqueeze(1).expand_as(k)
        scores = window_scores(batch, ordering, self._imputer, lo, hi,
                               desc=type(self).__name__, with_clean=True)
        deltas = clean_scores(batch).unsqueeze(1) - scores
        batch.set_curves(deltas, torch.tensor(bins, dtype=torch.float64) / 100)
        batch.record("rationale_sizes", k, per_sample=True)
        return deltas.mean(1)


_SHARED_DOC = """
    The rationale at k % is the top k % of the sample's G features (tokens, pixels, time
    steps or columns; ``grouping``): round(k / 100 * G) features, rounded half up, at least 1
    and at most G, ranked by attribution (ties in feature order). The score
    is the mean of the differences over the bins ``percentages`` (ERASER's AOPC over
    {1, 5, 10, 20, 50} %, the default; a single number gives that one k); ``curves_`` holds
    the per-bin differences over ``curve_x_`` = k / 100, and ``rationale_sizes_`` the
    rationale sizes.

    The scored value is the target's (class ``y``'s) probability (``softmax=True`` by
    default). ERASER scores the *predicted* class: pass ``y`` = the model's predictions for
    its protocol. The ERASER scorer averages the differences over the bins; the paper's
    formula writes 1 / (|B| + 1) with a k = 0 term, which is 0 for comprehensiveness; the
    scorer's average is used here.

    Removal: on token ids a removed token is replaced by the mask token
    (``TokensModality(mask_token_id=...)``: every named ``perturb_baseline`` means it; a number
    is an explicit id), or deleted with re-padding with ``perturb_baseline="delete"`` (the
    paper's protocol deletes the tokens; :class:`~evalkit.perturb.TokenDeletion`, pad id from
    ``TokensModality(pad_token_id=...)``). Every position of (N, L) is a token, pad positions
    included: score sequences without padding, or batches padded to their own length. On
    images, series and tables the baseline replaces the features as in the other removal
    metrics.

    Parameters
    ----------
    percentages:
        One percentage in (0, 100] or a sequence of them (default (1, 5, 10, 20, 50)).
    perturb_baseline:
        The replacement (default ``"black"``: the mask token on token ids), ``"delete"``, a
        number, an array or an :class:`~evalkit.perturb.Imputer`.
    grouping:
        The features (default ``"pixels"``: tokens, pixels, time steps or columns).

    Reference: J. DeYoung, S. Jain, N. F. Rajani, E. Lehman, C. Xiong, R. Socher, B. C.
    Wallace, "ERASER: A Benchmark to Evaluate Rationalized NLP Models", ACL 2020.
"""


def _with_shared_doc(cls: type) -> type:
    cls.__doc__ = (cls.__doc__ or "").replace("    <<SHARED>>\n", _SHARED_DOC.strip("\n") + "\n")
    return cls


@_with_shared_doc
class ERASERComprehensiveness(_ERASERFidelity):
    """ERASER comprehensiveness (DeYoung et al. 2020): how much the prediction falls when the
    rationale is removed, p(y | x) - p(y | x without the rationale). **Higher is better**
    (the rationale holds what the model needs).

    <<SHARED>>
    """

    higher_is_better = True
    _remove_rationale = True


@_with_shared_doc
class ERASERSufficiency(_ERASERFidelity):
    """ERASER sufficiency (DeYoung et al. 2020): how much the prediction falls when only the
    rationale is kept, p(y | x) - p(y | rationale only). **Lower is better** (the rationale
    alone keeps the prediction; a negative value means it raises it). Not the set-level
    :class:`~evalkit.metrics.faithfulness.Sufficiency` of Dasgupta et al. (2022).

    <<SHARED>>
    """

    higher_is_better = False
    _remove_rationale = False


# ---------------------------------------------------------------------------- soft variants
class _SoftFidelity(Metric):
    """The shared computation of the soft metrics of Zhao & Aletras (2023)."""

    family = "faithfulness"
    higher_is_better = True
    stochastic = True
    default_softmax = True
    modalities = ("image", "series", "tabular")
    paper = ("Zhao & Aletras, Incorporating Attribution Importance for Improving Faithfulness "
             "Metrics, ACL 2023")
    #: True: each element is kept with probability 1 - q (comprehensiveness); False: q
    _drop_important: bool = True

    def __init__(self, embedding_layer: Any = None, nr_samples: int = 1, *,
                 normalised_by_empty: bool = True, grouping: Any = "pixels",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if embedding_layer is not None and not isinstance(embedding_layer, str):
            raise TypeError("`embedding_layer` must be a layer name (as in "
                            "model.named_modules(), or a path such as 'encoder.embed'), or "
                            f"None; got {type(embedding_layer).__name__}.")
        self.embedding_layer = embedding_layer
        self.nr_samples = check_scalar("nr_samples", nr_samples, int, min_val=1)
        self.normalised_by_empty = check_bool("normalised_by_empty", normalised_by_empty)
        self.grouping = grouping
        self._grouping = make_grouping(grouping)

    def _derived_metadata(self) -> dict[str, Any]:
        return {"modalities": ("tokens",) if self.embedding_layer is not None
                else ("image", "series", "tabular")}

    def _check_modality(self, modality: Any) -> None:
        if modality.integer_inputs and self.embedding_layer is None:
            raise ValueError(
                f"{type(self).__name__} drops parts of each token's embedding: on "
                f"{modality.name} inputs pass embedding_layer= (the name of the model's "
                "embedding layer, whose output is (N, L, D))."
            )

    def _importance(self, batch: MetricBatch) -> tuple[torch.Tensor, Any]:
        """(N, G) importance min-max scaled to [0, 1] per sample, and the grouping."""
        grp = self._grouping(batch.x)
        # every sample has every group (inputs of one shape): no masking needed
        ragged = not bool((grp.n_groups == grp.max_groups).all())
        scores = group_scores(grp, batch.a, "sum",  # type: ignore[arg-type]
                              identity=False if ragged else None)
        if ragged:
            valid = grp.valid()
            lo = torch.where(valid, scores, torch.full_like(scores, math.inf)).amin(
                1, keepdim=True)
            hi = torch.where(valid, scores, torch.full_like(scores, -math.inf)).amax(
                1, keepdim=True)
        else:
            lo = scores.amin(1, keepdim=True)
            hi = scores.amax(1, keepdim=True)
        span = hi - lo
        batch.set_nan(span.squeeze(1) == 0,
                      "the attribution is constant: no token is more important than another")
        q = (scores - lo) / torch.where(span > 0, span, torch.ones_like(span))
        if ragged:
            q = torch.where(valid, q, torch.zeros_like(q))
        return q.clamp(0.0, 1.0), grp

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        batch.require_model()
        q, grp = self._importance(batch)
        keep = 1.0 - q if self._drop_important else q
        n, s = batch.n, self.nr_samples
        # rows (i, j): draw j < S of sample i; row S keeps nothing (the empty input)
        draws = s + 1 if self.normalised_by_empty else s
        sample_idx = torch.arange(n, device=batch.device).repeat_interleave(draws)
        draw_idx = torch.arange(draws, device=batch.device).repeat(n)
        row_keys = _rng.combine(batch.keys[sample_idx], _SOFT_STREAM, draw_idx)
        if self.embedding_layer is None:
            empty = draw_idx == s if self.normalised_by_empty else None
            probs = self._input_dropout(batch, grp, sample_idx, row_keys, keep, empty)
        else:
            keep_rows = keep.unsqueeze(1).repeat(1, draws, 1)  # (N, R, G)
            if self.normalised_by_empty:
                keep_rows[:, s] = 0.0
            probs = self._embedding_dropout(batch, sample_idx, row_keys,
                                            keep_rows.reshape(n * draws, -1))
        probs = probs.reshape(n, draws)
        p = clean_scores(batch)
        drop = (p.unsqueeze(1) - probs[:, :s]).clamp(min=0)  # max(0, p(y|x) - p(y|x'))
        batch.record("draw_scores", probs[:, :s], per_sample=True)
        raw = drop.mean(1) if self._drop_important else (1.0 - drop).mean(1)
        if not self.normalised_by_empty:
            return raw
        # Carton et al.'s normalisation: 1 - S(x, y, 0) = max(0, p(y|x) - p(y|empty input))
        room = (p - probs[:, s]).clamp(min=0)
        batch.set_nan(room == 0, "the empty input (every element dropped) does not lower the "
                                 "target score: the normalisation by it is undefined")
        room = torch.where(room > 0, room, torch.ones_like(room))
        if self._drop_important:
            return raw / room
        return (raw - (1.0 - room)) / room

    def _input_dropout(self, batch: MetricBatch, grp: Any, sample_idx: torch.Tensor,
                       row_keys: torch.Tensor, keep: torch.Tensor,
                       empty: torch.Tensor | None) -> torch.Tensor:
        """Target scores of the rows with input elements zeroed at random (numeric data).
        ``keep`` (N, G): each sample's keep probabilities; ``empty`` (M,) bool: the rows that
        keep nothing (the empty input: zeros, whatever the draws; none are drawn for
        them)."""
        x = batch.x
        drawn = (torch.arange(sample_idx.shape[0], device=sample_idx.device) if empty is None
                 else (~empty).nonzero().squeeze(1))
        d_samples = sample_idx.index_select(0, drawn)
        d_keys = row_keys.index_select(0, drawn)
        # one element per group in order: the probabilities' map is a reshape, no gather
        flat_groups = identity_groups(grp)
        label_shape = tuple(grp.labels.shape[1:])

        def write(m: torch.Tensor, out: torch.Tensor) -> None:
            i = d_samples.index_select(0, m)
            rows = keep.index_select(0, i)
            # (B, Cg, *S) keep probabilities
            prob = (rows.view(rows.shape[0], *label_shape) if flat_groups
                    else grp.expand(rows, i))
            u = _rng.uniform(d_keys.index_select(0, m), tuple(x.shape[1:]),
                             dtype=torch.float64, stream=_SOFT_STREAM).to(x.device)
            # the rows are copied into the chunk and zeroed in place there, the same values
            # as torch.where(u < prob, x, 0) without a second tensor (u < prob is False for
            # a NaN probability: the element is dropped)
            zero_unkept_(torch.index_select(x, 0, i, out=out), u < prob)

        def zeros(m: torch.Tensor, out: torch.Tensor) -> None:
            # u < 0 never holds for u in [0, 1): the empty input is zeros
            out.zero_()

        shape = tuple(x.shape[1:])
        build = RowWriter(write, shape, x.dtype, x.device)
        sources: list[tuple] = [(build, d_samples)]
        if empty is not None:
            blank = empty.nonzero().squeeze(1)
            sources.append((RowWriter(zeros, shape, x.dtype, x.device),
                            sample_idx.index_select(0, blank)))
        # the unperturbed rows (p(y | x)) run in the same pass
        values = run_row_sources(batch, sources, desc=type(self).__name__, with_clean=True)
        if empty is None:
            return values[0]
        out = torch.empty(sample_idx.shape[0], dtype=torch.float64, device=sample_idx.device)
        out[drawn] = values[0]
        out[blank] = values[1]
        return out

    def _embedding_dropout(self, batch: MetricBatch, sample_idx: torch.Tensor,
                           row_keys: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Target scores of the rows with the embedding layer's output (B, L, D...) multiplied
        by a Bernoulli mask: element (l, d) kept with probability ``keep[row, l]``."""
        from ...explain._hooks import resolve_layer

        module = getattr(batch.model, "model", None)
        if not isinstance(module, torch.nn.Module):
            raise ValueError(f"{type(self).__name__}(embedding_layer=...) hooks a layer of a "
                             "torch model; got a model without modules.")
        _, layer = resolve_layer(module, self.embedding_layer)
        x = batch.x
        current: dict[str, torch.Tensor] = {}
        name = type(self).__name__

        def build(m: torch.Tensor) -> torch.Tensor:
            current["rows"] = m  # the runner builds a chunk, then runs the model on it
            return x[sample_idx[m]]

        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
            rows = current["rows"]
            if not isinstance(output, torch.Tensor) or output.ndim < 2 or tuple(
                    output.shape[:2]) != (rows.shape[0], x.shape[1]):
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else output
                raise ValueError(
                    f"{name}: the embedding layer must return one vector per token, "
                    f"(B, L, ...) with L = {x.shape[1]}; {self.embedding_layer!r} returned "
                    f"{shape}."
                )
            u = _rng.uniform(row_keys[rows], tuple(output.shape[1:]), dtype=torch.float64,
                             stream=_SOFT_STREAM).to(output.device)
            prob = keep[rows].reshape(rows.shape[0], x.shape[1], *([1] * (output.ndim - 2)))
            return output * (u < prob).to(output.dtype)

        with HookHandles() as hooks:
            hooks.forward(layer, hook)
            return run_rows(batch, build, sample_idx, desc=name)


_SOFT_DOC = """
    Importance: each token's attribution (each feature's, summed over its elements: pixels,
    time steps, columns) min-max scaled to [0, 1] per sample, q; a constant map is NaN with a
    reason. The perturbation is random (``seed``): on token ids, each element of each token's
    vector at the output of ``embedding_layer`` (a forward hook, removed after the call) is
    kept with its probability and set to 0 otherwise (dropout without rescaling); on numeric
    inputs (``embedding_layer=None``) each input element is. The empty input keeps nothing.
    With ``nr_samples`` > 1 the raw value is the mean over independent draws
    (``draw_scores_`` holds the perturbed target scores, (N, nr_samples)). Draw j of a sample
    comes from the key of (sample, j) (the numbers a seed gives changed when evalkit's
    counter-based keyed generator replaced one NumPy generator per key, their distribution did
    not).

    The scored value is the target's (class ``y``'s) probability (``softmax=True`` by
    default); the paper scores the predicted class: pass ``y`` = the model's predictions.

    Parameters
    ----------
    embedding_layer:
        The name of the model's embedding layer (``model.named_modules()`` names, or a path
        such as ``"embeddings.word_embeddings"``), whose output is (N, L, D): required on
        token ids (the metric is then declared for tokens only); None on numeric inputs.
    nr_samples:
        Dropout draws per sample (default 1, as in the paper).
    normalised_by_empty:
        Divide by the drop of the empty input (Carton et al. 2020's normalisation, the
        paper's Soft-NS / Soft-NC; default True); False gives the raw soft score.
    grouping:
        The features on numeric inputs (default ``"pixels"``).

    Reference: Z. Zhao, N. Aletras, "Incorporating Attribution Importance for Improving
    Faithfulness Metrics", ACL 2023; S. Carton, A. Rathore, C. Tan, "Evaluating and
    Characterizing Human Rationales", EMNLP 2020 (the normalisation).
"""


def _with_soft_doc(cls: type) -> type:
    cls.__doc__ = (cls.__doc__ or "").replace("    <<SOFT>>\n", _SOFT_DOC.strip("\n") + "\n")
    return cls


@_with_soft_doc
class SoftComprehensiveness(_SoftFidelity):
    """Soft normalised comprehensiveness, Soft-NC (Zhao & Aletras 2023). **Higher is
    better**.

    Each token's embedding is kept element by element with probability 1 - q (its normalised
    importance q): important tokens are mostly dropped. With p = p(y | x), p' the target
    probability of the perturbed input and p0 that of the empty input,
    Soft-C = max(0, p - p') and Soft-NC = Soft-C / max(0, p - p0) (``normalised_by_empty``).

    <<SOFT>>
    """

    _drop_important = True


@_with_soft_doc
class SoftSufficiency(_SoftFidelity):
    """Soft normalised sufficiency, Soft-NS (Zhao & Aletras 2023). **Higher is better**
    (unlike ERASER's sufficiency, a difference, this is a share of the prediction kept).
    Not the set-level :class:`~evalkit.metrics.faithfulness.Sufficiency` of Dasgupta et al.

    Each token's embedding is kept element by element with probability q (its normalised
    importance): unimportant tokens are mostly dropped. With p = p(y | x), p' the target
    probability of the perturbed input and p0 that of the empty input,
    Soft-S = 1 - max(0, p - p'), S0 = 1 - max(0, p - p0) and
    Soft-NS = (Soft-S - S0) / (1 - S0) (``normalised_by_empty``).

    <<SOFT>>
    """

    _drop_important = False
