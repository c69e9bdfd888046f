"""Train the ShapesCNN shipped in evalkit/assets/ (shapes_cnn.pt and shapes_cnn.json).

    .venv/bin/python scripts/train_shapes_cnn.py

Reproducible (see scripts/_training.py for what is fixed): the same torch version on the same
kind of CPU gives the same weights; the SHA-256 of the weights file is recorded in the JSON.
Augmentation: a random horizontal flip and 90-degree turn per batch (every class keeps its
label), drawn from the batch-order generator.
"""

from __future__ import annotations

import time

import torch
from _training import TEST_SEED, TRAIN_SEED, accuracy, deterministic, parser, train, write

from evalkit.datasets import CLASS_NAMES, make_shapes
from evalkit.zoo import ShapesCNN

IMAGE_SIZE = 32


def flip_and_turn(xb: torch.Tensor, _idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree turns keep every class: a free, seeded augmentation."""
    if torch.rand((), generator=gen) < 0.5:
        xb = xb.flip(-1)
    return xb.rot90(int(torch.randint(4, (), generator=gen)), dims=(-2, -1))


def main() -> None:
    args = parser(__doc__, n_train=12_000, n_test=2_000, epochs=12, batch_size=64,
                  lr=4e-3).parse_args()
    deterministic(args.threads)
    start = time.perf_counter()
    train_set = make_shapes(args.n_train, seed=TRAIN_SEED, image_size=IMAGE_SIZE)
    test_set = make_shapes(args.n_test, seed=TEST_SEED, image_size=IMAGE_SIZE)
    x, y = torch.from_numpy(train_set.x), torch.from_numpy(train_set.y)
    x_test, y_test = torch.from_numpy(test_set.x), torch.from_numpy(test_set.y)
    print(f"data: {len(train_set)} train, {len(test_set)} test "
          f"({time.perf_counter() - start:.1f} s)")

    model = ShapesCNN(len(CLASS_NAMES))
    train(model, x, y, args, x_test=x_test, y_test=y_test, augment=flip_and_turn)
    write(model, "shapes_cnn", args, train_acc=accuracy(model, x, y),
          test_acc=accuracy(model, x_test, y_test),
          data={"image_size": IMAGE_SIZE, "n_classes": len(CLASS_NAMES),
                "class_names": list(CLASS_NAMES), "input_range": [0.0, 1.0],
                "n_distractors": 2},
          training={"optimizer": "AdamW(weight_decay=1e-4), OneCycleLR",
                    "augmentation": "random horizontal flip and 90-degree rotation per batch"},
          script="scripts/train_shapes_cnn.py")


if __name__ == "__main__":
    main()
