"""Timing primitives, forward counting, floors, and the runner of one (spec, workload) case.

Measurement protocol for one case:

1. Warm-up: run ours once, then Quantus once (and another library's implementation where a
   spec gives one, :attr:`Case.reference`), each under a forward counter (a forward pre-hook
   on the workload's root module, removed in a ``finally``). The counted calls/rows are what the
   table reports, and the outputs of these runs feed the agreement check.
2. Build the floor from what ours needed (by default: the forward rows it issued, at the
   runner's batch size; specs may give their own floor, e.g. forward+backward for explainers).
3. Timed rounds, alternating in the same process: ours, Quantus, floor, ours, Quantus, floor...
   (a reference, where there is one, in the same rotation) so that slow drift (thermal, other
   processes) hits all alike. A call that takes less
   than ``min_time`` is repeated in an inner loop and its time averaged. The median over the
   rounds is reported (the minimum is kept too).

   With ``max_case_s``, slow cases get fewer rounds: as many as fit that many seconds given the
   warm-up times (at least one, at most ``repeats``); the row records how many it got.
4. The explainer share (cases with a :class:`TimedExplainer`): from the warm-up call when it
   was slow (one-off costs are then negligible), else from one extra call.

Lower bounds besides the model floor (W4-W6, where the model is cheap): the *written floor*
(each input row written once before its forward), the *drawn floor* (and as many random
numbers as ours drew) and the *required-work floor* (and the ranking and the scoring of the
outputs that the metric's definition requires, :class:`RequiredWork`), each timed in the same
alternating rounds as ours. A re-explaining metric (floor: ``explain()`` of the rows it
explained) can have a required-work floor too: that floor plus the steps its definition
requires once per call (:class:`RequiredStep`: a model copy and re-initialisation, the
similarity of the maps, the noise of the perturbed copies and the distances of a robustness
score...).

Process state and plain processes (issues 18 and 24): the same case can be run in a new process
per :data:`CONDITIONS` entry (``fresh``, or ``used``: :func:`dirty_process` first), since the
C allocator's state decides whether forward passes fault in fresh pages; and a spec with a
:data:`PLAIN_SCRIPTS` entry can also be timed as a user runs it: its script in a plain Python
process, wall clock, at torch's default thread count and at one thread
(:func:`plain_process_times`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .workloads import Workload

__all__ = [
    "CONDITIONS",
    "PLAIN_SCRIPTS",
    "SCORERS",
    "Agreement",
    "Case",
    "Context",
    "ForwardCount",
    "PlainScript",
    "RequiredStep",
    "RequiredWork",
    "Result",
    "TimedExplainer",
    "Timing",
    "cheapest",
    "child_argv",
    "count_forwards",
    "dirty_process",
    "forward_backward_floor",
    "forward_floor",
    "max_abs_diff",
    "model_floor",
    "plain_process_times",
    "ranking_candidates",
    "required_floor",
    "results_of_json",
    "run_case",
    "run_conditions",
    "run_isolated",
    "set_clock",
    "skipped_result",
    "time_alternating",
    "time_call",
    "time_plain_script",
]


# --------------------------------------------------------------------------- timing
_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock_name = "wall"


def set_clock(name: str) -> None:
    """``"wall"`` (default; what a user waits) or ``"cpu"`` (this process's CPU time, all
    threads: robust to other processes sharing the cores, meaningful with one torch thread
    since idle-waiting threads also burn CPU time; never for CUDA, whose work is not on the
    CPU)."""
    global _clock_name
    if name not in _CLOCKS:
        raise ValueError(f"clock must be one of {sorted(_CLOCKS)}; got {name!r}")
    _clock_name = name


def clock_name() -> str:
    return _clock_name


def clock() -> float:
    return _CLOCKS[_clock_name]()


@dataclass
class Timing:
    """Seconds per call over the timed rounds."""

    times: list[float]

    @property
    def median(self) -> float:
        return float(np.median(self.times)) if self.times else math.nan

    @property
    def min(self) -> float:
        return float(np.min(self.times)) if self.times else math.nan


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def _inner_count(fn: Callable[[], Any], min_time: float, device: torch.device | None,
                 max_inner: int = 100) -> int:
    """Call ``fn`` once (a warm-up call) and return how many calls make one measurement last
    at least ``min_time`` (1 for slow calls)."""
    t0 = clock()
    fn()
    _sync(device)
    dt = clock() - t0
    if min_time <= 0 or dt >= min_time:
        return 1
    return int(min(max_inner, max(1, math.ceil(min_time / max(dt, 1e-6)))))


def _measure(fn: Callable[[], Any], inner: int, device: torch.device | None) -> float:
    _sync(device)
    t0 = clock()
    for _ in range(inner):
        fn()
    _sync(device)
    return (clock() - t0) / inner


def time_call(fn: Callable[[], Any], repeats: int = 3, *, warmup: int = 1,
              min_time: float = 0.2, device: torch.device | None = None) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` measurements."""
    return time_alternating({"fn": fn}, repeats, warmup=warmup, min_time=min_time,
                            device=device)["fn"]


def time_alternating(fns: dict[str, Callable[[], Any]], repeats: int = 3, *, warmup: int = 1,
                     min_time: float = 0.2, device: torch.device | None = None,
                     warm: dict[str, float] | None = None) -> dict[str, Timing]:
    """Time several callables in alternation: a, b, c, a, b, c, ... (``repeats`` rounds).

    ``warmup`` untimed calls of each first (the inner-loop count is calibrated on the last).
    ``warm`` maps names already warmed up by the caller to the seconds that warm-up took; those
    get no further warm-up and their inner-loop count comes from that time.
    """
    inner: dict[str, int] = {}
    for name, fn in fns.items():
        if warm is not None and name in warm and warm[name] >= 2 * min_time:
            inner[name] = 1  # slow enough: no further warm-up, one call per measurement
            continue
        if warm is not None and name in warm:  # fast: calibrate on a second call
            inner[name] = _inner_count(fn, min_time, device)
            continue
        for _ in range(max(0, warmup - 1)):
            fn()
            _sync(device)
        inner[name] = _inner_count(fn, min_time, device) if warmup > 0 else 1
    out = {name: Timing([]) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            out[name].times.append(_measure(fn, inner[name], device))
    return out


# --------------------------------------------------------------------------- counting
@dataclass
class ForwardCount:
    """Forward calls of a module and the rows (inputs) they carried."""

    calls: int = 0
    rows: int = 0
    #: rows whose output a gradient reached (explanations: forward and backward)
    grad_rows: int = 0

    def text(self) -> str:
        return f"{self.calls} / {self.rows}"


@contextlib.contextmanager
def count_forwards(model: nn.Module) -> Iterator[ForwardCount]:
    """Count calls of ``model.forward`` (a forward pre-hook on the root module).

    Counts every path into the model: evalkit's wrapper, Quantus' wrapper (which calls the
    module, or a ``Sequential(module, Softmax)`` around it), captum's explainers. The hook is
    removed on exit, also on error.
    """
    from evalkit._hook_handles import HookHandles  # evalkit is imported lazily here, as elsewhere

    count = ForwardCount()

    def rows_of(args: tuple[Any, ...]) -> int:
        if args and hasattr(args[0], "shape") and len(args[0].shape) > 0:
            return int(args[0].shape[0])
        return 0

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        count.calls += 1
        count.rows += rows_of(args)

    def backward_counter(_module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        # rows whose output a gradient actually reaches (explanations), not merely forwards
        # run with autograd recording
        rows = rows_of(args)
        if rows and isinstance(out, torch.Tensor) and out.requires_grad:

            def on_grad(grad: torch.Tensor) -> None:
                count.grad_rows += rows

            out.register_hook(on_grad)

    with HookHandles() as hooks:
        hooks.forward_pre(model, hook)
        hooks.forward(model, backward_counter)
        yield count


class TimedExplainer:
    """Wraps an explain function and accumulates the seconds spent in it (for the share of a
    metric's time spent explaining). Pass it as ``explain_fn``; ``reset()`` before each run."""

    def __init__(self, fn: Callable[..., Any], device: torch.device | None = None) -> None:
        self.fn = fn
        self.device = device
        self.seconds = 0.0
        self.calls = 0
        self.rows = 0  #: inputs explained (rows of the second argument, ``x``)
        #: models explained with, counted as changes of the first argument from call to call
        #: (MPRT's randomised copies: each model's rows need their own explain() calls)
        self.models = 0
        self._last_model: Any = None
        self.__name__ = getattr(fn, "__name__", "explain")
        #: a wrapper computes in the chunks of the function it wraps (evalkit.explain does)
        self.chunks_internally = getattr(fn, "chunks_internally", False)

    def reset(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.rows = 0
        self.models = 0
        self._last_model = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        _sync(self.device)
        t0 = clock()
        out = self.fn(*args, **kwargs)
        _sync(self.device)
        self.seconds += clock() - t0
        self.calls += 1
        # the last model is held, so a new copy cannot reuse its id and pass for it
        model = args[0] if args else kwargs.get("model")
        if model is not self._last_model or self.models == 0:
            self.models += 1
            self._last_model = model
        x = args[1] if len(args) > 1 else kwargs.get("x", kwargs.get("inputs"))
        if hasattr(x, "shape") and len(x.shape) > 0:
            self.rows += int(x.shape[0])
        return out


class PartTimer:
    """Accumulates the seconds spent in one named part of our metric's work (e.g. ROAD's
    imputation), to show how much of a row's time the model-work floor does not cover.
    ``wrap(fn)`` returns ``fn`` timed; the harness resets it and runs ``ours`` once more, untimed,
    after the timed rounds."""

    def __init__(self, name: str, device: torch.device | None = None) -> None:
        self.name = name
        self.device = device
        self.seconds = 0.0
        #: values the part produced (``wrap(fn, count=...)``), e.g. random numbers drawn
        self.values = 0

    def reset(self) -> None:
        self.seconds = 0.0
        self.values = 0

    def wrap(self, fn: Callable[..., Any],
             count: Callable[[Any], int] | None = None) -> Callable[..., Any]:
        """``fn`` timed into :attr:`seconds`; ``count(result)`` added to :attr:`values`."""
        def timed(*args: Any, **kwargs: Any) -> Any:
            _sync(self.device)
            t0 = clock()
            try:
                out = fn(*args, **kwargs)
            finally:
                _sync(self.device)
                self.seconds += clock() - t0
            if count is not None:
                self.values += int(count(out))
            return out

        return timed


# --------------------------------------------------------------------------- floors
def model_floor(w: Workload, grad_rows: int, rows: int,
                batch_size: int) -> Callable[[], None] | None:
    """``grad_rows`` rows of :func:`forward_backward_floor` plus ``rows`` of
    :func:`forward_floor`: the bare model work of a mix of explanations and metric passes."""
    parts = [f for f in (forward_backward_floor(w, grad_rows, batch_size),
                         forward_floor(w, rows, batch_size)) if f is not None]
    if not parts:
        return None

    def run() -> None:
        for part in parts:
            part()

    return run


def _chunk_of(w: Workload, batch_size: int) -> torch.Tensor:
    reps = math.ceil(batch_size / w.n)
    return w.x.repeat(reps, *([1] * (w.x.ndim - 1)))[:batch_size].contiguous()


def forward_floor(w: Workload, rows: int, batch_size: int, *,
                  fill: float | None = None, write: bool = False,
                  draws: int = 0, score: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
                  rank: Callable[[], Any] | None = None,
                  bare_rows: int = 0) -> Callable[[], None] | None:
    """A callable that runs ``rows`` bare forward rows of the workload's input shape in chunks
    of ``batch_size`` under ``torch.inference_mode`` (model in eval mode). None if rows == 0.

    The rows are the workload's inputs, or constant images of value ``fill``: the cost of a
    forward pass can depend on the data (on CPU, max-pooling a constant image is several times
    faster: its branches are always predicted).

    ``write``: before each forward call, write its chunk once into fresh memory (one
    ``torch.where`` of a fixed random half of the values by the chunk's minimum): the least data
    movement of any implementation that builds each perturbed input, the part of a removal
    metric's work that the model floor leaves out (it dominates where the model is tiny).
    ``bare_rows`` (with ``write``): that many rows are the samples' own inputs, which a metric
    forwards as they are (it compares with the unperturbed prediction): the chunks that start
    among them are forwarded unwritten (a chunk that straddles the boundary too: the bound
    then writes fewer rows than any implementation, never more).

    ``draws`` (with ``write``): also draw that many U[0, 1) numbers in all, spread over the
    chunks in proportion to their rows, with one ``torch.Generator`` (``torch.rand``: torch's
    own unkeyed stream, the cheapest on hand): the least work of a metric that draws as many
    random numbers as ours did (keyed draws cost more; the difference is ours); with
    ``bare_rows``, spread over the written chunks.

    ``score(outputs, y)`` (the required-work floor, :class:`RequiredWork`): called on each
    chunk's outputs with the chunk's labels (the workload's, repeated as its inputs are), e.g.
    the target's softmax probability; ``rank()``: called once per call before the chunks, e.g.
    one ranking of the attributions."""
    if rows <= 0:
        return None
    batch_size = max(1, min(batch_size, rows))
    full = _chunk_of(w, batch_size)
    if fill is not None:
        full = torch.full_like(full, fill)
    n_full, rest = divmod(rows, batch_size)
    last = full[:rest] if rest else None
    model = w.model
    # chunks that start among the unperturbed rows go unwritten (and draw nothing: the draws
    # are spread over the written rows)
    n_chunks = n_full + (last is not None)
    n_bare = min(n_chunks, -(-max(0, bare_rows) // batch_size)) if write else 0
    written_rows = rows - min(rows, n_bare * batch_size)
    if draws > 0 and written_rows == 0:
        n_bare, written_rows = 0, rows
    if write:
        gen = torch.Generator(device="cpu").manual_seed(0)
        keep = (torch.rand(full.shape, generator=gen) < 0.5).to(full.device)
        base = full.min()
        per_row = max(0, draws) / written_rows if written_rows else 0.0
        draw_gen = torch.Generator(device=full.device).manual_seed(1)

        def inputs(chunk: torch.Tensor) -> torch.Tensor:
            if per_row:
                torch.rand(round(per_row * chunk.shape[0]), generator=draw_gen,
                           device=chunk.device)
            return torch.where(keep[: chunk.shape[0]], chunk, base)
    else:
        def inputs(chunk: torch.Tensor) -> torch.Tensor:
            return chunk

    if score is None:
        def forward(chunk: torch.Tensor, _y: torch.Tensor | None) -> None:
            model(inputs(chunk))
    else:
        def forward(chunk: torch.Tensor, y: torch.Tensor | None) -> None:
            score(model(inputs(chunk)), y)
    y_full = _labels_of(w, batch_size) if score is not None else None
    y_last = None if y_full is None or last is None else y_full[: last.shape[0]]

    def bare(chunk: torch.Tensor, y: torch.Tensor | None) -> None:
        out = model(chunk)
        if score is not None:
            score(out, y)

    def run() -> None:
        with torch.inference_mode():
            if rank is not None:
                rank()
            for i in range(n_full):
                (bare if i < n_bare else forward)(full, y_full)
            if last is not None:
                (bare if n_full < n_bare else forward)(last, y_last)

    return run


def _labels_of(w: Workload, batch_size: int) -> torch.Tensor:
    """The labels of :func:`_chunk_of`'s rows (the workload's, repeated the same way)."""
    reps = math.ceil(batch_size / w.n)
    return w.y.repeat(reps)[:batch_size].reshape(-1, 1).to(torch.long)


# --------------------------------------------------------------------------- required work
#: how a forward row's outputs (N, classes) are scored, per :attr:`RequiredWork.score`: the
#: library forms that give the value the metric's definition needs; the required-work floor
#: times each on one chunk and uses the cheapest
SCORERS: dict[str, dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    # the target's probability
    "softmax": {
        "torch.softmax + gather": lambda out, y: torch.softmax(out, 1).gather(1, y),
        "1 / sum exp(out - out[y])": lambda out, y: torch.exp(out - out.gather(1, y)).sum(
            1).reciprocal(),
    },
    # the target's log-probability (log-odds)
    "log_softmax": {
        "torch.log_softmax + gather": lambda out, y: torch.log_softmax(out, 1).gather(1, y),
        "out[y] - logsumexp": lambda out, y: out.gather(1, y).squeeze(1) - torch.logsumexp(
            out, 1),
    },
    # whether the prediction (argmax) is the label: accuracy-type quantities need no softmax
    "argmax": {
        "argmax == y": lambda out, y: out.argmax(1).eq(y.squeeze(1)),
    },
}


@dataclass(frozen=True)
class RequiredStep:
    """One step of a metric's required work that runs once per call, besides the floor's model
    work (e.g. a re-explaining metric's model copy and the similarity of its maps):
    ``what`` names it; ``forms``: library calls that each do the whole step for one call on
    the row's data, of which the required-work floor times each and uses the cheapest."""

    what: str
    forms: dict[str, Callable[[], Any]]

    def __post_init__(self) -> None:
        if not self.forms:
            raise ValueError(f"required step {self.what!r} has no forms")


@dataclass(frozen=True)
class RequiredWork:
    """Steps that the definition of a metric requires at a row's settings besides building its
    inputs, so that every correct implementation does them (declared per row by the spec; see
    :mod:`benchmarks.specs.modalities`). The *required-work floor* is the written floor (the
    drawn floor where the row draws random numbers) plus these steps at the cheapest library
    speed on hand (:func:`required_floor`).

    ``ranked``: the values whose order the metric reads, (N, G), one row per sample (the
    attributions of its features, or of its windows); None: the score does not depend on
    their order. ``kth``: the positions (ascending order, 0-based) at which the metric needs
    the order split, e.g. ``(G - k,)`` where only the top-k set matters, a boundary per step
    where a step removes several features; None: the full order. ``score``: how each forward
    row's outputs are scored (a key of :data:`SCORERS`), None where the metric reads its
    outputs as they are (logits). ``per_call``: further steps once per call
    (:class:`RequiredStep`), e.g. for a re-explaining metric (whose floor is ``explain()`` of
    the rows it explains) copying and re-initialising the model and comparing the maps."""

    ranked: torch.Tensor | None = None
    kth: tuple[int, ...] | None = None
    score: str | None = None
    per_call: tuple[RequiredStep, ...] = ()

    def __post_init__(self) -> None:
        if self.score is not None and self.score not in SCORERS:
            raise ValueError(f"score must be one of {sorted(SCORERS)} or None; got "
                             f"{self.score!r}")
        if self.ranked is not None and self.ranked.ndim != 2:
            raise ValueError(f"ranked must be (N, G); got {tuple(self.ranked.shape)}")
        if self.kth is not None:
            if self.ranked is None:
                raise ValueError("kth needs ranked values")
            g = self.ranked.shape[1]
            if not self.kth or list(self.kth) != sorted(set(self.kth)) or not (
                    0 <= self.kth[0] and self.kth[-1] < g):
                raise ValueError(f"kth must be increasing positions in [0, {g}); got {self.kth}")

    @property
    def steps(self) -> bool:
        """Whether there is any step (else the written or drawn floor is the bound)."""
        return self.ranked is not None or self.score is not None or bool(self.per_call)


def ranking_candidates(ranked: torch.Tensor, kth: tuple[int, ...] | None
                       ) -> dict[str, Callable[[], Any]]:
    """The library calls that give what a metric needs of the order of ``ranked`` (N, G) per
    row (see :class:`RequiredWork`): a full sort always does (NumPy's default unstable
    ``argsort``, ``torch.argsort``); a split at ``kth`` also NumPy's ``argpartition`` at those
    positions; the top-k set ``torch.topk`` (unsorted for one split, sorted for nested top
    sets that reach the top)."""
    g = ranked.shape[1]
    out: dict[str, Callable[[], Any]] = {
        "torch.argsort": lambda: torch.argsort(ranked, dim=1)}
    arr = ranked.detach().numpy() if ranked.device.type == "cpu" else None
    if arr is not None:
        out["numpy argsort"] = lambda: np.argsort(arr, axis=1)
    if kth is None:
        return out
    if arr is not None:
        positions = list(kth)
        out["numpy argpartition"] = lambda: np.argpartition(arr, positions, axis=1)
    k = g - kth[0]
    if len(kth) == 1:
        out[f"torch.topk (k={k}, unsorted)"] = lambda: torch.topk(ranked, k, dim=1,
                                                                    sorted=False)
    else:
        out[f"torch.topk (k={k}, sorted)"] = lambda: torch.topk(ranked, k, dim=1, sorted=True)
    return out


def cheapest(candidates: dict[str, Callable[[], Any]], *, trials: int = 5,
             device: torch.device | None = None) -> tuple[str, Callable[[], Any]]:
    """The candidate whose least time over ``trials`` calls (after one warm-up call) is the
    smallest, with its name."""
    best: tuple[float, str] | None = None
    for name, fn in candidates.items():
        fn()
        times = []
        for _ in range(trials):
            _sync(device)
            t0 = clock()
            fn()
            _sync(device)
            times.append(clock() - t0)
        if best is None or min(times) < best[0]:
            best = (min(times), name)
    assert best is not None
    return best[1], candidates[best[1]]


def required_floor(w: Workload, rows: int, batch_size: int, required: RequiredWork, *,
                   draws: int = 0, bare_rows: int = 0) -> tuple[Callable[[], None] | None, str]:
    """The required-work floor of ``rows`` forward rows: the written floor (with ``draws``
    random numbers: the drawn floor) plus, per call, one ranking of ``required.ranked`` by the
    cheapest of :func:`ranking_candidates` and, per chunk, the scoring of its outputs by the
    cheapest of ``SCORERS[required.score]`` (each timed here, on the call's values and one
    chunk's outputs); and the text naming the steps and the calls chosen.

    A lower bound for any implementation: it builds each row as cheaply as the written floor,
    ranks once (a metric that reads the order must compare the values; the library's
    vectorised sorts and selections are the cheapest on hand, a hand-written loop over rows
    is slower) and scores each row with one fused library call."""
    rank_fn = None
    parts = []
    if required.ranked is not None:
        name, rank_fn = cheapest(ranking_candidates(required.ranked, required.kth),
                                 device=required.ranked.device)
        n, g = required.ranked.shape
        what = ("the full order" if required.kth is None else
                f"split at {len(required.kth)} position{'s' if len(required.kth) > 1 else ''}")
        parts.append(f"one ranking per call ({what} of {n} x {g}: {name})")
    score_fn = None
    if required.score is not None and rows > 0:
        chunk = _chunk_of(w, max(1, min(batch_size, rows)))
        with torch.inference_mode():
            out = w.model(chunk)
        y = _labels_of(w, chunk.shape[0]).to(out.device)
        forms = {k: (lambda f=f: f(out, y)) for k, f in SCORERS[required.score].items()}
        name, _ = cheapest(forms, device=out.device)
        score_fn = SCORERS[required.score][name]
        parts.append(f"{required.score} scoring per chunk ({name})")
    if rank_fn is None and score_fn is None and not required.per_call:
        return None, ""
    fn = forward_floor(w, rows, batch_size, write=True, draws=draws, score=score_fn,
                       rank=rank_fn, bare_rows=bare_rows)
    if required.per_call and fn is not None:
        fn, text = with_required_steps(fn, required.per_call, device=w.x.device)
        parts.append(text)
    return fn, "; ".join(parts)


def with_required_steps(base: Callable[[], Any], steps: tuple[RequiredStep, ...], *,
                        device: torch.device | None = None) -> tuple[Callable[[], None], str]:
    """``base`` (a floor) followed by each of ``steps`` in its cheapest form (:func:`cheapest`,
    timed here on the step's own data), and the text naming the steps and the forms chosen:
    the required-work floor of a row whose floor is not the forward floor (a re-explaining
    metric's ``explain()`` floor)."""
    chosen: list[Callable[[], Any]] = []
    parts = []
    for step in steps:
        name, fn = cheapest(step.forms, device=device)
        chosen.append(fn)
        parts.append(f"{step.what} ({name})")

    def run() -> None:
        base()
        for fn in chosen:
            fn()

    return run, "; ".join(parts)


def _embedding_gradient(model: nn.Module, embedding: nn.Module, ids: torch.Tensor,
                        y: torch.Tensor) -> None:
    """The gradient of the ``y`` logits with respect to ``embedding``'s output."""
    captured: list[torch.Tensor] = []

    def keep(_m: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.detach().requires_grad_(True)
        captured.append(out)
        return out

    handle = embedding.register_forward_hook(keep)
    try:
        out = model(ids)
    finally:
        handle.remove()
    torch.autograd.grad(out.gather(1, y[:, None]).sum(), captured[-1])


def forward_backward_floor(w: Workload, rows: int, batch_size: int) -> Callable[[], None] | None:
    """``rows`` forward rows plus the gradient of the predicted-class logit with respect to the
    inputs (``torch.autograd.grad``; token ids: at the workload's embedding layer), in chunks
    of ``batch_size``: the bare cost of a gradient explanation."""
    if rows <= 0:
        return None
    batch_size = max(1, min(batch_size, rows))
    full = _chunk_of(w, batch_size)
    reps = math.ceil(batch_size / w.n)
    y_full = w.y.repeat(reps)[:batch_size]
    n_full, rest = divmod(rows, batch_size)
    model = w.model

    def one(xc: torch.Tensor, yc: torch.Tensor) -> None:
        if w.embedding is not None:  # token ids: the gradient at the embedding layer
            _embedding_gradient(model, w.embedding, xc, yc)
            return
        xg = xc.detach().requires_grad_(True)
        out = model(xg)
        torch.autograd.grad(out.gather(1, yc[:, None]).sum(), xg)

    def run() -> None:
        for _ in range(n_full):
            one(full, y_full)
        if rest:
            one(full[:rest], y_full[:rest])

    return run


# --------------------------------------------------------------------------- agreement
@dataclass
class Agreement:
    """Numeric agreement of ours with Quantus: ``value`` (max abs difference) and/or text."""

    value: float | None = None
    text: str = ""

    def render(self) -> str:
        if self.value is None:
            return self.text or "—"
        v = f"max abs diff {self.value:.2g}"
        return f"{v} ({self.text})" if self.text else v


def max_abs_diff(ours: Any, theirs: Any, *, text: str = "", tol: float | None = None
                 ) -> Agreement:
    """Max |ours - theirs| over finite pairs (shape-checked); NaN positions must coincide.

    With ``tol``, also reports how many samples (rows of axis 0) agree within ``tol``.
    """
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(theirs, dtype=np.float64)
    if a.shape != b.shape:
        return Agreement(None, f"shapes differ: ours {a.shape}, Quantus {b.shape}")
    na, nb = ~np.isfinite(a), ~np.isfinite(b)
    parts = [text] if text else []
    if (na != nb).any():
        parts.append(f"{int((na != nb).sum())} NaN mismatches")
    both = ~(na | nb)
    diff = np.where(both, np.abs(np.where(both, a, 0) - np.where(both, b, 0)), 0.0)
    value = float(diff.max()) if both.any() else math.nan
    if tol is not None and a.ndim >= 1 and value > tol:
        per_row = diff.reshape(a.shape[0], -1).max(1) if a.size else diff
        parts.append(f"{int((per_row <= tol).sum())}/{a.shape[0]} samples within {tol:g}")
    return Agreement(value, "; ".join(parts))


# --------------------------------------------------------------------------- cases
@dataclass
class Context:
    """What a spec's ``build`` gets besides the workload."""

    batch_size: int  #: our runner's rows per forward call for this workload's inputs
    device: torch.device
    quantus: Any = None  #: the imported quantus module, or None (--no-quantus / not installed)
    quick: bool = False
    #: sample counts asked for with ``--n`` (e.g. ``{"W3": 16}``)
    n: dict[str, int] = field(default_factory=dict)

    @property
    def quantus_device(self) -> str:
        return str(self.device)


@dataclass
class Case:
    """One metric on one workload, as built by a spec.

    ``ours()`` runs our metric once and returns what the agreement check compares;
    ``quantus()`` does the same for Quantus (None when Quantus has no equivalent);
    ``agreement(ours_out, quantus_out)`` returns an :class:`Agreement`.
    ``floor``: ``"forward"`` (bare forward of the rows ours issued, at ``ctx.batch_size``),
    ``"forward_backward"`` (the same with an input gradient), ``"model"`` (the rows ours ran
    with autograd recording as forward + input gradient, the others as bare forward: mixed
    work such as a meta-evaluation), None (no model work), or a callable
    ``floor(rows_ours, calls_ours) -> zero-arg callable``.
    ``explainer`` is an optional :class:`TimedExplainer` used by ours, to report the share of
    our time spent explaining.
    ``stats`` is an optional zero-arg callable returning a dict stored in the row's ``extra``
    after the counted warm-up run of ours (e.g. cache statistics of a suite).
    ``part`` is an optional :class:`PartTimer` inside ours (e.g. ROAD's imputation): its
    seconds in one untimed run after the rounds go to ``extra["part_s"]``. ``part_is_floor``
    says that the part is work the metric's definition requires, done by a library at its own
    speed (e.g. SIC's lossless WebP encoding with PIL): floor + part then bounds every
    implementation from below (``extra["part_is_floor"]``; the page calls a floor ratio under
    it out of reach).
    ``quantus_floor(count)`` is, where Quantus forwards other rows than ours (a bug makes it
    compute something else), given Quantus' :class:`ForwardCount`, a zero-arg callable running
    the bare model work of Quantus' rows in Quantus' own chunks; it is timed in the same rounds
    (``extra["quantus_floor_s"]``), so that the table can tell a slower implementation from a
    costlier computation.
    ``reference()`` runs, where one is importable, another library's implementation of the
    metric (``reference_name``, e.g. ``"pytorch-grad-cam 1.5.7"``) on the same inputs and
    settings; it is warmed up under the forward counter after Quantus and timed in the same
    alternating rounds, and ``reference_agreement(ours_out, reference_out)`` compares the
    warm-up outputs. Its numbers go to ``extra``: ``reference``, ``reference_s``,
    ``reference_min_s``, ``reference_fwd`` ([calls, rows]), ``reference_agreement``,
    ``reference_agreement_value``, or ``reference_error``.
    """

    ours: Callable[[], Any]
    quantus: Callable[[], Any] | None = None
    agreement: Callable[[Any, Any], Agreement] | None = None
    floor: str | Callable[[int, int], Callable[[], None] | None] | None = "forward"
    settings: str = ""
    note: str = ""
    explainer: TimedExplainer | None = None
    stats: Callable[[], dict[str, Any]] | None = None
    part: PartTimer | None = None
    part_is_floor: bool = False
    quantus_floor: Callable[[ForwardCount], Callable[[], None] | None] | None = None
    reference: Callable[[], Any] | None = None
    reference_name: str = ""
    reference_agreement: Callable[[Any, Any], Agreement] | None = None
    #: also time the ``"forward"`` floor with each chunk written once before its forward
    #: (:func:`forward_floor` with ``write=True``; the chunks that start among the first N
    #: rows, the samples' own inputs, unwritten), as ``extra["written_floor_s"]``: where the
    #: model is tiny (W4's MLP), what building the perturbed inputs alone costs
    written_floor: bool = False
    #: also time the written floor plus as many random numbers as ours drew in its counted
    #: warm-up run (``part.values``: a part counting the values drawn), drawn with torch's own
    #: generator (:func:`forward_floor` with ``draws``), as ``extra["drawn_floor_s"]``
    drawn_floor: bool = False
    #: steps that the metric's definition requires at these settings besides building the
    #: inputs (:class:`RequiredWork`): with the written floor, the required-work floor is timed
    #: as ``extra["required_floor_s"]`` (the drawn floor's draws included where that is timed),
    #: with ``extra["required_steps"]`` naming the steps and the library calls chosen; with
    #: another floor (a callable: ``explain()`` of the rows ours explained), that floor plus
    #: the ``per_call`` steps (:func:`with_required_steps`)
    required: RequiredWork | None = None


@dataclass
class Result:
    """One row of the table."""

    metric: str
    family: str
    workload: str
    n: int
    settings: str = ""
    ours_s: float = math.nan
    ours_min_s: float = math.nan
    quantus_s: float = math.nan
    quantus_min_s: float = math.nan
    floor_s: float = math.nan
    ours_fwd: ForwardCount | None = None
    quantus_fwd: ForwardCount | None = None
    agreement: str = ""
    agreement_value: float | None = None
    explainer_share: float | None = None
    batch_size: int | None = None
    note: str = ""
    error: str = ""
    quantus_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """Quantus time / our time (> 1: we are faster)."""
        return self.quantus_s / self.ours_s if self.ours_s > 0 else math.nan

    @property
    def floor_ratio(self) -> float:
        """Our time / floor time (1 = at the floor)."""
        return self.ours_s / self.floor_s if self.floor_s > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("ours_fwd", "quantus_fwd")}
        d["ours_fwd"] = None if self.ours_fwd is None else [self.ours_fwd.calls,
                                                            self.ours_fwd.rows]
        d["quantus_fwd"] = None if self.quantus_fwd is None else [self.quantus_fwd.calls,
                                                                  self.quantus_fwd.rows]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        d = dict(d)
        for key in ("ours_fwd", "quantus_fwd"):
            v = d.get(key)
            d[key] = None if v is None else ForwardCount(int(v[0]), int(v[1]))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def _short_error(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    first = msg[0] if msg else ""
    text = f"{type(exc).__name__}: {first}"
    return text if len(text) <= 160 else text[:157] + "..."


def skipped_result(spec: Any, w: Workload, ctx: Context, reason: str) -> Result:
    """The row of a spec that does not run on this workload, with the reason."""
    res = Result(metric=spec.name, family=spec.family, workload=w.name, n=w.n,
                 batch_size=ctx.batch_size, note=f"not run on {w.name}: {reason}")
    res.extra["skipped"] = reason
    return res


def _warm_up(name: str, fn: Callable[[], Any] | None, warm: dict[str, float], res: Result,
             device: torch.device | None) -> Callable[[], Any] | None:
    """Run ``fn`` once, recording its seconds in ``warm[name]``; on failure record the error in
    ``res.extra[name + "_error"]`` and return None (the row is then timed without it)."""
    if fn is None:
        return None
    try:
        t0 = clock()
        fn()
        _sync(device)
        warm[name] = clock() - t0
    except Exception as exc:
        res.extra[f"{name}_error"] = _short_error(exc)
        return None
    return fn


def _warm_up_reference(case: Case, w: Workload, res: Result, warm: dict[str, float],
                       out_ours: Any, device: torch.device | None,
                       verbose: bool) -> Callable[[], Any] | None:
    """The counted warm-up of ``case.reference`` (see :class:`Case`) and its agreement with
    ours; returns the callable to time, or None (no reference, or it failed)."""
    if case.reference is None:
        return None
    res.extra["reference"] = case.reference_name or "reference"
    try:
        t0 = clock()
        with count_forwards(w.model) as count:
            out_ref = case.reference()
        _sync(device)
        warm["reference"] = clock() - t0
    except Exception as exc:
        res.extra["reference_error"] = _short_error(exc)
        if verbose:
            traceback.print_exc()
        return None
    res.extra["reference_fwd"] = [count.calls, count.rows]
    if case.reference_agreement is not None:
        try:
            ag = case.reference_agreement(out_ours, out_ref)
            res.extra["reference_agreement"] = ag.render()
            res.extra["reference_agreement_value"] = ag.value
        except Exception as exc:
            res.extra["reference_agreement"] = f"check failed: {_short_error(exc)}"
    return case.reference


def run_case(spec: Any, w: Workload, ctx: Context, *, repeats: int = 3,
             min_time: float = 0.2, max_case_s: float | None = None,
             verbose: bool = False) -> Result:
    """Run one spec on one workload; errors are recorded in the result, never raised."""
    res = Result(metric=spec.name, family=spec.family, workload=w.name, n=w.n,
                 batch_size=ctx.batch_size)
    n_sub = dict(getattr(spec, "subset", ())).get(w.name)
    prefix = ""
    if n_sub is not None and n_sub < w.n:
        prefix = f"first {n_sub} of {w.n} samples; "
        w = w.head(n_sub)
        res.n = w.n
    try:
        case: Case = spec.build(w, ctx)
    except Exception as exc:  # a spec that cannot even be built
        res.error = f"build failed: {_short_error(exc)}"
        if verbose:
            traceback.print_exc()
        return res
    res.settings, res.note = prefix + case.settings, case.note

    # 1. warm-up runs, counted (the first call of each also pays one-off costs such as
    #    imports and caches; it is not timed for the table)
    warm: dict[str, float] = {}
    try:
        if case.explainer is not None:
            case.explainer.reset()
        t0 = clock()
        with count_forwards(w.model) as c_ours:
            out_ours = case.ours()
        _sync(ctx.device)
        warm["ours"] = clock() - t0
        res.ours_fwd = c_ours
        if case.stats is not None:
            res.extra.update(case.stats())
    except Exception as exc:
        res.error = f"ours failed: {_short_error(exc)}"
        if verbose:
            traceback.print_exc()
        return res

    quantus_fn = case.quantus if ctx.quantus is not None else None
    out_q = None
    if quantus_fn is not None:
        try:
            t0 = clock()
            with count_forwards(w.model) as c_q:
                out_q = quantus_fn()
            _sync(ctx.device)
            warm["quantus"] = clock() - t0
            res.quantus_fwd = c_q
        except Exception as exc:
            res.quantus_error = _short_error(exc)
            quantus_fn = None
            if verbose:
                traceback.print_exc()
    if quantus_fn is not None and case.agreement is not None:
        try:
            ag = case.agreement(out_ours, out_q)
            res.agreement, res.agreement_value = ag.render(), ag.value
        except Exception as exc:
            res.agreement = f"check failed: {_short_error(exc)}"
    elif quantus_fn is None and res.quantus_error:
        res.agreement = "—"
    reference_fn = _warm_up_reference(case, w, res, warm, out_ours, ctx.device, verbose)

    # 2. the floor
    floor_fn = None
    try:
        if case.floor == "forward":
            floor_fn = forward_floor(w, c_ours.rows, ctx.batch_size)
        elif case.floor == "forward_backward":
            floor_fn = forward_backward_floor(w, c_ours.rows, ctx.batch_size)
        elif case.floor == "model":
            floor_fn = model_floor(w, c_ours.grad_rows, c_ours.rows - c_ours.grad_rows,
                                   ctx.batch_size)
        elif callable(case.floor):
            floor_fn = case.floor(c_ours.rows, c_ours.calls)
    except Exception as exc:
        res.extra["floor_error"] = _short_error(exc)
    warm_share: float | None = None
    if case.explainer is not None:  # what the counted warm-up run explained
        res.extra["explained_rows"] = case.explainer.rows
        res.extra["explainer_calls"] = case.explainer.calls
        res.extra["explained_models"] = case.explainer.models
        warm_share = (case.explainer.seconds / warm["ours"]
                      if warm["ours"] >= 2 * min_time > 0 else None)
    # the floors' warm-ups, timed to plan the rounds
    floor_fn = _warm_up("floor", floor_fn, warm, res, ctx.device)
    q_floor_fn = None
    if quantus_fn is not None and case.quantus_floor is not None:
        try:
            q_floor_fn = case.quantus_floor(c_q)
        except Exception as exc:
            res.extra["quantus_floor_error"] = _short_error(exc)
        q_floor_fn = _warm_up("quantus_floor", q_floor_fn, warm, res, ctx.device)

    written_fn = None
    if case.written_floor and case.floor == "forward":
        try:
            written_fn = forward_floor(w, c_ours.rows, ctx.batch_size, write=True,
                                       bare_rows=w.n)
        except Exception as exc:
            res.extra["written_floor_error"] = _short_error(exc)
        written_fn = _warm_up("written_floor", written_fn, warm, res, ctx.device)
    drawn_fn = None
    drawn = case.part.values if case.part is not None else 0
    if case.drawn_floor and case.floor == "forward" and drawn > 0:
        res.extra["drawn_values"] = drawn  # what the counted warm-up run of ours drew
        try:
            drawn_fn = forward_floor(w, c_ours.rows, ctx.batch_size, write=True, draws=drawn,
                                     bare_rows=w.n)
        except Exception as exc:
            res.extra["drawn_floor_error"] = _short_error(exc)
        drawn_fn = _warm_up("drawn_floor", drawn_fn, warm, res, ctx.device)

    required_fn = None
    if case.required is not None and case.required.steps and (
            case.floor == "forward" or (floor_fn is not None and case.required.per_call)):
        try:
            if case.floor == "forward":
                required_fn, steps = required_floor(
                    w, c_ours.rows, ctx.batch_size, case.required,
                    draws=drawn if drawn_fn is not None else 0, bare_rows=w.n)
            else:  # another floor (explain()): that floor and the per-call steps
                assert floor_fn is not None
                required_fn, steps = with_required_steps(floor_fn, case.required.per_call,
                                                         device=ctx.device)
            if required_fn is not None:
                res.extra["required_steps"] = steps
        except Exception as exc:
            res.extra["required_floor_error"] = _short_error(exc)
        required_fn = _warm_up("required_floor", required_fn, warm, res, ctx.device)

    # 3. alternating timed rounds
    fns: dict[str, Callable[[], Any]] = {"ours": case.ours}
    if quantus_fn is not None:
        fns["quantus"] = quantus_fn
    if floor_fn is not None:
        fns["floor"] = floor_fn
    if q_floor_fn is not None:
        fns["quantus_floor"] = q_floor_fn
    if reference_fn is not None:
        fns["reference"] = reference_fn
    if written_fn is not None:
        fns["written_floor"] = written_fn
    if drawn_fn is not None:
        fns["drawn_floor"] = drawn_fn
    if required_fn is not None:
        fns["required_floor"] = required_fn
    rounds = repeats
    if max_case_s is not None:
        per_round = sum(warm.get(k, 0.0) for k in fns)
        rounds = min(repeats, int(max_case_s // max(per_round, 1e-9)))
    res.extra["rounds"] = rounds
    try:
        if rounds > 0:
            timings = time_alternating(fns, rounds, warmup=1, min_time=min_time,
                                       device=ctx.device, warm=warm)
        else:  # one round does not fit the budget: the counted warm-up calls are the timing
            timings = {k: Timing([warm[k]]) for k in fns}
    except Exception as exc:
        res.error = f"timing failed: {_short_error(exc)}"
        return res
    res.ours_s, res.ours_min_s = timings["ours"].median, timings["ours"].min
    if "quantus" in timings:
        res.quantus_s, res.quantus_min_s = timings["quantus"].median, timings["quantus"].min
    if "floor" in timings:
        res.floor_s = timings["floor"].median
    if "quantus_floor" in timings:
        res.extra["quantus_floor_s"] = timings["quantus_floor"].median
    if "reference" in timings:
        res.extra["reference_s"] = timings["reference"].median
        res.extra["reference_min_s"] = timings["reference"].min
    if "written_floor" in timings:
        res.extra["written_floor_s"] = timings["written_floor"].median
    if "drawn_floor" in timings:
        res.extra["drawn_floor_s"] = timings["drawn_floor"].median
    if "required_floor" in timings:
        res.extra["required_floor_s"] = timings["required_floor"].median
    if case.part is not None:  # one more run of ours, untimed, for the part's seconds
        try:
            case.part.reset()
            case.ours()
            res.extra["part"], res.extra["part_s"] = case.part.name, case.part.seconds
            if case.part_is_floor:
                res.extra["part_is_floor"] = True
        except Exception as exc:
            res.extra["part_error"] = _short_error(exc)

    # 4. share of our time spent in the explainer: from the slow warm-up, else one extra run
    if case.explainer is not None and warm_share is not None:
        res.explainer_share = warm_share
    elif case.explainer is not None:
        case.explainer.reset()
        t0 = clock()
        case.ours()
        _sync(ctx.device)
        total = clock() - t0
        res.explainer_share = case.explainer.seconds / total if total > 0 else None
    return res


# --------------------------------------------------------------------------- process conditions
#: the process states a case can be timed in (``python -m benchmarks.run --conditions``): each
#: runs the case in a new process that builds the workload, then
#:
#: * ``fresh``: runs the case (what a short script gets);
#: * ``used``: runs :func:`dirty_process` first, then the case (what a longer session gets).
CONDITIONS = ("fresh", "used")
#: the NumPy arrays :func:`dirty_process` fills and frees, in MiB
DIRTY_ARRAYS_MIB = (1, 8, 24, 64, 200)


def dirty_process(seed: int = 0) -> None:
    """The "used process" step: NumPy work such as a user's session does before an evaluation
    (loading and normalising data, a model-free metric over a data set): fill, transform and
    free float64 arrays of :data:`DIRTY_ARRAYS_MIB` MiB, then collect garbage.

    What it changes is the state of the C allocator, which decides whether a forward pass finds
    its memory in the heap or faults in fresh pages: glibc raises its mmap threshold to the
    largest freed mapped block up to 32 MiB (here the 24 MiB array; the trim threshold follows
    at twice that), the 64 and 200 MiB arrays are mapped and unmapped, and the heap grows. It is
    deterministic (seeded, fixed sizes), so the condition is reproducible.
    """
    import gc

    rng = np.random.default_rng(seed)
    for mib in DIRTY_ARRAYS_MIB:
        a = rng.random(mib * 2**20 // 8)
        b = np.sqrt(a * 2.0 + 1.0)
        float(b.sum())
        del a, b
    gc.collect()


def results_of_json(path: str) -> list[Result]:
    """The rows in a ``--json`` file of :mod:`benchmarks.run` (None seconds back to NaN)."""
    import json

    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return [Result.from_dict({k: (math.nan if v is None and k.endswith("_s") else v)
                              for k, v in d.items()}) for d in data.get("results", [])]


def run_isolated(argv: list[str], condition: str, *, verbose: bool = False) -> list[Result]:
    """Run ``python -m benchmarks.run *argv --condition condition`` in a new process and return
    its rows, each with ``extra["condition"]``; ``argv`` selects the case(s) and settings (it
    must not name ``--out``, ``--json``, ``--update``). A child that fails raises RuntimeError
    with the tail of its stderr (a case that fails inside a working child is an error row, as
    in-process)."""
    import os
    import subprocess
    import sys
    import tempfile

    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}; got {condition!r}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        cmd = [sys.executable, "-m", "benchmarks.run", *argv, "--condition", condition,
               "--out", "-", "--json", out]
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        if verbose and proc.stderr:
            print(proc.stderr, file=sys.stderr, end="")
        if proc.returncode != 0 or not os.path.exists(out):
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {tail}")
        rows = results_of_json(out)
    for r in rows:
        r.extra["condition"] = condition
    return rows


def child_argv(*, repeats: int, device: str, quick: bool, use_quantus: bool,
               n: dict[str, int] | None, min_time: float | None, threads: int | None,
               clock: str, max_case_s: float | None) -> list[str]:
    """The settings of a :func:`benchmarks.run.run_benchmarks` call as command-line arguments,
    for a child running one of its cases."""
    argv = ["--repeats", str(repeats), "--device", device, "--clock", clock]
    argv += ["--quick"] if quick else []
    argv += [] if use_quantus else ["--no-quantus"]
    argv += ["--n", *(f"{k}={v}" for k, v in n.items())] if n else []
    argv += [] if min_time is None else ["--min-time", str(min_time)]
    argv += [] if threads is None else ["--threads", str(threads)]
    argv += [] if max_case_s is None else ["--case-budget", str(max_case_s)]
    return argv


def run_conditions(cases: list[tuple[str, str]], conditions: Sequence[str],
                   settings: dict[str, Any], *, plain_threads: Sequence[int] | None = None,
                   log: Callable[[str], None] | None = None,
                   one_line: Callable[[Result], str] = str) -> tuple[list[Result], str]:
    """Run each ``(workload, spec name)`` case once per condition, each in a new process
    (:func:`run_isolated`) with the run's ``settings`` (:func:`child_argv`'s arguments); the
    plain-process times (``plain_threads``) are taken with the first condition. Returns the
    rows and a description of the conditions for the run's metadata."""
    base = child_argv(**settings)
    rows: list[Result] = []
    for wname, name in cases:
        for i, cond in enumerate(conditions):
            plain = ["--plain", *map(str, plain_threads)] if plain_threads and i == 0 else []
            if log is not None:
                log(f"[{wname}] {name} ({cond} process) ...")
            got = run_isolated([*base, "--workloads", wname, "--metrics", name, *plain], cond)
            rows += got
            if log is not None:
                for r in got:
                    log("    " + one_line(r))
    text = (", ".join(conditions) + " (each case in a new process that builds its workload; "
            "used: benchmarks.harness.dirty_process() before the case)")
    return rows, text


# --------------------------------------------------------------------------- plain processes
@dataclass(frozen=True)
class PlainScript:
    """A script doing a case's work as a user writes it, for wall time in a plain process.

    Run as ``python -m module *args --n N --threads T``; its last stdout line is a JSON record
    whose ``wall_s`` is the seconds of the timed call (as the user measures it)."""

    module: str
    args: tuple[str, ...] = ()
    #: where the case's sample count comes from: ``ctx.n[n_key]``, else ``default_n``
    n_key: str = ""
    default_n: int = 0
    #: extra arguments that make the script run the reference library instead (timed the same
    #: way, when the run compares with it), or None
    reference_args: tuple[str, ...] | None = None

    def argv(self, n: int, threads: int | None) -> list[str]:
        """``threads`` None: torch's default thread count (``--threads 0``)."""
        return ["-m", self.module, *self.args, "--n", str(n), "--threads", str(threads or 0)]


#: spec name -> its plain script. W3: issue 24's script switched to the harness's model, data
#: and IntegratedGradients settings (the same work as the case; without those switches it is
#: the issue's script verbatim, which does other work, see the script's docstring)
PLAIN_SCRIPTS: dict[str, PlainScript] = {
    "MetaEvaluation (W3)": PlainScript(
        "benchmarks.scripts.issue24_w3",
        ("--methods", "harness", "--model", "harness", "--data", "harness"),
        n_key="W3", default_n=64, reference_args=("--library", "metaquantus")),
}


def time_plain_script(script: PlainScript, n: int, threads: int | None,
                      *, timeout: float | None = None) -> dict[str, Any]:
    """Run ``script`` in a new Python process (nothing else in it) and return its record:
    ``wall_s`` (the timed call, wall clock), ``process_wall_s`` (the whole process, imports
    and set-up included), ``threads`` (torch's thread count there) and ``command``."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, *script.argv(n, threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)
    process_wall = time.perf_counter() - t0
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {tail}")
    record = json.loads(lines[-1])
    return {"wall_s": float(record["wall_s"]), "process_wall_s": process_wall,
            "threads": int(record["threads"]),
            "command": "python " + " ".join(cmd[1:])}


def plain_process_times(spec_name: str, ctx: Context,
                        thread_counts: tuple[int | None, ...] = (None, 1)) -> dict[str, Any]:
    """Wall times of the spec's :data:`PLAIN_SCRIPTS` entry in plain processes, one per thread
    count (None: torch's default), as ``extra`` fields: ``plain_wall_s`` and
    ``plain_threads`` keyed ``"default"`` / ``"1"`` ..., ``plain_command``; ``{}`` for a spec
    without a script, ``plain_error`` if a run failed."""
    script = PLAIN_SCRIPTS.get(spec_name)
    if script is None:
        return {}
    n = ctx.n.get(script.n_key, script.default_n)
    if ctx.quick:
        n = min(n, 8)
    out: dict[str, Any] = {"plain_wall_s": {}, "plain_process_wall_s": {}, "plain_threads": {}}
    variants = [("plain", script)]
    if script.reference_args is not None and ctx.quantus is not None:
        variants.append(("plain_reference", dataclasses.replace(
            script, args=(*script.args, *script.reference_args))))
        out.update(plain_reference_wall_s={}, plain_reference_process_wall_s={})
    for prefix, variant in variants:
        for threads in thread_counts:
            key = "default" if threads is None else str(threads)
            try:
                rec = time_plain_script(variant, n, threads)
            except Exception as exc:
                out[f"{prefix}_error"] = _short_error(exc)
                continue
            out[f"{prefix}_wall_s"][key] = rec["wall_s"]
            out[f"{prefix}_process_wall_s"][key] = rec["process_wall_s"]
            if prefix == "plain":
                out["plain_threads"][key] = rec["threads"]
            out[f"{prefix}_command"] = rec["command"].replace(f"--threads {threads or 0}",
                                                              "--threads T")
    return out
