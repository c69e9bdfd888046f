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
``"tabular"``  (N, F), floating point       columns
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

from typing import Any, ClassVar

import numpy as np
import torch

from ._validation import check_attributions, check_inputs, check_masks

__all__ = [
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


class TabularModality(Modality):
    """Tables (N, F) of features; features are columns."""

    name = "tabular"
    ranks = (2,)
    channel_axis = None
    layout = "(N, F) tables"


class TokensModality(Modality):
    """Token ids (N, L), integers, carried to the model as they are; features are tokens.

    ``mask_token_id``: the id that replaces a removed token (default 0; set the tokenizer's
    mask or pad id). Additive noise is not defined for ids.
    """

    name = "tokens"
    ranks = (2,)
    integer_inputs = True
    additive_noise = False
    channel_axis = None
    default_grouping = "pixels"
    layout = "(N, L) integer token ids"

    def __init__(self, mask_token_id: int = 0) -> None:
        self.mask_token_id = int(mask_token_id)

    def replace(self, x: torch.Tensor, mask: torch.Tensor,
                fill: torch.Tensor | float | int | None = None) -> torch.Tensor:
        """Masked tokens replaced by ``fill`` (default: :attr:`mask_token_id`)."""
        return super().replace(x, mask, self.mask_token_id if fill is None else fill)


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
