"""Input modalities: what the data is, so that no metric has to ask.

A :class:`Modality` owns everything that depends on the kind of input:

* the **layout** of ``x`` and how attributions ``a`` and masks ``s`` align with it
  (:meth:`~Modality.check`, :meth:`~Modality.align`, :meth:`~Modality.align_masks`);
* the **features** a metric perturbs by default (:attr:`~Modality.default_grouping`: pixels,
  columns, time steps, tokens) and the per-feature view of a map (:meth:`~Modality.feature_maps`);
* how masked features are **replaced** (:meth:`~Modality.replace`: baselines, imputers, mask
  tokens) and which **noise** is valid for the data (:attr:`~Modality.additive_noise`);
* the axes a **translation** moves along, and the 2-D array a person is shown
  (:meth:`~Modality.display_map`);
* which metrics **apply** (a metric declares ``modalities``; :meth:`Modality.check_applies`).

Four modalities are built in:

=============  ===========================  ===============================================
``"image"``    (N, C, H, W) (or (N, C, D,   pixels: all channels of a pixel together
               H, W)), floating point
``"series"``   (N, C, T), floating point    time steps: all channels of a step together
``"tabular"``  (N, F), floating point       columns (or column groups: one-hot blocks)
``"tokens"``   (N, L) integer token ids     tokens; ids are carried as they are, never cast
=============  ===========================  ===============================================

:func:`infer_modality` picks one from the shape and dtype of ``x`` (integer (N, L) inputs are
tokens); pass ``modality=`` to a metric call to say it explicitly.

**Integer inputs** are decided per modality, in one place (:meth:`Modality.from_integers`,
used by :meth:`Modality.check` and by the model wrappers' ``prepare``): token ids stay integers
all the way to the model; integer series and tables are numbers (counts, codes) and become
floating point with their values; **integer images are refused** unless their range is stated,
because a uint8 image says nothing about the values the model takes (0-255 or [0, 1]) and a
silent cast scores the wrong inputs. Convert them yourself (``x.float() / 255`` for a model of
[0, 1] inputs) or pass ``modality=ImageModality(value_range=(0, 255))``: the values are then
passed as they are, as floating point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ._validation import check_attributions, check_inputs, check_masks

__all__ = [
    "COLUMN_KINDS",
    "MODALITIES",
    "ImageModality",
    "Modality",
    "SeriesModality",
    "TabularModality",
    "TokensModality",
    "as_modality",
    "infer_modality",
]


class Modality:
    """Base class of the input modalities. Subclass it to add one (and register it in
    :data:`MODALITIES` by name)."""

    #: the name metrics declare in their ``modalities``
    name: ClassVar[str] = ""
    #: the input rank (including the sample axis) this modality accepts; None: any of ``ranks``
    ranks: ClassVar[tuple[int, ...]] = ()
    #: whether inputs keep an integer dtype (token ids) instead of becoming floating point
    integer_inputs: ClassVar[bool] = False
    #: the grouping metrics use by default (see :func:`evalkit.perturb.make_grouping`)
    default_grouping: ClassVar[str] = "pixels"
    #: whether additive Gaussian/uniform input noise is meaningful for this data
    additive_noise: ClassVar[bool] = True
    #: whether dropping random features (:meth:`drop_features`, e.g. replacing tokens by the
    #: mask token) is a meaningful noise for this data
    feature_dropout: ClassVar[bool] = False
    #: the axis that holds channels (summed to per-feature values), or None
    channel_axis: ClassVar[int | None] = 1
    #: what the layout is, for error messages
    layout: ClassVar[str] = ""

    # ------------------------------------------------------------------ layout
    def check(self, x: torch.Tensor, name: str = "x", *,
              dtype: torch.dtype | None = None) -> torch.Tensor:
        """Validate a batch of inputs and bring it to the dtype the model takes.

        Integer inputs become ``dtype`` (default float32) unless the modality keeps them
        (:attr:`integer_inputs`); NaN/Inf and empty batches are rejected.
        """
        if self.ranks and x.ndim not in self.ranks:
            raise ValueError(
                f"`{name}` of shape {tuple(x.shape)} is not {self.name} data: expected "
                f"{self.layout}."
            )
        if self.integer_inputs:
            if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
                raise ValueError(
                    f"`{name}` holds {x.dtype} values, but {self.name} inputs are integer ids "
                    f"{self.layout}."
                )
            if x.shape[0] == 0:
                raise ValueError(f"`{name}` is an empty batch (N = 0); give at least one sample.")
            return x
        if not (x.is_floating_point() or x.is_complex()):
            x = self.from_integers(x, name, dtype=dtype)
        return check_inputs(x, name)

    def from_integers(self, x: torch.Tensor, name: str = "x", *,
                      dtype: torch.dtype | None = None) -> torch.Tensor:
        """Integer (or bool) inputs in the dtype the model takes (default float32), their
        values unchanged; the modality decides whether that is allowed (integer images need a
        stated range, token ids are never cast: :attr:`integer_inputs`)."""
        if self.integer_inputs:
            return x
        return x.to(dtype or torch.float32)

    def align(self, a: torch.Tensor, x: torch.Tensor, name: str = "a") -> torch.Tensor:
        """Attributions aligned with ``x`` (broadcastable against it), floating point."""
        return check_attributions(a, x, name)

    def align_masks(self, s: torch.Tensor, x: torch.Tensor, name: str = "s") -> torch.Tensor:
        """Binary ground-truth masks as bool, broadcastable against ``x``."""
        return check_masks(s, x, name)

    def feature_axes(self, x: torch.Tensor) -> tuple[int, ...]:
        """The axes along which features are laid out (pixels, time steps, columns, tokens)."""
        start = 1 if self.channel_axis is None else self.channel_axis + 1
        return tuple(range(start, x.ndim))

    def feature_maps(self, a: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """A map as (N, P) per-feature values (channels summed; a 1-channel map taken as it
        is) and the features' arrangement (the spatial shape; empty for tabular columns and
        tokens, which have none)."""
        if self.channel_axis is None:
            return a.reshape(a.shape[0], -1), ()
        a = a[:, 0] if a.shape[1] == 1 else a.sum(1)
        return a.reshape(a.shape[0], -1), tuple(a.shape[1:])

    def feature_masks(self, s: torch.Tensor) -> torch.Tensor:
        """Masks as bool (N, P), one entry per feature; a channel axis must be 1 or hold
        identical channels."""
        if self.channel_axis is not None:
            if s.shape[1] > 1 and not bool((s == s[:, :1]).all()):
                raise ValueError(
                    "`s` holds different masks per channel; localisation is scored per "
                    "feature, so pass one mask per sample, shape (N, 1, ...)."
                )
            s = s[:, 0]
        return s.reshape(s.shape[0], -1)

    def channels_first(self, t: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        """A channels-last batch (N, ..., C) in this modality's channels-first layout; with
        ``like`` (the inputs), only when ``t`` has their rank (a map without a channel axis
        stays as it is). Quantus' ``channel_first=False``."""
        if self.channel_axis is None or (like is not None and t.ndim != like.ndim):
            return t
        return t.movedim(-1, self.channel_axis)

    @staticmethod
    def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Per-sample values (N,) shaped to broadcast against a batch ``like`` (N, ...)."""
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    # ------------------------------------------------------------------ perturbation
    def replace(self, x: torch.Tensor, mask: torch.Tensor,
                fill: torch.Tensor | float | int) -> torch.Tensor:
        """``x`` with the elements where ``mask`` is True replaced by ``fill`` (broadcastable:
        baseline values, imputed values, a mask token id). Never writes into ``x``."""
        fill_t = torch.as_tensor(fill, device=x.device)
        if fill_t.dtype != x.dtype:
            fill_t = fill_t.to(x.dtype)
        return torch.where(mask, fill_t, x)

    def baseline_values(self, baseline: Any, x: torch.Tensor,
                        keys: torch.Tensor | None = None) -> torch.Tensor:
        """The replacement values of a mask-independent baseline
        (:class:`~evalkit.perturb.Baseline`) for a batch ``x`` (N, ...), broadcastable against
        it: its own values for numeric data (token ids override this: see
        :meth:`TokensModality.baseline_values`)."""
        return baseline.values(x, keys)

    def drop_features(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` with the features where ``mask`` is True dropped the data's own way (the
        token-dropout noise of the robustness metrics); only where :attr:`feature_dropout`
        is True."""
        raise ValueError(
            f"Dropping features is not defined for {self.name} inputs ({self.layout}); use "
            "additive noise (perturb_func='gaussian' or 'uniform') instead."
        )

    def valid_noise(self, noise: Any) -> Any:
        """The input noise that keeps this modality's inputs valid, given a metric's noise
        model (:class:`evalkit.perturb.Noise`): ``noise`` itself, except for tables with a
        column spec (:meth:`TabularModality.valid_noise`)."""
        return noise

    def translation_axis(self, x: torch.Tensor, direction: str) -> int:
        """The axis a translation along ``direction`` (``"x"``: the last spatial axis,
        ``"y"``: the one before) shifts."""
        raise ValueError(
            f"Translations need (N, C, T) series or (N, C, H, W) images; {self.name} inputs "
            f"of shape {tuple(x.shape)} have no axis to shift along. Use a noise perturbation "
            "(perturb_func='gaussian') instead."
        )

    # ------------------------------------------------------------------ people
    def display_map(self, a: torch.Tensor | np.ndarray) -> np.ndarray:
        """One sample's map as the 2-D array a heatmap shows (rows x columns)."""
        t = torch.as_tensor(a)
        maps, spatial = self.feature_maps(t.unsqueeze(0))
        if len(spatial) == 2:
            return maps.reshape(spatial).cpu().numpy()
        return maps.reshape(1, -1).cpu().numpy()

    # ------------------------------------------------------------------ applicability
    def check_applies(self, metric: Any) -> None:
        """Raise a ``ValueError`` naming the metric when it is not defined for this data."""
        declared = tuple(getattr(metric, "modalities", ()) or ())
        if self.name not in declared:
            who = type(metric).__name__ if not isinstance(metric, type) else metric.__name__
            raise ValueError(
                f"{who} does not apply to {self.name} inputs; it is defined for "
                f"{', '.join(declared) or 'no modality'}. (The modality was "
                "inferred from the shape and dtype of `x`; pass `modality=` to the call if that "
                "is wrong.)"
            )

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(map(repr, vars(self).items())))))


class ImageModality(Modality):
    """Images (N, C, H, W), or volumes (N, C, D, H, W); features are pixels (all channels
    of a pixel together).

    ``value_range``: the range ``(low, high)`` of *integer* images (e.g. ``(0, 255)`` for
    uint8), which are then passed to the model as floating point with their values unchanged
    (values outside the range are an error). Without it integer images are refused: convert
    them to the values the model takes (``x.float() / 255`` for [0, 1]). Floating-point images
    are used as they are either way.
    """

    name = "image"
    ranks = (4, 5)
    layout = "(N, C, H, W) images (or (N, C, D, H, W) volumes)"

    def __init__(self, value_range: tuple[float, float] | None = None) -> None:
        if value_range is not None:
            lo, hi = (float(v) for v in value_range)
            if not lo < hi:
                raise ValueError(f"`value_range` must be (low, high) with low < high; got "
                                 f"{value_range!r}.")
            value_range = (lo, hi)
        self.value_range = value_range

    def from_integers(self, x: torch.Tensor, name: str = "x", *,
                      dtype: torch.dtype | None = None) -> torch.Tensor:
        if x.dtype == torch.bool:
            return x.to(dtype or torch.float32)
        if self.value_range is None:
            raise ValueError(
                f"`{name}` holds integer images ({x.dtype}), which do not say what values the "
                "model takes. Convert them yourself (e.g. x.float() / 255 for a model of [0, 1] "
                "inputs, x.float() for 0-255), or state their range with "
                "modality=ImageModality(value_range=(0, 255)) (metrics, evaluate()): the values "
                "are then passed as they are, as floating point."
            )
        lo, hi = self.value_range
        if x.numel() and (float(x.min()) < lo or float(x.max()) > hi):
            raise ValueError(f"`{name}` holds values from {int(x.min())} to {int(x.max())}, "
                             f"outside the stated value_range {self.value_range}.")
        return x.to(dtype or torch.float32)

    def translation_axis(self, x: torch.Tensor, direction: str) -> int:
        return x.ndim - 1 if direction == "x" else x.ndim - 2


class SeriesModality(Modality):
    """Time series (N, C, T); features are time steps (all channels of a step together)."""

    name = "series"
    ranks = (3,)
    layout = "(N, C, T) series"

    def translation_axis(self, x: torch.Tensor, direction: str) -> int:
        if direction != "x":
            raise ValueError(f"'translation_{direction}' needs (N, C, H, W) images; a series "
                             f"{tuple(x.shape)} only has a time axis ('translation_x').")
        return x.ndim - 1


#: the kinds of table columns (:class:`TabularModality`)
COLUMN_KINDS = ("continuous", "categorical", "ordinal")


class TabularModality(Modality):
    """Tables (N, F); features are columns, or groups of columns.

    Without arguments every column is a continuous feature of its own. A **column spec** says
    what the columns are, so that metrics perturb them validly and count a one-hot block as
    one feature::

        TabularModality(
            kinds=["continuous", "ordinal", "categorical", "categorical", "categorical",
                   "categorical"],
            groups=[[2, 3, 4]],            # a one-hot encoded feature: one feature
            categories={1: [0, 1, 2, 3],   # the levels of the ordinal column 1
                        5: [0, 1, 2]},     # the codes of the label-encoded column 5
            scales=[0.5, 1, 1, 1, 1, 1])   # noise scale per column (e.g. training std)

    Parameters
    ----------
    kinds:
        One of :data:`COLUMN_KINDS` per column (F entries); None: all continuous.
    groups:
        Lists of column indices that form one feature; columns not listed are features of
        their own. A group of two or more categorical columns is a **one-hot encoding**: each
        row holds 0/1 values with exactly one 1 there (checked on every input). Groups become
        the default features of the removal metrics (a :class:`~evalkit.perturb.Columns`
        grouping) and of localisation (a group's attribution is its columns' sum; a ground
        truth must hold or leave out a group whole).
    categories:
        ``{column: values}``: the codes of a label-encoded categorical column (a categorical
        column outside a one-hot group; required for it) or the levels of an ordinal column
        (optional: without them an ordinal column holds integers).
    scales:
        Fixed per-column scales of input noise (F entries, default 1: noise in the column's
        own units). Pass e.g. the training set's standard deviations. A scale is never
        estimated from the batch: a sample's perturbations must not depend on which samples
        share its batch.
    flip_prob:
        The probability that noise resamples a categorical feature (to another category);
        None: the mean absolute value of the noise on a unit-scale column (sqrt(2/pi) sigma
        for Gaussian noise, OpenXAI's rule). See :class:`~evalkit.perturb.ColumnNoise` for how
        each kind of column is perturbed.

    Inputs are checked against the spec (number of columns, one-hot rows, categories and
    levels) with an error naming the column.
    """

    name = "tabular"
    ranks = (2,)
    channel_axis = None
    layout = "(N, F) tables"

    def __init__(self, kinds: Sequence[str] | None = None,
                 groups: Sequence[Sequence[int]] | None = None,
                 categories: Mapping[int, Sequence[float]] | None = None,
                 scales: Sequence[float] | None = None,
                 flip_prob: float | None = None) -> None:
        self.kinds = None if kinds is None else tuple(str(k) for k in kinds)
        self.groups = None if groups is None else tuple(tuple(int(c) for c in g) for g in groups)
        self.categories = None if categories is None else {
            int(c): tuple(float(v) for v in vals) for c, vals in sorted(categories.items())}
        self.scales = None if scales is None else tuple(float(v) for v in scales)
        self.flip_prob = None if flip_prob is None else float(flip_prob)
        self._validate_spec()

    # ------------------------------------------------------------------ the spec
    @property
    def n_columns(self) -> int | None:
        """The number of columns the spec describes (None: any)."""
        for spec in (self.kinds, self.scales):
            if spec is not None:
                return len(spec)
        return None

    @property
    def column_kinds(self) -> tuple[str, ...] | None:
        """The kind of every column (None without ``kinds``/``scales``)."""
        n = self.n_columns
        if self.kinds is not None:
            return self.kinds
        return None if n is None else ("continuous",) * n

    @property
    def one_hot_groups(self) -> tuple[tuple[int, ...], ...]:
        """The groups that are one-hot encodings (two or more categorical columns)."""
        if self.groups is None or self.kinds is None:
            return ()
        return tuple(g for g in self.groups
                     if len(g) > 1 and all(self.kinds[c] == "categorical" for c in g))

    def _validate_spec(self) -> None:
        n = self.n_columns
        if self.kinds is not None:
            bad = sorted({k for k in self.kinds if k not in COLUMN_KINDS})
            if bad:
                raise ValueError(f"`kinds` must be among {COLUMN_KINDS}; got {bad}.")
        if self.kinds is not None and self.scales is not None and len(self.scales) != n:
            raise ValueError(f"`scales` has {len(self.scales)} entries but `kinds` {n}.")
        if self.scales is not None and any(not v >= 0 for v in self.scales):
            raise ValueError("`scales` must be finite and >= 0.")
        if self.flip_prob is not None and not 0 <= self.flip_prob <= 1:
            raise ValueError(f"`flip_prob` must be in [0, 1]; got {self.flip_prob}.")
        seen: set[int] = set()
        for g in self.groups or ():
            if not g or min(g) < 0 or (n is not None and max(g) >= n):
                raise ValueError(f"Column group {list(g)} is empty or out of range"
                                 + (f" 0..{n - 1}." if n is not None else "."))
            if seen & set(g) or len(set(g)) != len(g):
                raise ValueError(f"Column group {list(g)} overlaps another group.")
            seen |= set(g)
            if self.kinds is not None and len(g) > 1:
                kinds = {self.kinds[c] for c in g}
                if "categorical" in kinds and kinds != {"categorical"}:
                    raise ValueError(f"Column group {list(g)} mixes categorical and "
                                     f"{sorted(kinds - {'categorical'})} columns; a one-hot "
                                     "group holds categorical columns only.")
        one_hot = {c for g in self.one_hot_groups for c in g}
        for c, vals in (self.categories or {}).items():
            kind = None if self.kinds is None or c >= len(self.kinds) else self.kinds[c]
            if kind not in ("categorical", "ordinal") or c in one_hot:
                raise ValueError(f"`categories` lists column {c}, which is not a label-encoded "
                                 "categorical or an ordinal column.")
            if not vals:
                raise ValueError(f"`categories` of column {c} is empty.")
        if self.kinds is not None:
            missing = [c for c, k in enumerate(self.kinds) if k == "categorical"
                       and c not in one_hot and c not in (self.categories or {})]
            if missing:
                raise ValueError(f"Categorical columns {missing} are neither in a one-hot group "
                                 "nor given their codes in `categories`.")

    @property
    def default_grouping(self) -> Any:  # type: ignore[override]
        """The column groups (:class:`~evalkit.perturb.Columns`), or one column per feature."""
        if not self.groups:
            return "pixels"
        from .perturb.groupings import Columns

        return Columns(self.groups)

    def check(self, x: torch.Tensor, name: str = "x", *,
              dtype: torch.dtype | None = None) -> torch.Tensor:
        """As :meth:`Modality.check`, then the column spec: the number of columns, one-hot
        rows (0/1, exactly one 1), label-encoded codes and ordinal levels."""
        x = super().check(x, name, dtype=dtype)
        if (self.kinds is None and self.scales is None and self.groups is None
                and self.categories is None):
            return x  # no column spec: nothing more to check
        n = self.n_columns
        if n is not None and x.shape[1] != n:
            raise ValueError(f"`{name}` has {x.shape[1]} columns but the column spec describes "
                             f"{n}.")
        for g in self.groups or ():
            if max(g) >= x.shape[1]:
                raise ValueError(f"Column group {list(g)} is out of range for `{name}` with "
                                 f"{x.shape[1]} columns.")
        for g in self.one_hot_groups:
            block = x[:, list(g)]
            ok = ((block == 0) | (block == 1)).all(1) & (block.sum(1) == 1)
            if not bool(ok.all()):
                row = int((~ok).nonzero()[0])
                raise ValueError(f"`{name}` row {row} is not one-hot on the categorical group "
                                 f"{list(g)} (values {block[row].tolist()}).")
        for c, vals in (self.categories or {}).items():
            allowed = torch.tensor(vals, dtype=x.dtype, device=x.device)
            ok = (x[:, c].unsqueeze(1) == allowed).any(1)
            if not bool(ok.all()):
                row = int((~ok).nonzero()[0])
                raise ValueError(f"`{name}` column {c} holds {x[row, c].item()!r} (row {row}), "
                                 f"not one of its categories/levels {list(vals)}.")
        for c, kind in enumerate(self.kinds or ()):
            if kind == "ordinal" and c not in (self.categories or {}):
                if not bool((x[:, c] == x[:, c].round()).all()):
                    raise ValueError(f"`{name}` ordinal column {c} holds non-integer values; "
                                     "list its levels in `categories`.")
        return x

    def _grouping(self, like: torch.Tensor) -> Any:
        from .perturb.groupings import Columns

        return Columns(self.groups)(like)

    def feature_maps(self, a: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """(N, G) per-feature values: a group's columns summed (columns without groups)."""
        if not self.groups:
            return super().feature_maps(a)
        flat = a.reshape(a.shape[0], -1)
        return self._grouping(flat).reduce(flat, "sum"), ()

    def feature_masks(self, s: torch.Tensor) -> torch.Tensor:
        """(N, G) bool: a group is in the ground truth when all its columns are; a mask that
        covers part of a group is an error."""
        if not self.groups:
            return super().feature_masks(s)
        flat = s.reshape(s.shape[0], -1)
        grp = self._grouping(flat)
        inside = grp.reduce(flat.to(torch.float64), "sum")
        sizes = grp.sizes(flat)
        partial = (inside > 0) & (inside < sizes)
        if bool(partial.any()):
            row, group = (int(v) for v in partial.nonzero()[0])
            raise ValueError(f"`s` row {row} covers part of a column group (feature {group}); "
                             "a ground-truth feature set holds or leaves out each group whole.")
        return inside == sizes

    def display_map(self, a: torch.Tensor | np.ndarray) -> np.ndarray:
        """One sample's map, one value per column (1, F)."""
        return torch.as_tensor(a).reshape(1, -1).cpu().numpy()

    def valid_noise(self, noise: Any) -> Any:
        """With ``kinds`` or ``scales``: a :class:`~evalkit.perturb.ColumnNoise` around
        ``noise`` that keeps rows valid; else ``noise`` itself."""
        kinds = self.column_kinds
        if kinds is None:
            return noise
        from .perturb.noise import ColumnNoise

        return ColumnNoise(noise, kinds, one_hot=self.one_hot_groups, levels=self.categories,
                           scales=self.scales, flip_prob=self.flip_prob)


class TokensModality(Modality):
    """Token ids (N, L), integers, carried to the model as they are; features are tokens.

    ``mask_token_id``: the id that replaces a removed token (default 0; set the tokenizer's
    mask or pad id). ``pad_token_id``: the id appended when removed tokens are *deleted* and
    the rest shifted left (:class:`~evalkit.perturb.TokenDeletion`); None (default): the mask
    token id. Additive noise is not defined for ids; token dropout (random tokens replaced by
    the mask token) is.

    Every perturbation of token ids goes through this modality and never casts them:

    * a named baseline of the removal metrics (``"black"``, ``"mean"``, ``"blur"``...: pixel
      statistics that mean nothing for ids) replaces a removed token by ``mask_token_id``;
    * a number (``perturb_baseline=103``), ``"zero"`` (id 0), ``"constant"`` with its
      ``value``, or an integer array (one id per position) is an explicit replacement id;
    * the random baselines (``"uniform"``, ``"random"``) are refused: a random token needs a
      vocabulary, and a float is no id.
    """

    name = "tokens"
    ranks = (2,)
    integer_inputs = True
    additive_noise = False
    feature_dropout = True
    channel_axis = None
    default_grouping = "pixels"
    layout = "(N, L) integer token ids"

    def __init__(self, mask_token_id: int = 0, pad_token_id: int | None = None) -> None:
        self.mask_token_id = int(mask_token_id)
        self.pad_token_id = None if pad_token_id is None else int(pad_token_id)

    def __repr__(self) -> str:  # the pad id only when set: earlier stored reprs stay as they were
        pad = "" if self.pad_token_id is None else f", pad_token_id={self.pad_token_id!r}"
        return f"TokensModality(mask_token_id={self.mask_token_id!r}{pad})"

    @property
    def pad_id(self) -> int:
        """The id appended by deletion with re-padding: ``pad_token_id``, else the mask id."""
        return self.mask_token_id if self.pad_token_id is None else self.pad_token_id

    def replace(self, x: torch.Tensor, mask: torch.Tensor,
                fill: torch.Tensor | float | int | None = None) -> torch.Tensor:
        """Masked tokens replaced by ``fill`` (default: :attr:`mask_token_id`)."""
        if fill is None:
            fill = self.mask_token_id
        elif isinstance(fill, torch.Tensor) and (fill.is_floating_point() or fill.is_complex()):
            raise TypeError("Token ids are replaced by integer ids, never by floating-point "
                            f"values (got {fill.dtype}).")
        elif isinstance(fill, float):
            raise TypeError(f"Token ids are replaced by integer ids; got the float {fill!r}.")
        return super().replace(x, mask, fill)

    def baseline_values(self, baseline: Any, x: torch.Tensor,
                        keys: torch.Tensor | None = None) -> torch.Tensor:
        """Replacement ids of a baseline (see the class docstring): the mask token for named
        statistics, explicit ids for numbers, ``"zero"``, ``"constant"`` and integer arrays;
        random baselines raise."""
        kind = baseline.kind
        if isinstance(kind, str):
            if getattr(baseline, "stochastic", False):
                raise ValueError(
                    f"The {kind!r} baseline draws random values, which are not token ids; on "
                    "token inputs use a named baseline (the mask token), an id, or "
                    "evalkit.perturb.TokenDeletion()."
                )
            if kind in ("zero", "constant"):
                token = _token_id(0.0 if kind == "zero" else baseline.value, "value")
            else:
                token = self.mask_token_id
            return torch.full((1,) * x.ndim, token, dtype=x.dtype, device=x.device)
        t = torch.as_tensor(kind)
        if t.is_floating_point() and not bool((t == t.round()).all()):
            raise ValueError("A baseline for token ids must hold integer ids; got non-integer "
                             "values.")
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"A baseline for token ids must hold integer ids; got {t.dtype}.")
        return baseline.values(x, None)

    def drop_features(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Dropped tokens replaced by the mask token (token dropout)."""
        return self.replace(x, mask)

    def delete(self, x: torch.Tensor, mask: torch.Tensor,
               pad_token_id: int | None = None) -> torch.Tensor:
        """Deletion with re-padding: per row, the tokens where ``mask`` is True are dropped,
        the others keep their order and move left, and the freed positions at the end take
        ``pad_token_id`` (default :attr:`pad_id`). The length L stays the same."""
        mask = mask.expand_as(x)
        pad = self.pad_id if pad_token_id is None else int(pad_token_id)
        # a stable sort on the drop flag moves the kept tokens to the front in their order
        order = torch.sort(mask.to(torch.int8), dim=-1, stable=True).indices
        shifted = x.gather(-1, order)
        kept = (~mask).sum(-1, keepdim=True)
        position = torch.arange(x.shape[-1], device=x.device)
        return torch.where(position < kept, shifted, torch.full_like(shifted, pad))


def _token_id(value: Any, name: str) -> int:
    if isinstance(value, bool) or float(value) != int(value):
        raise ValueError(f"A replacement token id must be an integer; got `{name}`={value!r}.")
    return int(value)


#: the built-in modalities by name
MODALITIES: dict[str, type[Modality]] = {
    cls.name: cls for cls in (ImageModality, SeriesModality, TabularModality, TokensModality)
}


def _is_integer(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return not (x.is_floating_point() or x.is_complex()) and x.dtype != torch.bool
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        dtype = np.asarray(x).dtype
    try:
        return bool(np.issubdtype(np.dtype(dtype), np.integer))
    except TypeError:  # a framework dtype NumPy does not know
        return False


def infer_modality(x: Any) -> Modality:
    """The modality of a batch from its shape and dtype: integer (N, L) ids are tokens, other
    (N, F) are tabular, (N, C, T) series, (N, C, H, W) and (N, C, D, H, W) images."""
    ndim = len(np.shape(x)) if not isinstance(x, torch.Tensor) else x.ndim
    if ndim == 2:
        return TokensModality() if _is_integer(x) else TabularModality()
    if ndim == 3:
        return SeriesModality()
    if ndim >= 4:
        return ImageModality()
    raise ValueError(
        f"`x` must be a batch with at least 2 dimensions, (N, F) for tabular data, (N, L) "
        f"token ids, (N, C, T) for time series or (N, C, H, W) for images; got shape "
        f"{tuple(np.shape(x))}."
    )


def as_modality(spec: Modality | str | None, x: Any = None) -> Modality:
    """Resolve ``None`` (inferred from ``x``), a name or a :class:`Modality` instance."""
    if spec is None:
        if x is None:
            raise ValueError("A modality is inferred from `x`; got neither.")
        return infer_modality(x)
    if isinstance(spec, Modality):
        return spec
    if isinstance(spec, type) and issubclass(spec, Modality):
        return spec()
    if isinstance(spec, str):
        if spec not in MODALITIES:
            raise ValueError(f"Unknown modality {spec!r}; use one of {sorted(MODALITIES)} or a "
                             "Modality instance.")
        return MODALITIES[spec]()
    raise TypeError(f"`modality` must be a name, a Modality or None; got {type(spec).__name__}.")
