"""The crash-safe store: hashing, SQLite round trips, resuming, and a run killed mid-way."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from _evaluate_helpers import (
    CALL_LOG,
    DIE_AT,
    TESTS_DIR,
    _CountingSparseness,
    problem,
    read_log,
    resumable_run,
)

import evalkit as ek
from evalkit.store import (
    ResultStore,
    UnitRecord,
    canonical,
    data_fingerprint,
    fingerprint,
    model_fingerprint,
)

pytestmark = pytest.mark.filterwarnings("ignore::evalkit.EvalkitWarning")


def _same_results(a: ek.Results, b: ek.Results) -> None:
    assert a.methods == b.methods and a.metrics == b.metrics
    for cell in a.scores:
        np.testing.assert_array_equal(a.scores[cell], b.scores[cell], err_msg=str(cell))
        assert a.nan_reasons.get(cell, {}) == b.nan_reasons.get(cell, {})
    assert a.config_hashes == b.config_hashes


# ---------------------------------------------------------------------- hashing
class TestCanonical:
    def test_stable_descriptions(self):
        def f(v):
            return v + 1

        assert canonical(f) == canonical(f)
        assert canonical(f)["__callable__"].endswith("f")
        part = canonical(functools.partial(f, 2))
        assert part["__partial__"] == canonical(f) and part["args"] == [2]
        arr = np.arange(6.0).reshape(2, 3)
        c = canonical(arr)
        assert c["__array__"] == [2, 3] and c["dtype"] == "float64"
        assert canonical(torch.as_tensor(arr)) != c  # dtype and origin differ in the text
        assert canonical(float("nan")) == "nan"
        assert canonical({"b": 1, "a": (1, 2)}) == {"a": [1, 2], "b": 1}

        class Thing:
            def __init__(self):
                self.k = 3
                self._hidden = object()

        assert canonical(Thing()) == {"__object__": canonical(Thing)["__class__"],
                                      "state": {"k": 3}}
        assert " at 0x" not in str(canonical(object()))

    def test_fingerprints_tell_values_apart(self):
        a = np.zeros((3, 4), dtype=np.float32)
        b = a.copy()
        b[1, 2] = 1e-6
        assert data_fingerprint(a) == data_fingerprint(a.copy())
        assert data_fingerprint(a) != data_fingerprint(b)
        assert data_fingerprint(a, None) != data_fingerprint(a)
        assert fingerprint({"x": 1}) != fingerprint({"x": 2})
        assert fingerprint(ek.metrics.PixelFlipping(features_in_step=4)) != \
            fingerprint(ek.metrics.PixelFlipping(features_in_step=8))

    def test_model_fingerprint_follows_the_weights(self):
        m1, m2 = problem(1)[0], problem(1)[0]
        assert model_fingerprint(m1) == model_fingerprint(m2)
        with torch.no_grad():
            m2.features.conv1.conv.weight[0, 0, 0, 0] += 1e-4
        assert model_fingerprint(m1) != model_fingerprint(m2)
        w = ek.wrap_model(m1, softmax=True)
        assert model_fingerprint(w) != model_fingerprint(ek.wrap_model(m1, softmax=False))
        assert model_fingerprint(w)["model"] == model_fingerprint(m1)

    def test_same_hash_in_another_process(self):
        code = ("import sys; sys.path.insert(0, sys.argv[1]); import _evaluate_helpers as h; "
                "from evalkit.evaluate import Evaluation; s = h.resumable_setup(); "
                "[s.pop(k) for k in ('progress',)]; "
                "print(sorted(Evaluation(**s).cell_hashes.values()))")
        out = subprocess.run([sys.executable, "-c", code, str(TESTS_DIR)], capture_output=True,
                             text=True, check=True, timeout=300)
        from _evaluate_helpers import resumable_setup

        from evalkit.evaluate import Evaluation

        setup = resumable_setup()
        setup.pop("progress")
        assert out.stdout.strip() == str(sorted(Evaluation(**setup).cell_hashes.values()))


# ---------------------------------------------------------------------- the SQLite file
class TestResultStore:
    def test_round_trip(self, tmp_path):
        rec = UnitRecord(key="k1", cell_hash="c", method="m", metric="q", start=4, stop=7,
                         scores=np.array([0.5, np.nan, 2.0]), nan_reasons={1: "empty mask"},
                         curves=np.arange(6.0).reshape(3, 2), curve_x=np.array([0.0, 1.0]),
                         seed=123, elapsed=0.25)
        with ResultStore(tmp_path / "s.sqlite") as store:
            store.put(rec)
            store.put_cell("c", "m", "q", {"metric": {"params": {"a": 1}}})
            assert len(store) == 1
            assert store.present(["k1", "k2"]) == {"k1"}
        with ResultStore(tmp_path / "s.sqlite") as store:  # reopened: committed
            got = store.get("k1")
            assert store.get("missing") is None
            assert store.keys("c") == ["k1"]
            assert store.cell_config("c") == {"metric": {"params": {"a": 1}}}
        np.testing.assert_array_equal(got.scores, rec.scores)
        np.testing.assert_array_equal(got.curves, rec.curves)
        assert got.nan_reasons == {1: "empty mask"} and got.seed == 123
        assert (got.start, got.stop, got.elapsed) == (4, 7, 0.25)

    def test_rejects_bad_rows_and_paths(self, tmp_path):
        with ResultStore(tmp_path / "s.sqlite") as store:
            bad = UnitRecord(key="k", cell_hash="c", method="m", metric="q", start=0, stop=3,
                             scores=np.zeros(2))
            with pytest.raises(ValueError, match="expected"):
                store.put(bad)
        with pytest.raises(ValueError, match="directory"):
            ResultStore(tmp_path)

    def test_many_keys(self, tmp_path):
        with ResultStore(tmp_path / "s.sqlite") as store:
            for i in range(3):
                store.put(UnitRecord(key=f"k{i}", cell_hash="c", method="m", metric="q",
                                     start=i, stop=i + 1, scores=np.zeros(1)))
            keys = [f"k{i}" for i in range(1200)]  # more than one SQL statement's parameters
            assert store.present(keys) == {"k0", "k1", "k2"}


# ---------------------------------------------------------------------- resuming
@pytest.fixture()
def call_log(tmp_path, monkeypatch):
    path = tmp_path / "calls.log"
    monkeypatch.setenv(CALL_LOG, str(path))
    monkeypatch.delenv(DIE_AT, raising=False)
    return path


def test_rerun_reads_everything_back(tmp_path, call_log):
    store = str(tmp_path / "r.sqlite")
    first = resumable_run(store)
    assert len(read_log(call_log)) == 8  # 2 methods x 4 chunks
    assert not first.resumed
    again = resumable_run(store)
    assert len(read_log(call_log)) == 8  # nothing recomputed
    _same_results(first, again)
    assert sum(again.resumed.values()) == 16
    assert again.timings == pytest.approx(first.timings)
    np.testing.assert_array_equal(again.curves.get(("Saliency", "count"), np.zeros(0)),
                                  first.curves.get(("Saliency", "count"), np.zeros(0)))


def test_resume_after_kill(tmp_path, call_log):
    """A run killed in the middle of a unit keeps every unit finished before; the resumed run
    computes only the rest and gives the results of an uninterrupted run."""
    store = tmp_path / "killed.sqlite"
    env = {**os.environ, CALL_LOG: str(call_log), DIE_AT: "3",
           "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent)])}
    code = ("import sys, torch; torch.set_num_threads(1); import _evaluate_helpers as h; "
            "h.resumable_run(sys.argv[1])")
    proc = subprocess.run([sys.executable, "-c", code, str(store)], env=env, timeout=300,
                          capture_output=True, text=True)
    assert proc.returncode == 17, proc.stderr[-2000:]
    # Saliency's chunks 0:4 and 4:8 finished (both metrics), then chunk 8:12 died in "count"
    assert len(read_log(call_log)) == 3
    with ResultStore(store) as db:
        assert len(db) == 4

    call_log.unlink()
    resumed = resumable_run(str(store))
    calls = read_log(call_log)
    assert len(calls) == 6  # 8 counting units in all, 2 were stored before the kill
    assert sum(resumed.resumed.values()) == 4

    call_log.unlink()
    reference = resumable_run(None)
    assert len(read_log(call_log)) == 8
    _same_results(resumed, reference)


def test_kill_while_explaining_loses_only_that_chunk(tmp_path):
    """Rows are explained chunk by chunk: a run that dies while explaining its third chunk keeps
    the first two chunks' units, and the resumed run explains only the rows still to score."""
    model, x, y, s = problem(16, seed=3)
    seen: list[int] = []

    def explain_fn(model, x, y, method, die_at=None, **kw):
        seen.append(int(x.shape[0]))
        if len(seen) == die_at:
            raise KeyboardInterrupt  # what a kill looks like from inside the run
        return ek.explain(model, x, y, method=method, **kw)

    store = str(tmp_path / "explain.sqlite")
    metrics = {"rank": ek.metrics.RelevanceRankAccuracy(), "sparse": ek.metrics.Sparseness()}

    def run(die_at=None):
        return ek.evaluate(metrics, {"Saliency": {"die_at": die_at}}, model, x, y, s,
                           explain_fn=explain_fn, chunk_size=4,
                           store=store, progress=False)

    with pytest.raises(KeyboardInterrupt):
        run(die_at=3)
    assert seen == [4, 4, 4]
    with ResultStore(store) as db:
        assert len(db) == 4  # 2 metrics x the 2 chunks explained before the kill
    seen.clear()
    resumed = run(die_at=3)  # the same configuration; now the third call is chunk 12:16
    assert seen == [4, 4]  # chunks 8:12 and 12:16 only
    assert sum(resumed.resumed.values()) == 4


def test_changed_parameter_recomputes_only_that_metric(tmp_path, call_log):
    model, x, y, _s = problem(8, seed=4)
    store = str(tmp_path / "p.sqlite")

    class _Fixed(_CountingSparseness):
        tag = "fixed"

    class _Varied(_CountingSparseness):
        tag = "varied"

    def run(normalise):
        a, b = _Fixed(), _Varied(normalise=normalise)
        return ek.evaluate({"fixed": a, "varied": b}, {"Saliency": {}}, model, x, y,
                           chunk_size=4, store=store, progress=False)

    r1 = run(True)
    assert len(read_log(call_log)) == 4
    call_log.unlink()
    r2 = run(False)
    assert sorted(read_log(call_log)) == ["varied 4", "varied 4"]
    np.testing.assert_array_equal(r1["Saliency", "fixed"], r2["Saliency", "fixed"])
    assert r1.config_hashes["Saliency", "varied"] != r2.config_hashes["Saliency", "varied"]
    # a changed model recomputes everything
    call_log.unlink()
    with torch.no_grad():
        model.fc.bias.add_(0.01)
    run(False)
    assert len(read_log(call_log)) == 4


def test_extended_data_keeps_finished_chunks(tmp_path, call_log):
    model, x, y, _s = problem(12, seed=4)
    store = str(tmp_path / "e.sqlite")

    def run(n):
        return ek.evaluate({"count": _CountingSparseness()}, {"Saliency": {}}, model, x[:n],
                           y[:n], chunk_size=4, store=store, progress=False)

    small = run(8)
    assert len(read_log(call_log)) == 2
    big = run(12)
    assert len(read_log(call_log)) == 3  # only the new chunk 8:12
    np.testing.assert_array_equal(big["Saliency", "count"][:8], small["Saliency", "count"])


def test_errors_are_not_stored(tmp_path):
    model, x, y, _s = problem(4)
    store = str(tmp_path / "err.sqlite")
    a = ek.explain(model, x, y, method="Saliency")
    for _ in range(2):
        r = ek.evaluate({"MaxSens": ek.metrics.MaxSensitivity(nr_samples=2)}, {"arr": a}, model,
                        x, y, store=store, progress=False)
        assert ("arr", "MaxSens") in r.errors and not r.resumed
    with ResultStore(store) as db:
        assert len(db) == 0


def test_store_object_is_accepted(tmp_path, call_log):
    with ResultStore(tmp_path / "o.sqlite") as db:
        model, x, y, _s = problem(4)
        ek.evaluate({"count": _CountingSparseness()}, {"Saliency": {}}, model, x, y, store=db,
                    progress=False)
        r = ek.evaluate({"count": _CountingSparseness()}, {"Saliency": {}}, model, x, y,
                        store=db, progress=False)
        assert r.store == str(db.path) and sum(r.resumed.values()) == 1
    with pytest.raises(TypeError, match="store"):
        ek.evaluate({"count": _CountingSparseness()}, {"Saliency": {}}, model, x, y, store=3,
                    progress=False)


def test_units_can_be_run_by_another_executor(tmp_path, call_log):
    """What a distributed executor does (issue 11): take the plan, explain each method for the
    rows of its units, compute the units in any order (here reversed), commit them to the
    store, assemble. evaluate() on the same store then finds every unit done."""
    from _evaluate_helpers import resumable_setup

    from evalkit.evaluate import Evaluation

    setup = resumable_setup()
    setup.pop("progress")
    ev = Evaluation(**setup)
    units = ev.plan()
    assert len(units) == 16 and len({u.key for u in units}) == 16
    attributions = {m: ev.explain(m) for m in ev.methods}
    store = tmp_path / "x.sqlite"
    with ResultStore(store) as db:
        records = []
        for unit in reversed(units):
            rec = ev.compute_unit(unit, attributions[unit.method])
            db.put(rec)
            records.append(rec)
    assembled = ev.assemble(records)
    assert len(read_log(call_log)) == 8
    again = resumable_run(str(store))
    assert len(read_log(call_log)) == 8 and sum(again.resumed.values()) == 16
    _same_results(assembled, again)
    # explaining only some rows gives those rows (NaN elsewhere)
    part = ev.explain("Saliency", torch.arange(4, 8))
    np.testing.assert_allclose(part[4:8].cpu().numpy(), attributions["Saliency"][4:8].cpu().numpy(),
                               rtol=1e-6)
    assert torch.isnan(part[:4]).all()
