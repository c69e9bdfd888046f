"""Fixtures of the ported Quantus 0.6 metric tests, under the names Quantus' tests use.

Each fixture builds an equivalent of Quantus' own (same shapes, dtypes and value ranges where
they matter) from evalkit's shipped synthetic data or from fixed seeds; README.md in this folder
lists where they differ and why. TensorFlow fixtures skip: evalkit is PyTorch-first.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qs_models import ConvNet1D, LeNet, load, seeded, tabular_net, titanic_like

from evalkit.datasets import make_shapes

MINI_BATCH_SIZE = 8  # samples per image batch, as in Quantus' fixtures
TF_SKIP = ("TensorFlow model: out of scope for evalkit, which is PyTorch-first "
           "(NumPy callables are supported, the suite has no TensorFlow fixtures)")


def _rng(tag: int) -> np.random.Generator:
    return np.random.default_rng([21, tag])


# ---- models ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def load_mnist_model() -> torch.nn.Module:
    """An MNIST-sized LeNet (1 x 28 x 28 in, 10 logits out) trained on grayscale shapes."""
    return load(LeNet(n_channels=1, image_size=28), "lenet_mnist_like")


@pytest.fixture(scope="session")
def load_cifar10_model() -> torch.nn.Module:
    """A CIFAR-10-sized LeNet (3 x 32 x 32 in, 10 logits out) trained on RGB shapes."""
    return load(LeNet(n_channels=3, image_size=32), "lenet_cifar_like")


@pytest.fixture()
def load_mnist_adaptive_lenet_model() -> torch.nn.Module:
    """The MNIST weights in the adaptive-pooling LeNet (runs on any image size)."""
    return load(LeNet(n_channels=1, image_size=28, adaptive=True), "lenet_mnist_like")


@pytest.fixture()
def load_cifar10_adaptive_lenet_model() -> torch.nn.Module:
    """The CIFAR-10-sized weights in the adaptive-pooling LeNet."""
    return load(LeNet(n_channels=3, image_size=32, adaptive=True), "lenet_cifar_like")


@pytest.fixture(scope="session")
def load_1d_1ch_conv_model() -> torch.nn.Module:
    """An untrained (seeded) 1-D conv net on 1 channel, as Quantus' (untrained) ConvNet1D."""
    return seeded(lambda: ConvNet1D(n_channels=1), seed=1)


@pytest.fixture(scope="session")
def load_1d_3ch_conv_model() -> torch.nn.Module:
    """An untrained (seeded) 1-D conv net on 3 channels."""
    return seeded(lambda: ConvNet1D(n_channels=3), seed=3)


@pytest.fixture(scope="session")
def titanic_model_torch() -> torch.nn.Module:
    """A Titanic-sized MLP (12 features, 2 classes) trained on ``titanic_like`` rows."""
    return load(tabular_net(), "tabular_titanic_like")


@pytest.fixture(scope="session")
def load_mnist_model_softmax() -> torch.nn.Module:
    """The MNIST-sized LeNet followed by a softmax layer."""
    return torch.nn.Sequential(load(LeNet(n_channels=1, image_size=28), "lenet_mnist_like"),
                               torch.nn.Softmax(dim=1)).eval()


@pytest.fixture()
def load_mnist_model_tf():
    pytest.skip(TF_SKIP)


@pytest.fixture()
def load_cifar10_model_tf():
    pytest.skip(TF_SKIP)


@pytest.fixture()
def load_1d_3ch_conv_model_tf():
    pytest.skip(TF_SKIP)


@pytest.fixture()
def titanic_model_tf():
    pytest.skip(TF_SKIP)


# ---- data ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def load_mnist_images() -> dict:
    """Eight 1 x 28 x 28 grayscale images in [0, 1] (float64) and int labels."""
    data = make_shapes(MINI_BATCH_SIZE, seed=2, image_size=28)
    return {"x_batch": data.x.mean(axis=1, keepdims=True).astype(float),
            "y_batch": data.y.astype(int)}


@pytest.fixture(scope="session")
def load_cifar10_images() -> dict:
    """Eight 3 x 32 x 32 RGB images in [0, 1] (float64) and int labels."""
    data = make_shapes(MINI_BATCH_SIZE, seed=2, image_size=32)
    return {"x_batch": data.x.astype(float), "y_batch": data.y.astype(int)}


@pytest.fixture()
def load_mnist_images_tf():
    pytest.skip(TF_SKIP)


@pytest.fixture(scope="session")
def almost_uniform_1d() -> dict:
    rng = _rng(1)
    return {"x_batch": rng.standard_normal((10, 3, 100)),
            "y_batch": rng.integers(0, 10, size=10),
            "a_batch": rng.uniform(0, 0.01, size=(10, 1, 100))}


@pytest.fixture(scope="session")
def almost_uniform_1d_no_abatch() -> dict:
    rng = _rng(2)
    return {"x_batch": rng.standard_normal((10, 3, 100)),
            "y_batch": rng.integers(0, 10, size=10), "a_batch": None}


@pytest.fixture(scope="session")
def almost_uniform_1d_no_abatch_channel_last() -> dict:
    rng = _rng(3)
    return {"x_batch": rng.standard_normal((10, 100, 3)),
            "y_batch": rng.integers(0, 10, size=10)}


@pytest.fixture(scope="session")
def almost_uniform_2d() -> dict:
    rng = _rng(4)
    return {"x_batch": rng.standard_normal((10, 3, 224, 224)),
            "y_batch": rng.integers(0, 10, size=10),
            "a_batch": rng.uniform(0, 0.01, size=(10, 1, 224, 224))}


@pytest.fixture(scope="session")
def almost_uniform_2d_no_abatch() -> dict:
    rng = _rng(5)
    return {"x_batch": rng.standard_normal((10, 1, 28, 28)),
            "y_batch": rng.integers(0, 10, size=10), "a_batch": None}


@pytest.fixture(scope="session")
def titanic_dataset() -> dict:
    """150 held-out ``titanic_like`` rows (12 float features) and 0/1 labels."""
    x, y = titanic_like(150, seed=7)
    return {"x_batch": x, "y_batch": y}
