"""Benchmark workloads: a model, inputs, labels, attributions and masks, all seeded.

* **W1**: the ``BlackBoxModel`` CNN of the DermaMNIST part of the Quantus tutorial
  (3x28x28 inputs, 7 classes), 256 samples.
* **W2**: a ResNet-18 (plain torch, 1000 classes) on 3x224x224 inputs, 16 samples.
* **W4** (tabular): an MLP (30 -> 64 -> 64 -> 3) on 10,000 rows x 30 features; masks: a seeded
  set of 6 informative features (the same for every row), which the first layer weighs 10x
  more than the others.
* **W5** (series): a 1-D CNN (three Conv1d blocks, global average pooling, 4 classes) on
  256 x 3 x 500; masks: one seeded interval per sample (50 to 125 time steps).
* **W6** (text): a 2-layer transformer encoder (``nn.Embedding`` + ``nn.TransformerEncoder``,
  d_model 64, 4 heads, mean pool, 2 classes) over 128 x 64 token ids (vocabulary 1,000; id 1 is
  the mask token, id 0 padding, unused here); masks: one seeded rationale span per sample (4 to
  16 tokens).
* **W9** (vision transformer, issue 20): torchvision's ViT-B/16 with random weights (the
  optional ``vision`` extra, imported only when W9 is built) on 3x224x224 smooth random images,
  4 samples; masks: one seeded rectangle per image.

Weights are drawn from seeded generators inside :func:`torch.random.fork_rng`, so building a
workload never changes the caller's global random state. Batch-norm running statistics are then
calibrated with one train-mode pass over a separate seeded batch, so the eval-mode network is
normalised like a trained one (activations neither vanish nor explode). Inputs are smooth random
images in [0, 1]; labels are the model's own predictions, so explanations explain the predicted
class. Attributions are ``evalkit.explain(..., method="Saliency")``: ``a`` summed over channels
(N, 1, H, W), like Quantus' default ``reduce_axes=(1,)``, and ``a_channels`` per channel.
Masks ``s`` are one seeded random rectangle per sample, (N, 1, H, W) bool.

W4 and W5 are built the same way (seeded weights, seeded inputs, labels the predictions, Saliency
attributions: W4's ``a`` is (N, 30), W5's ``a`` (N, 1, T) summed over channels and ``a_channels``
(N, 3, T)). W6's inputs are integer ids, which have no gradient: its attributions are Saliency at
the embedding layer, ``|dS/de|`` summed over the embedding dimension, one value per token
(N, 64): ``explain(..., method="Saliency")`` on the ids where evalkit's ``explain()`` covers
token ids, else that gradient computed directly (the same quantity; the workload's description
says which).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MODALITY_DESCRIPTIONS", "MODALITY_WORKLOADS", "WORKLOADS", "BlackBoxModel",
           "ConvSeries", "ResNet18", "TabularMLP", "TextEncoder", "Workload", "get_workload"]


# --------------------------------------------------------------------------- models
class BlackBoxModel(nn.Module):
    """The DermaMNIST CNN of the Quantus/MetaQuantus tutorial (five conv blocks, MLP head)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 7) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=3), nn.BatchNorm2d(16), nn.ReLU())
        self.layer2 = nn.Sequential(
            nn.Conv2d(16, 16, kernel_size=3), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2))
        self.layer3 = nn.Sequential(
            nn.Conv2d(16, 64, kernel_size=3), nn.BatchNorm2d(64), nn.ReLU())
        self.layer4 = nn.Sequential(
            nn.Conv2d(64, 64, kernel_size=3), nn.BatchNorm2d(64), nn.ReLU())
        self.layer5 = nn.Sequential(
            nn.Conv2d(64, 64, kernel_size=3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2))
        self.fc = nn.Sequential(
            nn.Linear(64 * 4 * 4, 128), nn.ReLU(),
            nn.Linear(128, 128), nn.ReLU(),
            nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer5(self.layer4(self.layer3(self.layer2(self.layer1(x)))))
        return self.fc(x.view(x.size(0), -1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016): BasicBlock, layers [2, 2, 2, 2], written in plain torch."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        c_in = 64
        for i, w in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            layer = nn.Sequential(BasicBlock(c_in, w, stride), BasicBlock(w, w, 1))
            setattr(self, f"layer{i}", layer)
            c_in = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TabularMLP(nn.Module):
    """W4's MLP: ``features -> 64 -> 64 -> classes`` with ReLUs."""

    def __init__(self, features: int = 30, num_classes: int = 3, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvSeries(nn.Module):
    """W5's 1-D CNN: three Conv1d + batch-norm + ReLU blocks (max-pooling after the first
    two), global average pooling, a linear head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(in_channels, 16, 7, padding=3), nn.BatchNorm1d(16), nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(16, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(32, 32, 3, padding=1), nn.BatchNorm1d(32), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class TextEncoder(nn.Module):
    """W6's text classifier: ``nn.Embedding`` + a 2-layer ``nn.TransformerEncoder`` (batch
    first), mean pooling over the tokens, a linear head."""

    def __init__(self, vocab: int = 1000, d_model: int = 64, heads: int = 4, layers: int = 2,
                 num_classes: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=128, dropout=0.0,
                                           batch_first=True)
        # nested tensors only pay with padding masks, which this model does not take
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.fc = nn.Linear(d_model, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(self.embedding(ids)).mean(1))


# --------------------------------------------------------------------------- data helpers
def smooth_images(n: int, channels: int, size: int, *, seed: int) -> torch.Tensor:
    """Seeded smooth random images in [0, 1]: coarse noise upsampled, plus fine noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, channels, max(2, size // 4), max(2, size // 4)), generator=gen)
    x = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    x = x + 0.05 * torch.randn((n, channels, size, size), generator=gen)
    return x.clamp_(0.0, 1.0)


def random_boxes(n: int, size: int, *, seed: int) -> torch.Tensor:
    """(n, 1, size, size) bool masks, one seeded rectangle per sample (sides size/4..size/2)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, 1, size, size), dtype=bool)
    lo, hi = max(1, size // 4), max(2, size // 2)
    for i in range(n):
        h, w = rng.integers(lo, hi + 1, size=2)
        r, c = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        masks[i, 0, r : r + h, c : c + w] = True
    return torch.from_numpy(masks)


def seeded_model(factory: Callable[[], nn.Module], calib: torch.Tensor, *, seed: int) -> nn.Module:
    """Build ``factory()`` with weights from ``seed``, calibrate batch-norm statistics on
    ``calib`` (one train-mode pass, cumulative average), return it in eval mode.

    The global RNG is forked, so the caller's random streams are untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        with torch.no_grad():
            model(calib)
        for m in bns:
            m.momentum = 0.1
    return model.eval()


# --------------------------------------------------------------------------- the workload
@dataclass(eq=False)
class Workload:
    """One benchmark workload. Tensors live on ``device``; ``np()`` gives CPU NumPy copies
    (what Quantus takes)."""

    name: str
    description: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    a: torch.Tensor
    a_channels: torch.Tensor
    s: torch.Tensor
    device: torch.device
    #: what the metrics are told the inputs are (``modality=``); None: inferred (images)
    modality: Any = None
    #: the model's embedding layer (token-id workloads: where gradients are taken), or None
    embedding: nn.Module | None = None
    _np: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def np(self, key: str) -> np.ndarray:
        """``"x"``, ``"y"``, ``"a"``, ``"a_channels"`` or ``"s"`` as a cached NumPy array."""
        if key not in self._np:
            t = getattr(self, key)
            arr = t.detach().cpu().numpy()
            if key == "s":
                arr = arr.astype(np.float32)
            self._np[key] = arr
        return self._np[key]

    @cached_property
    def shape_text(self) -> str:
        return "x".join(str(d) for d in self.row_shape)

    def head(self, n: int) -> Workload:
        """The same workload restricted to its first ``n`` samples (cached; ``self`` if
        ``n >= self.n``)."""
        if n >= self.n:
            return self
        key = f"_head{n}"
        if key not in self.__dict__:
            self.__dict__[key] = Workload(
                name=self.name, description=self.description, model=self.model,
                x=self.x[:n], y=self.y[:n], a=self.a[:n], a_channels=self.a_channels[:n],
                s=self.s[:n], device=self.device, modality=self.modality,
                embedding=self.embedding)
        return self.__dict__[key]


def centre_logits(model: nn.Module, head: nn.Linear, x: torch.Tensor) -> nn.Module:
    """Shift ``head``'s bias so that the mean logit over ``x`` is 0 for every class: a seeded
    random network otherwise predicts one class for nearly every input."""
    with torch.no_grad():
        head.bias.sub_(model(x).mean(0))
    return model


def _finish(name: str, description: str, model: nn.Module, x: torch.Tensor, s: torch.Tensor,
            device: torch.device, modality: Any = None) -> Workload:
    import evalkit

    model = model.to(device)
    x = x.to(device)
    with torch.inference_mode():
        y = model(x).argmax(1)
    y = y.clone()
    a_ch = evalkit.explain(model, x, y, method="Saliency").detach()
    # tables have no channel axis: their per-feature map is the map
    a = a_ch if x.ndim == 2 else a_ch.sum(1, keepdim=True)
    return Workload(name=name, description=description, model=model, x=x, y=y, a=a,
                    a_channels=a_ch, s=s.to(device), device=device, modality=modality)


def make_w1(n: int = 256, device: str | torch.device = "cpu", seed: int = 0) -> Workload:
    x = smooth_images(n, 3, 28, seed=seed + 1)
    calib = smooth_images(256, 3, 28, seed=seed + 2)
    model = seeded_model(lambda: BlackBoxModel(3, 7), calib, seed=seed)
    return _finish("W1", f"BlackBoxModel (DermaMNIST tutorial CNN), {n} x 3x28x28, 7 classes",
                   model, x, random_boxes(n, 28, seed=seed + 3), torch.device(device))


def make_w2(n: int = 16, device: str | torch.device = "cpu", seed: int = 0) -> Workload:
    x = smooth_images(n, 3, 224, seed=seed + 11)
    calib = smooth_images(16, 3, 224, seed=seed + 12)
    model = seeded_model(lambda: ResNet18(1000), calib, seed=seed + 10)
    return _finish("W2", f"ResNet-18 (plain torch), {n} x 3x224x224, 1000 classes",
                   model, x, random_boxes(n, 224, seed=seed + 13), torch.device(device))


# --------------------------------------------------------------------------- W4-W6 (issue 19)
#: W4's informative features (seeded) and how much more the first layer weighs them
W4_FEATURES, W4_INFORMATIVE, W4_WEIGHT = 30, 6, 10.0


def make_w4(n: int = 10_000, device: str | torch.device = "cpu", seed: int = 0) -> Workload:
    """Tabular: a seeded MLP on ``n`` x 30 standard-normal features; masks: the informative
    feature set (6 seeded columns, the same for every row)."""
    gen = torch.Generator().manual_seed(seed + 41)
    x = torch.randn((n, W4_FEATURES), generator=gen)
    informative = torch.randperm(W4_FEATURES, generator=gen)[:W4_INFORMATIVE]

    def factory() -> nn.Module:
        model = TabularMLP(W4_FEATURES, 3)
        with torch.no_grad():  # the model reads mostly the informative features
            scale = torch.ones(W4_FEATURES)
            scale[informative] = W4_WEIGHT
            model.net[0].weight.mul_(scale / W4_WEIGHT ** 0.5)
        return model

    model = seeded_model(factory, x[:1], seed=seed + 40)
    centre_logits(model, model.net[-1], x)
    s = torch.zeros((n, W4_FEATURES), dtype=torch.bool)
    s[:, informative] = True
    from evalkit.modality import TabularModality

    return _finish("W4", f"MLP (30-64-64-3), {n} x 30 features, 3 classes; masks: the "
                   f"{W4_INFORMATIVE} informative features", model, x, s, torch.device(device),
                   modality=TabularModality())


def random_intervals(n: int, length: int, *, lo: int, hi: int, seed: int) -> torch.Tensor:
    """(n, length) bool masks, one seeded interval of ``lo`` to ``hi`` steps per sample."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, length), dtype=bool)
    for i in range(n):
        width = int(rng.integers(lo, hi + 1))
        start = int(rng.integers(0, length - width + 1))
        masks[i, start : start + width] = True
    return torch.from_numpy(masks)


def smooth_series(n: int, channels: int, length: int, *, seed: int) -> torch.Tensor:
    """Seeded smooth random series: coarse noise upsampled linearly, plus fine noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn((n, channels, max(2, length // 20)), generator=gen)
    x = F.interpolate(coarse, size=length, mode="linear", align_corners=False)
    return x + 0.1 * torch.randn((n, channels, length), generator=gen)


def make_w5(n: int = 256, device: str | torch.device = "cpu", seed: int = 0) -> Workload:
    """Series: a seeded 1-D CNN on ``n`` x 3 x 500; masks: one interval per sample."""
    x = smooth_series(n, 3, 500, seed=seed + 51)
    calib = smooth_series(256, 3, 500, seed=seed + 52)
    model = seeded_model(lambda: ConvSeries(3, 4), calib, seed=seed + 50)
    centre_logits(model, model.fc, calib)
    s = random_intervals(n, 500, lo=50, hi=125, seed=seed + 53)[:, None]
    from evalkit.modality import SeriesModality

    return _finish("W5", f"1-D CNN (3 Conv1d blocks), {n} x 3 x 500, 4 classes; masks: one "
                   "interval of 50-125 steps per sample", model, x, s, torch.device(device),
                   modality=SeriesModality())


#: W6's vocabulary, mask and padding ids
W6_VOCAB, W6_MASK_ID, W6_PAD_ID = 1000, 1, 0


def token_saliency(model: nn.Module, embedding: nn.Module, ids: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor:
    """``|dS/de|`` summed over the embedding dimension (N, L), ``S`` the logit of ``y`` and
    ``e`` the embedding layer's output: Saliency at the embedding layer."""
    captured: list[torch.Tensor] = []

    def keep(_m: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.detach().requires_grad_(True)
        captured.append(out)
        return out

    handle = embedding.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            score = model(ids).gather(1, y[:, None]).sum()
            (grad,) = torch.autograd.grad(score, captured[-1])
    finally:
        handle.remove()
    return grad.abs().sum(-1)


def _token_attributions(model: nn.Module, ids: torch.Tensor, y: torch.Tensor,
                        modality: Any) -> tuple[torch.Tensor, str]:
    """Saliency on token ids through ``explain()`` where it covers them, else directly."""
    import evalkit

    try:
        a = evalkit.explain(model, ids, y, method="Saliency", modality=modality).detach()
        return a.float(), 'explain(method="Saliency") at the embedding layer'
    except (TypeError, ValueError, NotImplementedError, RuntimeError):  # no token support
        a = token_saliency(model, model.embedding, ids, y).detach()
        return a, "|dS/de| summed over the embedding dimension (computed directly)"


def make_w6(n: int = 128, device: str | torch.device = "cpu", seed: int = 0) -> Workload:
    """Text: a seeded 2-layer transformer encoder over ``n`` x 64 token ids (2..999);
    masks: one rationale span of 4-16 tokens per sample."""
    from evalkit.modality import TokensModality

    gen = torch.Generator().manual_seed(seed + 61)
    ids = torch.randint(2, W6_VOCAB, (n, 64), generator=gen)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 60)
        model = TextEncoder(W6_VOCAB).eval()
    centre_logits(model, model.fc, torch.randint(2, W6_VOCAB, (256, 64), generator=gen))
    dev = torch.device(device)
    model, ids = model.to(dev), ids.to(dev)
    modality = TokensModality(mask_token_id=W6_MASK_ID, pad_token_id=W6_PAD_ID)
    with torch.inference_mode():
        y = model(ids).argmax(1)
    y = y.clone()
    a, how = _token_attributions(model, ids, y, modality)
    s = random_intervals(n, 64, lo=4, hi=16, seed=seed + 63).to(dev)
    return Workload(
        name="W6", description=f"2-layer transformer encoder (d_model 64, 4 heads, mean pool), "
        f"{n} x 64 token ids, vocabulary {W6_VOCAB}, 2 classes; mask id {W6_MASK_ID}; "
        f"rationales: one span of 4-16 tokens per sample; attributions: {how}",
        model=model, x=ids, y=y, a=a, a_channels=a, s=s, device=dev, modality=modality,
        embedding=model.embedding)


# --------------------------------------------------------------------------- W9 (issue 20)
def make_w9(n: int = 4, device: str | torch.device = "cpu", seed: int = 0) -> Workload:
    """Vision transformer: torchvision's ViT-B/16 with random weights (``weights=None``, never
    downloaded; torchvision imported here only, it is an optional extra) on ``n`` x 3x224x224
    smooth random images, 1000 classes. torchvision initialises the head to zeros (every logit
    0, every class gradient 0), so the head's weights are drawn from N(0, 0.02^2) and its bias
    centres the logits over ``x``; masks: one seeded rectangle per image."""
    import torchvision

    x = smooth_images(n, 3, 224, seed=seed + 91)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 90)
        model = torchvision.models.vit_b_16(weights=None).eval()
        with torch.no_grad():
            nn.init.normal_(model.heads.head.weight, std=0.02)
    centre_logits(model, model.heads.head, x)
    return _finish("W9", f"ViT-B/16 (torchvision, random weights), {n} x 3x224x224, 1000 "
                   "classes", model, x, random_boxes(n, 224, seed=seed + 93),
                   torch.device(device))


#: name -> (builder, default N, quick N)
WORKLOADS: dict[str, tuple[Callable[..., Workload], int, int]] = {
    "W1": (make_w1, 256, 8),
    "W2": (make_w2, 16, 2),
    "W4": (make_w4, 10_000, 64),
    "W5": (make_w5, 256, 8),
    "W6": (make_w6, 128, 8),
    "W9": (make_w9, 4, 2),
}
#: one sentence per non-image workload, for the page
MODALITY_DESCRIPTIONS: dict[str, str] = {
    "W4": "an MLP (30-64-64-3, seeded weights, the first layer weighing 6 seeded informative "
          "features 10x) on 10,000 rows x 30 standard-normal features; masks: the informative "
          "features; attributions: Saliency.",
    "W5": "a 1-D CNN (three Conv1d + batch-norm blocks, global average pooling, 4 classes, "
          "seeded) on 256 x 3 x 500 smooth random series; masks: one interval of 50-125 steps "
          "per series; attributions: Saliency (summed over channels; per channel for the "
          "channel-value rows).",
    "W6": "a 2-layer transformer encoder (nn.Embedding + nn.TransformerEncoder, d_model 64, "
          "mean pool, 2 classes, seeded) over 128 x 64 random token ids; masks: one rationale "
          "span of 4-16 tokens per text; attributions: Saliency at the embedding layer, one "
          "value per token.",
}
#: the workloads of one non-image modality each (issue 19): workload -> modality name
MODALITY_WORKLOADS: dict[str, str] = {"W4": "tabular", "W5": "series", "W6": "tokens"}

_CACHE: dict[tuple[str, int, str], Workload] = {}


def get_workload(name: str, n: int | None = None, device: str | torch.device = "cpu",
                 *, quick: bool = False) -> Workload:
    """The named workload with ``n`` samples (default: the workload's N, or its quick N)."""
    if name not in WORKLOADS:
        raise KeyError(f"Unknown workload {name!r}; known: {sorted(WORKLOADS)}.")
    build, n_full, n_quick = WORKLOADS[name]
    n = n if n is not None else (n_quick if quick else n_full)
    key = (name, n, str(torch.device(device)))
    if key not in _CACHE:
        _CACHE[key] = build(n=n, device=device)
    return _CACHE[key]


# --------------------------------------------------------------------------- W7 (issue 20)
#: W7's image side; torchvision's transform resizes to it (no upsampling to 320)
W7_SIZE = 160


def make_w7(n: int = 4, device: str | torch.device = "cpu", seed: int = 0) -> Workload:
    """Object detection: torchvision's Faster R-CNN (MobileNetV3-Large FPN, the 320 variant)
    with seeded random weights in :class:`evalkit.models.DetectionModel`, on ``n`` smooth
    160 x 160 images. ``box_score_thresh=0.0`` (an untrained detector scores every class about
    1/91, below the default 0.05: no box at all), 160-pixel inputs, 40/20 proposals, 20
    detections per image; the class head is scaled by 100 so that scores differ between boxes.
    ``y``: each image's top detection ``[x1, y1, x2, y2, label]`` (N, 5), the references of
    :class:`evalkit.models.BoxScoreTarget`; masks: those boxes; ``a``: GradCAM at the end of
    the backbone, ``a_channels``: Saliency. torchvision is imported here, lazily (the vision
    extra): the other workloads do not need it."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    import evalkit
    from evalkit.masks import masks_from_boxes
    from evalkit.models import BoxScoreTarget, DetectionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 70)
        detector = fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None, weights_backbone=None, box_score_thresh=0.0, min_size=W7_SIZE,
            max_size=W7_SIZE, rpn_pre_nms_top_n_test=40, rpn_post_nms_top_n_test=20,
            box_detections_per_img=20)
    with torch.no_grad():
        detector.roi_heads.box_predictor.cls_score.weight.mul_(100)
    dev = torch.device(device)
    model = DetectionModel(detector, max_detections=20).eval().to(dev)
    x = smooth_images(n, 3, W7_SIZE, seed=seed + 71).to(dev)
    wrapper = evalkit.wrap_model(model, target=BoxScoreTarget())
    y = wrapper.target.predict(wrapper.predict(x))
    a = evalkit.explain(wrapper, x, y, method="GradCAM").detach()
    a_ch = evalkit.explain(wrapper, x, y, method="Saliency").detach()
    s = masks_from_boxes(y[:, :4], (W7_SIZE, W7_SIZE))
    return Workload(
        name="W7", description=f"Faster R-CNN (MobileNetV3-Large FPN, random weights, "
        f"box_score_thresh 0, 20 proposals/detections) in DetectionModel, {n} x 3x{W7_SIZE}x"
        f"{W7_SIZE}; references: each image's top detection (BoxScoreTarget); masks: its box",
        model=model, x=x, y=y, a=a, a_channels=a_ch, s=s.to(dev), device=dev)


WORKLOADS["W7"] = (make_w7, 4, 2)


# --------------------------------------------------------------------------- W8 (issue 20)
#: W8's image side and classes
W8_SIZE, W8_CLASSES = 128, 5


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


class SegmentationNet(nn.Module):
    """W8's model, plain torch: a convolutional backbone (3 -> 16 -> 32 -> 64 channels, output
    stride 8), a segmentation head (3x3 conv, batch-norm, ReLU, 1x1 classifier, as the FCN
    head of Long et al. 2015) and bilinear upsampling to the input: per-pixel logits
    (N, classes, H, W). ``backbone.3`` is the last backbone block (GradCAM's layer)."""

    def __init__(self, num_classes: int = W8_CLASSES) -> None:
        super().__init__()
        self.backbone = nn.Sequential(_conv_bn_relu(3, 16, 2), _conv_bn_relu(16, 32, 2),
                                      _conv_bn_relu(32, 64, 2), _conv_bn_relu(64, 64))
        self.head = nn.Sequential(_conv_bn_relu(64, 64), nn.Conv2d(64, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def make_w8(n: int = 8, device: str | torch.device = "cpu", seed: int = 0) -> Workload:
    """Semantic segmentation: :class:`SegmentationNet` (seeded weights, batch-norm calibrated,
    the classifier's biases centred so that every class wins somewhere) on ``n`` smooth
    128 x 128 images, scored by ``SegmentationTarget(region="predicted")``: ``y`` is each
    image's most frequent predicted class, the masks are the pixels predicted as it (the
    scored region), ``a`` is GradCAM on ``backbone.3`` and ``a_channels`` Saliency, both of
    that target. Plain torch (no torchvision)."""
    import evalkit
    from evalkit.models import SegmentationTarget

    dev = torch.device(device)
    x = smooth_images(n, 3, W8_SIZE, seed=seed + 81)
    calib = smooth_images(16, 3, W8_SIZE, seed=seed + 82)
    model = seeded_model(SegmentationNet, calib, seed=seed + 80)
    with torch.no_grad():  # centre each class's mean logit over the calibration pixels
        model.head[1].bias.sub_(model(calib).mean((0, 2, 3)))
    model = model.to(dev)
    x = x.to(dev)
    wrapper = evalkit.wrap_model(model, target=SegmentationTarget(region="predicted"))
    pred = wrapper.predict(x).argmax(1)
    y = torch.stack([torch.bincount(p.flatten(), minlength=W8_CLASSES).argmax() for p in pred])
    s = wrapper.target.regions(wrapper.predict(x), y).unsqueeze(1)
    a = evalkit.explain(wrapper, x, y, method="GradCAM", layer="backbone.3").detach()
    a_ch = evalkit.explain(wrapper, x, y, method="Saliency").detach()
    return Workload(
        name="W8", description=f"segmentation net (plain torch: conv backbone, output stride "
        f"8, FCN head, bilinear upsampling; seeded), {n} x 3x{W8_SIZE}x{W8_SIZE}, "
        f"{W8_CLASSES} classes; SegmentationTarget(region='predicted') of each image's most "
        "frequent predicted class; masks: that region; a: GradCAM (backbone.3)",
        model=model, x=x, y=y, a=a, a_channels=a_ch, s=s, device=dev)


WORKLOADS["W8"] = (make_w8, 8, 2)
