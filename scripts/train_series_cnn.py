"""Train the SeriesCNN shipped in evalkit/assets/ (series_cnn.pt and series_cnn.json).

    .venv/bin/python scripts/train_series_cnn.py

Deterministic on the CPU, well under a minute (see scripts/_training.py for what is fixed).
"""

from __future__ import annotations

import time

import torch
from _training import TEST_SEED, TRAIN_SEED, accuracy, deterministic, parser, train, write

from evalkit.datasets import SERIES_CLASS_NAMES, make_series
from evalkit.zoo import SeriesCNN


def main() -> None:
    args = parser(__doc__, n_train=6_000, n_test=1_500, epochs=8, batch_size=64,
                  lr=5e-3).parse_args()
    deterministic(args.threads)
    start = time.perf_counter()
    train_set, test_set = make_series(args.n_train, seed=TRAIN_SEED), make_series(
        args.n_test, seed=TEST_SEED)
    x, y = torch.from_numpy(train_set.x), torch.from_numpy(train_set.y)
    x_test, y_test = torch.from_numpy(test_set.x), torch.from_numpy(test_set.y)
    model = SeriesCNN(len(SERIES_CLASS_NAMES), in_channels=x.shape[1])
    train(model, x, y, args, x_test=x_test, y_test=y_test)
    write(model, "series_cnn", args, train_acc=accuracy(model, x, y),
          test_acc=accuracy(model, x_test, y_test),
          data={"data": "evalkit.datasets.make_series (defaults)",
                "n_channels": x.shape[1], "length": x.shape[2], "window": 16,
                "n_classes": len(SERIES_CLASS_NAMES), "class_names": list(SERIES_CLASS_NAMES)},
          training={"augmentation": "none"}, script="scripts/train_series_cnn.py")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
