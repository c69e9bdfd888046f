"""Targets travel with evaluate(), the result store and metaeval: a target (and its region,
reference, options) is part of every cell hash, so another target never reads back results
stored under this one, and the same target hashes the same in any process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
import metaeval as me
from evalkit.datasets import make_shapes
from evalkit.evaluate import Evaluation, explain_methods
from evalkit.models import SegmentationTarget, SimilarityTarget, wrap_model
from evalkit.store import canonical, model_fingerprint
from evalkit.zoo import load_shapes_cnn

ROOT = Path(__file__).resolve().parent.parent


def _region() -> torch.Tensor:
    region = torch.zeros(32, 32, dtype=torch.bool)
    region[8:20, 4:30] = True
    return region


#: targets by name, built the same way in this process and in a fresh one
TARGETS = {
    "none": "None",
    "seg_whole": "SegmentationTarget()",
    "seg_mean": "SegmentationTarget(reduction='mean')",
    "seg_predicted": "SegmentationTarget(region='predicted')",
    "seg_region": "SegmentationTarget(region=_region())",
    "sim_refs": "SimilarityTarget()",
    "sim_concept": "SimilarityTarget(torch.arange(1.0, 5.0))",
    "sim_concept2": "SimilarityTarget(torch.arange(2.0, 6.0))",
    "sim_agreement": "SimilarityTarget(torch.arange(1.0, 5.0), agreement=0.5)",
}


def _hashes() -> dict[str, str]:
    """One cell hash per target: the same metric, method, model and data."""
    data = make_shapes(4, seed=0)
    out = {}
    for name, expr in TARGETS.items():
        target = eval(expr)
        ev = Evaluation({"Sparseness": ek.metrics.Sparseness()}, {"Saliency": {}},
                        load_shapes_cnn(), data.x, data.y, target=target)
        out[name] = ev.cell_hashes["Saliency", "Sparseness"]
    return out


def test_each_target_has_its_own_cell_hash():
    hashes = _hashes()
    assert len(set(hashes.values())) == len(hashes), hashes
    assert _hashes() == hashes  # and the same again


def test_cell_hashes_are_the_same_in_another_process():
    script = (
        "import json, torch\n"
        "import tests.test_targets_config as t\n"
        "print(json.dumps(t._hashes()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == _hashes()


def test_a_target_given_to_evaluate_hashes_as_the_same_wrapper():
    data = make_shapes(4, seed=0)
    model = load_shapes_cnn()
    target = SimilarityTarget(torch.arange(1.0, 5.0))
    a = Evaluation([ek.metrics.Sparseness()], ["Saliency"], model, data.x, data.y,
                   target=target)
    b = Evaluation([ek.metrics.Sparseness()], ["Saliency"], wrap_model(model, target=target),
                   data.x, data.y)
    assert a.cell_hashes == b.cell_hashes
    with pytest.raises(ValueError, match="no model"):
        Evaluation([ek.metrics.Sparseness()], {"A": np.ones((4, 1, 32, 32))}, None, data.x,
                   data.y, target=target)


def test_explain_methods_explains_the_same_target():
    data = make_shapes(4, seed=0)
    emb = _embedder()
    concept = torch.linspace(0.1, 1.0, 64)
    maps = explain_methods({"Saliency": {}}, emb, data.x, None,
                           target=SimilarityTarget(concept))["Saliency"]
    direct = ek.explain(wrap_model(emb, target=SimilarityTarget(concept)), data.x, None,
                        method="Saliency")
    np.testing.assert_allclose(maps, direct, rtol=1e-6)


def test_output_fn_is_part_of_the_model_fingerprint():
    model = load_shapes_cnn()
    plain = model_fingerprint(wrap_model(model))
    assert "output_fn" not in plain  # unchanged for wrappers without one

    def first_two(out):
        return out[:, :2]

    def last_two(out):
        return out[:, 2:]

    fa = model_fingerprint(wrap_model(model, output_fn=first_two))
    fb = model_fingerprint(wrap_model(model, output_fn=last_two))
    assert fa != fb and fa != plain


def _embedder() -> nn.Module:
    cnn = load_shapes_cnn()
    return nn.Sequential(cnn.features, cnn.gap, nn.Flatten()).eval()


def test_the_store_never_reuses_another_targets_results(tmp_path):
    data = make_shapes(6, seed=1)
    x = torch.from_numpy(data.x)
    emb = _embedder()
    with torch.no_grad():
        e = emb(x)
    metrics = {"PF": ek.metrics.PixelFlipping(features_in_step=128)}
    methods = {"Saliency": {}}
    store = tmp_path / "r.sqlite"

    def run(target):
        return ek.evaluate(metrics, methods, emb, x, None, target=target, store=store,
                           progress=False)

    first = run(SimilarityTarget(e[0]))
    assert not first.resumed
    recorded = first.config()["model_fingerprint"]["target"]  # the target is in the config
    assert recorded["__object__"].endswith("SimilarityTarget")
    assert recorded["state"]["reference"] == canonical(e[0])
    again = run(SimilarityTarget(e[0].clone()))  # an equal reference: read back
    assert sum(again.resumed.values()) == 1
    np.testing.assert_array_equal(first.to_frame()["score"], again.to_frame()["score"])
    other = run(SimilarityTarget(e[1]))  # another reference: computed, different scores
    assert not other.resumed
    assert not np.allclose(other.to_frame()["score"], first.to_frame()["score"])
    # per-sample references are data: another set of references is another chunk key
    r1 = ek.evaluate(metrics, methods, emb, x, e.roll(1, 0), target=SimilarityTarget(),
                     store=store, progress=False)
    r2 = ek.evaluate(metrics, methods, emb, x, e.roll(2, 0), target=SimilarityTarget(),
                     store=store, progress=False)
    assert not r1.resumed and not r2.resumed
    r1b = ek.evaluate(metrics, methods, emb, x, e.roll(1, 0), target=SimilarityTarget(),
                      store=store, progress=False)
    assert sum(r1b.resumed.values()) == 1


# ============================================================================ metaeval
class TinySeg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _small_suite():
    return [me.ModelPerturbationTest("Resilience", std=0.001),
            me.InputPerturbationTest("Resilience", noise=0.001)]


def test_metaeval_with_a_segmentation_target():
    model = TinySeg().eval()
    x = torch.rand(3, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    meta = me.MetaEvaluation(_small_suite(), {"Saliency": {}, "Random": {}}, iterations=1,
                             nr_perturbations=2, model_target=SegmentationTarget())
    res = meta({"Sparseness": ek.metrics.Sparseness(),
                "PF": ek.metrics.PixelFlipping(features_in_step=20)}, model, x)
    frame = res.scores()
    assert np.isfinite(frame.select_dtypes("number").to_numpy()).any()
    assert (res.blocks[0].y_pred == -1).all()  # per-pixel predictions: not recorded as classes
    # without a target the classifier check names the fix
    with pytest.raises(ValueError, match="model_target"):
        me.MetaEvaluation(_small_suite(), ["Saliency"], iterations=1, nr_perturbations=1)(
            ek.metrics.Sparseness(), model, x)


def test_metaeval_with_similarity_targets_and_its_config():
    emb = _embedder()
    data = make_shapes(4, seed=2)
    x = torch.from_numpy(data.x)
    with torch.no_grad():
        e = emb(x)
    concept = SimilarityTarget(e[0])
    meta = me.MetaEvaluation(_small_suite(), {"Saliency": {}, "Random": {}}, iterations=1,
                             nr_perturbations=2, model_target=concept)
    res = meta(ek.metrics.Sparseness(), emb, x)
    assert res.scores().shape[0] >= 1
    # per-sample references: target="label" with the references as y
    per_sample = me.MetaEvaluation(_small_suite(), {"Saliency": {}}, iterations=1,
                                   nr_perturbations=1, model_target=SimilarityTarget(),
                                   target="label")
    per_sample(ek.metrics.PixelFlipping(features_in_step=256), emb, x, e.roll(1, 0))
    # the target is part of the configuration (and of a benchmark's stored keys); runs
    # without one keep their earlier configuration
    plain = me.MetaEvaluation(_small_suite(), ["Saliency"], iterations=1, nr_perturbations=1)
    assert "model_target" not in plain.config()
    other = me.MetaEvaluation(_small_suite(), {"Saliency": {}, "Random": {}}, iterations=1,
                              nr_perturbations=2, model_target=SimilarityTarget(e[1]))
    assert meta.config() != other.config()
    same = me.MetaEvaluation(_small_suite(), {"Saliency": {}, "Random": {}}, iterations=1,
                             nr_perturbations=2, model_target=SimilarityTarget(e[0].clone()))
    assert meta.config() == same.config()


def test_metaeval_benchmark_keys_follow_the_target(tmp_path):
    emb = _embedder()
    data = make_shapes(4, seed=2)
    x = torch.from_numpy(data.x)
    with torch.no_grad():
        e = emb(x)
    store = tmp_path / "meta.sqlite"

    def bench(reference):
        meta = me.MetaEvaluation(_small_suite(), {"Saliency": {}}, iterations=1,
                                 nr_perturbations=1, model_target=SimilarityTarget(reference))
        b = me.MetaEvaluationBenchmark(meta, {"complexity": {"Sparseness":
                                                             ek.metrics.Sparseness()}},
                                       {"shapes": {"x": x, "models": {"emb": emb}}},
                                       store=store)
        b.run()
        return b.stats_

    first = bench(e[0])
    assert first["units_loaded"] == 0
    assert bench(e[0].clone())["units_computed"] == 0
    assert bench(e[1])["units_loaded"] == 0


def test_results_config_records_the_modality():
    """The configuration says which modality the features were grouped and removed by,
    whether inferred from the inputs or given."""
    data = make_shapes(4, seed=2)
    x = torch.from_numpy(data.x)
    metrics = {"PF": ek.metrics.PixelFlipping(features_in_step=256)}
    model = _embedder()
    inferred = ek.evaluate(metrics, {"Saliency": {}}, model, x, None,
                           target=SimilarityTarget(torch.ones(model(x[:1]).shape[1])),
                           progress=False)
    assert inferred.config()["modality"].startswith("ImageModality(")
    table = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    mlp = nn.Sequential(nn.Linear(5, 3)).eval()
    given = ek.evaluate({"PF": ek.metrics.PixelFlipping(features_in_step=1)}, {"Saliency": {}},
                        mlp, table, torch.zeros(6, dtype=torch.int64), modality="tabular",
                        progress=False)
    assert given.config()["modality"].startswith("TabularModality(")
    json.loads(given.to_json())  # still JSON-serialisable
