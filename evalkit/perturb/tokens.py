"""Perturbations of token ids (N, L): deletion with re-padding and token dropout.

Token ids are never cast to floating point. Replacing a removed token by the mask token is
what every named baseline does on token inputs (see :mod:`evalkit.perturb.baselines` and
:class:`~evalkit.modality.TokensModality`); the two perturbations here do what a replacement
cannot:

* :class:`TokenDeletion` (``perturb_baseline="delete"``; defined in
  :mod:`evalkit.perturb.baselines` with the other imputers) removes the tokens from the sequence:
  the remaining tokens keep their order and move left, and the freed positions at the end take
  the pad id, so the model sees a shorter text of the same length L (the ERASER protocol,
  DeYoung et al. 2020, deletes the rationale tokens);
* :class:`TokenDropout` is the noise of the robustness metrics on tokens: each token is
  replaced by the mask token with probability ``rate``, independently, from per-sample keys
  (``MaxSensitivity(perturb_func=TokenDropout(0.1))``). It is "synonym-free": a dropped token
  becomes the mask token, never another word.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import _rng
from .baselines import TokenDeletion
from .noise import Noise

__all__ = ["TokenDeletion", "TokenDropout"]


class TokenDropout(Noise):
    """Token dropout: each token is replaced by the mask token with probability ``rate``
    (independently per token and draw, from the sample's key), through the modality's
    :meth:`~evalkit.modality.Modality.drop_features`. A noise for token ids, where additive
    noise is not defined; the robustness metrics take it as ``perturb_func``."""

    def __init__(self, rate: float = 0.1) -> None:
        if isinstance(rate, bool) or not 0.0 < float(rate) < 1.0:
            raise ValueError(f"`rate` must be in (0, 1); got {rate!r}.")
        self.rate = float(rate)

    def sample(self, keys: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype
               ) -> torch.Tensor:
        raise TypeError("TokenDropout is not additive noise; use drop_mask() and the "
                        "modality's drop_features().")

    def drop_mask(self, keys: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """(B, *shape) bool: which tokens each key's row drops."""
        return _rng.uniform(keys, shape, dtype=torch.float64) < self.rate

    def __call__(self, x: torch.Tensor, keys: torch.Tensor, *, mask: torch.Tensor | None = None,
                 clip: Any = None, modality: Any = None) -> torch.Tensor:
        """``x`` with random tokens replaced by the mask token (``mask`` limits where)."""
        if keys.shape[0] != x.shape[0]:
            raise ValueError(f"Need one key per row: {keys.shape[0]} keys for {x.shape[0]} rows.")
        drop = self.drop_mask(keys, tuple(x.shape[1:])).to(x.device)
        if mask is not None:
            drop = drop & mask.to(torch.bool)
        if modality is None:
            from ..modality import TokensModality

            modality = TokensModality()
        return modality.drop_features(x, drop)
