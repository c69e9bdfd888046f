"""IDSDS, the in-domain single-deletion score (Hesse, Schaub-Meyer and Roth 2024), and the
patch-deletion fine-tuning that makes its deletions in-domain.

The protocol has two steps:

1. **Fine-tuning** (:func:`finetune_on_patch_deletions`): a copy of the model under inspection
   is fine-tuned on images split into a grid of patches, some of which are deleted at random.
   The model then has seen deleted patches in training, so an input with a deleted patch is no
   longer out of domain, and the output drop it causes measures the patch's importance rather
   than the model's surprise at the deletion. The user's model and the global random
   generators are never touched: the copy is trained inside ``torch.random.fork_rng``, with
   every draw (deletions, batch order, dropout) seeded from ``seed``, by the same training
   loop as :func:`~evalkit.metrics.data_randomisation.train_on_permuted_labels`.
2. **Scoring** (:class:`IDSDS`), on the fine-tuned model and attributions of *that* model: per
   image, each patch is deleted on its own (single deletion), the drop of the target's output
   (the logit by default) is measured, and the score is the Spearman rank correlation between
   the per-patch attribution sums and the per-patch output drops. The single deletions do not
   depend on the attribution, so inside :func:`evalkit.forward_cache` every explanation method
   evaluated on the same model and images reuses them.

What the paper fixes (its Figure 1 and abstract): non-overlapping patches, fine-tuning on
images with deleted patches, the drop of the target class's logit per single deletion, and
the rank correlation with the per-patch attribution sums. Where this implementation chooses,
it says so and makes the choice a parameter: which patches are deleted in fine-tuning (by
default half the images clean and half with one random patch deleted, exactly the inputs the
score feeds the model; :func:`patch_deletion_selection`), the optimiser and its settings
(Adam on the cross-entropy against the labels), and the deletion value.

A patch is deleted by replacing it with a fixed value, the same in fine-tuning and scoring:
``perturb_baseline="zero"`` by default, which is the dataset mean for inputs normalised to
zero mean per channel (the usual ImageNet preprocessing). For unnormalised inputs pass the
dataset mean (a number, or an array of one input's shape, e.g. the per-channel mean broadcast
to (C, H, W)). Any other replacement of :mod:`evalkit.perturb` works, as long as fine-tuning
and scoring use the same one: the fine-tuned copy carries its deletion settings, and
:class:`IDSDS` refuses a model fine-tuned with another patch size or replacement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ... import _rng
from ..._validation import check_scalar
from ...modality import infer_modality
from ...perturb import CustomGrouping, FeatureGrouping, Patches, make_imputer
from ...perturb.baselines import Baseline, impute
from .._removal import clean_scores, order_groups, window_scores
from .._ties import RanksFeatures
from ..base import MetricBatch
from ..data_randomisation import fit_copy, training_data
from ..similarity import correlate_rows
from ._common import check_similarity, flag_correlation

__all__ = ["IDSDS", "GridCells", "finetune_on_patch_deletions", "patch_deletion_selection"]

PAPER = ("Hesse, Schaub-Meyer and Roth, Benchmarking the Attribution Quality of Vision Models, "
         "NeurIPS 2024 (Datasets and Benchmarks)")

#: the attribute of a fine-tuned copy that records how its patches were deleted
DELETION_ATTRIBUTE = "evalkit_patch_deletion"

#: the NaN reason of a sample whose per-patch attribution sums are all equal
CONSTANT_SUMS = ("the per-patch attribution sums are constant: a rank correlation with a "
                 "constant is undefined")


#: the default grid: 4 x 4 cells on images (the authors' ``--grid_rows_and_cols 4``), 4
#: windows on series
DEFAULT_GRID = 4


def _per_axis(value: int | Sequence[int], name: str) -> tuple[int, ...]:
    sizes = (tuple(value) if isinstance(value, Sequence) and not isinstance(value, str)
             else (value,))
    if not sizes or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in sizes):
        raise ValueError(f"`{name}` must be a positive int or one per spatial axis; got "
                         f"{value!r}.")
    return sizes


class GridCells(FeatureGrouping):
    """A grid of ``cells`` non-overlapping cells per spatial axis (an int, or one count per
    axis): cell k of an axis of extent S holds the positions i with floor(i * cells / S) = k,
    so every axis has exactly ``cells`` cells, of sizes S / cells where S is a multiple (the
    IDSDS authors' ``int(H / grid)`` cells) and differing by at most one otherwise."""

    def __init__(self, cells: int | Sequence[int], *, modality: Any = None) -> None:
        self._cells = _per_axis(cells, "grid")
        self.cells = cells
        self._modality = modality

    def for_modality(self, modality: object) -> GridCells:
        """This grid on the feature axes of ``modality``."""
        return GridCells(self.cells, modality=modality)

    def __call__(self, x: torch.Tensor) -> Any:
        modality = self._modality if self._modality is not None else infer_modality(x)
        spatial = tuple(x.shape[axis] for axis in modality.feature_axes(x))
        cells = self._cells * len(spatial) if len(self._cells) == 1 else self._cells
        if len(cells) != len(spatial):
            raise ValueError(f"`grid` {self.cells!r} has {len(cells)} entries but the inputs "
                             f"have {len(spatial)} spatial axes {spatial}.")
        labels = torch.zeros(spatial, dtype=torch.int64)
        for axis, (extent, count) in enumerate(zip(spatial, cells, strict=True)):
            if count > extent:
                raise ValueError(f"`grid` {count} is larger than the input extent {extent}.")
            view = [1] * len(spatial)
            view[axis] = extent
            labels = labels * count + (torch.arange(extent) * count // extent).reshape(view)
        return CustomGrouping(labels)(x)

    def __repr__(self) -> str:
        return f"GridCells(cells={self.cells!r})"


def _patch_grouping(patch_size: int | Sequence[int] | None, grid: int | Sequence[int]
                    ) -> FeatureGrouping:
    """``patch_size`` patches when given, else a grid of ``grid`` cells per axis."""
    return Patches(patch_size) if patch_size is not None else GridCells(grid)


def _deletion_settings(patch_size: int | Sequence[int] | None, grid: int | Sequence[int],
                       perturb_baseline: Any, n_axes: int) -> dict[str, Any]:
    """How patches are deleted, comparable between fine-tuning and scoring: the patch size (or
    the grid's cell count) per spatial axis (``8`` and ``(8, 8)`` are the same on images) and
    the replacement."""
    what, value = ("patch_size", patch_size) if patch_size is not None else ("grid", grid)
    sizes = _per_axis(value, what)  # type: ignore[arg-type]
    if len(sizes) == 1:
        sizes = sizes * n_axes
    return {what: sizes, "perturb_baseline": repr(make_imputer(perturb_baseline))}


def _same_patches(recorded: dict[str, Any], mine: dict[str, Any], x: torch.Tensor) -> bool:
    """Whether two deletion settings that are spelled differently (a grid and a patch size)
    delete the same patches of ``x`` with the same replacement."""
    if recorded.get("perturb_baseline") != mine.get("perturb_baseline"):
        return False

    def labels(settings: dict[str, Any]) -> torch.Tensor | None:
        try:
            grouping = (Patches(settings["patch_size"]) if "patch_size" in settings
                        else GridCells(settings["grid"]))
            return grouping(x).labels
        except (KeyError, ValueError):
            return None

    a, b = labels(recorded), labels(mine)
    return a is not None and b is not None and a.shape == b.shape and bool(torch.equal(a, b))


def patch_deletion_selection(
    n: int,
    n_patches: int,
    *,
    seed: int,
    epoch: int,
    deletion_probability: float = 0.5,
    max_deleted: int = 1,
) -> torch.Tensor:
    """(n, n_patches) bool: the patches deleted from each of ``n`` training images in
    ``epoch``.

    Each image, independently with probability ``deletion_probability``, has k patches
    deleted, k uniform in {1, ..., ``max_deleted``} and the k patches a uniform random subset;
    the others stay clean. The draws come from a generator seeded by ``(seed, epoch)`` alone
    (never the global one), so they do not depend on the mini-batch size or order.
    """
    gen = torch.Generator().manual_seed(
        _rng.derive_seed(seed, "patch deletions", epoch) & ((1 << 63) - 1))
    deleted = torch.rand(n, generator=gen, dtype=torch.float64) < deletion_probability
    k = torch.randint(1, max_deleted + 1, (n,), generator=gen)
    rank = torch.rand((n, n_patches), generator=gen, dtype=torch.float64).argsort(1).argsort(1)
    return (rank < k.unsqueeze(1)) & deleted.unsqueeze(1)


def finetune_on_patch_deletions(
    model: nn.Module,
    x: Any,
    y: Any,
    *,
    patch_size: int | Sequence[int] | None = None,
    grid: int | Sequence[int] = DEFAULT_GRID,
    perturb_baseline: Any = "zero",
    deletion_probability: float = 0.5,
    max_deleted: int = 1,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> nn.Module:
    """Fine-tune a copy of ``model`` on ``x`` with random patches deleted (IDSDS step 1) and
    return it in evaluation mode.

    ``x`` is split into a grid of ``grid`` cells per spatial axis (default 4: 4 x 4 cells on
    images, as the authors' code, :class:`GridCells`; 4 windows on series), or, with
    ``patch_size``, into patches of that size (:class:`~evalkit.perturb.Patches`: square
    patches of images, windows of time steps of series); in each epoch every image has,
    with probability ``deletion_probability``, between 1 and ``max_deleted`` random patches
    replaced by ``perturb_baseline`` (:func:`patch_deletion_selection`), and the copy is trained
    on the cross-entropy against the labels ``y`` with Adam (``lr``, ``weight_decay``) for
    ``epochs`` passes in mini-batches of ``batch_size``. The defaults (half the images clean,
    half with one patch deleted) are exactly the two kinds of input :class:`IDSDS` feeds the
    model; pass ``max_deleted`` > 1 to also cover multi-patch deletions.

    The user's model is never modified and the global random generators are restored
    afterwards (the training loop is
    :func:`~evalkit.metrics.data_randomisation.fit_copy`); the same seed, torch version,
    thread count and device give the same weights. The copy records its patch size and
    replacement, which :class:`IDSDS` checks against its own.

    ``x`` (N, C, ...) and ``y`` (N,) class indices, NumPy or torch; they are moved to the
    model's device and dtype. A replacement that draws random values (``"uniform"``) or
    depends on the mask (an imputer) gets keys from ``seed``, the epoch and the sample index.
    """
    if not isinstance(model, nn.Module):
        raise TypeError("finetune_on_patch_deletions needs a torch.nn.Module; got "
                        f"{type(model).__name__}.")
    epochs = check_scalar("epochs", epochs, int, min_val=1)
    batch_size = check_scalar("batch_size", batch_size, int, min_val=1)
    lr = check_scalar("lr", lr, (int, float), min_val=0, include_min=False)
    weight_decay = check_scalar("weight_decay", weight_decay, (int, float), min_val=0)
    deletion_probability = check_scalar("deletion_probability", deletion_probability,
                                        (int, float), min_val=0, max_val=1)
    max_deleted = check_scalar("max_deleted", max_deleted, int, min_val=1)
    grouping = _patch_grouping(patch_size, grid)
    imputer = make_imputer(perturb_baseline)
    xt, yt = training_data("finetune_on_patch_deletions", model, x, y)
    modality = infer_modality(xt)
    if modality.name not in IDSDS.modalities:
        raise ValueError("finetune_on_patch_deletions needs images (N, C, H, W) or series "
                         f"(N, C, T); got {tuple(xt.shape)}.")
    grp = grouping.for_modality(modality)(xt[:1])
    n_patches = grp.max_groups
    if max_deleted > n_patches:
        raise ValueError(f"`max_deleted`={max_deleted} is larger than the number of patches "
                         f"({n_patches}).")
    base_key = torch.tensor([_rng.derive_seed(seed, "deletion fill")], dtype=torch.int64,
                            device=xt.device)
    selections: dict[int, torch.Tensor] = {}

    def delete_patches(inputs: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        if epoch not in selections:
            selections.clear()
            selections[epoch] = patch_deletion_selection(
                xt.shape[0], n_patches, seed=seed, epoch=epoch,
                deletion_probability=deletion_probability,
                max_deleted=max_deleted).to(xt.device)
        selected = selections[epoch][idx]
        mask = grp.mask(selected, torch.zeros_like(idx))
        keys = None
        if imputer.stochastic or not isinstance(imputer, Baseline):
            keys = _rng.combine(base_key.expand(idx.shape[0]), idx, epoch)
        with torch.no_grad():
            return impute(imputer, inputs, mask, keys=keys, modality=modality)

    work = fit_copy(model, xt, yt, epochs=epochs, batch_size=batch_size, lr=lr,
                    weight_decay=weight_decay, seed=seed, transform=delete_patches)
    setattr(work, DELETION_ATTRIBUTE,
            _deletion_settings(patch_size, grid, perturb_baseline,
                               len(modality.feature_axes(xt))))
    return work


class IDSDS(RanksFeatures):
    """In-domain single-deletion score, IDSDS (Hesse, Schaub-Meyer and Roth 2024).
    **Higher is better** (1: the attribution ranks the patches exactly as their deletion
    effects do).

    The input is split into a grid of patches (``grid`` cells per spatial axis, default 4 x 4
    on images as the authors' code; or ``patch_size`` patches). For each sample and each patch
    g, the patch alone is deleted (replaced by ``perturb_baseline``) and the drop of the
    target's output is measured, d_g = f(x) - f(x with patch g deleted) (the target's logit by
    default, as the paper; ``softmax=True`` for probabilities). The score is the Spearman rank
    correlation between the per-patch attribution sums A_g = sum of a over patch g (channels
    included) and the drops d_g. Signed attributions are correlated as they are (``abs=False``
    by default: a patch whose deletion raises the output should get a negative attribution).

    The score is *in-domain* only on a model fine-tuned on patch deletions with the same patch
    size and replacement: compute it on ``finetune_on_patch_deletions(model, x_train, y_train,
    patch_size=..., perturb_baseline=...)`` and with attributions of that fine-tuned model (see
    :mod:`evalkit.metrics.faithfulness.idsds`). On another model it is the single-deletion
    correlation of that model (out of domain); a model fine-tuned by the helper with other
    deletion settings is refused.

    Cost: N * (1 + G) forward rows for G patches; the deletions do not depend on the
    attribution, so inside :func:`evalkit.forward_cache` other explanations of the same model
    and inputs reuse them. A constant map is NaN with a reason (``constant_maps``), and so is a
    map whose per-patch sums are constant (a rank correlation with a constant is undefined),
    or a sample whose deletions all change the output equally.

    Parameters
    ----------
    patch_size:
        Side of the square patches (an int, or one size per spatial axis; on series, windows
        of time steps); an axis that is not a multiple gets a smaller last patch. None
        (default): the ``grid``.
    perturb_baseline:
        The deletion (default ``"zero"``: the dataset mean of mean-normalised inputs; a number,
        an array of one input's shape, or any replacement of :mod:`evalkit.perturb`).
    grid:
        Cells per spatial axis when ``patch_size`` is None (:class:`GridCells`; default 4: a
        4 x 4 grid of 16 patches on images, the authors' ``--grid_rows_and_cols`` default; 4
        windows on series).
    similarity_func:
        ``"spearman"`` (default, the paper) or ``"pearson"``.

    Defaults against the authors' code: the 4 x 4 grid, the zero deletion (``sd_baseline
    zeros``), the target's logit and Spearman are theirs, and so is the fine-tuning's mix (half
    the images clean, half with one random cell deleted). Deliberate difference: the
    fine-tuning helper trains 1 epoch of Adam at lr 1e-4; the authors fine-tune ImageNet models
    for 30 epochs of SGD (lr 1e-3, momentum 0.9, weight decay 1e-4, step decay every 10
    epochs), which the helper's ``epochs``/``lr``/``weight_decay`` approach with Adam.

    Reference: R. Hesse, S. Schaub-Meyer, S. Roth, "Benchmarking the Attribution Quality of
    Vision Models", NeurIPS 2024 Datasets and Benchmarks Track (arXiv:2407.11910).
    """

    family = "faithfulness"
    higher_is_better = True
    default_normalise = False
    paper = PAPER
    aliases = ("InDomainSingleDeletionScore",)
    #: the patch grouping works on any spatial layout: images (and volumes) and series
    modalities = ("image", "series")

    def __init__(self, patch_size: int | Sequence[int] | None = None,
                 perturb_baseline: Any = "zero", *, grid: int | Sequence[int] = DEFAULT_GRID,
                 similarity_func: Any = "spearman", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.grid = grid
        self._grouping = _patch_grouping(patch_size, grid)
        self.perturb_baseline = perturb_baseline
        self._imputer = make_imputer(perturb_baseline)
        self.similarity_func = check_similarity(similarity_func)

    @classmethod
    def conformance_params(cls) -> dict[str, Any]:
        """Patches of 2: 16 on the 8 x 8 image fixture, 8 windows on the 16-step series."""
        return {"patch_size": 2}

    def _random_sources(self) -> dict[str, Any]:
        return {"baseline": self._imputer}

    def _check_fine_tuning(self, batch: MetricBatch) -> None:
        module = getattr(batch.model, "model", None)
        recorded = getattr(module, DELETION_ATTRIBUTE, None)
        if not isinstance(recorded, dict):
            return
        mine = _deletion_settings(self.patch_size, self.grid, self.perturb_baseline,
                                  len(batch.modality.feature_axes(batch.x)))
        if recorded != mine and not _same_patches(recorded, mine, batch.x[:1]):
            raise ValueError(
                f"IDSDS deletes patches with {mine} but the model was fine-tuned with "
                f"{recorded}: its single deletions would be out of domain. Use the same "
                "patch_size (or grid) and perturb_baseline for finetune_on_patch_deletions "
                "and IDSDS.")

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        self._check_fine_tuning(batch)
        # "index" order: rank t is patch t, so window [t, t + 1) deletes patch t alone; the
        # rows are the same for every attribution (shared in a forward cache)
        ordering = order_groups(batch, self._grouping, "index")
        g = ordering.n_groups.to(batch.device)
        lo = torch.arange(int(g.max()), device=batch.device).expand(batch.n, -1)
        valid = lo < g.unsqueeze(1)
        scores = window_scores(batch, ordering, self._imputer, lo, lo + 1,
                               desc=type(self).__name__)
        drops = clean_scores(batch).unsqueeze(1) - scores
        sums = ordering.group_scores.nan_to_num(0.0)
        batch.record("patch_drops", drops, per_sample=True)
        corr, a_const, b_const = correlate_rows(sums, drops, self.similarity_func, valid)
        batch.set_nan(a_const, CONSTANT_SUMS)
        flag_correlation(batch, a_const, b_const, drops, valid)
        return corr
