"""Train the models of the ported Quantus test suite (tests/quantus_suite/assets/).

    .venv/bin/python scripts/train_quantus_suite_lenets.py

Three small models, trained on data shipped with evalkit or drawn here from fixed seeds (no
MNIST, CIFAR-10 or Titanic files): an MNIST-sized LeNet on 28x28 grayscale shapes
(``evalkit.datasets.make_shapes`` averaged over the colour channels), a CIFAR-10-sized LeNet on
32x32 RGB shapes, and a Titanic-sized MLP on ``titanic_like`` rows. Deterministic on CPU (fixed
seeds, deterministic algorithms, one thread); 30 s to 2 min on CPU. Weights are stored as
float16 to keep the repository small (about 220 KB together).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "tests" / "quantus_suite"))

from qs_models import ASSETS, LeNet, tabular_net, titanic_like  # noqa: E402

from evalkit.datasets import make_shapes  # noqa: E402

N_TRAIN, N_TEST, EPOCHS = 4000, 500, 25


def grayscale(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=1, keepdims=True)


def fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float,
        batch_size: int = 64) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=order).split(batch_size):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode():
        return float((model(x).argmax(1) == y).float().mean())


def save(model: torch.nn.Module, name: str) -> None:
    state = {k: v.detach().half() for k, v in model.state_dict().items()}
    torch.save(state, ASSETS / f"{name}.pt")


def main() -> None:
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    ASSETS.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for name, size, gray in (("lenet_mnist_like", 28, True), ("lenet_cifar_like", 32, False)):
        train = make_shapes(N_TRAIN, seed=0, image_size=size)
        test = make_shapes(N_TEST, seed=1, image_size=size)
        prep = grayscale if gray else (lambda a: a)
        x, xt = torch.from_numpy(prep(train.x)), torch.from_numpy(prep(test.x))
        y, yt = torch.from_numpy(train.y), torch.from_numpy(test.y)
        model = LeNet(n_channels=1 if gray else 3, image_size=size)
        fit(model, x, y, EPOCHS, lr=3e-3)
        save(model, name)
        print(f"{name}: test accuracy {accuracy(model, xt, yt):.3f} "
              f"({time.perf_counter() - start:.0f} s)")

    x, y = titanic_like(2000, seed=0)
    xt, yt = titanic_like(500, seed=1)
    mlp = tabular_net()
    fit(mlp, torch.tensor(x, dtype=torch.float32), torch.tensor(y), 30, lr=1e-2)
    save(mlp, "tabular_titanic_like")
    print(f"tabular_titanic_like: test accuracy "
          f"{accuracy(mlp, torch.tensor(xt, dtype=torch.float32), torch.tensor(yt)):.3f} "
          f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
