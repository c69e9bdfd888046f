"""Small reference models that ship with evalkit, for tests, examples and tutorials.

:class:`ShapesCNN` classifies the synthetic images of :func:`evalkit.datasets.make_shapes`;
:func:`load_shapes_cnn` returns it with the committed weights (``evalkit/assets/shapes_cnn.pt``,
reproduced by ``scripts/train_shapes_cnn.py``).

>>> from evalkit.datasets import make_shapes
>>> model = load_shapes_cnn()
>>> data = make_shapes(8, seed=123)
>>> logits = model(torch.from_numpy(data.x))  # (8, 4)
"""

from __future__ import annotations

import json
from collections import OrderedDict
from importlib import resources
from typing import Any

import torch
from torch import nn

__all__ = ["ShapesCNN", "load_shapes_cnn", "shapes_cnn_info"]

_WEIGHTS = "shapes_cnn.pt"
_METADATA = "shapes_cnn.json"


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    # bias=False: the BatchNorm that follows has its own shift. One ReLU module per block, not
    # in-place and not shared, so captum's DeepLift / LRP / guided backprop can hook each one.
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
            bn=nn.BatchNorm2d(c_out),
            relu=nn.ReLU(),
        )
    )


class ShapesCNN(nn.Module):
    """A tiny CNN: three conv blocks, global average pooling and one linear layer.

    Layers by name (for CAM methods and layer-wise randomisation)::

        features.conv1   conv 3x3 -> BN -> ReLU   (width channels, H x W)
        features.pool1   max-pool 2
        features.conv2   conv 3x3 -> BN -> ReLU   (2 width, H/2 x W/2)
        features.pool2   max-pool 2
        features.conv3   conv 3x3 -> BN -> ReLU   (4 width, H/4 x W/4)  <- last conv block
        gap              global average pooling
        fc               linear -> logits (no softmax)

    Because the head is GAP followed by a single linear layer, Grad-CAM on ``features.conv3``
    equals CAM (Zhou et al., 2016) up to a positive factor. Any input size >= 16 x 16 works.

    Parameters
    ----------
    n_classes:
        Number of outputs.
    in_channels:
        Input channels.
    width:
        Channels of the first block (doubled in each following block).
    """

    #: the last convolutional block, the usual layer for CAM methods
    cam_layer: str = "features.conv3"

    def __init__(self, n_classes: int = 4, *, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv1=_conv_block(in_channels, width),
                pool1=nn.MaxPool2d(2),
                conv2=_conv_block(width, 2 * width),
                pool2=nn.MaxPool2d(2),
                conv3=_conv_block(2 * width, 4 * width),
            )
        )
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_classes) for images (N, in_channels, H, W)."""
        return self.fc(torch.flatten(self.gap(self.features(x)), 1))


def _asset(name: str) -> Any:
    return resources.files("evalkit").joinpath("assets", name)


def shapes_cnn_info() -> dict[str, Any]:
    """Metadata of the shipped weights: training data, test accuracy, versions."""
    return json.loads(_asset(_METADATA).read_text(encoding="utf-8"))


def load_shapes_cnn(pretrained: bool = True) -> ShapesCNN:
    """A :class:`ShapesCNN` for 4-class :func:`~evalkit.datasets.make_shapes` images, in eval
    mode, on the CPU.

    With ``pretrained=True`` it carries the shipped weights, trained on 32 x 32 images with
    values in [0, 1] (no normalisation); see :func:`shapes_cnn_info` for the details. Otherwise
    it is freshly initialised (from torch's global RNG, as any new module).
    """
    model = ShapesCNN()
    if pretrained:
        with _asset(_WEIGHTS).open("rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()
