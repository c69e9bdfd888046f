"""The models of the ported Quantus test suite (see README.md in this folder).

Architectures of the same sizes and layer names as the models Quantus' tests use (a LeNet with
``conv_1 ... fc_3``, its adaptive-pooling variant, a 1-D convolutional net and a small tabular
net), written for evalkit. Weights come from ``scripts/train_quantus_suite_lenets.py`` (trained
on evalkit's synthetic shapes data, not on MNIST/CIFAR-10) or, for the 1-D nets, from a seeded
initialisation (Quantus' 1-D models are untrained too).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

ASSETS = Path(__file__).resolve().parent / "assets"
N_CLASSES = 10  # as Quantus' models; the shapes data use classes 0-3 of them


class LeNet(nn.Module):
    """LeNet-5 sized CNN: two 5x5 conv + max-pool stages and three fully connected layers.

    ``n_channels=1, image_size=28`` is the MNIST-sized model, ``n_channels=3, image_size=32``
    the CIFAR-10-sized one. ``adaptive=True`` inserts an adaptive average pool to 4x4 before
    the classifier to the feature size of ``image_size``, so the same weights run on any image
    size (Quantus' LeNetAdaptivePooling).
    """

    def __init__(self, n_channels: int = 1, image_size: int = 28, adaptive: bool = False,
                 n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.conv_1 = nn.Conv2d(n_channels, 6, 5)
        self.pool_1 = nn.MaxPool2d(2, 2)
        self.relu_1 = nn.ReLU()
        self.conv_2 = nn.Conv2d(6, 16, 5)
        self.pool_2 = nn.MaxPool2d(2, 2)
        self.relu_2 = nn.ReLU()
        side = ((image_size - 4) // 2 - 4) // 2  # after two conv (5x5) / pool (2x2) stages
        self.avg_pooling = nn.AdaptiveAvgPool2d((side, side)) if adaptive else nn.Identity()
        self.fc_1 = nn.Linear(16 * side * side, 120)
        self.relu_3 = nn.ReLU()
        self.fc_2 = nn.Linear(120, 84)
        self.relu_4 = nn.ReLU()
        self.fc_3 = nn.Linear(84, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool_1(self.relu_1(self.conv_1(x)))
        x = self.pool_2(self.relu_2(self.conv_2(x)))
        x = self.avg_pooling(x).flatten(1)
        x = self.relu_3(self.fc_1(x))
        x = self.relu_4(self.fc_2(x))
        return self.fc_3(x)


class ConvNet1D(nn.Module):
    """A 1-D LeNet for (N, C, 100) or (N, C, 224) series; the classifier adapts to the length
    (an adaptive max pool to 22 steps, as after two conv/pool stages on 100 steps)."""

    def __init__(self, n_channels: int = 3, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.conv_1 = nn.Conv1d(n_channels, 6, 5)
        self.pool_1 = nn.MaxPool1d(2, 2)
        self.relu_1 = nn.ReLU()
        self.conv_2 = nn.Conv1d(6, 16, 5)
        self.pool_2 = nn.MaxPool1d(2, 2)
        self.relu_2 = nn.ReLU()
        self.avg_pooling = nn.AdaptiveAvgPool1d(22)
        self.fc_1 = nn.Linear(16 * 22, 120)
        self.relu_3 = nn.ReLU()
        self.fc_2 = nn.Linear(120, 84)
        self.relu_4 = nn.ReLU()
        self.fc_3 = nn.Linear(84, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool_1(self.relu_1(self.conv_1(x)))
        x = self.pool_2(self.relu_2(self.conv_2(x)))
        x = self.avg_pooling(x).flatten(1)
        return self.fc_3(self.relu_4(self.fc_2(self.relu_3(self.fc_1(x)))))


def tabular_net(n_features: int = 12, n_classes: int = 2) -> nn.Sequential:
    """A small sigmoid MLP for 12 tabular features and 2 classes (Titanic-sized)."""
    return nn.Sequential(nn.Linear(n_features, 12), nn.Sigmoid(), nn.Linear(12, 8), nn.Sigmoid(),
                         nn.Linear(8, n_classes))


def seeded(module_factory, seed: int) -> nn.Module:
    """Build a module with its default initialisation drawn from a fixed seed (the global RNG
    is forked, not reseeded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return module_factory().eval()


def load(model: nn.Module, name: str) -> nn.Module:
    """Load ``assets/<name>.pt`` (float16 on disk to keep the repository small) into ``model``."""
    state = torch.load(ASSETS / f"{name}.pt", map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def titanic_like(n: int, seed: int) -> tuple:
    """A seeded stand-in for Quantus' Titanic test split: 12 float features in Titanic's
    one-hot layout (age, fare, parch, sibsp, embarked C/Q/S, pclass 1/2/3, sex female/male)
    and a 0/1 label from a noisy logistic rule on sex, class and age."""
    import numpy as np

    rng = np.random.default_rng(seed)
    age = rng.normal(30.0, 13.0, n).clip(0.5, 80.0)
    fare = rng.gamma(1.5, 22.0, n)
    parch = rng.poisson(0.4, n).astype(float)
    sibsp = rng.poisson(0.5, n).astype(float)
    embarked = np.eye(3)[rng.choice(3, n, p=[0.2, 0.1, 0.7])]
    pclass = np.eye(3)[rng.choice(3, n, p=[0.25, 0.2, 0.55])]
    sex = np.eye(2)[rng.choice(2, n, p=[0.35, 0.65])]
    x = np.column_stack([age, fare, parch, sibsp, embarked, pclass, sex]).astype(float)
    logit = 2.4 * sex[:, 0] - 1.2 + 1.0 * pclass[:, 0] - 0.9 * pclass[:, 2] - 0.02 * (age - 30)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    return x, y
