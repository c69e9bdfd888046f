"""Robustness specs: every re-explaining metric with Saliency and Integrated Gradients as the
explainer, ``nr_samples=10`` (Continuity: ``nr_steps=10``), on W1 and W2; plus Consistency.

Both libraries get the same precomputed ``a`` (channel-summed, Quantus' layout) and the same
explainer: ours ``evalkit.explain`` (wrapped in a :class:`~benchmarks.harness.TimedExplainer`
for the explainer share), Quantus ``quantus.explain``; Integrated Gradients with 10 steps and
Quantus' ``riemann_trapezoid`` rule in both. Ours gets the model as an ``evalkit.wrap_model``
wrapper, as a user evaluating many metrics would: a user ``explain_fn`` receives the model as
given, and ``explain()`` handed a raw module re-wraps it on every call and probes its output
shape with a one-row forward pass each time (one extra row per chunk of the batch size: a few
percent on W2, where a chunk holds 6 images).

The floor is the bare work the metric needs: ``evalkit.explain`` on the N*K perturbed inputs
stacked (built before timing) plus, for metrics that check predictions or read outputs
(RIS/ROS/RRS, default ``drop_draw``), a bare forward pass of those N*K rows and the N
unperturbed ones at the runner's batch size.

Agreement: the noise draws differ between the libraries (so do the per-sample maxima); the
table shows the median score of each over the samples finite in both (the relative stabilities
are heavy-tailed, so means are dominated by a few samples). Continuity's translations are
deterministic and compared exactly. LocalLipschitzEstimate and Continuity run with
``normalise=False`` in both (Quantus' default normalisation runs over the whole batch, deviation C1,
so its scores would mean something else).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import evalkit
from evalkit.metrics import (
    AvgSensitivity,
    Consistency,
    Continuity,
    LocalLipschitzEstimate,
    MaxSensitivity,
    RelativeInputStability,
    RelativeOutputStability,
    RelativeRepresentationStability,
)

from ..harness import (
    Agreement,
    Case,
    Context,
    RequiredStep,
    RequiredWork,
    TimedExplainer,
    forward_backward_floor,
    forward_floor,
    max_abs_diff,
)
from ..workloads import Workload
from . import Spec

K = 10
_EXPLAINERS: dict[str, dict[str, Any]] = {
    "Saliency": {},
    "IntegratedGradients": {"n_steps": 10, "integration_method": "riemann_trapezoid"},
}
#: representation layer of RRS per workload (Quantus skips nn.Sequential containers)
_RRS_LAYER = {"W1": "fc.2", "W2": "avgpool"}
_A_CACHE: dict[tuple[str, int, str, str], torch.Tensor] = {}


def _attributions(w: Workload, method: str) -> torch.Tensor:
    if method == "Saliency":
        return w.a
    key = (w.name, w.n, str(w.device), method)
    if key not in _A_CACHE:
        _A_CACHE[key] = evalkit.explain(w.model, w.x, w.y, method=method,
                                        reduce_channels="sum", **_EXPLAINERS[method]).detach()
    return _A_CACHE[key]


def _median_agreement(o: Any, t: Any) -> Agreement:
    o = np.asarray(o, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    both = np.isfinite(o) & np.isfinite(t)
    nan_o, nan_t = int((~np.isfinite(o)).sum()), int((~np.isfinite(t)).sum())
    if both.any():
        text = (f"median ours {np.median(o[both]):.4g} vs Quantus {np.median(t[both]):.4g} "
                "(different noise draws)")
    else:
        text = "no sample finite in both"
    if nan_o or nan_t:
        text += f"; NaN ours {nan_o}, Quantus {nan_t}"
    return Agreement(None, text)


def _floor(w: Workload, ctx: Context, method: str, forward_rows: int,
           perturb: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[int, int], Any]:
    """explain() on the N*K stacked perturbed inputs, plus ``forward_rows`` bare forwards."""

    def make(_rows: int, _calls: int) -> Callable[[], None]:
        stack = perturb(w.x)
        y_stack = w.y.repeat_interleave(K)
        fwd = forward_floor(w, forward_rows, ctx.batch_size)
        kw = {"method": method, "reduce_channels": "sum", **_EXPLAINERS[method]}

        def run() -> None:
            evalkit.explain(w.model, stack, y_stack, **kw)
            if fwd is not None:
                fwd()

        return run

    return make


def _noise_stack(kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def perturb(x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator(device="cpu").manual_seed(0)
        shape = (x.shape[0], K, *x.shape[1:])
        if kind == "gaussian":
            n = 0.1 * torch.randn(shape, generator=g)
        elif kind == "uniform":
            n = 0.4 * torch.rand(shape, generator=g) - 0.2
        else:
            n = 0.02 + 0.18 * torch.rand(shape, generator=g)
        return (x.unsqueeze(1) + n.to(x.device)).reshape(-1, *x.shape[1:])

    return perturb


def _shift_stack(x: torch.Tensor) -> torch.Tensor:
    from evalkit.metrics.robustness._engine import _translate, translation_shifts

    fill = x.reshape(x.shape[0], -1).amin(1).reshape(-1, 1, 1, 1)
    shifts = translation_shifts(x.shape[-1], K)
    return torch.stack([_translate(x, s, 3, fill) for s in shifts], 1).reshape(-1, *x.shape[1:])


# name -> (our class, our kwargs, Quantus class name, Quantus kwargs, noise of the floor stack,
#          whether the metric needs forward passes of the perturbed inputs)
_METRICS: dict[str, tuple[type, dict[str, Any], str, dict[str, Any], str, bool]] = {
    "LocalLipschitzEstimate": (LocalLipschitzEstimate, {"nr_samples": K, "normalise": False},
                               "LocalLipschitzEstimate", {"nr_samples": K, "normalise": False},
                               "gaussian", False),
    "MaxSensitivity": (MaxSensitivity, {"nr_samples": K}, "MaxSensitivity",
                       {"nr_samples": K}, "uniform", False),
    "AvgSensitivity": (AvgSensitivity, {"nr_samples": K}, "AvgSensitivity",
                       {"nr_samples": K}, "uniform", False),
    "Continuity": (Continuity, {"nr_steps": K, "normalise": False}, "Continuity",
                   {"nr_steps": K, "normalise": False}, "shift", False),
    "RelativeInputStability": (RelativeInputStability, {"nr_samples": K},
                               "RelativeInputStability", {"nr_samples": K}, "positive", True),
    "RelativeOutputStability": (RelativeOutputStability, {"nr_samples": K},
                                "RelativeOutputStability", {"nr_samples": K}, "positive", True),
    "RelativeRepresentationStability": (RelativeRepresentationStability, {"nr_samples": K},
                                        "RelativeRepresentationStability", {"nr_samples": K},
                                        "positive", True),
}


def _spec(name: str, method: str) -> Callable[[Workload, Context], Case]:
    cls, ours_kw, q_name, q_kw, noise, needs_forward = _METRICS[name]

    def build(w: Workload, ctx: Context) -> Case:
        kw = dict(ours_kw)
        qkw = dict(q_kw)
        if cls is RelativeRepresentationStability:
            kw["layer_names"] = [_RRS_LAYER[w.name]]
            qkw["layer_names"] = [_RRS_LAYER[w.name]]
        metric = cls(seed=0, **kw)
        a = _attributions(w, method)
        te = TimedExplainer(evalkit.explain, device=ctx.device)
        explain_kwargs = {"method": method, "reduce_channels": "sum", **_EXPLAINERS[method]}
        # the model as an evalkit wrapper: a user explain_fn receives the model as given, and
        # explain() re-wrapping a raw module would probe its output shape (one extra forward
        # row) on every call, i.e. on every chunk of the batch size
        wrapper = evalkit.wrap_model(w.model)

        def ours() -> np.ndarray:
            return metric(wrapper, w.x, w.y, a, explain_fn=te, explain_kwargs=explain_kwargs)

        quantus_fn = None
        if ctx.quantus is not None:
            q = getattr(ctx.quantus, q_name)(disable_warnings=True, **qkw)
            xn, yn, an = w.np("x"), w.np("y"), a.detach().cpu().numpy()

            def quantus_fn() -> np.ndarray:
                return np.asarray(q(model=w.model, x_batch=xn, y_batch=yn, a_batch=an,
                                    explain_func=ctx.quantus.explain,
                                    explain_func_kwargs={"method": method},
                                    device=ctx.quantus_device, batch_size=ctx.batch_size),
                                  dtype=np.float64)

        forward_rows = w.n * K + w.n if needs_forward else 0
        perturb = _shift_stack if noise == "shift" else _noise_stack(noise)
        settings = f"{method}, nr_{'steps' if cls is Continuity else 'samples'}={K}"
        if cls is RelativeRepresentationStability:
            settings += f", layer {_RRS_LAYER[w.name]}"
        if needs_forward:
            settings += ", drop_draw (ours) / NaN on flip (Quantus)"
        note = ("floor: explain() on the N*K stacked inputs"
                + (" + forward of N*K + N rows" if needs_forward else ""))
        if cls is Continuity:
            agreement = lambda o, t: max_abs_diff(o, t)  # noqa: E731
            note += "; Quantus also re-explains x (N more rows)"
        else:
            agreement = _median_agreement
        return Case(ours=ours, quantus=quantus_fn, agreement=agreement,
                    floor=_floor(w, ctx, method, forward_rows, perturb),
                    settings=settings, note=note, explainer=te)

    return build


def _consistency(w: Workload, ctx: Context) -> Case:
    metric = Consistency()
    wrapper = evalkit.wrap_model(w.model)  # its output shape is probed once, not per call

    def ours() -> np.ndarray:
        return metric(wrapper, w.x, w.y, w.a)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.Consistency(disable_warnings=True)
        xn, yn, an = w.np("x"), w.np("y"), w.np("a")

        def quantus_fn() -> np.ndarray:
            return np.asarray(q(model=w.model, x_batch=xn, y_batch=yn, a_batch=an,
                                device=ctx.quantus_device, batch_size=max(w.n, ctx.batch_size)),
                              dtype=np.float64)

    return Case(ours=ours, quantus=quantus_fn,
                agreement=lambda o, t: Agreement(None, "different discretisers by design: "
                                                 "Quantus' top_n_sign reads the first 5 "
                                                 "entries (deviation C10)"),
                floor="forward", settings="Saliency a, top_n_sign (n=5)",
                note="one forward pass of the N inputs (model given as an evalkit wrapper); "
                     "Quantus with batch_size >= N")


#: Integrated Gradients explains 10 interpolation steps per input: the N x K = 2,560 perturbed
#: inputs of all of W1 would take minutes per call for each side and the floor; its rows use the
#: first samples only (the per-sample work, hence the ratios, do not depend on N)
_SUBSET = {"IntegratedGradients": (("W1", 64), ("W2", 1))}

SPECS = [
    Spec(f"{name}[{method}]", "robustness", _spec(name, method),
         subset=_SUBSET.get(method, ()))
    for name in _METRICS for method in _EXPLAINERS
] + [Spec("Consistency", "robustness", _consistency)]


# --------------------------------------------------------------------------- sharing (issue 6)
def _suite_metrics(w: Workload) -> list[Any]:
    """Every re-explaining metric with its benchmark settings: MaxSensitivity/AvgSensitivity
    share one noise model (uniform +-0.2), the three relative stabilities another (uniform
    [0.02, 0.2]); LocalLipschitzEstimate (Gaussian) and Continuity (translations) share nothing
    but f(x)."""
    out = []
    for cls, kw, *_ in _METRICS.values():
        kw = dict(kw)
        if cls is RelativeRepresentationStability:
            kw["layer_names"] = [_RRS_LAYER[w.name]]
        out.append(cls(seed=0, **kw))
    return out


def _robustness_suite(shared: bool):
    def build(w: Workload, ctx: Context) -> Case:
        from evalkit import forward_cache
        from evalkit.cache import explanation_cache

        method = "Saliency"
        suite = _suite_metrics(w)
        te = TimedExplainer(evalkit.explain, device=ctx.device)
        explain_kwargs = {"method": method, "reduce_channels": "sum", **_EXPLAINERS[method]}
        wrapper = evalkit.wrap_model(w.model)
        a = _attributions(w, method)
        stats: dict[str, Any] = {}

        def ours() -> list:
            if not shared:
                return [m(wrapper, w.x, w.y, a, explain_fn=te, explain_kwargs=explain_kwargs)
                        for m in suite]
            with forward_cache() as cache:
                out = [m(wrapper, w.x, w.y, a, explain_fn=te, explain_kwargs=explain_kwargs)
                       for m in suite]
                st = explanation_cache(cache).stats()
                stats.update(cache_hits=st.hits, cache_misses=st.misses)
            return out

        def floor(rows: int, _calls: int) -> Callable[[], None] | None:
            # bare gradients of the rows explained + bare forwards of the other rows issued
            explained = te.rows
            grads = forward_backward_floor(w, explained, ctx.batch_size)
            fwd = forward_floor(w, max(0, rows - explained), ctx.batch_size)

            def run() -> None:
                if grads is not None:
                    grads()
                if fwd is not None:
                    fwd()

            return run

        names = ", ".join(type(m).__name__ for m in suite)
        return Case(
            ours=ours, floor=floor, explainer=te, stats=lambda: dict(stats),
            settings=(("one forward_cache() around " if shared else "separately: ") + names
                      + f"; {method}, nr_samples/nr_steps={K}, seed 0"),
            note=("Max/AvgSensitivity share their perturbed inputs and explanations, so do "
                  "RIS/ROS/RRS; floor: bare gradients of the rows explained + bare forwards "
                  "of the other rows" if shared else "the same metrics without the cache"),
        )

    return build


SPECS += [
    Spec("RobustnessSuite[separate]", "robustness", _robustness_suite(False), metric=""),
    Spec("RobustnessSuite[forward_cache]", "robustness", _robustness_suite(True), metric=""),
]


# --------------------------------------------------------------------------- top-k under attack
#: the attack's settings: the paper's top-k share objective through Saliency, 10 steps
_ATTACK_STEPS = 10


def attack_floor(w: Workload, ctx: Context, steps: int = _ATTACK_STEPS
                 ) -> Callable[[int, int], Callable[[], None]]:
    """The floor of AdversarialTopKIntersection with ``steps`` attack steps (also its W4/W5
    rows, benchmarks/specs/modalities.py)."""
    from evalkit.metrics.robustness.attack import _smoothed

    def floor(_rows: int, _calls: int) -> Callable[[], None]:
        # the bare attack: per step one double backward through the softplus-smoothed model
        # (gradient of a scalar of the Saliency map), per iterate one first-order gradient of
        # the real model (its map and prediction), then the re-explanation of the attacked
        # inputs and the forward of the clean ones
        first_order = forward_backward_floor(w, (steps + 2) * w.n, ctx.batch_size)
        clean = forward_floor(w, w.n, ctx.batch_size)
        size = max(1, min(ctx.batch_size, w.n))

        def run() -> None:
            for start in range(0, w.n, size):
                xs, ys = w.x[start:start + size], w.y[start:start + size]
                for _ in range(steps):
                    xg = xs.detach().requires_grad_(True)
                    with _smoothed(10.0):
                        score = w.model(xg).gather(1, ys[:, None]).sum()
                        (g,) = torch.autograd.grad(score, xg, create_graph=True)
                        torch.autograd.grad(g.abs().amax(), xg)
            first_order()
            if clean is not None:
                clean()

        return run

    return floor


def _adversarial_topk(w: Workload, ctx: Context) -> Case:
    from evalkit.metrics import AdversarialTopKIntersection

    metric = AdversarialTopKIntersection(nr_steps=_ATTACK_STEPS, seed=0)
    wrapper = evalkit.wrap_model(w.model)
    explain_kwargs = {"method": "Saliency", "reduce_channels": "sum"}

    def ours() -> np.ndarray:
        return metric(wrapper, w.x, w.y, w.a, explain_kwargs=explain_kwargs)

    return Case(
        ours=ours, floor=attack_floor(w, ctx),
        settings=f"Saliency (channel-summed), top-k attack (softplus beta 10), k=0.02, "
                 f"epsilon=8/255, {_ATTACK_STEPS} steps, random start, seed 0; no Quantus "
                 "equivalent",
        note="floor: per step a bare double backward of the smoothed model, per iterate a bare "
             "input gradient, plus the re-explanation and one forward of the N inputs",
    )


SPECS += [
    # a double backward per step: ResNet-18 on 224x224 takes seconds per image and step on CPU
    Spec("AdversarialTopKIntersection", "robustness", _adversarial_topk,
         subset=(("W1", 64), ("W2", 2))),
]


# --------------------------------------------------------------------------- required work
#: the noise-based robustness metrics whose W4-W6 rows have a required-work floor here
REQUIRED_ROBUSTNESS = ("MaxSensitivity", "AvgSensitivity", "LocalLipschitzEstimate",
                       "RelativeInputStability", "RelativeOutputStability",
                       "RelativeRepresentationStability")


def _norm_order(norm: Any) -> float | None:
    """The order of one of the engine's named norms (l1, l2, linf), None for a user callable."""
    from evalkit.metrics.robustness import _engine

    return {_engine._l1: 1.0, _engine._l2: 2.0, _engine._linf: math.inf}.get(norm)


def noise_step(x: torch.Tensor, k: int, noise: Any) -> RequiredStep | None:
    """The K perturbed copies of every input: N x K x D numbers of the inputs' dtype drawn
    from the metric's noise (uniform or Gaussian; with torch's own unkeyed generator, the
    cheapest on hand) and added to the inputs, x'_k = x + noise (the explain() floor's stack
    is built before timing). None for other noises."""
    from evalkit.perturb import GaussianNoise, UniformNoise

    xs = x.detach()
    shape = (xs.shape[0], k, *xs.shape[1:])
    xu = xs.unsqueeze(1)
    gen = torch.Generator(device=xs.device).manual_seed(0)
    kw = {"dtype": xs.dtype, "device": xs.device}
    if type(noise) is UniformNoise:
        low, high = noise._bounds()

        def uniform_form() -> None:
            torch.empty(shape, **kw).uniform_(low, high, generator=gen).add_(xu)

        def rand_form() -> None:  # U[0, 1): less than the metric's range needs, a lower bound
            torch.rand(shape, generator=gen, **kw).add_(xu)

        forms = {"Tensor.uniform_ + add_": uniform_form, "torch.rand + add_": rand_form}
    elif type(noise) is GaussianNoise:
        mean, std = noise.perturb_mean, noise.perturb_std

        def normal_form() -> None:
            torch.empty(shape, **kw).normal_(mean, std, generator=gen).add_(xu)

        def randn_form() -> None:  # N(0, 1): less than the metric's scaling needs
            torch.randn(shape, generator=gen, **kw).add_(xu)

        forms = {"Tensor.normal_ + add_": normal_form, "torch.randn + add_": randn_form}
    else:
        return None
    count = math.prod(shape)
    return RequiredStep(f"{count:,} noise values ({str(xs.dtype).removeprefix('torch.')}) "
                        f"drawn and added to the inputs ({shape[0]} x {k} copies)", forms)


def _inference(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run under ``torch.inference_mode`` (no autograd bookkeeping), its result
    returned (the floor ignores it; the tests read it)."""
    def run() -> Any:
        with torch.inference_mode():
            return fn()

    return run


def distance_step(what: str, ref: torch.Tensor, new: torch.Tensor, order: float, *,
                  relative_eps: float | None = None, over: torch.Tensor | None = None,
                  scale_ref: bool = False, differences: torch.Tensor | None = None
                  ) -> RequiredStep:
    """The distances ||ref_i - new_ik|| (``ref`` (N, F), ``new`` (N, K, F)) of order
    ``order`` per draw, in the maps' own dtype: with ``relative_eps``, of the differences
    divided elementwise by max(|ref|, eps) (the relative stabilities); ``over``: the
    distances are divided by these (N, K) values (the ratio of the score, maximised over the
    draws); ``scale_ref``: by ||ref_i|| (MaxSensitivity's denominator); ``differences``: the
    (N, K, F) values new - ref where an implementation has them already (the inputs' noise),
    one more form that needs no subtraction. Forms: torch's ``linalg.vector_norm`` of the
    differences, ``torch.cdist`` (of the values divided by the divisors for relative
    changes) and NumPy's ``linalg.norm``."""
    r, v = ref.detach(), new.detach()
    ru = r.unsqueeze(1)
    rn, vn = r.cpu().numpy(), v.cpu().numpy()
    on = None if over is None else over.detach().cpu().numpy()

    def finish(d: Any, torch_side: bool) -> Any:
        if scale_ref:
            d = d / (torch.linalg.vector_norm(r, ord=order, dim=-1).unsqueeze(1) if torch_side
                     else np.linalg.norm(rn, ord=order, axis=-1)[:, None])
        if over is not None:
            d = d / (over if torch_side else on)
        d.max(1)  # the score: the largest (or mean) value over the draws
        return d

    def torch_form() -> torch.Tensor:
        diff = v - ru
        if relative_eps is not None:
            diff.div_(ru.abs().clamp_min(relative_eps))
        return finish(torch.linalg.vector_norm(diff, ord=order, dim=-1), True)

    def numpy_form() -> np.ndarray:
        diff = vn - rn[:, None]
        if relative_eps is not None:
            diff /= np.maximum(np.abs(rn), relative_eps)[:, None]
        return finish(np.linalg.norm(diff, ord=order, axis=-1), False)

    forms = {"torch.linalg.vector_norm": _inference(torch_form), "numpy linalg.norm": numpy_form}
    if differences is not None:
        dv = differences.detach()

        def given_form() -> torch.Tensor:
            d = dv if relative_eps is None else dv / ru.abs().clamp_min(relative_eps)
            return finish(torch.linalg.vector_norm(d, ord=order, dim=-1), True)

        forms["torch.linalg.vector_norm of the noise"] = _inference(given_form)
    if order in (1.0, 2.0, math.inf):
        if relative_eps is None:
            forms["torch.cdist"] = _inference(
                lambda: finish(torch.cdist(v, ru, p=order).squeeze(2), True))
        else:
            # ||(ref - new) / s|| = ||ref / s - new / s||: one division, then the distances
            def scaled_cdist() -> torch.Tensor:
                scale = ru.abs().clamp_min(relative_eps)
                return finish(torch.cdist(v / scale, ru / scale, p=order).squeeze(2), True)

            forms["torch.cdist of the scaled values"] = _inference(scaled_cdist)
    n, k, f = v.shape
    return RequiredStep(f"{what} ({n} x {k} draws of {f} values, order {order:g})", forms)


def prediction_step(clean: torch.Tensor, outputs: torch.Tensor) -> RequiredStep:
    """Whether each draw keeps the predicted class: the argmax of the N x K perturbed outputs
    against that of the N unperturbed ones (``on_prediction_change`` other than 'keep')."""
    c, o = clean.detach(), outputs.detach()

    def form() -> torch.Tensor:
        return o.argmax(-1).eq(c.argmax(-1).unsqueeze(1))

    n, k = o.shape[:2]
    return RequiredStep(f"the predicted class of {n} x {k} draws against the unperturbed",
                        {"argmax == argmax": _inference(form)})


def _perturbed_values(w: Workload, k: int, noise: Any, a: torch.Tensor,
                      layer: str | None) -> dict[str, torch.Tensor]:
    """Stand-ins for what a call computes, built once (untimed) for the steps: the noise
    (N, K, D) and the perturbed inputs, maps of the perturbed inputs (the row's maps, each
    value scaled by a seeded factor near 1), the model outputs (and the flattened outputs of
    ``layer``) of the inputs and of the perturbed inputs."""
    x = w.x.detach()
    n = x.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(0)
    shape = (n, k, *x.shape[1:])
    eps = torch.empty(shape, dtype=x.dtype)
    if hasattr(noise, "perturb_std"):
        eps.normal_(noise.perturb_mean, noise.perturb_std, generator=gen)
    else:
        eps.uniform_(*noise._bounds(), generator=gen)
    eps = eps.to(x.device)
    xk = x.unsqueeze(1) + eps
    af = a.detach().reshape(n, -1).to(x.dtype)
    jitter = 1 + 0.1 * torch.randn((n, k, af.shape[1]), generator=gen, dtype=af.dtype)
    out: dict[str, torch.Tensor] = {
        "noise": eps.reshape(n, k, -1), "x": x.reshape(n, -1), "xk": xk.reshape(n, k, -1),
        "a": af, "ak": af.unsqueeze(1) * jitter.to(af.device)}
    seen: list[torch.Tensor] = []
    handle = None
    if layer is not None:
        module = dict(w.model.named_modules())[layer]
        handle = module.register_forward_hook(
            lambda _m, _i, o: seen.append(o.detach().reshape(o.shape[0], -1).clone()))
    try:
        with torch.inference_mode():
            out["h"] = w.model(x).reshape(n, -1).clone()
            out["hk"] = w.model(xk.reshape(n * k, *x.shape[1:])).reshape(n, k, -1).clone()
    finally:
        if handle is not None:
            handle.remove()
    if layer is not None:
        out["r"], out["rk"] = seen[0], seen[1].reshape(n, k, -1)
    return out


def required_robustness_work(name: str, metric: Any, w: Workload, a: torch.Tensor
                             ) -> RequiredWork | None:
    """The per-call steps that the definition of noise-based robustness metric ``name`` (an
    instance, ``metric``, at the row's settings) requires besides explaining the perturbed
    inputs (the floor): the noise of every perturbed copy added to the inputs
    (:func:`noise_step`), the distances of the score (:func:`distance_step`: the maps' change
    per draw, and the inputs', outputs' or representation's change it is divided by), and,
    where draws that change the prediction are dropped or make the sample NaN, the predicted
    classes (:func:`prediction_step`). None for other metrics or settings these steps do not
    describe (a user norm or noise)."""
    if name not in REQUIRED_ROBUSTNESS or w.x.device.type != "cpu":
        return None
    k = metric.nr_samples
    noise = getattr(metric, "noise_", None)
    modality = w.modality
    if modality is not None and not isinstance(modality, str) and (
            modality.valid_noise(noise) is not noise):
        return None
    draws = noise_step(w.x, k, noise)
    if draws is None:
        return None
    relative = name.startswith("Relative")
    if relative:
        order = float(metric.p_norm)
        numerator = denominator = order
    else:
        numerator = _norm_order(metric._num)
        denominator = None if metric._den is None else _norm_order(metric._den)
        if numerator is None or (metric._den is not None and denominator is None):
            return None
    layer = None
    if name == "RelativeRepresentationStability":
        layers = metric.resolve_layers(w.model)
        if len(layers) != 1:
            return None
        layer = layers[0]
    v = _perturbed_values(w, k, noise, a, layer)
    steps = [draws]
    if name == "LocalLipschitzEstimate":
        # x'_k - x is the noise drawn: its norm needs no subtraction
        noise_norm = torch.linalg.vector_norm(v["noise"], ord=denominator, dim=-1)
        steps.append(RequiredStep(
            f"input distances ||x - x'_k|| ({v['noise'].shape[0]} x {k} draws, order "
            f"{denominator:g})",
            {"torch.linalg.vector_norm of the noise": _inference(
                lambda: torch.linalg.vector_norm(v["noise"], ord=denominator, dim=-1))}))
        steps.append(distance_step("map distances ||a(x) - a(x'_k)|| over the input distances",
                                   v["a"], v["ak"], numerator, over=noise_norm))
    elif not relative:
        steps.append(distance_step(
            "map distances ||a(x) - a(x'_k)||" + (" over ||a(x)||" if denominator else ""),
            v["a"], v["ak"], numerator, scale_ref=denominator is not None))
    else:
        eps = float(metric.eps_min)
        if name == "RelativeInputStability":
            steps.append(distance_step("relative input changes", v["x"], v["xk"], order,
                                       relative_eps=eps, differences=v["noise"]))
        elif name == "RelativeOutputStability":
            steps.append(distance_step("output changes ||h(x) - h(x'_k)||", v["h"], v["hk"],
                                       order))
        else:
            steps.append(distance_step(f"relative changes of layer {layer}'s outputs", v["r"],
                                       v["rk"], order, relative_eps=eps))
        # the ratio's denominator (the step above) is timed on its own; the maps' relative
        # change is divided by it
        steps.append(distance_step("relative map changes over the denominators", v["a"],
                                   v["ak"], order, relative_eps=eps,
                                   over=torch.ones((v["a"].shape[0], k), dtype=v["a"].dtype)))
    if metric.on_prediction_change_ != "keep":
        steps.append(prediction_step(v["h"], v["hk"]))
    return RequiredWork(per_call=tuple(steps))
