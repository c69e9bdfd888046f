"""Perturbation tests of MetaQuantus (Hedström et al., TMLR 2023) and the published suites.

A test perturbs either the model (:class:`ModelPerturbationTest`, MPT) or the input
(:class:`InputPerturbationTest`, IPT), and is of type ``"Resilience"`` (minor perturbation; keep
the samples whose prediction did not change; the estimator should not react: NR criteria) or
``"Adversary"`` (disruptive perturbation; keep the samples whose prediction flipped; the
estimator should react: AR criteria). The noise level is fixed; samples are selected after the
fact by their prediction.

Applicability: a test is *not applicable* to a metric when nothing it perturbs can reach the
metric's scores. The perturbation reaches a score through the explanation (recomputed on the
perturbed model, or on the perturbed input when ``re_explain``), through the model the metric
reads (``needs_model``), or through the input the metric reads (:func:`reads_input`). Such a
pairing would get the criteria of the "always the same" estimator, MC = 0.5, which says nothing
about the metric; it is reported as not applicable instead (see :func:`applicability`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SUITES",
    "InputPerturbationTest",
    "ModelPerturbationTest",
    "PerturbationTest",
    "applicability",
    "as_suite",
    "default_suite",
    "reads_input",
    "reads_model",
]

TYPES = ("Resilience", "Adversary")
#: explanation methods that read neither the model nor the input values (their maps depend on
#: the masks or are constant): perturbations cannot reach them
_INPUT_FREE_METHODS = {"constant", "groundtruth"}


def _check_type(type: str) -> str:
    if not isinstance(type, str) or type.capitalize() not in TYPES:
        raise ValueError(f"`type` must be 'Resilience' or 'Adversary'; got {type!r}.")
    return type.capitalize()


@dataclass(frozen=True)
class PerturbationTest:
    """Base class: ``space`` is "Model" or "Input", ``type`` "Resilience" or "Adversary"."""

    type: str

    space = ""

    @property
    def name(self) -> str:
        """MetaQuantus' name, e.g. ``"Model Resilience Test"``."""
        return f"{self.space} {self.type} Test"

    @property
    def failure_mode(self) -> str:
        """``"NR"`` (noise resilience) or ``"AR"`` (adversarial reactivity)."""
        return "NR" if self.type == "Resilience" else "AR"

    def keeps(self, changed: Any) -> Any:
        """The sample mask from a "prediction changed" mask: Resilience keeps the unchanged
        samples, Adversary the changed ones."""
        return ~changed if self.type == "Resilience" else changed

    def params(self) -> dict[str, Any]:
        return {"space": self.space, **self.__dict__}


@dataclass(frozen=True)
class ModelPerturbationTest(PerturbationTest):
    """Model perturbation test (MPT): Gaussian noise on every parameter tensor of a copy of the
    model, ``theta * eps`` (``"multiplicative"``) or ``theta + eps`` (``"additive"``) with
    ``eps ~ N(mean, std**2)`` (buffers such as batch-norm statistics are left alone). The
    explanations are recomputed on the perturbed model, for the original predictions.
    The copy comes from the wrapper's seeded ``perturbed`` context; the user's model is never
    touched.
    """

    noise_type: str = "multiplicative"
    mean: float | None = None
    std: float = 0.001

    space = "Model"

    def __init__(self, type: str, noise_type: str = "multiplicative",
                 mean: float | None = None, std: float = 0.001) -> None:
        if noise_type not in ("multiplicative", "additive"):
            raise ValueError("`noise_type` must be 'multiplicative' or 'additive'; got "
                             f"{noise_type!r}.")
        if mean is None:
            mean = 1.0 if noise_type == "multiplicative" else 0.0
        if not (isinstance(std, int | float) and math.isfinite(std) and std > 0):
            raise ValueError(f"`std` must be a positive number; got {std!r}.")
        if not (isinstance(mean, int | float) and math.isfinite(mean)):
            raise ValueError(f"`mean` must be a finite number; got {mean!r}.")
        object.__setattr__(self, "type", _check_type(type))
        object.__setattr__(self, "noise_type", noise_type)
        object.__setattr__(self, "mean", float(mean))
        object.__setattr__(self, "std", float(std))


@dataclass(frozen=True)
class InputPerturbationTest(PerturbationTest):
    """Input perturbation test (IPT): ``x̂ = clip(x + δ)`` with ``δ ~ U(-noise, noise)`` i.i.d.
    per element (uniform, as in MetaQuantus), drawn from per-sample keys.

    Parameters
    ----------
    type:
        ``"Resilience"`` or ``"Adversary"``.
    noise:
        Half-width of the uniform noise (> 0).
    re_explain:
        ``True`` (default): explain the perturbed input. ``False`` reproduces MetaQuantus, which
        scores the *clean-input* explanations on the perturbed input; metrics that do not read
        the input are then not applicable to this test.
    clip:
        ``"data"`` (default): clip to the value range of the unperturbed batch,
        ``[min(x), max(x)]`` (a property of the data set given, so a sample's perturbation
        depends on the batch's range; pass the range explicitly to avoid that);
        ``(low, high)``: an explicit range; ``None``: no clipping; ``"metaquantus"``:
        MetaQuantus' ``clip(x̂, min(x), max(x̂))``, whose upper bound never binds.
    drop_rate:
        On token ids, where additive noise is not defined: the probability that each token is
        replaced by the mask token (token dropout, :class:`evalkit.perturb.TokenDropout`,
        through the modality's ``drop_features``; ``noise`` and ``clip`` are not used there).
        None (default): the test refuses token ids with a message saying so.

    On numeric data the noise goes through the modality's ``valid_noise``: a table with a
    column spec (``TabularModality(kinds=..., groups=...)``, passed as ``modality=`` to the
    meta-evaluation) keeps one-hot rows one-hot and ordinal columns on their levels
    (:class:`evalkit.perturb.ColumnNoise`; ``clip`` applies to the continuous columns).
    """

    noise: float = 0.001
    re_explain: bool = True
    clip: Any = "data"
    drop_rate: float | None = None

    space = "Input"

    def __init__(self, type: str, noise: float = 0.001, *, re_explain: bool = True,
                 clip: Any = "data", drop_rate: float | None = None) -> None:
        if not (isinstance(noise, int | float) and math.isfinite(noise) and noise > 0):
            raise ValueError(f"`noise` must be a positive number; got {noise!r}.")
        if not isinstance(re_explain, bool):
            raise TypeError(f"`re_explain` must be a bool; got {re_explain!r}.")
        if isinstance(clip, list | tuple):
            if len(clip) != 2 or not all(isinstance(c, int | float) for c in clip) \
                    or not clip[0] < clip[1]:
                raise ValueError(f"`clip` must be (low, high) with low < high; got {clip!r}.")
            clip = (float(clip[0]), float(clip[1]))
        elif clip not in (None, "data", "metaquantus"):
            raise ValueError("`clip` must be 'data', 'metaquantus', None or (low, high); got "
                             f"{clip!r}.")
        object.__setattr__(self, "type", _check_type(type))
        object.__setattr__(self, "noise", float(noise))
        object.__setattr__(self, "re_explain", re_explain)
        object.__setattr__(self, "clip", clip)
        if drop_rate is not None:
            if isinstance(drop_rate, bool) or not isinstance(drop_rate, int | float) or \
                    not 0 < drop_rate < 1:
                raise ValueError(f"`drop_rate` must be in (0, 1); got {drop_rate!r}.")
            drop_rate = float(drop_rate)
        object.__setattr__(self, "drop_rate", drop_rate)

    def params(self) -> dict[str, Any]:
        # without a drop rate the parameters (and stored configurations) are those of before
        out = super().params()
        if self.drop_rate is None:
            out.pop("drop_rate")
        return out


#: Published settings. ``"mnist"``: ``setup_test_suite`` of the MetaQuantus repository for
#: MNIST, fMNIST and cMNIST (the paper's experiments, README benchmarking, Getting-Started
#: tutorial): model noise sigma 0.001 / 2.0, input noise +-0.001 / +-5.0. ``"imagenet"``: the same
#: for ImageNet except the Model Adversary sigma, 0.5. ``"tutorial"``: the ImageNet tutorial of the
#: Quantus/MetaQuantus tutorial notebook: sigma 0.5 and input noise +-3.0.
SUITES: dict[str, dict[str, float]] = {
    "mnist": {"model_nr_std": 0.001, "model_ar_std": 2.0, "input_nr": 0.001, "input_ar": 5.0},
    "imagenet": {"model_nr_std": 0.001, "model_ar_std": 0.5, "input_nr": 0.001, "input_ar": 5.0},
    "tutorial": {"model_nr_std": 0.001, "model_ar_std": 0.5, "input_nr": 0.001, "input_ar": 3.0},
}


def default_suite(setting: str = "mnist", *, re_explain: bool = True,
                  clip: Any = "data") -> list[PerturbationTest]:
    """The four MetaQuantus tests with published settings (all multiplicative model noise with
    mean 1).

    ``setting="mnist"`` (default) is what the paper used on MNIST/fMNIST/cMNIST
    (``setup_test_suite``; model sigma 2.0 for the Adversary test); ``"imagenet"`` uses sigma 0.5
    for the Model Adversary test, as the repository does for ImageNet; ``"tutorial"`` is the
    ImageNet tutorial's suite (sigma 0.5, input noise +-3.0). ``re_explain`` and ``clip`` go to
    both input tests (``re_explain=False, clip="metaquantus"`` reproduces MetaQuantus' input
    tests).
    """
    if setting not in SUITES:
        raise ValueError(f"`setting` must be one of {sorted(SUITES)}; got {setting!r}.")
    p = SUITES[setting]
    return [
        ModelPerturbationTest("Resilience", "multiplicative", 1.0, p["model_nr_std"]),
        ModelPerturbationTest("Adversary", "multiplicative", 1.0, p["model_ar_std"]),
        InputPerturbationTest("Resilience", p["input_nr"], re_explain=re_explain, clip=clip),
        InputPerturbationTest("Adversary", p["input_ar"], re_explain=re_explain, clip=clip),
    ]


def as_suite(tests: Iterable[PerturbationTest] | Mapping[str, PerturbationTest] | None
             ) -> list[PerturbationTest]:
    """Validate a suite: a list (or MetaQuantus-style dict) of tests, at most one per
    (space, type)."""
    if tests is None:
        return default_suite()
    items = list(tests.values()) if isinstance(tests, Mapping) else list(tests)
    if not items:
        raise ValueError("`tests` is empty; give at least one perturbation test.")
    seen: set[str] = set()
    for t in items:
        if not isinstance(t, PerturbationTest):
            raise TypeError("`tests` must hold ModelPerturbationTest/InputPerturbationTest "
                            f"objects; got {type(t).__name__}.")
        if t.name in seen:
            raise ValueError(f"Two tests are both a {t.name!r}; give one per space and type.")
        seen.add(t.name)
    order = {"Model": 0, "Input": 1}
    return sorted(items, key=lambda t: (order[t.space], TYPES.index(t.type)))


def reads_input(metric: Any) -> bool:
    """Whether a metric's scores depend on the input values ``x``.

    A metric class may declare ``reads_input``; otherwise metrics that use the model
    (``needs_model``) or re-explain read ``x`` (they run the model on it), and model-free metrics
    (complexity, localisation) read only the attributions and masks.
    """
    declared = getattr(metric, "reads_input", None)
    if declared is not None:
        return bool(declared)
    return bool(getattr(metric, "needs_model", True) or getattr(metric, "re_explains", False))


def reads_model(metric: Any) -> bool:
    """Whether a metric's scores depend on the model it is called with.

    A metric may declare ``reads_model`` (e.g. :class:`~evalkit.metrics.FFidelity` given a
    fine-tuned module, or :class:`~evalkit.metrics.DataRandomisation`, whose forwards go to
    another model than the one it is called with); otherwise it is ``needs_model``.
    """
    declared = getattr(metric, "reads_model", None)
    if declared is not None:
        return bool(declared)
    return bool(getattr(metric, "needs_model", True))


def _method_reads(method: str, what: str) -> bool:
    """Whether an explanation method depends on the model (``what="model"``) or the input."""
    try:
        from evalkit.explain import explainer_info

        info = explainer_info(method)
    except (ValueError, TypeError):
        return True  # unknown (e.g. a user explain function): assume it does
    if info.name.lower() in _INPUT_FREE_METHODS:
        return False
    return not info.model_free if what == "model" else True


def applicability(metric: Any, test: PerturbationTest, methods: Iterable[str],
                  *, custom_explainer: bool = False) -> tuple[bool, str]:
    """``(applicable, reason)`` of a test for a metric explained by ``methods``."""
    methods = list(methods)
    if isinstance(test, ModelPerturbationTest):
        if reads_model(metric):
            return True, ""
        if custom_explainer or any(_method_reads(m, "model") for m in methods):
            return True, ""
        return False, ("the metric does not read the model and no explanation method depends "
                       "on it")
    if reads_input(metric):
        return True, ""
    if test.re_explain and (custom_explainer or any(_method_reads(m, "input") for m in methods)):
        return True, ""
    if not test.re_explain:
        return False, ("the metric does not read the input and re_explain=False scores the "
                       "clean-input explanations")
    return False, "neither the metric nor the explanation methods read the input"
