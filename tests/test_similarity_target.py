"""SimilarityTarget: cosine similarity of an embedding to a concept vector or to per-sample
references, by hand; its gradients' signs; predictions that agree within a tolerance; the
metric families and evaluate() on the shipped ShapesCNN's features as the embedding; and
pytorch-grad-cam's tutorial similarity target as an oracle on a torchvision ResNet-18."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit.datasets import make_shapes
from evalkit.models import SimilarityTarget, wrap_model
from evalkit.zoo import load_shapes_cnn


# ============================================================================ known answers
def test_cosine_of_given_vectors():
    out = torch.tensor([[1.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    concept = SimilarityTarget(torch.tensor([1.0, 1.0]))
    got = concept(out, None)
    expected = [1 / math.sqrt(2), 7 / (5 * math.sqrt(2)), 0.0]  # a zero embedding scores 0
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    # y is ignored with a concept
    assert torch.equal(concept(out, torch.tensor([0, 1, 2])), got)
    per_sample = SimilarityTarget()
    refs = torch.tensor([[0.0, 1.0], [4.0, 3.0], [1.0, 0.0]])
    np.testing.assert_allclose(per_sample(out, refs).numpy(), [0.0, 24 / 25, 0.0], atol=1e-7)
    # embeddings with more axes are flattened; (1, D) concepts are one vector
    out4 = out.reshape(3, 2, 1, 1)
    np.testing.assert_allclose(SimilarityTarget(torch.tensor([[1.0, 1.0]]))(out4, None).numpy(),
                               expected, rtol=1e-6)


def test_gradient_signs():
    """d cos(x, r) / dx on an identity embedding: for x = (1, 1), r = (1, 0) the cosine grows
    with x0 and shrinks with x1 (x1^2/|x|^3 and -x0 x1/|x|^3); for x = (1, 0), r = (0, 1) only x1
    matters (+1)."""
    net = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    refs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.as_tensor(ek.explain(wrap_model(net, target=SimilarityTarget()), x, refs,
                                   method="Gradient"))
    r = 2 ** -1.5
    np.testing.assert_allclose(g.numpy(), [[r, -r], [0.0, 1.0]], atol=1e-6)
    # the same with a concept: the sign flips with the reference
    g2 = torch.as_tensor(ek.explain(
        wrap_model(net, target=SimilarityTarget(torch.tensor([0.0, -1.0]))), x[:1], None,
        method="Gradient"))
    assert g2[0, 0] > 0 and g2[0, 1] < 0  # cos = -x1/|x|: d/dx0 = x0 x1/|x|^3 > 0


def test_predictions_agree_within_the_tolerance():
    t = SimilarityTarget(torch.tensor([1.0, 0.0]), agreement=0.9)
    out = torch.tensor([[2.0, 0.0], [1.0, 1.0], [float("nan"), 0.0]])
    p = t.predict(out)
    np.testing.assert_allclose(p[:2].numpy(), [[1, 0], [1 / math.sqrt(2), 1 / math.sqrt(2)]],
                               rtol=1e-6)
    small_turn = torch.tensor([[math.cos(0.3), math.sin(0.3)], [1.0, 1.0], [1.0, 0.0]])
    # cos 0.3 = 0.955 >= 0.9 agrees; a NaN prediction agrees with nothing
    assert t.agree(p, t.predict(small_turn)).tolist() == [True, True, False]
    assert t.agree(p, t.predict(torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0]]))
                   ).tolist() == [False, True, False]
    pair = t.agree_pairwise(p)
    assert pair.tolist() == [[True, False, False], [False, True, False], [False, False, False]]
    # hits: against the concept, or against y's embeddings (references, earlier predictions)
    assert t.hits(out, None)[:2].tolist() == [1.0, 0.0]
    assert math.isnan(t.hits(out, None)[2].item())
    assert t.hits(out, torch.tensor([[1.0, 1.0]] * 3))[:2].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="Consistency"):
        t.codes(p)
    with pytest.raises(ValueError, match="agreement"):
        SimilarityTarget(agreement=1.5)


def test_checks_name_the_problem():
    with pytest.raises(ValueError, match=r"D = 3 values.*D = 2"):
        SimilarityTarget(torch.ones(3)).check(None, (2,))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        SimilarityTarget().check(torch.ones(2, 3), (4,))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        SimilarityTarget().check(torch.ones(2, 4, dtype=torch.long), (4,))
    with pytest.raises(ValueError, match="needs per-sample"):
        SimilarityTarget().check(None, (4,))
    with pytest.raises(ValueError, match="norm 0"):
        SimilarityTarget().check(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), (2,))
    with pytest.raises(ValueError, match="NaN"):
        SimilarityTarget().check(torch.tensor([[1.0, float("nan")]]), (2,))
    with pytest.raises(ValueError, match="go in `y`"):
        SimilarityTarget(torch.ones(3, 4))
    with pytest.raises(ValueError, match="norm 0"):
        SimilarityTarget(torch.zeros(4))
    with pytest.raises(ValueError, match="one value per sample"):
        SimilarityTarget(torch.ones(1)).check(None, ())
    with pytest.raises(ValueError, match="D = 3"):
        SimilarityTarget()(torch.ones(2, 4), torch.ones(2, 3))


# ============================================================================ end to end
def embedder() -> nn.Module:
    """The shipped ShapesCNN up to its pooled features: 64-d embeddings of 32 x 32 shapes."""
    cnn = load_shapes_cnn()
    return nn.Sequential(cnn.features, cnn.gap, nn.Flatten()).eval()


@pytest.fixture(scope="module")
def shapes():
    data = make_shapes(12, seed=5)
    return torch.from_numpy(data.x), torch.from_numpy(data.y), torch.from_numpy(data.masks)


def test_no_softmax_over_embeddings(shapes):
    x = shapes[0][:2]
    w = wrap_model(embedder(), target=SimilarityTarget(torch.ones(64)))
    assert w.with_options(softmax=True).check_softmax(x, by_default=True).softmax is False
    with pytest.raises(ValueError, match="Pass softmax=False"):
        w.with_options(softmax=True).check_softmax(x, by_default=False)
    # a metric with a default softmax (PixelFlipping) scores the cosine itself
    pf = ek.metrics.PixelFlipping(features_in_step=256)
    a = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    pf(w, x, None, a)
    curves = np.asarray(pf.curves_)
    np.testing.assert_allclose(curves[:, 0], w.score(x).numpy(), rtol=1e-5)


def test_metric_families_with_a_concept_and_with_references(shapes):
    x, y, masks = shapes
    emb = embedder()
    with torch.no_grad():
        e = emb(x)
    concept = e[y == 0].mean(0)  # "circle-ness": the mean embedding of the circles
    refs = e.roll(1, 0)  # each image against the previous one
    for target, labels in ((SimilarityTarget(concept), None), (SimilarityTarget(), refs)):
        w = wrap_model(emb, target=target)
        a = ek.explain(w, x, labels, method="GradCAM", layer="0.conv3")
        scores = {
            "PixelFlipping": ek.metrics.PixelFlipping(features_in_step=128)(w, x, labels, a),
            "ROAD": ek.metrics.ROAD(score="confidence", percentages=[0.2, 0.5])(
                w, x, labels, a),
            "PointingGame": ek.metrics.PointingGame()(w, x, labels, a, s=masks),
            # uniform noise of +-0.02 turns these embeddings by a few degrees (+-0.2: by 60-85)
            "MaxSensitivity": ek.metrics.MaxSensitivity(
                nr_samples=3, lower_bound=0.02, on_prediction_change="drop_draw")(
                w, x, labels, explain_kwargs={"method": "Saliency"}),
            "Sufficiency": ek.metrics.Sufficiency()(w, x, labels, a),
            "MPRT": ek.metrics.MPRT(layer_order="independent")(
                w, x, labels, a, explain_kwargs={"method": "GradCAM", "layer": "0.conv3"}),
        }
        for name, v in scores.items():
            assert np.asarray(v).shape == (12,), name
            if name != "Sufficiency":  # Sufficiency may find no near neighbour for a sample
                assert np.isfinite(v).all(), (name, target, v)
        with pytest.raises(ValueError, match="Consistency"):
            ek.metrics.Consistency()(w, x, labels, a)


def test_perturbations_that_turn_the_embedding_count_as_prediction_changes(shapes):
    x = shapes[0][:4]
    w = wrap_model(embedder(), target=SimilarityTarget(torch.ones(64), agreement=1.0))
    # agreement 1: any turn of the embedding is a change, so every draw is dropped
    m = ek.metrics.MaxSensitivity(nr_samples=2, perturb_std=0.5, lower_bound=0.5,
                                  on_prediction_change="drop_draw")
    v = m(w, x, None, explain_kwargs={"method": "Saliency"})
    assert np.isnan(v).all()
    assert np.asarray(m.prediction_changed_).all()


def test_evaluate_with_similarity_targets(shapes):
    x = shapes[0]
    emb = embedder()
    with torch.no_grad():
        refs = emb(x).roll(1, 0)
    res = ek.evaluate({"PF": ek.metrics.PixelFlipping(features_in_step=128),
                       "Sparseness": ek.metrics.Sparseness()},
                      {"GradCAM": {"layer": "0.conv3"}, "Saliency": {}, "Random": {}},
                      emb, x, refs, target=SimilarityTarget(), progress=False)
    frame = res.to_frame()
    assert frame["score"].notna().all()
    table = res.leaderboard().to_markdown()
    assert all(name in table for name in ("GradCAM", "Saliency", "Random"))


# ============================================================================ oracle
class _SimilarityToConcept:
    """pytorch-grad-cam's tutorial target: the cosine of one output row and a concept."""

    def __init__(self, concept: torch.Tensor) -> None:
        self.concept = concept

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cosine_similarity(model_output, self.concept, dim=0)


def test_gradcam_matches_pytorch_grad_cam(torchvision):
    try:
        import pytorch_grad_cam
    except Exception:
        pytest.skip("the optional pytorch-grad-cam 1.5.7 oracle is absent")
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    resnet.fc = nn.Identity()  # 512-d embeddings
    x = torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        e = resnet(x)
    concept = e[2]
    with pytorch_grad_cam.GradCAM(model=resnet, target_layers=[resnet.layer4[-1]]) as cam:
        theirs = cam(input_tensor=x[:2],
                     targets=[_SimilarityToConcept(concept), _SimilarityToConcept(concept)])
    ours = ek.explain(wrap_model(resnet, target=SimilarityTarget(concept)), x[:2], None,
                      method="GradCAM", layer="layer4.1")
    ours = np.asarray(ours).reshape(2, 128, 128)
    for i in range(2):
        assert np.ptp(theirs[i]) > 0
        assert np.corrcoef(ours[i].ravel(), theirs[i].ravel())[0, 1] > 0.999
    # per-sample references in y give the same maps
    ours_y = ek.explain(wrap_model(resnet, target=SimilarityTarget()), x[:2],
                        concept.expand(2, -1), method="GradCAM", layer="layer4.1")
    np.testing.assert_allclose(np.asarray(ours_y).reshape(2, 128, 128), ours, rtol=1e-5,
                               atol=1e-7)
