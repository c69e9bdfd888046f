"""What the training scripts of the shipped models share: deterministic set-up, a seeded
training loop, held-out accuracy and the weights + JSON metadata written to evalkit/assets/.

Reproducible: the data are pure functions of their seeds, initialisation and batch order come
from fixed seeds, and torch runs deterministic algorithms on a fixed number of threads (CPU
float results can depend on the thread count). The same torch version on the same kind of CPU
gives the same weights; each JSON file records the SHA-256 of its weights file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

TRAIN_SEED, TEST_SEED, TORCH_SEED = 0, 1, 0


def parser(doc: str, *, n_train: int, n_test: int, epochs: int, batch_size: int,
           lr: float) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--n-train", type=int, default=n_train)
    p.add_argument("--n-test", type=int, default=n_test)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "evalkit" / "assets")
    return p


def deterministic(threads: int) -> None:
    torch.manual_seed(TORCH_SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(xb).argmax(1) for xb in x.split(500)])
    return float((pred == y).float().mean())


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace,
          *, x_test: torch.Tensor, y_test: torch.Tensor,
          augment: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
          | None = None,
          weight_decay: float = 1e-4) -> None:
    """AdamW with a one-cycle schedule and cross-entropy, batches in a seeded order; prints the
    progress per epoch. ``augment(batch, row_indices, generator)`` may alter each batch."""
    start = time.perf_counter()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=weight_decay)
    steps_per_epoch = -(-len(x) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch
    )
    order_gen = torch.Generator().manual_seed(TORCH_SEED)
    for epoch in range(args.epochs):
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        for idx in torch.randperm(len(x), generator=order_gen).split(args.batch_size):
            xb, yb = x[idx], y[idx]
            if augment is not None:
                xb = augment(xb, idx, order_gen)
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


def write(model: torch.nn.Module, stem: str, args: argparse.Namespace, *, train_acc: float,
          test_acc: float, data: dict[str, Any], training: dict[str, Any], script: str) -> None:
    """Save ``{stem}.pt`` and ``{stem}.json`` into ``args.out``."""
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / f"{stem}.pt"
    torch.save(model.state_dict(), weights)
    meta = {
        "model": f"evalkit.zoo.{type(model).__name__}",
        **data,
        "train": {"seed": TRAIN_SEED, "n": args.n_train, "accuracy": round(train_acc, 4)},
        "test": {"seed": TEST_SEED, "n": args.n_test, "accuracy": round(test_acc, 4)},
        "training": {
            "torch_seed": TORCH_SEED,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "optimizer": "AdamW, OneCycleLR",
            "max_lr": args.lr,
            "threads": args.threads,
            **training,
        },
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "script": script,
    }
    (args.out / f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"final: train acc {train_acc:.4f}, test acc {test_acc:.4f}")
    print(f"wrote {weights} ({weights.stat().st_size / 1024:.0f} KiB) and {stem}.json")
