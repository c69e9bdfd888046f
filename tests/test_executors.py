"""Executors: the in-process default and a real local Ray cluster (two worker processes).

The Ray tests share one cluster for the module (started by a held RayExecutor, so the
executor's own start-up and shut-down path is what they use) and skip when Ray is not
installed. Every distributed run is compared bit for bit with the in-process run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _evaluate_helpers import problem

import evalkit as ek
import metaeval as me
from evalkit.executors import Executor, LocalExecutor, RayExecutor, as_executor
from evalkit.metrics.complexity import Sparseness
from evalkit.store import ResultStore

# ~45 s on a quiet 2-core machine, most of it the cluster's start-up and its workers' imports
TESTS_DIR = Path(__file__).resolve().parent
KILL_MARKER = "EVALKIT_TEST_KILL_MARKER"


# ---------------------------------------------------------------------- helpers (workers import
# this module by name: the cluster's PYTHONPATH holds the tests folder)
class _KillOnce(Sparseness):
    """Sparseness whose first call on a Ray worker kills that worker's process.

    Only worker processes see ``$EVALKIT_TEST_KILL_MARKER`` (set in the cluster's runtime
    environment); the first call creates the marker file atomically and dies, every later call
    (the retry included) computes normally. The in-process reference run never dies.
    """

    def _evaluate(self, batch):
        marker = os.environ.get(KILL_MARKER)
        if marker:
            try:
                with open(marker, "x", encoding="utf-8") as f:
                    f.write(str(os.getpid()))
            except FileExistsError:
                pass
            else:
                os._exit(17)
        return super()._evaluate(batch)


class _Boom(Sparseness):
    """Fails on a batch whose first input sums to ``bad_sum`` (a parameter, so the workers'
    copies know it too)."""

    def __init__(self, bad_sum: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.bad_sum = bad_sum

    def _evaluate(self, batch):
        if float(batch.x[0].sum()) == self.bad_sum:
            raise RuntimeError("boom in the second chunk")
        return super()._evaluate(batch)


def _raise_value_error(shared, k):
    raise ValueError(f"job {k} of {shared} failed")


def _square(shared, k):
    return shared * k * k


def _explode():
    raise ModuleNotFoundError("no module named 'only_on_the_driver'")


class _Unloadable:
    """Pickles on the driver; unpickling it (on a worker) fails like a missing module."""

    def __reduce__(self):
        return _explode, ()


def _assert_same(a: ek.Results, b: ek.Results) -> None:
    """Scores, NaN reasons, curves and errors equal bit for bit."""
    assert a.methods == b.methods and a.metrics == b.metrics
    assert a.config_hashes == b.config_hashes and a.seeds == b.seeds
    for cell in a.scores:
        np.testing.assert_array_equal(a.scores[cell], b.scores[cell], err_msg=str(cell))
        assert a.nan_reasons[cell] == b.nan_reasons[cell], cell
    assert a.curves.keys() == b.curves.keys()
    for cell in a.curves:
        np.testing.assert_array_equal(a.curves[cell], b.curves[cell], err_msg=str(cell))
        np.testing.assert_array_equal(a.curve_x[cell], b.curve_x[cell], err_msg=str(cell))
    assert a.errors.keys() == b.errors.keys()
    for cell, err in a.errors.items():
        other = b.errors[cell]
        assert (err.type, err.message, err.samples) == (other.type, other.message, other.samples)


@pytest.fixture(scope="module")
def data():
    return problem(12, seed=4)


def _setup(data, **extra):
    model, x, y, s = data
    metrics = {
        "count": Sparseness(),
        "rank": ek.metrics.RelevanceRankAccuracy(),
        "pf": ek.metrics.PixelFlipping(features_in_step=128),
        "maxsens": ek.metrics.MaxSensitivity(nr_samples=2),
    }
    metrics.update(extra.pop("metrics", {}))
    methods = {"Saliency": {"reduce_channels": "abs_sum"}, "Random": {}, "GradCAM": {}}
    return {"metrics": metrics, "xai_methods": methods, "model": model, "x": x, "y": y, "s": s,
            "chunk_size": 4, "seed": 7, "progress": False, **extra}


@pytest.fixture(scope="module")
def reference(data):
    return ek.evaluate(**_setup(data))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster with two worker processes for the whole module, started and shut
    down by a held RayExecutor."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("another Ray session is active in this process")
    marker = tmp_path_factory.mktemp("ray") / "killed"
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent)]),
           KILL_MARKER: str(marker), "OMP_NUM_THREADS": "1"}
    ex = RayExecutor(num_workers=2, init_kwargs={
        "runtime_env": {"env_vars": env}, "log_to_driver": False,
        "object_store_memory": 80 * 2**20})
    with ex:
        assert ray.is_initialized()
        assert ray.cluster_resources()["CPU"] == 2
        yield {"executor": ex, "marker": marker}
    assert not ray.is_initialized()  # the executor that started the cluster stopped it


# ---------------------------------------------------------------------- no cluster needed
def test_as_executor_and_arguments():
    assert isinstance(as_executor(None), LocalExecutor)
    assert isinstance(as_executor("local"), LocalExecutor)
    assert isinstance(as_executor("RAY"), RayExecutor)
    ex = RayExecutor(num_workers=3)
    assert as_executor(ex) is ex and "num_workers=3" in repr(ex)
    with pytest.raises(ValueError, match="Unknown executor"):
        as_executor("dask")
    with pytest.raises(TypeError, match="executor"):
        as_executor(3)
    for bad in ({"num_workers": 0}, {"num_cpus_per_worker": 0}, {"num_gpus_per_worker": -1},
                {"max_retries": -1}, {"explain": "sample"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RayExecutor(**bad)
    with pytest.raises(TypeError, match="address"):
        RayExecutor(address=6379)


def test_local_executor_is_the_default(data, reference):
    again = ek.evaluate(**_setup(data), executor="local")
    _assert_same(reference, again)
    assert list(LocalExecutor().imap_unordered(_square, 2, [(1,), (3,)])) == [(0, 2), (1, 18)]


class _Backwards(Executor):
    """An executor that supplies only how units run (the driver does the rest): each method is
    explained once on every row, its units run last chunk first, one forward cache per chunk."""

    def __init__(self):
        self.seen: list[int] = []

    def run_units(self, evaluation, pending, sink):
        from evalkit.cache import forward_cache

        for method, units in pending.items():
            a = evaluation.explain(method)
            sink.explained(method, 0.0)
            by_chunk = {}
            for u in units:
                by_chunk.setdefault((u.start, u.stop), []).append(u)
            for group in reversed(list(by_chunk.values())):
                with forward_cache():
                    for u in group:
                        self.seen.append(u.start)
                        try:
                            sink.finished(evaluation.compute_unit(u, a))
                        except Exception as exc:
                            sink.failed(u, type(exc).__name__, str(exc))

    def imap_unordered(self, fn, shared, items, **kwargs):
        return LocalExecutor().imap_unordered(fn, shared, items, **kwargs)


def test_an_executor_supplies_only_how_units_run(data, reference, tmp_path):
    """The driver (Executor.run_evaluation) owns the store, the plan, resuming, assembling and
    warnings: an executor that runs the units in another order gives the same results bit
    for bit, fills the store, and is not asked for stored units."""
    store = tmp_path / "backwards.sqlite"
    ex = _Backwards()
    got = ek.evaluate(**_setup(data), executor=ex, store=store)
    _assert_same(reference, got)
    assert ex.seen[:4] == [8, 8, 8, 8]  # the last chunk first
    with ResultStore(store) as db:
        assert len(db) == 3 * 4 * 3
    again = _Backwards()
    resumed = ek.evaluate(**_setup(data), executor=again, store=store)
    assert again.seen == [] and sum(resumed.resumed.values()) == 3 * 4 * 3
    _assert_same(reference, resumed)


def test_a_cells_error_is_its_first_failing_chunk_whatever_the_order(data):
    """Failures reported last chunk first (as a distributed executor may) keep the error of
    the first failing chunk, as the in-process run does; a unit reported twice counts once."""
    _model, x, _y, _s = data
    bad = {float(torch.as_tensor(x[i], dtype=torch.float32).sum()) for i in (4, 8)}

    class _BoomTwice(Sparseness):
        def _evaluate(self, batch):
            if float(batch.x[0].sum()) in bad:
                raise RuntimeError(f"boom at {float(batch.x[0].sum())}")
            return super()._evaluate(batch)

    setup = _setup(data, metrics={"boom": _BoomTwice()})
    with pytest.warns(ek.EvalkitWarning, match="cells failed"):
        expected = ek.evaluate(**setup)
    with pytest.warns(ek.EvalkitWarning, match="cells failed"):
        got = ek.evaluate(**setup, executor=_Backwards())
    assert expected.errors[("Saliency", "boom")].samples == (4, 8)
    _assert_same(expected, got)

    from evalkit.executors import UnitSink, WorkUnit

    class _Bar:
        n = 0

        def update(self, k):
            self.n += k

    sink = UnitSink(None, _Bar())
    late, early = (WorkUnit("m", "k", 8, 12, "b", "h"), WorkUnit("m", "k", 4, 8, "a", "h"))
    sink.failed(late, "RuntimeError", "late")
    sink.failed(early, "ValueError", "early")
    sink.failed(early, "TypeError", "again")  # reported twice: ignored
    assert sink.errors[("m", "k")].message == "early"
    assert sink.errors[("m", "k")].samples == (4, 8) and sink.bar.n == 2
    assert sink.done(late) and sink.cell_failed(late)


def test_missing_ray_is_a_clear_error(monkeypatch, data):
    if "ray" in sys.modules and getattr(sys.modules["ray"], "is_initialized", lambda: False)():
        pytest.skip("Ray is running in this process")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"xai-evalkit\[ray\]"):
        ek.evaluate(**_setup(data), executor="ray")


def test_compute_unit_takes_the_units_rows(data):
    from evalkit.evaluate import Evaluation

    setup = _setup(data)
    setup.pop("progress")
    ev = Evaluation(**setup)
    unit = next(u for u in ev.plan() if u.start == 4 and u.metric == "count")
    a = ev.explain(unit.method)
    full = ev.compute_unit(unit, a)
    part = ev.compute_unit(unit, a[4:8].clone())
    np.testing.assert_array_equal(full.scores, part.scores)
    with pytest.raises(ValueError, match="attributions"):
        ev.compute_unit(unit, a[:3])


# ---------------------------------------------------------------------- Ray
def test_ray_equals_in_process_bit_for_bit(cluster, data, reference, tmp_path):
    ex = cluster["executor"]
    store = tmp_path / "ray.sqlite"
    got = ek.evaluate(**_setup(data), executor=ex, store=store)
    _assert_same(reference, got)
    n_units = 3 * 4 * 3  # methods x metrics x chunks
    assert ex.stats_["units"] == n_units and ex.stats_["payload_puts"] == 1
    # an explanation per method, a task per (method, chunk)
    assert ex.stats_["tasks"] - ex.stats_["retries"] == 3 + 3 * 3
    assert got.explain_timings.keys() == reference.explain_timings.keys()
    with ResultStore(store) as db:
        assert len(db) == n_units
    # the in-process executor finds every unit in the store the workers' results went to
    resumed = ek.evaluate(**_setup(data), store=store)
    assert sum(resumed.resumed.values()) == n_units
    _assert_same(reference, resumed)


def test_ray_resumes_from_a_store(cluster, data, reference, tmp_path):
    """Units stored by in-process runs are read back; the workers compute only the rest."""
    store = tmp_path / "resume.sqlite"
    setup = _setup(data)
    part = {k: setup["metrics"][k] for k in ("count", "rank")}
    ek.evaluate(**{**setup, "metrics": part}, store=store)
    ek.evaluate(**{**setup, "x": setup["x"][:8], "y": setup["y"][:8], "s": setup["s"][:8],
                   "metrics": {"pf": setup["metrics"]["pf"]}}, store=store)
    ex = RayExecutor()
    got = ek.evaluate(**{**setup, "progress": True}, executor=ex, store=store)
    _assert_same(reference, got)
    # count, rank: every chunk stored; pf: the first two chunks stored
    assert got.resumed[("Saliency", "count")] == 3 and got.resumed[("Saliency", "pf")] == 2
    # maxsens everywhere, pf on the last chunk
    assert ex.stats_["units"] - ex.stats_["duplicates_skipped"] == 3 * (3 + 1)


def test_ray_errors_and_chunk_explanations(cluster, data, tmp_path):
    """Failing cells are reported as in process (same chunk, type, message); explain="chunk"
    explains inside each chunk's task and gives the same scores."""
    _model, x, _y, _s = data
    bad = float(torch.as_tensor(x[4], dtype=torch.float32).sum())
    setup = _setup(data, metrics={"boom": _Boom(bad_sum=bad)})
    setup["xai_methods"] = {**setup["xai_methods"], "GroundTruth": {}}
    setup["s"] = None  # GroundTruth without masks: the method fails to explain
    setup["metrics"].pop("rank")
    with pytest.warns(ek.EvalkitWarning, match="cells failed"):
        expected = ek.evaluate(**setup)
    assert expected.errors[("Saliency", "boom")].samples == (4, 8)
    assert ("GroundTruth", "count") in expected.errors
    with pytest.warns(ek.EvalkitWarning, match="cells failed"):
        got = ek.evaluate(**setup, executor=RayExecutor())
    _assert_same(expected, got)
    ex = RayExecutor(explain="chunk")
    with pytest.warns(ek.EvalkitWarning, match="cells failed"):
        chunked = ek.evaluate(**setup, executor=ex)
    # no explain tasks: a task per (method, chunk)
    assert ex.stats_["tasks"] - ex.stats_["retries"] == 4 * 3
    assert chunked.errors.keys() == expected.errors.keys()
    for cell in expected.scores:  # smaller explain batches: equal up to rounding
        np.testing.assert_allclose(chunked.scores[cell], expected.scores[cell], rtol=1e-5,
                                   atol=1e-7, err_msg=str(cell))


def test_ray_imap_and_cluster_checks(cluster):
    ex = RayExecutor()
    got = dict(ex.imap_unordered(_square, 3, [(k,) for k in range(5)]))
    assert got == {k: 3 * k * k for k in range(5)}
    with pytest.raises(ValueError, match="job 1 of 2 failed") as info:
        list(ex.imap_unordered(_raise_value_error, 2, [(1,)]))
    assert "Raised on a Ray worker" in "".join(getattr(info.value, "__notes__", []))
    with pytest.raises(RuntimeError, match=r"could not load.*only_on_the_driver"):
        list(ex.imap_unordered(_square, _Unloadable(), [(1,)]))
    with pytest.raises(ValueError, match="no GPUs"):
        list(RayExecutor(num_gpus_per_worker=1).imap_unordered(_square, 1, [(1,)]))


def test_metaeval_benchmark_on_ray(cluster, data, tmp_path):
    model, x, y, s = data
    run = me.MetaEvaluation(
        [t for t in me.default_suite() if t.space == "Input"] + [me.default_suite()[0]],
        {"Saliency": {}, "Random": {}}, iterations=1, nr_perturbations=2, seed=3)
    metrics = {"Complexity": {"Sparseness": Sparseness()},
               "Localisation": {"RRA": ek.metrics.RelevanceRankAccuracy()}}
    datasets = {"shapes": {"x": x, "y": y, "s": s, "models": {"cnn": model}}}
    local = me.MetaEvaluationBenchmark(run, metrics, datasets).run()
    path = tmp_path / "meta.sqlite"
    bench = me.MetaEvaluationBenchmark(run, metrics, datasets, store=path, executor="ray")
    got = bench.run()
    n_units = 1 + len(run.tests) * 2
    assert bench.stats_["units_computed"] == n_units
    pd.testing.assert_frame_equal(local.to_frame(), got.to_frame(), check_exact=True)
    pd.testing.assert_frame_equal(local.summary(), got.summary(), check_exact=True)
    for name in ("Sparseness", "RRA"):
        a, b = local.blocks[0].metrics[name], got.blocks[0].metrics[name]
        np.testing.assert_array_equal(a.q_star, b.q_star)
        for test in a.q_hat:
            np.testing.assert_array_equal(a.q_hat[test], b.q_hat[test])
    again = me.MetaEvaluationBenchmark(run, metrics, datasets, store=path,
                                       executor=RayExecutor())
    again.run()
    assert again.stats_["units_loaded"] == n_units and again.executor.stats_["tasks"] == 0


def test_ray_worker_killed_mid_run(cluster, data, tmp_path):
    """The first call of `kill` kills its worker in the middle of a chunk's units: the chunk
    is run again (units that had arrived are skipped), the results equal the in-process run,
    and the store holds each unit once."""
    marker = cluster["marker"]
    assert not marker.exists()
    setup = _setup(data, metrics={"kill": _KillOnce()})
    expected = ek.evaluate(**setup)  # in process: no marker variable, nothing dies
    ex = RayExecutor(max_retries=2)  # reuses the running cluster, does not stop it
    store = tmp_path / "killed.sqlite"
    got = ek.evaluate(**setup, executor=ex, store=store)
    assert marker.exists()  # a worker did die
    assert int(marker.read_text()) != os.getpid()
    assert ex.stats_["retries"] >= 1  # (Ray may lose a worker of its own, too)
    _assert_same(expected, got)
    n_units = 3 * 5 * 3
    assert ex.stats_["units"] - ex.stats_["duplicates_skipped"] == n_units
    with ResultStore(store) as db:
        keys = db.keys()
        assert len(keys) == len(set(keys)) == n_units
    # rerun on the same store: nothing is sent to the cluster
    again = ek.evaluate(**setup, executor=ex, store=store)
    assert ex.stats_["tasks"] == 0 and sum(again.resumed.values()) == n_units
    _assert_same(expected, again)
