"""``explain()``: attributions from a registry of explanation methods.

>>> a = evalkit.explain(model, x, y, method="IntegratedGradients", n_steps=32)  # doctest: +SKIP
>>> cam = evalkit.explain(model, x, y, method="GradCAM", layer="features.conv3")  # doctest: +SKIP

NumPy in gives NumPy out; tensors in give tensors out (on the model's device). Every method
honours the wrapper's target (class index per sample, probabilities with ``softmax=True``, or a
custom score callable): the explained quantity is the scored quantity.

Methods (see :func:`available_methods`; :func:`explainer_info` says what each needs):

- captum: Saliency, Gradient, InputXGradient, IntegratedGradients, GradientShap (native, seeded
  per sample), DeepLift, DeepLiftShap, GuidedBackprop, Deconvolution, LRP, Occlusion,
  FeatureAblation, Lime, KernelShap, and the layer methods LayerGradCam, GuidedGradCam,
  LayerConductance, LayerActivation, InternalInfluence, LayerGradientXActivation,
  LayerIntegratedGradients;
- the CAM family in torch (:mod:`evalkit.explain.cam`): GradCAM, HiResCAM, GradCAMElementWise,
  GradCAMPlusPlus, XGradCAM, LayerCAM, EigenCAM, EigenGradCAM, ScoreCAM, AblationCAM, FullGrad,
  RandomCAM;
- controls: Random, Constant, Sobel, GroundTruth (``masks=``);
- vision transformers: AttentionRollout (:mod:`evalkit.explain.rollout`); the CAMs take a
  ``reshape_transform`` (:func:`vit_reshape_transform`, :func:`swin_reshape_transform`).

Modalities: every method declares the inputs it is defined for
(:attr:`ExplainerInfo.modalities`; ``available_methods("tokens")``). On integer token ids
(N, L) the gradient methods attribute at the embedding layer (``embedding_layer=``) and the
perturbation methods replace tokens by a mask token; they return one value per token, (N, L)
(:mod:`evalkit.explain.tokens`).

Shapes: input-space methods give (N, C, ...) like ``x``; CAMs, Sobel, Constant and GroundTruth
give one map (N, 1, ...) (for tables and token ids: (N, F) and (N, L)); ``reduce_channels``
reduces any output to (N, 1, ...). Deep Feature Factorization (:class:`DeepFeatureFactorization`)
is a batch-level analysis with its own result object, not an attribution method of the registry.
"""

# the built-in methods register themselves when their modules load, i.e. when this package
# does (the registry in .core knows none of them: no import cycle)
from . import captum_methods, controls, rollout, tokens  # noqa: F401
from .cam import (
    DEFAULT_AUGMENTATIONS,
    fullgrad_decomposition,
    swin_reshape_transform,
    vit_reshape_transform,
)
from .core import (
    ExplainerInfo,
    available_methods,
    explain,
    explainer_info,
    get_explainer,
    numpy_explain_fn,
    register_explainer,
    register_token_explainer,
)
from .dff import DeepFeatureFactorization, FactorizationResult, deep_feature_factorization, nmf
from .visualise import show_cam_on_image, show_factorization_on_image

__all__ = [
    "DEFAULT_AUGMENTATIONS",
    "DeepFeatureFactorization",
    "ExplainerInfo",
    "FactorizationResult",
    "available_methods",
    "deep_feature_factorization",
    "explain",
    "explainer_info",
    "fullgrad_decomposition",
    "get_explainer",
    "nmf",
    "numpy_explain_fn",
    "register_explainer",
    "register_token_explainer",
    "show_cam_on_image",
    "show_factorization_on_image",
    "swin_reshape_transform",
    "vit_reshape_transform",
]
