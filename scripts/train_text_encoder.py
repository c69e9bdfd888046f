"""Train the TextEncoder shipped in evalkit/assets/ (text_encoder.pt and text_encoder.json).

    .venv/bin/python scripts/train_text_encoder.py

Deterministic on the CPU, well under a minute (see scripts/_training.py for what is fixed).
Training texts have 4 to 64 tokens (``make_text(length=64, min_length=4)``), so the model
serves any length up to its 64 positions; the accuracy is reported on held-out texts of the
default length (16) and of length 64. Augmentation: each filler word (never a sentiment word,
so the label stays right) becomes [MASK] with probability 0.1, so that replacing tokens by
[MASK] stays in the training distribution; replacing them by [PAD] deletes them (the model
ignores padding).
"""

from __future__ import annotations

import time

import torch
from _training import TEST_SEED, TRAIN_SEED, accuracy, deterministic, parser, train, write

from evalkit.datasets import (
    TEXT_CLASS_NAMES,
    TEXT_MASK_ID,
    TEXT_PAD_ID,
    TEXT_VOCABULARY,
    make_text,
)
from evalkit.zoo import TextEncoder

MASK_RATE = 0.1
LENGTH, MIN_LENGTH = 64, 4
TEST_LENGTHS = (16, 64)  # the default of make_text, and the longest


def main() -> None:
    args = parser(__doc__, n_train=4_000, n_test=1_000, epochs=8, batch_size=64,
                  lr=3e-3).parse_args()
    deterministic(args.threads)
    start = time.perf_counter()
    train_set = make_text(args.n_train, seed=TRAIN_SEED, length=LENGTH, min_length=MIN_LENGTH)
    tests = {length: make_text(args.n_test, seed=TEST_SEED, length=length)
             for length in TEST_LENGTHS}
    x, y = torch.from_numpy(train_set.x), torch.from_numpy(train_set.y)
    x_test, y_test = torch.from_numpy(tests[16].x), torch.from_numpy(tests[16].y)
    filler = torch.from_numpy(~train_set.masks & train_set.attention_mask)

    def augment(xb: torch.Tensor, rows: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        masked = (torch.rand(xb.shape, generator=gen) < MASK_RATE) & filler[rows]
        return xb.masked_fill(masked, TEXT_MASK_ID)

    model = TextEncoder(len(TEXT_VOCABULARY), len(TEXT_CLASS_NAMES), pad_id=TEXT_PAD_ID)
    train(model, x, y, args, x_test=x_test, y_test=y_test, augment=augment)
    by_length = {str(length): round(accuracy(model, torch.from_numpy(t.x),
                                             torch.from_numpy(t.y)), 4)
                 for length, t in tests.items()}
    print(f"test accuracy by length: {by_length}")
    write(model, "text_encoder", args, train_acc=accuracy(model, x, y),
          test_acc=accuracy(model, x_test, y_test),
          data={"data": f"evalkit.datasets.make_text(length={LENGTH}, min_length={MIN_LENGTH})",
                "test_data": "evalkit.datasets.make_text(length=16) (the default)",
                "test_accuracy_by_length": by_length,
                "length": LENGTH, "vocab_size": len(TEXT_VOCABULARY),
                "pad_id": TEXT_PAD_ID, "mask_id": TEXT_MASK_ID,
                "n_classes": len(TEXT_CLASS_NAMES), "class_names": list(TEXT_CLASS_NAMES)},
          training={"augmentation": f"filler words -> [MASK] with probability {MASK_RATE}"},
          script="scripts/train_text_encoder.py")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
