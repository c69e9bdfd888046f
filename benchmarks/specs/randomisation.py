"""Randomisation specs: MPRT, SmoothMPRT, EfficientMPRT and RandomLogit with Saliency against
Quantus.

Both metrics are explanation-bound: the floor is the bare forward+backward (input gradient) of
every explanation they need, at the runner's batch size:

* MPRT with ``a`` given: one explanation of the batch per randomised layer, L x N rows (our
  default computes no self-comparison of the un-randomised model; Quantus does, +N rows);
* SmoothMPRT with ``nr_samples`` K: the smoothed reference and every layer, (L + 1) x N x K
  rows (Quantus does the same amount of explaining, in K calls of the batch per model).
* EfficientMPRT (``skip_layers=True``, both defaults): one explanation of the fully randomised
  model, N rows (Quantus also re-explains the original model, +N);
* RandomLogit: one explanation of every sample for another class, N rows.

The per-layer similarities cannot agree exactly: the random weights differ (evalkit seeds each
layer from the seed and its name; Quantus reseeds the global RNG with ``seed + 1`` before every
layer), batch-norm layers are re-initialised differently (evalkit draws random weights and
keeps their running statistics, Quantus resets them to constants), and SmoothMPRT's noise
differs. The agreement column shows the
per-layer mean similarities side by side for orientation. Exact agreement with Quantus' seeding
reproduced is a test (tests/test_randomisation.py::TestQuantusOracle).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from evalkit.metrics import MPRT, EfficientMPRT, RandomLogit, SmoothMPRT
from evalkit.models import randomisable_layers

from ..harness import (
    Agreement,
    Case,
    Context,
    RequiredStep,
    RequiredWork,
    forward_backward_floor,
)
from ..workloads import Workload
from . import Spec

_SMOOTH_SAMPLES = 10


#: evalkit's default explainer with these options: Quantus' "Saliency" (|gradient| summed over
#: channels, the workload's ``a``)
_SALIENCY = {"method": "Saliency", "reduce_channels": "sum"}


def _layer_means(frame) -> np.ndarray:
    return frame.drop(index="original", errors="ignore").mean(axis=1).to_numpy()


def _quantus_layer_means(scores: dict) -> np.ndarray:
    return np.array([np.mean(v) for k, v in scores.items() if k != "original"])


def _agreement(ours: np.ndarray, theirs: np.ndarray) -> Agreement:
    if ours.shape != theirs.shape:
        return Agreement(None, f"layer counts differ: ours {ours.shape}, Quantus {theirs.shape}")
    pairs = ", ".join(f"{o:.2f}/{t:.2f}" for o, t in zip(ours, theirs, strict=True))
    return Agreement(None, f"per-layer mean Spearman ours/Quantus: {pairs} (different random "
                           "weights, see note)")


def _mprt(w: Workload, ctx: Context) -> Case:
    n_layers = len(randomisable_layers(w.model))
    metric = MPRT()

    def ours() -> np.ndarray:
        metric(w.model, w.x, w.y, w.a, explain_kwargs=_SALIENCY)
        return _layer_means(metric.layer_scores_)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.MPRT(disable_warnings=True, display_progressbar=False)
        x, y, a = w.np("x"), w.np("y"), w.np("a")

        def quantus_fn() -> np.ndarray:
            scores = q(model=w.model, x_batch=x, y_batch=y, a_batch=a.copy(),
                       explain_func=ctx.quantus.explain,
                       explain_func_kwargs={"method": "Saliency"},
                       device=ctx.quantus_device, batch_size=ctx.batch_size)
            return _quantus_layer_means(scores)

    return Case(
        ours=ours, quantus=quantus_fn, agreement=_agreement,
        floor=lambda rows, calls: forward_backward_floor(w, n_layers * w.n, ctx.batch_size),
        settings=f"Saliency (|grad| summed over channels), top_down cascade over {n_layers} "
                 "layers, Spearman, a given",
        note="floor: L x N bare input gradients; Quantus also re-explains the un-randomised "
             "model (+N); weights differ (per-layer seeds, random batch-norm weights, statistics "
             "kept)",
    )


def _smooth_mprt(w: Workload, ctx: Context) -> Case:
    n_layers = len(randomisable_layers(w.model))
    k = _SMOOTH_SAMPLES
    metric = SmoothMPRT(nr_samples=k)

    def ours() -> np.ndarray:
        metric(w.model, w.x, w.y, w.a, explain_kwargs=_SALIENCY)
        return _layer_means(metric.layer_scores_)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.SmoothMPRT(nr_samples=k, disable_warnings=True,
                                   display_progressbar=False)
        x, y, a = w.np("x"), w.np("y"), w.np("a")

        def quantus_fn() -> np.ndarray:
            scores = q(model=w.model, x_batch=x, y_batch=y, a_batch=a.copy(),
                       explain_func=ctx.quantus.explain,
                       explain_func_kwargs={"method": "Saliency"},
                       device=ctx.quantus_device, batch_size=ctx.batch_size)
            return _quantus_layer_means(scores)

    rows = (n_layers + 1) * w.n * k
    return Case(
        ours=ours, quantus=quantus_fn, agreement=_agreement,
        floor=lambda _rows, _calls: forward_backward_floor(w, rows, ctx.batch_size),
        settings=f"Saliency, nr_samples={k}, bottom_up over {n_layers} layers, Spearman, "
                 "smoothed reference",
        note=f"floor: (L + 1) x N x {k} bare input gradients; Quantus does the same explaining "
             "(with quantus.explain, whatever explain_func says: deviation C6); noise and weights "
             "differ",
    )


def _mean_scores_agreement(what: str):
    def agreement(ours: np.ndarray, theirs: np.ndarray) -> Agreement:
        o = np.asarray(ours, dtype=float)
        t = np.asarray(theirs, dtype=float)
        return Agreement(None, f"mean score ours {np.nanmean(o):.3g} / Quantus "
                               f"{np.nanmean(t):.3g} ({what})")

    return agreement


def _efficient_mprt(w: Workload, ctx: Context) -> Case:
    n_layers = len(randomisable_layers(w.model))
    metric = EfficientMPRT()

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, w.a, explain_kwargs=_SALIENCY)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.EfficientMPRT(disable_warnings=True, display_progressbar=False)
        x, y, a = w.np("x"), w.np("y"), w.np("a")

        def quantus_fn() -> np.ndarray:
            return np.asarray(q(model=w.model, x_batch=x, y_batch=y, a_batch=a.copy(),
                                explain_func=ctx.quantus.explain,
                                explain_func_kwargs={"method": "Saliency"},
                                device=ctx.quantus_device, batch_size=ctx.batch_size),
                              dtype=np.float64)

    return Case(
        ours=ours, quantus=quantus_fn,
        agreement=_mean_scores_agreement("different random weights; Quantus re-explains the "
                                         "original model"),
        floor=lambda rows, calls: forward_backward_floor(w, w.n, ctx.batch_size),
        settings=f"Saliency, skip_layers=True (fully randomised model, {n_layers} layers "
                 "bottom_up), 100 bins",
        note="floor: N bare input gradients (the randomised model's explanations); Quantus "
             "also re-explains the original model (+N)",
    )


def _random_logit(w: Workload, ctx: Context) -> Case:
    metric = RandomLogit()
    with torch.inference_mode():
        n_classes = int(w.model(w.x[:1]).shape[1])

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, w.a, explain_kwargs=_SALIENCY)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.RandomLogit(num_classes=n_classes, disable_warnings=True)
        x, y, a = w.np("x"), w.np("y"), w.np("a")

        def quantus_fn() -> np.ndarray:
            return np.asarray(q(model=w.model, x_batch=x, y_batch=y, a_batch=a.copy(),
                                explain_func=ctx.quantus.explain,
                                explain_func_kwargs={"method": "Saliency"},
                                device=ctx.quantus_device, batch_size=ctx.batch_size),
                              dtype=np.float64)

    return Case(
        ours=ours, quantus=quantus_fn,
        agreement=_mean_scores_agreement("the random classes differ; SSIM with a 2-D window "
                                         "(ours) vs on the flattened maps (Quantus)"),
        floor=lambda rows, calls: forward_backward_floor(w, w.n, ctx.batch_size),
        settings=f"Saliency, SSIM, normalised, num_classes={n_classes} (Quantus' 1000 default "
                 "crashes on W1, deviation C11)",
        note="floor: N bare input gradients (the other class's explanations)",
    )


SPECS = [
    # issue 7: MPRT and SmoothMPRT with Saliency at least 2x faster than Quantus 0.6
    Spec("MPRT", "randomisation", _mprt, speedup_targets=(("W1", 2.0), ("W2", 2.0))),
    # (L + 1) x N x K explanations per call: 14 x 256 x 10 = 35,840 gradients on W1 and
    # 42 x 4 x 10 = 1,680 ResNet-18 gradients on W2, for each side and the floor
    Spec("SmoothMPRT", "randomisation", _smooth_mprt, subset=(("W1", 64), ("W2", 1)),
         speedup_targets=(("W1", 2.0), ("W2", 2.0))),
    Spec("EfficientMPRT", "randomisation", _efficient_mprt),
    Spec("RandomLogit", "randomisation", _random_logit),
]


# --------------------------------------------------------------------------- data randomisation
def _data_randomisation(w: Workload, ctx: Context) -> Case:
    from evalkit.metrics import DataRandomisation
    from evalkit.metrics.data_randomisation import reinitialised_copy

    # training on permuted labels is the user's one-off cost, not the metric's: a re-initialised
    # copy (same architecture, same explanation cost) stands in for the permuted-label model
    other = reinitialised_copy(w.model, seed=0)
    metric = DataRandomisation(randomised_model=other)

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, w.a, explain_kwargs=_SALIENCY)

    return Case(
        ours=ours, floor=lambda rows, calls: forward_backward_floor(w, w.n, ctx.batch_size),
        settings="Saliency, Spearman of |a|; a re-initialised copy stands in for the "
                 "permuted-label model (its training is not timed); no Quantus equivalent",
        note="floor: N bare input gradients (the other model's explanations)",
    )


SPECS += [Spec("DataRandomisation", "randomisation", _data_randomisation)]


# --------------------------------------------------------------------------- required work
# The required-work floor of the randomisation rows on W4-W6 (benchmarks/specs/modalities.py:
# their floor is explain() of the rows they explain): that floor plus the steps that the
# metric's definition requires once per call, each in the cheapest library form timed on the
# row's own data (:class:`benchmarks.harness.RequiredStep`). Each form leaves out what an
# implementation may organise otherwise (seeding, NaN bookkeeping, float64, tie handling of
# ranks, validation), so that the bound stays below every implementation.

def _reset(module: torch.nn.Module) -> None:
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
    else:
        for p in module.parameters(recurse=False):
            p.normal_()


def model_copy_step(model: torch.nn.Module, names: list[str]) -> RequiredStep:
    """One independent copy of ``model`` with the layers ``names`` re-initialised by torch's
    own initialisers (``reset_parameters``), the global generator restored afterwards (the
    caller's random streams are left as they were): ``copy.deepcopy`` of the model, or of the
    re-initialised layers only (a lower bound of a copy that shares the layers it keeps)."""
    import copy

    layers = [model.get_submodule(n) for n in names]

    def whole() -> None:
        state = torch.get_rng_state()
        with torch.no_grad():
            work = copy.deepcopy(model)
            for name in names:
                _reset(work.get_submodule(name))
        torch.set_rng_state(state)

    def layers_only() -> None:
        state = torch.get_rng_state()
        with torch.no_grad():
            for layer in layers:
                _reset(copy.deepcopy(layer))
        torch.set_rng_state(state)

    what = (f"one model copy with its {len(names)} layer{'s' if len(names) != 1 else ''} "
            "re-initialised")
    return RequiredStep(what, {"copy.deepcopy + reset_parameters": whole,
                               "copy.deepcopy of those layers + reset_parameters": layers_only})


def _flat_np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().reshape(t.shape[0], -1).cpu().numpy())


def spearman_step(ref: torch.Tensor, other: torch.Tensor, pairs: int, *,
                  absolute: bool) -> RequiredStep:
    """The Spearman rank correlation of the reference map of each sample with ``pairs`` other
    maps (of |a| where ``absolute``): the reference ranked once, each other map ranked, the
    Pearson correlation of the ranks per row. Ranks by NumPy's ``argsort`` (no tie handling:
    a lower bound of ``scipy.stats.rankdata``), ``torch.argsort`` or ``scipy.stats.rankdata``;
    ``other`` (maps of a re-initialised model) stands in for each pair's map."""
    from scipy.stats import rankdata

    a_np, b_np = _flat_np(ref), _flat_np(other)
    a_t, b_t = torch.from_numpy(a_np), torch.from_numpy(b_np)
    n, d = a_np.shape
    offsets = np.arange(0, n * d, d)[:, None]
    seq = np.tile(np.arange(1.0, d + 1.0), n)
    seq_t = torch.arange(1.0, d + 1.0, dtype=torch.float64).expand(n, d)

    def ranks_argsort(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, axis=1)
        order += offsets
        out = np.empty(n * d)
        out[order.reshape(-1)] = seq
        return out.reshape(n, d)

    def centred(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = r - r.mean(1, keepdims=True)
        return c, np.einsum("ij,ij->i", c, c)

    def numpy_form(rank_fn: Any) -> Any:
        def run() -> None:
            c0, s0 = centred(rank_fn(np.abs(a_np) if absolute else a_np))
            for _ in range(pairs):
                c, s = centred(rank_fn(np.abs(b_np) if absolute else b_np))
                np.einsum("ij,ij->i", c0, c) / np.sqrt(s0 * s)

        return run

    def torch_ranks(x: torch.Tensor) -> torch.Tensor:
        return torch.empty((n, d), dtype=torch.float64).scatter_(1, torch.argsort(x, dim=1),
                                                                 seq_t)

    def torch_form() -> None:
        with torch.inference_mode():
            r0 = torch_ranks(a_t.abs() if absolute else a_t)
            c0 = r0 - r0.mean(1, keepdim=True)
            s0 = (c0 * c0).sum(1)
            for _ in range(pairs):
                r = torch_ranks(b_t.abs() if absolute else b_t)
                c = r - r.mean(1, keepdim=True)
                (c0 * c).sum(1) / torch.sqrt(s0 * (c * c).sum(1))

    what = (f"Spearman of {'|a|' if absolute else 'a'} for {pairs} map pair"
            f"{'s' if pairs != 1 else ''} ({pairs + 1} rankings of {n} x {d})")
    return RequiredStep(what, {
        "numpy argsort ranks": numpy_form(ranks_argsort),
        "scipy.stats.rankdata": numpy_form(lambda x: rankdata(x, axis=1)),
        "torch.argsort ranks": torch_form,
    })


def entropy_step(maps: list[torch.Tensor], bins: int) -> RequiredStep:
    """The Shannon entropy of the histogram (``bins`` equal-width bins over each row's own
    [min, max]) of each of ``maps``' rows, in the maps' own dtype: bin indices, counts (NumPy
    ``bincount`` with row offsets, or torch ``scatter_add_``) and the entropy of the counts,
    log d - mean(log count) over the row's values (each value's bin count gathered: d terms a
    row instead of one per bin)."""
    arrays = [_flat_np(m) for m in maps]
    tensors = [torch.from_numpy(x) for x in arrays]
    n, d = arrays[0].shape
    offsets = np.arange(0, n * bins, bins)[:, None]
    offsets_t = torch.from_numpy(offsets)

    def numpy_form() -> None:
        for x in arrays:
            lo = x.min(1, keepdims=True)
            span = x.max(1, keepdims=True) - lo
            idx = ((x - lo) * (bins / np.where(span > 0, span, 1.0))).astype(np.int64)
            np.minimum(idx, bins - 1, out=idx)
            idx += offsets
            flat = idx.reshape(-1)
            counts = np.bincount(flat, minlength=n * bins)
            np.log(d) - np.log(counts[flat].reshape(n, d)).mean(1)

    def torch_form() -> None:
        with torch.inference_mode():
            for x in tensors:
                lo = x.amin(1, keepdim=True)
                span = x.amax(1, keepdim=True) - lo
                idx = ((x - lo) * (bins / torch.where(span > 0, span, 1.0))).to(torch.int64)
                flat = (idx.clamp_(max=bins - 1) + offsets_t).reshape(-1)
                counts = torch.bincount(flat, minlength=n * bins)
                math.log(d) - counts[flat].reshape(n, d).log().mean(1)

    what = f"histogram entropy ({bins} bins) of {len(maps)} x {n} maps of {d} values"
    return RequiredStep(what, {"numpy bincount": numpy_form, "torch bincount": torch_form})


def ssim_step(ref: torch.Tensor, other: torch.Tensor, *, normalise: bool) -> RequiredStep:
    """The mean SSIM (Wang et al. 2004; uniform 7-wide window, sample covariance, the pair's
    joint range, the positions a window radius from the border) of each sample's pair of maps,
    each map divided by its largest |value| first where ``normalise``: vectorised with
    ``scipy.ndimage.uniform_filter`` or torch's average pooling over the valid positions
    (no padding: only those enter the mean), or ``skimage.metrics.structural_similarity`` per
    sample."""
    from scipy.ndimage import uniform_filter

    a = ref.detach().to(torch.float64).cpu()
    b = other.detach().to(torch.float64).cpu()
    if a.ndim == 2:  # (N, D): one channel
        a, b = a[:, None], b[:, None]
    n, c = a.shape[:2]
    spatial = a.ndim - 2
    win = 7
    k1, k2 = 0.01, 0.03
    cov = win**spatial / (win**spatial - 1)
    a_np, b_np = a.numpy(), b.numpy()

    def prepared_np() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y = a_np, b_np
        if normalise:
            axes = tuple(range(1, x.ndim))
            x = x / np.abs(x).max(axes, keepdims=True)
            y = y / np.abs(y).max(axes, keepdims=True)
        axes = tuple(range(1, x.ndim))
        rng = np.maximum(x.max(axes), y.max(axes)) - np.minimum(x.min(axes), y.min(axes))
        return x, y, rng.reshape(n, *([1] * (x.ndim - 1)))

    def formula(ux, uy, uxx, uyy, uxy, rng):
        vx, vy, vxy = cov * (uxx - ux * ux), cov * (uyy - uy * uy), cov * (uxy - ux * uy)
        c1, c2 = (k1 * rng) ** 2, (k2 * rng) ** 2
        return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1)
                                                        * (vx + vy + c2))

    def scipy_form() -> None:
        x, y, rng = prepared_np()
        size = (1, 1, *([win] * spatial))
        f = [uniform_filter(v, size=size, mode="reflect") for v in (x, y, x * x, y * y, x * y)]
        r = win // 2
        crop = (slice(None), slice(None), *([slice(r, -r)] * spatial))
        formula(*(v[crop] for v in f), rng).reshape(n, -1).mean(1)

    pool = (torch.nn.functional.avg_pool1d if spatial == 1 else
            torch.nn.functional.avg_pool2d if spatial == 2 else torch.nn.functional.avg_pool3d)

    def torch_form() -> None:
        with torch.inference_mode():
            x, y = a, b
            if normalise:
                x = x / x.abs().flatten(1).amax(1).reshape(n, *([1] * (x.ndim - 1)))
                y = y / y.abs().flatten(1).amax(1).reshape(n, *([1] * (y.ndim - 1)))
            fx, fy = x.flatten(1), y.flatten(1)
            rng = (torch.maximum(fx.amax(1), fy.amax(1)) - torch.minimum(fx.amin(1), fy.amin(1))
                   ).reshape(n, 1, *([1] * spatial))
            stacked = torch.cat([x, y, x * x, y * y, x * y], 1)  # (N, 5C, *spatial)
            f = pool(stacked, win, stride=1).unflatten(1, (5, c))
            formula(*f.unbind(1), rng).reshape(n, -1).mean(1)

    forms = {"scipy.ndimage.uniform_filter": scipy_form, "torch avg_pool (valid)": torch_form}
    if spatial in (1, 2):
        from skimage.metrics import structural_similarity

        def skimage_form() -> None:
            x, y, rng = prepared_np()
            for i in range(n):
                xi, yi = (x[i, 0], y[i, 0]) if c == 1 else (x[i], y[i])
                structural_similarity(xi, yi, win_size=win, data_range=float(rng.reshape(-1)[i]),
                                      channel_axis=None if c == 1 else 0)

        forms["skimage structural_similarity per sample"] = skimage_form
    what = (f"SSIM of {n} map pairs ({'normalised, ' if normalise else ''}"
            f"{'x'.join(map(str, a.shape[2:]))} per channel)")
    return RequiredStep(what, forms)


def label_draw_step(y: torch.Tensor, n_classes: int) -> RequiredStep:
    """One draw of an off-target class per sample, y' = (y + U{1..C-1}) mod C."""
    yt = y.detach().cpu().to(torch.int64)
    yn = yt.numpy()
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    def torch_form() -> None:
        (yt + torch.randint(1, n_classes, yt.shape, generator=gen)) % n_classes

    def numpy_form() -> None:
        (yn + rng.integers(1, n_classes, yn.shape)) % n_classes

    return RequiredStep(f"one draw of the {yt.shape[0]} off-target labels",
                        {"torch.randint": torch_form, "numpy integers": numpy_form})


def smoothing_steps(x: torch.Tensor, k: int, models: int, map_shape: tuple[int, ...]
                    ) -> tuple[RequiredStep, RequiredStep]:
    """SmoothMPRT's noisy inputs (N (K - 1) Gaussian copies of the inputs, x + sigma * noise,
    built once and shared by every model) and the mean of each model's K explanations."""
    xs = x.detach()
    n = xs.shape[0]
    std = torch.ones((n, 1, *([1] * (xs.ndim - 1))), dtype=xs.dtype)
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand((n, k, *map_shape), generator=gen)

    def noisy() -> None:
        with torch.inference_mode():
            noise = torch.randn((n, k - 1, *xs.shape[1:]), generator=gen, dtype=xs.dtype)
            torch.addcmul(xs.unsqueeze(1), noise, std)

    def means() -> None:
        with torch.inference_mode():
            for _ in range(models):
                maps.mean(1)

    return (RequiredStep(f"{n} x {k - 1} noisy inputs", {"torch.randn + addcmul": noisy}),
            RequiredStep(f"the mean of each of {models} models' {k} explanations per sample",
                         {"torch mean": means}))


#: the metrics whose W4-W6 rows have a required-work floor here
REQUIRED_RANDOMISATION = ("MPRT", "SmoothMPRT", "EfficientMPRT", "RandomLogit",
                          "DataRandomisation")


def required_randomisation_work(name: str, metric: Any, w: Workload, a: torch.Tensor,
                                explain_kwargs: dict[str, Any]) -> RequiredWork | None:
    """The per-call steps that the definition of randomisation metric ``name`` (an instance,
    ``metric``, at the row's settings) requires besides explaining (the floor): the model
    copy and the re-initialisation of the randomised layers (MPRT, SmoothMPRT, EfficientMPRT),
    the similarity or entropy of the maps at the row's settings, the off-target labels
    (RandomLogit), the noisy inputs and the means of the explanations (SmoothMPRT). None for
    other metrics or settings that these steps do not describe (e.g. a user similarity)."""
    import evalkit
    from evalkit.metrics.data_randomisation import reinitialised_copy

    if name not in REQUIRED_RANDOMISATION or w.x.device.type != "cpu":
        return None
    steps: list[RequiredStep] = []
    model = w.model
    names: list[str] = []
    if name in ("MPRT", "SmoothMPRT", "EfficientMPRT"):
        names = metric._layers(evalkit.wrap_model(model))
        steps.append(model_copy_step(model, names))
    # maps of a re-initialised copy (RandomLogit: of the other classes) stand in for the maps
    # each call compares
    y = w.y
    n_classes = 0
    if name == "RandomLogit":
        with torch.inference_mode():
            n_classes = int(model(w.x[:1]).shape[1])
        y = (w.y + 1) % n_classes
        other = evalkit.explain(model, w.x, y, **explain_kwargs).detach()
    else:
        other = evalkit.explain(reinitialised_copy(model, seed=1), w.x, y,
                                **explain_kwargs).detach()
    sim = getattr(metric, "similarity_func", None)
    absolute = bool(metric.abs if metric.abs is not None else type(metric).default_abs)
    normalise = bool(metric.normalise if metric.normalise is not None
                     else type(metric).default_normalise)
    if name == "SmoothMPRT":
        steps.extend(smoothing_steps(w.x, metric.nr_samples, len(names) + 1,
                                     tuple(a.shape[1:])))
    if name == "EfficientMPRT":
        if not isinstance(metric.n_bins, int) or not metric.skip_layers:
            return None
        steps.append(entropy_step([a, other], metric.n_bins))
    elif sim == "spearman":
        pairs = 1 if name in ("RandomLogit", "DataRandomisation") or getattr(
            metric, "skip_layers", False) or getattr(metric, "summary", "mean") == "last" \
            else len(names)
        steps.append(spearman_step(a, other, pairs, absolute=absolute))
    elif sim == "ssim" and not absolute:
        steps.append(ssim_step(a, other, normalise=normalise))
    else:
        return None
    if name == "RandomLogit":
        steps.append(label_draw_step(w.y, n_classes))
    return RequiredWork(per_call=tuple(steps))
