"""Tests of the batched forward runner (`evalkit.runner.ForwardRunner`)."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from torch import nn

from evalkit.models import OutputIndex, wrap_model
from evalkit.runner import ForwardRunner

N_CLASSES = 4


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 8 * 8, N_CLASSES)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x))).flatten(1)))


def make_net() -> TinyNet:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = TinyNet()
        with torch.no_grad():
            net.bn.running_mean.uniform_(-0.5, 0.5)
            net.bn.running_var.uniform_(0.5, 2.0)
    net.train()  # dropout active unless the runner enters evaluation mode
    net.fc.eval()  # mixed flags
    return net


N, T = 5, 4
X = torch.randn(N, 3, 8, 8, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1, 2, 3, 1])


def build_factory(x: torch.Tensor, t_steps: int):
    """Row (i, t) is sample i scaled by (t + 1) / T with t * 0.1 added."""

    def build(index):
        i, t = index
        scale = ((t + 1).to(x.dtype) / t_steps).reshape(-1, 1, 1, 1)
        return x[i] * scale + 0.1 * t.to(x.dtype).reshape(-1, 1, 1, 1)

    return build


def direct_loop(wrapper, x, y, t_steps):
    out = torch.empty(x.shape[0], t_steps)
    for i in range(x.shape[0]):
        for t in range(t_steps):
            row = x[i : i + 1] * ((t + 1) / t_steps) + 0.1 * t
            out[i, t] = wrapper.score(row, y[i : i + 1])[0]
    return out


def test_run_equals_direct_loop():
    w = wrap_model(make_net())
    ref = direct_loop(w, X, Y, T)
    res = ForwardRunner(w).run(build_factory(X, T), (N, T), y=Y, row_shape=(3, 8, 8))
    assert res.shape == (N, T)
    assert torch.allclose(res, ref, atol=1e-5)


@pytest.mark.parametrize("bs", [1, 3, 7, None])
def test_batch_size_invariance(bs):
    w = wrap_model(make_net())
    full = ForwardRunner(w, batch_size=N * T).run(build_factory(X, T), (N, T), y=Y,
                                                  row_shape=(3, 8, 8))
    res = ForwardRunner(w, batch_size=bs).run(build_factory(X, T), (N, T), y=Y,
                                              row_shape=(3, 8, 8))
    assert torch.allclose(res, full, atol=1e-6)
    # a chunk size from the model's own default and from a memory budget
    res2 = ForwardRunner(w.with_options(batch_size=bs)).run(build_factory(X, T), (N, T), y=Y,
                                                            row_shape=(3, 8, 8))
    assert torch.allclose(res2, full, atol=1e-6)


def test_memory_budget_chunking():
    w = wrap_model(make_net())
    row_bytes = 3 * 8 * 8 * 4
    runner = ForwardRunner(w, memory_budget=row_bytes * 3)
    assert runner.chunk_size((3, 8, 8), torch.float32) == 3
    assert ForwardRunner(w, memory_budget=f"{row_bytes * 2}B").chunk_size((3, 8, 8),
                                                                          torch.float32) == 2
    w.counter.reset()
    res = runner.run(build_factory(X, T), (N, T), y=Y, row_shape=(3, 8, 8))
    assert w.counter.calls == math.ceil(N * T / 3) and w.counter.rows == N * T
    full = ForwardRunner(w, batch_size=100).run(build_factory(X, T), (N, T), y=Y,
                                                row_shape=(3, 8, 8))
    assert torch.allclose(res, full, atol=1e-6)
    with pytest.raises(ValueError, match="memory_budget"):
        ForwardRunner(w, memory_budget="plenty").chunk_size((3,), torch.float32)
    with pytest.raises(ValueError, match="batch_size"):
        ForwardRunner(w, batch_size=-2).chunk_size((3,), torch.float32)


@pytest.mark.parametrize("where", ["runner", "predict"])
def test_batch_size_zero_rejected(where):
    w = wrap_model(make_net())
    with pytest.raises(ValueError, match="batch_size"):
        if where == "runner":
            ForwardRunner(w, batch_size=0).chunk_size((3,), torch.float32)
        else:
            w.predict(X, batch_size=0)


@pytest.mark.parametrize("bs", [1, 3, 7, 20])
def test_forward_counter_and_each_row_once(bs):
    w = wrap_model(make_net())
    w.counter.reset()
    seen = []

    def build(index):
        assert all(i.dtype == torch.int64 for i in index)
        assert len(index) == 2 and index[0].shape == index[1].shape
        seen.extend(zip(index[0].tolist(), index[1].tolist(), strict=True))
        return build_factory(X, T)(index)

    ForwardRunner(w, batch_size=bs).run(build, (N, T), y=Y, row_shape=(3, 8, 8))
    assert w.counter.rows == N * T
    assert w.counter.calls == math.ceil(N * T / bs)
    # every row exactly once, in sample-major order
    assert seen == [(i, t) for i in range(N) for t in range(T)]


def test_three_axis_work_shape():
    w = wrap_model(make_net())
    d = 2

    def build(index):
        i, t, k = index
        return X[i] + (t * 10 + k).to(X.dtype).reshape(-1, 1, 1, 1) * 0.01

    res = ForwardRunner(w, batch_size=4).run(build, (N, 3, d), y=Y, row_shape=(3, 8, 8))
    assert res.shape == (N, 3, d)
    for i, t, k in ((0, 0, 0), (4, 2, 1), (2, 1, 0)):
        want = w.score(X[i : i + 1] + (t * 10 + k) * 0.01, Y[i : i + 1])[0]
        assert torch.allclose(res[i, t, k], want, atol=1e-5)


def test_custom_reduce_with_extra_axes():
    w = wrap_model(make_net())

    def reduce(outputs, index):
        return outputs[:, :2] * (index[1] + 1).to(outputs.dtype).unsqueeze(1)

    res = ForwardRunner(w, batch_size=3).run(build_factory(X, T), (N, T), reduce=reduce,
                                             row_shape=(3, 8, 8))
    assert res.shape == (N, T, 2)
    for i in range(N):
        for t in range(T):
            logits = w.predict(X[i : i + 1] * ((t + 1) / T) + 0.1 * t)[0, :2]
            assert torch.allclose(res[i, t], logits * (t + 1), atol=1e-5)


def test_softmax_and_target_of_wrapper_are_used():
    net = make_net()
    w = wrap_model(net, softmax=True, target=OutputIndex(2))
    res = ForwardRunner(w).run(build_factory(X, T), (N, T), row_shape=(3, 8, 8))  # no y needed
    probs = wrap_model(net, softmax=True).predict(X * (1 / T))
    assert torch.allclose(res[:, 0], probs[:, 2], atol=1e-6)
    assert bool(((res > 0) & (res < 1)).all())


def test_cache_returns_without_forward_calls():
    w = wrap_model(make_net())
    cache: dict = {}
    runner = ForwardRunner(w, cache=cache, batch_size=6)
    first = runner.run(build_factory(X, T), (N, T), y=Y, row_shape=(3, 8, 8), cache_key="k")
    assert "k" in cache
    w.counter.reset()
    calls = []
    again = runner.run(lambda idx: calls.append(1), (N, T), y=Y, row_shape=(3, 8, 8),
                       cache_key="k")
    assert w.counter.calls == 0 and not calls
    assert torch.equal(again, first)
    other = runner.run(build_factory(X, T), (N, T), y=Y, row_shape=(3, 8, 8), cache_key="k2")
    assert w.counter.calls > 0 and torch.equal(other, first)
    # no cache_key: no caching
    n_keys = len(cache)
    runner.run(build_factory(X, T), (N, T), y=Y, row_shape=(3, 8, 8))
    assert len(cache) == n_keys


def test_progress_flag():
    w = wrap_model(make_net())
    quiet = ForwardRunner(w, batch_size=3).run(build_factory(X, T), (N, T), y=Y,
                                               row_shape=(3, 8, 8))
    loud = ForwardRunner(w, batch_size=3, progress=True).run(
        build_factory(X, T), (N, T), y=Y, row_shape=(3, 8, 8), desc="testing")
    assert torch.equal(quiet, loud)


def test_evaluation_mode_inference_and_flags_restored():
    net = make_net()
    flags = {n: m.training for n, m in net.named_modules()}
    w = wrap_model(net)
    seen = []

    def build(index):
        seen.append((net.training, net.drop.training, torch.is_inference_mode_enabled()))
        return build_factory(X, T)(index)

    a = ForwardRunner(w, batch_size=7).run(build, (N, T), y=Y, row_shape=(3, 8, 8))
    b = ForwardRunner(w, batch_size=7).run(build, (N, T), y=Y, row_shape=(3, 8, 8))
    assert torch.equal(a, b)  # dropout is off: deterministic
    assert all(s == (False, False, True) for s in seen)
    assert {n: m.training for n, m in net.named_modules()} == flags
    assert not a.requires_grad

    def failing(index):
        raise RuntimeError("builder failed")

    with pytest.raises(RuntimeError, match="builder failed"):
        ForwardRunner(w).run(failing, (N, T), y=Y, row_shape=(3, 8, 8))
    assert {n: m.training for n, m in net.named_modules()} == flags


def test_outputs_helper():
    w = wrap_model(make_net())
    for bs in (1, 2, None):
        runner = ForwardRunner(w, batch_size=bs)
        scores = runner.outputs(X, y=Y)
        assert torch.allclose(scores, w.score(X, Y), atol=1e-6)
        logits = runner.outputs(X.numpy(), reduce=lambda out, idx: out)
        assert logits.shape == (N, N_CLASSES)
        assert torch.allclose(logits, w.predict(X), atol=1e-6)


def test_empty_work():
    w = wrap_model(make_net())
    w.counter.reset()
    res = ForwardRunner(w).run(build_factory(X, T), (0, T), y=Y, row_shape=(3, 8, 8))
    assert res.shape == (0, T) and w.counter.calls == 0


def test_default_reduce_needs_labels_for_class_target():
    w = wrap_model(make_net())
    with pytest.raises(ValueError, match="class labels"):
        ForwardRunner(w).run(build_factory(X, T), (N, T), row_shape=(3, 8, 8))


def test_numpy_callable_model():
    import numpy as np

    wmat = np.random.default_rng(0).normal(size=(3 * 8 * 8, N_CLASSES)).astype(np.float32)
    w = wrap_model(lambda b: b.reshape(len(b), -1) @ wmat)
    res = ForwardRunner(w, batch_size=3).run(build_factory(X, T), (N, T), y=Y,
                                             row_shape=(3, 8, 8))
    ref = direct_loop(w, X, Y, T)
    assert torch.allclose(res, ref, atol=1e-4)


# ---------------------------------------------------------------- the default CPU chunk rule
W1_ROW, W2_ROW = (3, 28, 28), (3, 224, 224)  # the benchmark workloads' inputs


def test_default_chunks_for_the_benchmark_shapes():
    from evalkit._batching import DEFAULT_MEMORY_BUDGET, MAX_AUTO_BATCH, resolve_batch_size

    w = wrap_model(make_net())
    # CPU: 2 MiB of input per chunk (issue 18: 4 MiB chunks re-faulted their pages)
    assert DEFAULT_MEMORY_BUDGET["cpu"] == 2 * 2**20 and MAX_AUTO_BATCH["cpu"] == 512
    assert ForwardRunner(w).chunk_size(W1_ROW, torch.float32) == 222
    assert ForwardRunner(w).chunk_size(W2_ROW, torch.float32) == 3
    assert ForwardRunner(w).chunk_size((64,), torch.float32) == 512  # row cap (256-byte rows)
    # rows under 256 bytes (a table's): 128 KiB of input per chunk, at most 4096 rows
    assert ForwardRunner(w).chunk_size((30,), torch.float32) == 128 * 2**10 // 120 == 1092
    assert ForwardRunner(w).chunk_size((10,), torch.float32) == 3276
    assert ForwardRunner(w).chunk_size((2,), torch.float32) == 4096
    assert ForwardRunner(w, memory_budget="4KiB").chunk_size((10,), torch.float32) == 102
    assert resolve_batch_size(None, 4, device_type="cuda") == 8192
    assert ForwardRunner(w).chunk_size((3, 512, 512), torch.float32) == 1  # never 0
    # CUDA: unchanged, 256 MiB and 8192 rows
    assert resolve_batch_size(None, 3 * 28 * 28 * 4, device_type="cuda") == 8192
    assert resolve_batch_size(None, 3 * 224 * 224 * 4, device_type="cuda") == 445
    # an explicit budget or batch size wins
    assert ForwardRunner(w, memory_budget="4MiB").chunk_size(W1_ROW, torch.float32) == 445
    assert ForwardRunner(w, batch_size=1000).chunk_size(W1_ROW, torch.float32) == 1000


def test_keep_cpu_heap_respects_a_user_malloc_configuration(monkeypatch):
    from evalkit import _batching

    monkeypatch.setattr(_batching, "_cpu_heap_state", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert _batching.keep_cpu_heap() is False
    assert _batching._cpu_heap_state is False  # decided once per process
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    assert _batching.keep_cpu_heap() is False  # cached
    monkeypatch.setattr(_batching, "_cpu_heap_state", None)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072")
    assert _batching.keep_cpu_heap() is False
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setattr(_batching, "_cpu_heap_state", None)
    monkeypatch.setenv("EVALKIT_KEEP_HEAP", "0")  # the user's opt-out
    assert _batching.keep_cpu_heap() is False


_FAULTS_CHILD = """
import resource, torch
from benchmarks.workloads import BlackBoxModel, seeded_model, smooth_images
from evalkit import _batching
from evalkit.models import wrap_model
from evalkit.runner import ForwardRunner
torch.set_num_threads(1)
model = seeded_model(lambda: BlackBoxModel(3, 7), smooth_images(8, 3, 28, seed=2), seed=0)
runner = ForwardRunner(wrap_model(model))
rows = runner.chunk_size((3, 28, 28), torch.float32)
x, y = smooth_images(rows, 3, 28, seed=1), torch.zeros(rows, dtype=torch.int64)
for _ in range(8):  # the heap grows to its steady size over the first five or so
    runner.outputs(x, y=y)
faults = []
for _ in range(5):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    runner.outputs(x, y=y)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(rows, _batching._cpu_heap_state, sorted(faults)[2])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_default_cpu_chunks_do_not_refault_pages_in_a_fresh_process():
    """Issue 18: in a fresh process glibc gave each W1 chunk's pages back to the OS and the next
    chunk faulted them in again (about 50 faults per row at any chunk size); with the runner's
    heap settings a chunk of the default size reuses the heap."""
    import ctypes
    import os
    import subprocess
    from pathlib import Path

    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except AttributeError:
        pytest.skip("not glibc")
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env["PYTHONPATH"] = str(root)
    out = subprocess.run([sys.executable, "-c", _FAULTS_CHILD], cwd=root, env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    rows, kept, faults = int(out[0]), out[1], float(out[2])
    assert rows == 222 and kept == "True"
    # the median chunk: one chunk's activations span about 30 MiB (7,500 pages), which
    # faulted in again on every chunk before (8,000-12,000 faults)
    assert faults < 100, faults


@pytest.mark.parametrize("bs", [1, 3, 4, 7, 100])
def test_run_concat_chunks_across_sources(bs):
    """Several row sources run in one chunked pass: chunks fill up across a source's end
    (ceil(total / bs) calls), every row once, in order, each source's builder given its own
    row ids; the values are those of separate runs."""
    w = wrap_model(make_net())
    flat_build = build_factory(X, T)
    seen: list[tuple[str, list[int]]] = []

    def perturbed(m):
        seen.append(("perturbed", m.tolist()))
        return flat_build((m // T, m % T))

    def own(m):
        seen.append(("own", m.tolist()))
        return X.index_select(0, m)

    y_rows = torch.cat([Y, Y.repeat_interleave(T)])
    w.counter.reset()
    got = ForwardRunner(w, batch_size=bs).run_concat([(N, own), (N * T, perturbed)], y=y_rows,
                                                     row_shape=(3, 8, 8))
    total = N + N * T
    assert got.shape == (total,)
    assert w.counter.calls == math.ceil(total / bs) and w.counter.rows == total
    assert [r for name, rows in seen if name == "own" for r in rows] == list(range(N))
    assert [r for name, rows in seen if name == "perturbed" for r in rows] == list(range(N * T))
    own_ref = ForwardRunner(w, batch_size=bs).outputs(X, y=Y)
    rows_ref = ForwardRunner(w, batch_size=bs).run(flat_build, (N, T), y=Y, row_shape=(3, 8, 8))
    assert torch.allclose(got[:N], own_ref, atol=1e-6)
    assert torch.allclose(got[N:], rows_ref.reshape(-1), atol=1e-6)
    # a source given as a tensor of its rows: the same values as a builder of them
    as_tensor = ForwardRunner(w, batch_size=bs).run_concat([(N, X), (N * T, perturbed)],
                                                           y=y_rows, row_shape=(3, 8, 8))
    assert torch.equal(as_tensor, got)
    # empty sources are skipped; no rows at all: no call
    w.counter.reset()
    none = ForwardRunner(w).run_concat([(0, own), (0, perturbed)], y=Y, row_shape=(3, 8, 8))
    assert none.shape == (0,) and w.counter.calls == 0
