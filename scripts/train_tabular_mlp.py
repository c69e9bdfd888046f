"""Train the TabularMLP shipped in evalkit/assets/ (tabular_mlp.pt and tabular_mlp.json).

    .venv/bin/python scripts/train_tabular_mlp.py

Deterministic on the CPU, a few seconds (see scripts/_training.py for what is fixed).
"""

from __future__ import annotations

import time

import torch
from _training import TEST_SEED, TRAIN_SEED, accuracy, deterministic, parser, train, write

from evalkit.datasets import TABULAR_CLASS_NAMES, make_tabular
from evalkit.zoo import TabularMLP


def main() -> None:
    args = parser(__doc__, n_train=10_000, n_test=2_000, epochs=30, batch_size=128,
                  lr=1e-2).parse_args()
    deterministic(args.threads)
    start = time.perf_counter()
    train_set, test_set = make_tabular(args.n_train, seed=TRAIN_SEED), make_tabular(
        args.n_test, seed=TEST_SEED)
    x, y = torch.from_numpy(train_set.x), torch.from_numpy(train_set.y)
    x_test, y_test = torch.from_numpy(test_set.x), torch.from_numpy(test_set.y)
    model = TabularMLP(x.shape[1], len(TABULAR_CLASS_NAMES))
    train(model, x, y, args, x_test=x_test, y_test=y_test)
    write(model, "tabular_mlp", args, train_acc=accuracy(model, x, y),
          test_acc=accuracy(model, x_test, y_test),
          data={"data": "evalkit.datasets.make_tabular (defaults)",
                "n_features": x.shape[1], "n_classes": len(TABULAR_CLASS_NAMES),
                "class_names": list(TABULAR_CLASS_NAMES),
                "informative": list(train_set.informative),
                "feature_groups": [list(g) for g in train_set.feature_groups]},
          training={"augmentation": "none"}, script="scripts/train_tabular_mlp.py")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
