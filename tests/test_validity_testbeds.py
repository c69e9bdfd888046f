"""The known-mechanism testbeds of metaeval.validity (testbeds.py, plant.py).

Every testbed's analytic claim is checked on the model itself (exact attributions are complete
to 1e-6 in float64, the region model ignores the outside, the saturated gradient is exactly
zero while the closed-form IG matches a 2000-step Riemann sum, XOR needs both regions, the
homogeneous network's exact map survives a compensated shift...), then a few real evalkit
metrics run on every testbed's candidates, and give the known order where the mechanism makes
it certain.
"""

from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch

from evalkit.metrics import get
from evalkit.testing import cheap_metric
from metaeval.validity import (
    MECHANISMS,
    PLANTABLE,
    build_testbed,
    list_testbeds,
    plant_mechanism,
)
from metaeval.validity.testbed import Testbed as _Testbed
from metaeval.validity.testbeds import (
    DEFAULT_N,
    TESTBED_MODALITIES,
    class_templates_testbed,
    default_region,
    interaction_testbed,
    linear_testbed,
)

ALL = list_testbeds()


def _double(bed: _Testbed) -> tuple[torch.nn.Module, torch.Tensor]:
    """A float64 copy of the model and inputs (token ids stay integers)."""
    x = bed.x.double() if bed.x.is_floating_point() else bed.x
    return copy.deepcopy(bed.model).double(), x


def _logit(model, x, y):
    with torch.no_grad():
        return model(x).gather(1, y.reshape(-1, 1))[:, 0]


def _black(x):
    return x.flatten(1).min(1).values.reshape(-1, *([1] * (x.ndim - 1))).expand_as(x)


def _riemann_ig(model, x, y, steps=2000):
    """Integrated Gradients against the per-sample minimum by the midpoint rule."""
    base = _black(x)
    total = torch.zeros_like(x)
    for k in range(steps):
        point = (base + (k + 0.5) / steps * (x - base)).requires_grad_(True)
        out = model(point).gather(1, y.reshape(-1, 1)).sum()
        (g,) = torch.autograd.grad(out, point)
        total += g
    return total / steps * (x - base)


def _map_layout(bed: _Testbed) -> tuple[int, ...]:
    if bed.modality in ("image", "series"):
        return (bed.n, 1, *bed.x.shape[2:])
    return tuple(bed.x.shape)


# ============================================================================ registry
def test_registry_covers_every_mechanism_and_modality():
    assert len(ALL) == len(set(ALL))
    built = {name: build_testbed(name) for name in ALL}
    image = {b.mechanism for b in built.values() if b.modality == "image"}
    assert image == set(MECHANISMS)  # image variants for all
    for modality in ("tabular", "series", "tokens"):
        mechanisms = {b.mechanism for b in built.values() if b.modality == modality}
        assert {"linear", "region"} <= mechanisms and len(mechanisms) >= 3, modality
    families = {"faithfulness", "robustness", "localisation", "complexity", "randomisation",
                "axiomatic"}
    for name, bed in built.items():
        assert bed.name == name and bed.modality == name.split("-")[0]
        assert set(bed.families) <= families
        assert bed.n == DEFAULT_N and bed.order and bed.families
        assert name in list_testbeds(modality=bed.modality, mechanism=bed.mechanism)
        for pair in bed.order:
            assert pair.why.endswith(".") and pair.better != pair.worse
    assert list_testbeds("tokens") == ["tokens-linear", "tokens-region", "tokens-one-hot"]
    assert list_testbeds(mechanism="interaction") == ["image-and", "image-xor"]


def test_docs_page_lists_every_testbed():
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "validity.md").read_text("utf-8")
    missing = [name for name in ALL if f"`{name}`" not in page]
    assert not missing, f"docs/validity.md does not list {missing}"


def test_registry_rejects_unknown_names():
    with pytest.raises(ValueError, match="Unknown testbed 'image-nope'"):
        build_testbed("image-nope")
    with pytest.raises(ValueError, match="Unknown modality 'audio'"):
        list_testbeds("audio")
    with pytest.raises(ValueError, match="Unknown mechanism 'magic'"):
        list_testbeds(mechanism="magic")
    with pytest.raises(ValueError, match="`n` must be an int >= 2"):
        build_testbed("image-linear", n=1)
    with pytest.raises(TypeError, match="`seed` must be an int"):
        build_testbed("image-linear", seed=1.5)
    with pytest.raises(ValueError, match="`kind` must be 'and' or 'xor'"):
        interaction_testbed(kind="or")
    with pytest.raises(ValueError, match="shape"):
        linear_testbed("image", shape=(12, 12))


@pytest.mark.parametrize("name", ALL)
def test_candidates_have_the_shapes_metrics_take(name):
    bed = build_testbed(name, n=6)
    assert bed.x.shape[0] == bed.y.shape[0] == 6 and bed.y.dtype == torch.long
    if bed.modality == "tokens":
        assert bed.x.dtype == torch.int64 and int(bed.x.min()) >= 1  # 0 is the mask token
    else:
        assert bed.x.dtype == torch.float32
        assert torch.equal(bed.x.flatten(1).min(1).values, torch.zeros(6))  # black == zero
    with torch.no_grad():
        assert torch.equal(bed.model(bed.x).argmax(1), bed.y) or bed.mechanism in (
            "region", "saturation", "sparsity", "interaction")
    for cand in bed.candidates:
        a = bed.explanation(cand)
        assert tuple(a.shape) == _map_layout(bed), cand
        assert a.is_floating_point() and bool(torch.isfinite(a).all())
    if bed.s is not None:
        assert bed.s.dtype == torch.bool and tuple(bed.s.shape) == _map_layout(bed)
        assert bool(bed.s.flatten(1).any(1).all()) and not bool(bed.s.all())
    if bed.reference is not None:
        assert tuple(bed.reference.shape) == _map_layout(bed)


@pytest.mark.parametrize("name", ["image-linear", "series-region", "tabular-saturation",
                                  "tokens-linear", "image-model-aware", "image-class-templates"])
def test_deterministic_given_the_seed(name):
    first, again, other = (build_testbed(name, n=5, seed=s) for s in (3, 3, 4))
    assert torch.equal(first.x, again.x) and torch.equal(first.y, again.y)
    for p, q in zip(first.model.state_dict().values(), again.model.state_dict().values(),
                    strict=True):
        assert torch.equal(p, q)
    for cand in first.candidates:
        assert torch.equal(first.explanation(cand), again.explanation(cand))
    assert not torch.equal(first.x, other.x)


@pytest.mark.parametrize("name", ALL)
def test_builds_at_another_input_size(name):
    modality = name.split("-")[0]
    shape = {"image": (1, 16, 20), "series": (3, 40), "tabular": (20,), "tokens": (30,)}[modality]
    bed = build_testbed(name, n=6, seed=1, shape=shape)
    assert tuple(bed.x.shape) == (6, *shape)
    for cand in bed.candidates:
        assert tuple(bed.explanation(cand).shape) == _map_layout(bed)


def test_building_leaves_the_global_rng_alone():
    x = torch.rand(3, 2, 10)
    state = torch.random.get_rng_state()
    build_testbed("image-model-aware")
    plant_mechanism("region", x)
    assert torch.equal(state, torch.random.get_rng_state())


def test_candidates_pickle_and_follow_the_model_they_are_given():
    bed = build_testbed("image-linear", n=4)
    clone = pickle.loads(pickle.dumps(bed.candidates["exact"]))
    assert torch.equal(clone(bed.model, bed.x, bed.y), bed.explanation("exact"))
    other = copy.deepcopy(bed.model)
    with torch.no_grad():
        other.linear.weight.mul_(-2)
    assert torch.allclose(bed.candidates["exact"](other, bed.x, bed.y),
                          -2 * bed.explanation("exact"), atol=1e-6)
    # metrics may explain under inference mode; gradient candidates still work
    with torch.inference_mode():
        a = bed.candidates["exact"](bed.model, bed.x.clone(), bed.y)
    assert torch.allclose(a, bed.explanation("exact"))
    # without labels the predicted class is explained
    assert torch.equal(bed.candidates["exact"](bed.model, bed.x, None), bed.explanation("exact"))


# ============================================================================ analytic claims
@pytest.mark.parametrize("modality", TESTBED_MODALITIES)
def test_linear_exact_attribution_is_complete(modality):
    bed = build_testbed(f"{modality}-linear")
    model, x = _double(bed)
    exact = bed.candidates["exact"](model, x, bed.y)
    if modality == "tokens":
        baseline = torch.zeros_like(x)  # every token replaced by the mask token
    else:
        baseline = _black(x)
    change = _logit(model, x, bed.y) - _logit(model, baseline, bed.y)
    torch.testing.assert_close(exact.flatten(1).sum(1), change, rtol=0, atol=1e-6)
    assert bool((exact < 0).any()) and bool((exact > 0).any())  # mixed signs
    torch.testing.assert_close(bed.explanation("negated"), -bed.explanation("exact"))
    torch.testing.assert_close(bed.explanation("absolute"), bed.explanation("exact").abs())
    torch.testing.assert_close(bed.reference, bed.explanation("exact"))
    assert set(bed.y.tolist()) == {0, 1}


@pytest.mark.parametrize("modality", TESTBED_MODALITIES)
def test_region_model_ignores_the_outside_and_increases_with_the_region(modality):
    bed = build_testbed(f"{modality}-region")
    inside = bed.s.expand_as(bed.x) if bed.modality in ("image", "series") else bed.s
    gen = torch.Generator().manual_seed(0)
    if modality == "tokens":
        noise = torch.randint(1, 20, bed.x.shape, generator=gen)
    else:
        noise = torch.rand(bed.x.shape, generator=gen) * 5 - 2
    changed = torch.where(inside, bed.x, noise)
    with torch.no_grad():
        assert torch.equal(bed.model(changed), bed.model(bed.x))  # exactly constant
        z = bed.model.score(bed.x)
        assert bool((z > 0).all())  # class 1, the explained class, everywhere
        if modality != "tokens":
            brighter = torch.where(inside, bed.x + 0.1, bed.x)
            assert bool((bed.model.score(brighter) > z).all())
            # removing the region's evidence lowers the score and flips the class
            removed = torch.where(inside, torch.zeros_like(bed.x), bed.x)
            assert bool((bed.model.score(removed) < 0).all())
    inside_map = bed.explanation("inside")
    assert bool((inside_map[~bed.s] == 0).all()) and bool((inside_map[bed.s] != 0).any())
    assert bool((bed.explanation("outside")[bed.s] == 0).all())


@pytest.mark.parametrize("modality", ["image", "series", "tabular"])
def test_saturation_gradient_is_zero_on_the_evidence_but_ig_is_exact(modality):
    bed = build_testbed(f"{modality}-saturation")
    model, x = _double(bed)
    with torch.no_grad():
        assert bool((model.evidence(x) >= 2.5 - 1e-6).all())  # saturated on every sample
    grad = bed.explanation("gradient")
    assert bool((grad[bed.s] == 0).all())  # exactly zero where the output comes from
    assert bool((grad[~bed.s] != 0).any())  # the distractor has a gradient
    ig = bed.candidates["integrated_gradients"](model, x, bed.y)
    change = _logit(model, x, bed.y) - _logit(model, _black(x), bed.y)
    torch.testing.assert_close(ig.flatten(1).sum(1), change, rtol=0, atol=1e-6)
    # most of the output change is credited to the saturated region
    inside = torch.where(bed.s, ig, torch.zeros_like(ig)).flatten(1).sum(1)
    assert bool((inside > 0.7 * change).all())
    # the closed form is Integrated Gradients: a 2000-step Riemann sum agrees
    numeric = _riemann_ig(model, x[:4], bed.y[:4])
    summed = numeric.sum(1, keepdim=True) if modality != "tabular" else numeric
    torch.testing.assert_close(ig[:4], summed, rtol=0, atol=2e-3)


@pytest.mark.parametrize("modality", ["image", "series", "tabular"])
def test_invariance_model_ignores_the_outside_and_its_gradient_is_constant(modality):
    bed = build_testbed(f"{modality}-invariance")
    inside = bed.s.expand_as(bed.x) if bed.modality in ("image", "series") else bed.s
    noisy = bed.x + 0.1 * torch.randn(bed.x.shape, generator=torch.Generator().manual_seed(1))
    outside_only = torch.where(inside, bed.x, noisy)
    with torch.no_grad():
        assert torch.equal(bed.model(outside_only), bed.model(bed.x))
    for name, changes in (("gradient", False), ("leaky", True), ("intensity", True),
                          ("random", True)):
        moved = bed.candidates[name](bed.model, noisy, bed.y)
        assert bool((moved != bed.explanation(name)).any()) == changes, name
    leaky = bed.candidates["leaky"](bed.model, outside_only, bed.y) - bed.explanation("leaky")
    assert bool((leaky[bed.s] == 0).all()) and bool((leaky[~bed.s] != 0).any())


@pytest.mark.parametrize("kind", ["and", "xor"])
def test_interaction_needs_both_regions_and_ig_is_exact(kind):
    bed = build_testbed(f"image-{kind}")
    model, x = _double(bed)
    fshape = bed.x.shape[2:]
    region_a, region_b = default_region(fshape, corner="first"), default_region(fshape,
                                                                                corner="last")
    assert torch.equal(bed.s[0, 0], region_a | region_b)
    with torch.no_grad():
        pred = model(x).argmax(1)
        for region in (region_a, region_b):
            if kind == "and":  # removing either region flips class 1 to class 0
                removed = torch.where(region, torch.zeros_like(x), x)
                assert bool((model(removed).argmax(1) == 0).all()) and bool((pred == 1).all())
            else:  # toggling one region's brightness (bright <-> dark) flips the XOR
                lit = x[:, :, region].mean((1, 2)) > 0.5
                step = torch.where(lit, -0.5, 0.5).reshape(-1, 1, 1, 1)
                toggled = torch.where(region, x + step, x)
                assert bool((model(toggled).argmax(1) != pred).all())
    if kind == "xor":
        assert set(bed.y.tolist()) == {0, 1}
    ig = bed.candidates["both"](model, x, bed.y)
    change = _logit(model, x, bed.y) - _logit(model, _black(x), bed.y)
    torch.testing.assert_close(ig.flatten(1).sum(1), change, rtol=0, atol=1e-6)
    numeric = _riemann_ig(model, x[:4], bed.y[:4]).sum(1, keepdim=True)
    torch.testing.assert_close(ig[:4], numeric, rtol=0, atol=2e-3)
    one = bed.explanation("one")
    assert bool((one[:, 0][:, region_b] == 0).all()) and bool((one[:, 0][:, region_a] != 0).any())
    credit_b = bed.explanation("both")[:, 0][:, region_b].abs().sum(1)
    assert bool((credit_b > 0).all())  # the exact attribution credits region B too


@pytest.mark.parametrize("modality", ["image", "series", "tabular"])
def test_model_aware_maps_change_with_the_weights_blind_maps_do_not(modality):
    from evalkit.models import wrap_model

    bed = build_testbed(f"{modality}-model-aware")
    assert set(bed.y.tolist()) == {0, 1}
    randomised = list(wrap_model(bed.model).randomise_layers("top_down", seed=0))
    last = randomised[-1][1].model  # every layer re-initialised
    for name in bed.candidates:
        moved = bed.candidates[name](last, bed.x, bed.y)
        same = torch.allclose(moved, bed.explanation(name))
        assert same == (name in ("intensity", "edges")), name


@pytest.mark.parametrize("modality", TESTBED_MODALITIES)
def test_one_hot_model_reads_one_feature(modality):
    bed = build_testbed(f"{modality}-one-hot")
    one_hot = bed.explanation("one_hot")
    nonzero = (one_hot != 0).flatten(1).sum(1)
    assert bool((nonzero == 1).all())
    assert torch.equal(one_hot != 0, bed.s)
    model, x = _double(bed)
    baseline = torch.zeros_like(x) if modality == "tokens" else _black(x)
    change = _logit(model, x, bed.y) - _logit(model, baseline, bed.y)
    exact = bed.candidates["one_hot"](model, x, bed.y)
    torch.testing.assert_close(exact.flatten(1).sum(1), change, rtol=0, atol=1e-6)
    features = bed.s.expand_as(bed.x) if modality in ("image", "series") else bed.s
    other = torch.randint(1, 20, bed.x.shape) if modality == "tokens" else torch.rand(
        bed.x.shape) * 3
    with torch.no_grad():
        assert torch.equal(bed.model(torch.where(features, bed.x, other)), bed.model(bed.x))
    assert torch.equal(bed.explanation("uniform"), torch.ones_like(one_hot))


def test_completeness_model_is_homogeneous_and_exact_map_satisfies_both_axioms():
    bed = build_testbed("image-completeness")
    model, x = _double(bed)
    with torch.no_grad():
        torch.testing.assert_close(model.score(2.5 * x), 2.5 * model.score(x))
        assert bool((model.score(torch.zeros_like(x)) == 0).all())
    exact = bed.candidates["exact"](model, x, bed.y)
    change = _logit(model, x, bed.y) - _logit(model, _black(x), bed.y)
    torch.testing.assert_close(exact.flatten(1).sum(1), change, rtol=0, atol=1e-6)
    gradient = bed.candidates["gradient"](model, x, bed.y)
    assert not torch.allclose(gradient.flatten(1).sum(1), change, atol=1e-3)
    # a shift d absorbed by the first layer: m2(x + d) = m(x); the exact map is unchanged,
    # gradient x input is not (Kindermans et al. 2019)
    shifted = copy.deepcopy(model)
    conv = shifted.body[0]
    d = -1.0
    with torch.no_grad():
        ones = torch.full_like(x[:1], d)
        bias_map = conv(ones)  # zero-padded: the response to a constant shift varies at borders
    shifted.body[0] = _Compensated(conv, bias_map)
    with torch.no_grad():
        torch.testing.assert_close(shifted(x + d), model(x))
    after = bed.candidates["exact"](shifted, x + d, bed.y)
    torch.testing.assert_close(after, exact, rtol=0, atol=1e-9)
    gxi_before = bed.candidates["gradient_x_input"](model, x, bed.y)
    gxi_after = bed.candidates["gradient_x_input"](shifted, x + d, bed.y)
    assert not torch.allclose(gxi_before, gxi_after, atol=1e-3)


class _Compensated(torch.nn.Module):
    def __init__(self, layer, offset):
        super().__init__()
        self.layer, self.offset = layer, offset

    def forward(self, x):
        return self.layer(x) - self.offset


@pytest.mark.parametrize("modality", ["image", "tabular"])
def test_class_templates_are_class_consistent(modality):
    bed = class_templates_testbed(modality, n=12)
    assert torch.equal(bed.y, torch.arange(12) % 3)  # the predictions are the classes
    template = bed.explanation("class_template")
    other = bed.explanation("other_template")
    for c in range(3):
        rows = template[bed.y == c]
        assert bool((rows == rows[:1]).all())  # one map per class
    for i in range(12):
        own = template[bed.y == bed.y[i]][0]
        assert not torch.equal(other[i], own)  # always another class's template
        assert any(torch.equal(other[i], template[bed.y == c][0]) for c in range(3))
    assert len({tuple(r.flatten().tolist()) for r in other}) > 1  # not one fixed class
    assert bool((template[~bed.s] == 0).all())  # each template lives on its class's block


# ============================================================================ plant_mechanism
def test_grid_heads_read_only_their_own_cell():
    """The grid model is disconnected by construction: each head's logits stay identical when
    every other cell changes, and change with its own cell; the explained cell is the
    brightest and its head the most confident (argmax = y); `cells`, `quadrants` and `s` agree."""
    bed = build_testbed("image-grid")
    model, x = _double(bed)
    cells = bed.call_options["cells"]
    assert torch.equal(cells, torch.arange(bed.n) % 4)
    assert torch.equal(bed.y, model.targets(cells, torch.ones_like(cells)))
    masks = model.cell_masks.bool()  # (4, 1, H, W)
    assert torch.equal(bed.s, masks[cells])
    assert torch.equal(bed.call_options["quadrants"],
                       torch.nn.functional.one_hot(cells, 4).to(torch.int64))
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), bed.y)
        before = model(x)
        noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
        for k in range(4):
            own = masks[k].to(x.dtype)
            changed = model(x * own + noise * (1 - own))  # every other cell replaced
            columns = [k, 4 + k]
            torch.testing.assert_close(changed[:, columns], before[:, columns], rtol=0, atol=0)
            moved = model(x + 0.5 * own)  # the cell itself brighter
            assert bool((moved[:, 4 + k] > before[:, 4 + k]).all())


def test_grid_candidates_place_their_mass_as_claimed():
    bed = build_testbed("image-grid")
    inside, other = bed.explanation("inside"), bed.explanation("other_cells")
    assert bool((inside[~bed.s] == 0).all()) and bool((inside.clamp(min=0) * bed.s).flatten(
        1).sum(1).gt(0).all())
    assert bool((other[bed.s] == 0).all()) and bool(other.flatten(1).gt(0).any(1).all())
    torch.testing.assert_close(bed.explanation("spread"), inside + other)
    for metric_name in ("GridPG", "DiFull", "DiPart"):
        kwargs = {"cells": bed.call_options["cells"]}
        assert bool((_scores_with(metric_name, bed, "inside", kwargs) == 1).all())
        assert bool((_scores_with(metric_name, bed, "other_cells", kwargs) == 0).all())
        spread = _scores_with(metric_name, bed, "spread", kwargs)
        assert bool(((spread > 0) & (spread < 1)).all())
    focus = _scores_with("Focus", bed, "inside", {"quadrants": bed.call_options["quadrants"]})
    assert bool((focus == 1).all())


def _scores_with(metric_name, bed, candidate, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(cheap_metric(metric_name)(bed.model, bed.x, bed.y,
                                                    bed.explanation(candidate), **kwargs))


@pytest.mark.parametrize("name", ALL)
def test_training_split_is_apart_from_x_and_labelled_by_the_model(name):
    bed = build_testbed(name, n=6)
    x_train, y_train = bed.train
    assert x_train.shape[1:] == bed.x.shape[1:] and x_train.dtype == bed.x.dtype
    assert x_train.shape[0] == y_train.shape[0] >= 64 and y_train.dtype == torch.long
    with torch.no_grad():
        assert torch.equal(bed.model(x_train).argmax(1), y_train)
    rows = x_train.flatten(1)
    assert not any(bool((rows == r).all(1).any()) for r in bed.x.flatten(1))
    again = build_testbed(name, n=6)
    assert torch.equal(again.train[0], x_train) and torch.equal(again.train[1], y_train)


@pytest.mark.parametrize("name", ["image-linear", "tokens-region", "image-and", "image-grid",
                                  "tabular-class-templates"])
def test_ffidelity_fine_tuned_copy_keeps_the_mechanism(name):
    """The copy F-Fidelity fine-tunes on the split at its defaults (4 Adam steps at lr 1e-4)
    predicts what the planted model predicts on the evaluated inputs, with weights within 1e-3:
    the known order still holds on the model it evaluates."""
    from evalkit.metrics.faithfulness.ffidelity import fine_tune_with_random_masking

    bed = build_testbed(name)
    tuned = fine_tune_with_random_masking(bed.model, *bed.train)
    with torch.no_grad():
        assert torch.equal(tuned(bed.x).argmax(1), bed.model(bed.x).argmax(1))
    for p, q in zip(bed.model.parameters(), tuned.parameters(), strict=True):
        assert float((p - q).detach().abs().max()) < 1e-3


@pytest.mark.parametrize("modality", ["image", "series", "tabular"])
def test_non_sensitivity_counts_no_violation_for_the_exact_one_hot_map(modality):
    """The one-hot model ignores every feature but one: its exact map has zero attribution
    exactly where the output is insensitive (no violation), a spread map credits ignored
    features (violations)."""
    bed = build_testbed(f"{modality}-one-hot")
    assert bool((_scores("NonSensitivity", bed, "one_hot") == 0).all())
    assert bool((_scores("NonSensitivity", bed, "spread") > 0).all())


@pytest.mark.parametrize(("shape", "modality"), [((5, 3, 20, 16), "image"),
                                                 ((5, 2, 30), "series"),
                                                 ((5, 9), "tabular")])
@pytest.mark.parametrize("kind", sorted(PLANTABLE))
def test_plant_on_the_users_shape(shape, modality, kind):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2)) * 3 - 1
    bed = plant_mechanism(kind, x, seed=1)
    assert bed.modality == modality and torch.equal(bed.x, x)
    assert set(bed.candidates) == set(build_testbed(f"{modality}-{_suffix(kind)}").candidates)
    for cand in bed.candidates:
        a = bed.explanation(cand)
        assert tuple(a.shape) == _map_layout(bed) and bool(torch.isfinite(a).all())
    if kind in ("linear", "saturation", "sparsity"):  # exact against the per-sample minimum
        first = next(iter(bed.candidates))
        model, xd = _double(bed)
        exact = bed.candidates[first](model, xd, bed.y)
        change = _logit(model, xd, bed.y) - _logit(model, _black(xd), bed.y)
        torch.testing.assert_close(exact.flatten(1).sum(1), change, rtol=0, atol=1e-6)
    if kind == "region":
        inside = bed.s.expand_as(x) if modality != "tabular" else bed.s
        with torch.no_grad():
            assert torch.equal(bed.model(torch.where(inside, x, x * 7 + 1)), bed.model(x))


def _suffix(kind):
    return {"sparsity": "one-hot"}.get(kind, kind)


def test_plant_region_forms_tokens_and_dtypes():
    x = torch.rand(4, 3, 10, 10)
    box = torch.zeros(10, 10, dtype=torch.bool)
    box[1:4, 5:9] = True
    for region in (box, box[None], box[None].expand(3, 10, 10), box.numpy(), box.int()):
        bed = plant_mechanism("region", x, region=region)
        assert torch.equal(bed.s[0, 0], box)
    ids = torch.randint(1, 30, (4, 9))
    for kind in ("linear", "region", "sparsity"):
        bed = plant_mechanism(kind, ids)
        assert bed.modality == "tokens" and bed.metric_kwargs == {"modality": "tokens"}
        assert tuple(bed.explanation(next(iter(bed.candidates))).shape) == (4, 9)
    bed = plant_mechanism("linear", x.double())
    assert bed.x.dtype == torch.float64 and bed.reference.dtype == torch.float64
    bed = plant_mechanism("linear", x[:, 0, 0].numpy(), modality="tabular")
    assert bed.modality == "tabular" and tuple(bed.x.shape) == (4, 10)


def test_planted_token_models_are_exact_against_the_mask_token():
    ids = torch.randint(1, 40, (6, 15), generator=torch.Generator().manual_seed(5))
    for kind in ("linear", "region", "sparsity"):
        bed = plant_mechanism(kind, ids, seed=2)
        exact = bed.explanation(next(iter(bed.candidates)))
        change = _logit(bed.model, ids, bed.y) - _logit(bed.model, torch.zeros_like(ids), bed.y)
        torch.testing.assert_close(exact.sum(1), change, rtol=0, atol=1e-5)
        if bed.s is not None:
            assert bool((exact[~bed.s] == 0).all())


def test_plant_rejects_bad_requests():
    x = torch.rand(4, 2, 12)
    with pytest.raises(ValueError, match="Unknown mechanism 'bogus'"):
        plant_mechanism("bogus", x)
    with pytest.raises(ValueError, match="cannot be planted into tokens"):
        plant_mechanism("saturation", torch.randint(1, 9, (4, 6)))
    with pytest.raises(ValueError, match="does not match the features"):
        plant_mechanism("region", x, region=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty"):
        plant_mechanism("region", x, region=torch.zeros(12, dtype=torch.bool))
    with pytest.raises(ValueError, match="covers every feature"):
        plant_mechanism("region", x, region=torch.ones(12, dtype=torch.bool))
    with pytest.raises(ValueError, match="exactly one feature"):
        plant_mechanism("sparsity", x, region=torch.ones(12, dtype=torch.bool))
    with pytest.raises(ValueError, match="takes no `region`"):
        plant_mechanism("linear", x, region=torch.ones(12, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least two samples"):
        plant_mechanism("linear", x[:1])
    with pytest.raises(ValueError, match=r"NaN|Inf"):
        plant_mechanism("linear", torch.full((3, 4), float("nan")))
    with pytest.raises(ValueError, match="rank 4"):
        plant_mechanism("linear", torch.rand(3, 1, 4, 4, 4))


# ============================================================================ real metrics
#: one cheap metric per family (set-level and mask metrics where the testbed has them)
_SMOKE = {
    "faithfulness": ["PixelFlipping", "FaithfulnessCorrelation"],
    "localisation": ["RelevanceRankAccuracy", "FeatureAgreement"],
    "complexity": ["Sparseness"],
    "robustness": ["MaxSensitivity", "Consistency"],
    "randomisation": ["MPRT"],
    "axiomatic": ["Completeness", "InputInvariance"],
}


def _scores(metric_name: str, bed: _Testbed, candidate: str, **params) -> np.ndarray:
    metric = cheap_metric(metric_name, **params)
    kwargs = dict(bed.metric_kwargs)
    if metric.re_explains:
        kwargs["explain_fn"] = bed.candidates[candidate]
    s = bed.reference if getattr(metric, "real_valued_s", False) else bed.s
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(metric(bed.model, bed.x, bed.y, bed.explanation(candidate), s=s,
                                 **kwargs), dtype=float)


def _applies(metric_name: str, bed: _Testbed) -> bool:
    cls = get(metric_name)
    modalities = cls.modalities if isinstance(cls.modalities, tuple) else (cls.modalities,)
    if bed.modality not in modalities:
        return False
    if cls.needs_masks:
        return (bed.reference if getattr(cls, "real_valued_s", False) else bed.s) is not None
    return not (cls.set_level and bed.mechanism != "set-level")


@pytest.mark.parametrize("name", ALL)
def test_real_metrics_run_on_every_candidate(name):
    bed = build_testbed(name, n=8)
    ran = 0
    for family in bed.families:
        for metric_name in _SMOKE[family]:
            if not _applies(metric_name, bed):
                continue
            for cand in bed.candidates:
                scores = _scores(metric_name, bed, cand)
                assert scores.shape == (bed.n,)
            ran += 1
    assert ran >= 1


def _mean(metric_name, bed, candidate, **params):
    return float(np.nanmean(_scores(metric_name, bed, candidate, **params)))


@pytest.mark.parametrize("modality", TESTBED_MODALITIES)
def test_localisation_ranks_the_region_map_above_the_outside_map(modality):
    bed = build_testbed(f"{modality}-region")
    rra = _scores("RelevanceRankAccuracy", bed, "inside")
    assert bool((rra == 1).all())
    assert bool((_scores("RelevanceRankAccuracy", bed, "outside") == 0).all())
    # deletion (lower is better): removing the read region first drops the output at once
    assert bool((_scores("PixelFlipping", bed, "inside")
                 < _scores("PixelFlipping", bed, "outside")).all())


def test_known_orders_of_faithfulness_and_axiomatic_metrics():
    linear = build_testbed("image-linear")
    assert _mean("FaithfulnessCorrelation", linear, "exact") == pytest.approx(1.0)
    assert _mean("FaithfulnessCorrelation", linear, "negated") == pytest.approx(-1.0)
    assert bool((_scores("PixelFlipping", linear, "exact")
                 < _scores("PixelFlipping", linear, "negated")).all())
    assert bool((_scores("Completeness", linear, "exact") == 1).all())
    assert bool((_scores("Completeness", linear, "negated") == 0).all())
    # sign-blind agreement ties the exact map and its negation; sign agreement does not
    assert _mean("FeatureAgreement", linear, "negated") == pytest.approx(1.0)
    assert _mean("SignAgreement", linear, "negated") == 0.0
    saturation = build_testbed("image-saturation")
    assert bool((_scores("Completeness", saturation, "integrated_gradients") == 1).all())
    assert bool((_scores("Completeness", saturation, "gradient") == 0).all())
    assert bool((_scores("PixelFlipping", saturation, "integrated_gradients")
                 < _scores("PixelFlipping", saturation, "gradient")).all())
    complete = build_testbed("image-completeness")
    assert bool((_scores("Completeness", complete, "exact") == 1).all())
    assert bool((_scores("Completeness", complete, "gradient") == 0).all())
    assert bool((_scores("InputInvariance", complete, "exact") == 1).all())
    assert bool((_scores("InputInvariance", complete, "gradient_x_input") == 0).all())
    for kind in ("and", "xor"):
        bed = build_testbed(f"image-{kind}")
        assert bool((_scores("Completeness", bed, "both") == 1).all())
        assert bool((_scores("Completeness", bed, "one") == 0).all())


def test_known_orders_of_complexity_robustness_and_randomisation_metrics():
    one_hot = build_testbed("image-one-hot")
    assert bool((_scores("Sparseness", one_hot, "one_hot")
                 > _scores("Sparseness", one_hot, "spread")).all())
    assert bool((_scores("Complexity", one_hot, "one_hot")
                 < _scores("Complexity", one_hot, "uniform")).all())
    invariance = build_testbed("image-invariance")
    assert bool((_scores("MaxSensitivity", invariance, "gradient") == 0).all())
    for worse in ("leaky", "intensity", "random"):
        assert bool((_scores("MaxSensitivity", invariance, worse) > 0).all()), worse
    aware = build_testbed("image-model-aware")
    for blind in ("edges", "intensity"):  # MPRT: similarity to the original, lower is better
        assert _mean("MPRT", aware, "gradient") < _mean("MPRT", aware, blind) == pytest.approx(1)
    templates = build_testbed("image-class-templates")
    assert _mean("Consistency", templates, "class_template") == 1.0
    assert _mean("Consistency", templates, "other_template") < 1.0
    assert _mean("Sufficiency", templates, "class_template") == 1.0
    assert _mean("Sufficiency", templates, "other_template") < 1.0


def test_planted_mechanism_checks_a_metric_at_the_users_settings():
    x = torch.rand(6, 3, 24, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bed = plant_mechanism("region", x)
    assert bool((_scores("RelevanceRankAccuracy", bed, "inside") == 1).all())
    bed = plant_mechanism("linear", x)
    assert bool((_scores("Completeness", bed, "exact") == 1).all())  # the "black" baseline
