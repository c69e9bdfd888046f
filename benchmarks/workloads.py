"""Benchmark workloads: a model, inputs, labels, attributions and masks, all seeded.

* **W1**: the ``BlackBoxModel`` CNN of the DermaMNIST part of the Quantus tutorial
  (3x28x28 inputs, 7 classes), 256 samples.
* **W2**: a ResNet-18 (plain torch, 1000 classes) on 3x224x224 inputs, 16 samples.

Weights are drawn from seeded generators inside :func:`torch.random.fork_rng`, so building a
workload never changes the caller's global random state. Batch-norm running statistics are then
calibrated with one train-mode pass over a separate seeded batch, so the eval-mode network is
normalised like a trained one (activations neither vanish nor explode). Inputs are smooth random
images in [0, 1]; labels are the model's own predictions, so explanations explain the predicted
class. Attributions are ``evalkit.explain(..., method="Saliency")``: ``a`` summed over channels
(N, 1, H, W), like Quantus' default ``reduce_axes=(1,)``, and ``a_channels`` per channel.
Masks ``s`` are one seeded random rectangle per sample, (N, 1, H, W) bool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WORKLOADS", "BlackBoxModel", "ResNet18", "Workload", "get_workload"]


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
                s=self.s[:n], device=self.device)
        return self.__dict__[key]


def _finish(name: str, description: str, model: nn.Module, x: torch.Tensor, s: torch.Tensor,
            device: torch.device) -> Workload:
    import evalkit

    model = model.to(device)
    x = x.to(device)
    with torch.inference_mode():
        y = model(x).argmax(1)
    y = y.clone()
    a_ch = evalkit.explain(model, x, y, method="Saliency").detach()
    a = a_ch.sum(1, keepdim=True)
    return Workload(name=name, description=description, model=model, x=x, y=y, a=a,
                    a_channels=a_ch, s=s.to(device), device=device)


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


#: name -> (builder, default N, quick N)
WORKLOADS: dict[str, tuple[Callable[..., Workload], int, int]] = {
    "W1": (make_w1, 256, 8),
    "W2": (make_w2, 16, 2),
}

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
