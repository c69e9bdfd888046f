"""Small reference models that ship with evalkit, for tests, examples and tutorials.

:class:`ShapesCNN` classifies the synthetic images of :func:`evalkit.datasets.make_shapes`;
:func:`load_shapes_cnn` returns it with the committed weights (``evalkit/assets/shapes_cnn.pt``,
reproduced by ``scripts/train_shapes_cnn.py``). One model per other modality, each trained on
its synthetic data set by a script in ``scripts/``:

* :class:`TabularMLP` (:func:`load_tabular_mlp`) on :func:`~evalkit.datasets.make_tabular`;
* :class:`SeriesCNN` (:func:`load_series_cnn`) on :func:`~evalkit.datasets.make_series`;
* :class:`TextEncoder` (:func:`load_text_encoder`) on :func:`~evalkit.datasets.make_text`.

Each ``*_info()`` function returns the metadata written with the weights (training data and
seeds, held-out accuracy, versions, the weights' SHA-256).

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

__all__ = [
    "SeriesCNN",
    "ShapesCNN",
    "TabularMLP",
    "TextEncoder",
    "load_series_cnn",
    "load_shapes_cnn",
    "load_tabular_mlp",
    "load_text_encoder",
    "series_cnn_info",
    "shapes_cnn_info",
    "tabular_mlp_info",
    "text_encoder_info",
]

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


# --- the other modalities ------------------------------------------------------------------


def _info(stem: str) -> dict[str, Any]:
    return json.loads(_asset(f"{stem}.json").read_text(encoding="utf-8"))


def _pretrained(model: nn.Module, stem: str, pretrained: bool) -> nn.Module:
    if pretrained:
        with _asset(f"{stem}.pt").open("rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()


class TabularMLP(nn.Module):
    """A multi-layer perceptron for (N, F) tables.

    Layers by name (for layer-wise randomisation)::

        fc1 -> relu1 -> fc2 -> relu2 -> fc3   (logits, no softmax)

    Parameters
    ----------
    n_features:
        Input columns.
    n_classes:
        Number of outputs.
    hidden:
        Width of both hidden layers.
    """

    def __init__(self, n_features: int = 12, n_classes: int = 2, *, hidden: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_features, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_classes) for rows (N, n_features)."""
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


def _conv1d_block(c_in: int, c_out: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
            bn=nn.BatchNorm1d(c_out),
            relu=nn.ReLU(),
        )
    )


class SeriesCNN(nn.Module):
    """A tiny 1-D CNN for (N, C, T) series: three conv blocks, global average pooling over time
    and one linear layer (the layout of :class:`ShapesCNN`, in one dimension).

    Layers by name::

        features.conv1   conv 5 -> BN -> ReLU   (width channels, T)
        features.pool1   max-pool 2
        features.conv2   conv 5 -> BN -> ReLU   (2 width, T/2)
        features.pool2   max-pool 2
        features.conv3   conv 3 -> BN -> ReLU   (2 width, T/4)  <- last conv block
        gap              average over time
        fc               linear -> logits (no softmax)

    The receptive field of ``features.conv3`` is 21 steps, longer than the 16-step windows of
    :func:`~evalkit.datasets.make_series`. Any length >= 4 works.

    Parameters
    ----------
    n_classes:
        Number of outputs.
    in_channels:
        Input channels.
    width:
        Channels of the first block.
    """

    #: the last convolutional block, the usual layer for CAM methods
    cam_layer: str = "features.conv3"

    def __init__(self, n_classes: int = 3, *, in_channels: int = 2, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv1=_conv1d_block(in_channels, width, 5),
                pool1=nn.MaxPool1d(2),
                conv2=_conv1d_block(width, 2 * width, 5),
                pool2=nn.MaxPool1d(2),
                conv3=_conv1d_block(2 * width, 2 * width, 3),
            )
        )
        self.gap = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_classes) for series (N, in_channels, T)."""
        return self.fc(torch.flatten(self.gap(self.features(x)), 1))


class TextEncoder(nn.Module):
    """A tiny transformer encoder classifier over (N, L) int64 token ids.

    ``logits = fc(mean over the non-pad tokens of encoder(embedding(x) + position))``. Padding
    (``pad_id``) is left out of the attention and of the mean, so replacing a token by
    ``pad_id`` deletes it; a text that is all padding gets the head's bias.

    Modules by name::

        embedding   nn.Embedding(vocab_size, d_model): the token embeddings, the layer that
                    embedding-level explainers attribute at (its output is (N, L, d_model))
        position    nn.Embedding(max_length, d_model): learned positions, added after
                    ``embedding`` (so attributions at ``embedding`` are about tokens only)
        encoder     nn.TransformerEncoder: n_layers post-norm layers, GELU, no dropout
        fc          linear head -> logits (no softmax)

    The number of heads is odd (3) on purpose: PyTorch then never takes its inference "fast
    path" for transformer layers, so a forward pass under ``torch.inference_mode`` (metrics)
    computes exactly what a forward pass with gradients (explainers) computes.

    Parameters
    ----------
    vocab_size:
        Number of token ids (:data:`evalkit.datasets.TEXT_VOCABULARY` has 51).
    n_classes:
        Number of outputs.
    d_model, n_heads, n_layers, dim_feedforward:
        The encoder's sizes (``d_model`` divisible by ``n_heads``).
    max_length:
        The longest input (positions).
    pad_id:
        The padding id.
    """

    def __init__(self, vocab_size: int = 51, n_classes: int = 2, *, d_model: int = 24,
                 n_heads: int = 3, n_layers: int = 2, dim_feedforward: int = 48,
                 max_length: int = 64, pad_id: int = 0) -> None:
        super().__init__()
        self.pad_id = int(pad_id)
        self.max_length = int(max_length)
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=self.pad_id)
        self.position = nn.Embedding(max_length, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward, dropout=0.0,
                                           activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.fc = nn.Linear(d_model, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_classes) for token ids (N, L), L <= ``max_length``."""
        if x.shape[1] > self.max_length:
            raise ValueError(f"TextEncoder takes at most {self.max_length} tokens; got "
                             f"{x.shape[1]}.")
        keep = x != self.pad_id  # (N, L)
        positions = torch.arange(x.shape[1], device=x.device)
        h = self.embedding(x) + self.position(positions)
        # A row that is all padding would attend to nothing (NaN); let it attend to everything,
        # its mean below is over no token anyway.
        ignore = ~keep & keep.any(1, keepdim=True)
        h = self.encoder(h, src_key_padding_mask=ignore)
        weights = keep.to(h.dtype).unsqueeze(-1)
        pooled = (h * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.fc(pooled)


def load_tabular_mlp(pretrained: bool = True) -> TabularMLP:
    """A :class:`TabularMLP` for the default :func:`~evalkit.datasets.make_tabular` rows (12
    columns, 2 classes), in eval mode, on the CPU; with the shipped weights
    (``scripts/train_tabular_mlp.py``; see :func:`tabular_mlp_info`) unless
    ``pretrained=False``."""
    return _pretrained(TabularMLP(), "tabular_mlp", pretrained)  # type: ignore[return-value]


def load_series_cnn(pretrained: bool = True) -> SeriesCNN:
    """A :class:`SeriesCNN` for the default :func:`~evalkit.datasets.make_series` series (2
    channels, 3 classes), in eval mode, on the CPU; with the shipped weights
    (``scripts/train_series_cnn.py``; see :func:`series_cnn_info`) unless
    ``pretrained=False``."""
    return _pretrained(SeriesCNN(), "series_cnn", pretrained)  # type: ignore[return-value]


def load_text_encoder(pretrained: bool = True) -> TextEncoder:
    """A :class:`TextEncoder` for :func:`~evalkit.datasets.make_text` token ids (up to 64
    tokens, 2 classes), in eval mode, on the CPU; with the shipped weights
    (``scripts/train_text_encoder.py``; see :func:`text_encoder_info`) unless
    ``pretrained=False``. Attribute at ``model.embedding`` for embedding-level explanations;
    removing a token means replacing it by :data:`~evalkit.datasets.TEXT_PAD_ID` (0)."""
    return _pretrained(TextEncoder(), "text_encoder", pretrained)  # type: ignore[return-value]


def tabular_mlp_info() -> dict[str, Any]:
    """Metadata of the shipped :class:`TabularMLP` weights."""
    return _info("tabular_mlp")


def series_cnn_info() -> dict[str, Any]:
    """Metadata of the shipped :class:`SeriesCNN` weights."""
    return _info("series_cnn")


def text_encoder_info() -> dict[str, Any]:
    """Metadata of the shipped :class:`TextEncoder` weights."""
    return _info("text_encoder")
