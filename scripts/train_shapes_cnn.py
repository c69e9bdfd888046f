"""Train the ShapesCNN shipped in evalkit/assets/ (shapes_cnn.pt and shapes_cnn.json).

    .venv/bin/python scripts/train_shapes_cnn.py

Reproducible: the data are a pure function of their seeds, the model's initialisation and the
batch order come from fixed seeds, and torch runs deterministic algorithms on a fixed number of
threads (CPU float results can depend on the thread count). The same torch version on the same
kind of CPU gives the same weights; the SHA-256 of the weights file is recorded in the JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from evalkit.datasets import CLASS_NAMES, make_shapes  # noqa: E402
from evalkit.zoo import ShapesCNN  # noqa: E402

IMAGE_SIZE = 32
TRAIN_SEED, TEST_SEED, TORCH_SEED = 0, 1, 0


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(xb).argmax(1) for xb in x.split(500)])
    return float((pred == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=12_000)
    parser.add_argument("--n-test", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "evalkit" / "assets")
    args = parser.parse_args()

    torch.manual_seed(TORCH_SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    train = make_shapes(args.n_train, seed=TRAIN_SEED, image_size=IMAGE_SIZE)
    test = make_shapes(args.n_test, seed=TEST_SEED, image_size=IMAGE_SIZE)
    x_train, y_train = torch.from_numpy(train.x), torch.from_numpy(train.y)
    x_test, y_test = torch.from_numpy(test.x), torch.from_numpy(test.y)
    print(f"data: {len(train)} train, {len(test)} test ({time.perf_counter() - start:.1f} s)")

    model = ShapesCNN(len(CLASS_NAMES))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = -(-args.n_train // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch
    )
    order_gen = torch.Generator().manual_seed(TORCH_SEED)
    for epoch in range(args.epochs):
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        for idx in torch.randperm(args.n_train, generator=order_gen).split(args.batch_size):
            xb, yb = x_train[idx], y_train[idx]
            # Random flips and 90-degree turns keep every class: a free, seeded augmentation.
            if torch.rand((), generator=order_gen) < 0.5:
                xb = xb.flip(-1)
            xb = xb.rot90(int(torch.randint(4, (), generator=order_gen)), dims=(-2, -1))
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            loss_sum += float(loss.detach()) * len(yb)
        print(f"epoch {epoch + 1:2d}: loss {loss_sum / total:.4f}, running train acc "
              f"{correct / total:.4f}, test acc {accuracy(model, x_test, y_test):.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)

    model.eval()
    train_acc = accuracy(model, x_train, y_train)
    test_acc = accuracy(model, x_test, y_test)
    elapsed = time.perf_counter() - start
    print(f"final: train acc {train_acc:.4f}, test acc {test_acc:.4f}, {elapsed:.0f} s")

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "shapes_cnn.pt"
    torch.save(model.state_dict(), weights)
    meta = {
        "model": "evalkit.zoo.ShapesCNN",
        "image_size": IMAGE_SIZE,
        "n_classes": len(CLASS_NAMES),
        "class_names": list(CLASS_NAMES),
        "input_range": [0.0, 1.0],
        "n_distractors": 2,
        "train": {"seed": TRAIN_SEED, "n": args.n_train, "accuracy": round(train_acc, 4)},
        "test": {"seed": TEST_SEED, "n": args.n_test, "accuracy": round(test_acc, 4)},
        "training": {
            "torch_seed": TORCH_SEED,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "optimizer": "AdamW(weight_decay=1e-4), OneCycleLR",
            "max_lr": args.lr,
            "augmentation": "random horizontal flip and 90-degree rotation per batch",
            "threads": args.threads,
        },
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "script": "scripts/train_shapes_cnn.py",
    }
    (args.out / "shapes_cnn.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {weights} ({weights.stat().st_size / 1024:.0f} KiB) and shapes_cnn.json")


if __name__ == "__main__":
    main()
