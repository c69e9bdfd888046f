"""Small models and checks shared by the explain tests (not a test module)."""

from __future__ import annotations

import random
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

N_CLASSES = 3


class GapNet(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> global average pooling -> linear.

    The CAM closed forms hold at ``features.relu2`` (non-negative activations A): the logit of
    class c is ``sum_k W[c, k] mean(A_k) + b_c``.
    """

    def __init__(self, k: int = 6, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(3, 4, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(4, k, 3, padding=1),
            relu2=nn.ReLU(),
        ))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(k, n_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.gap(self.features(x)), 1))


class BnNet(nn.Module):
    """Conv + BatchNorm + max-pooling + dropout + GAP head: modes, buffers and every captum
    method (LRP-compatible leaf modules only, no reused ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(3, 4, 3, padding=1, bias=False),
            bn1=nn.BatchNorm2d(4),
            relu1=nn.ReLU(),
            pool=nn.MaxPool2d(2),
            conv2=nn.Conv2d(4, 6, 3, padding=1),
            relu2=nn.ReLU(),
        ))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6, N_CLASSES)

    def forward(self, x):
        return self.fc(self.drop(torch.flatten(self.gap(self.features(x)), 1)))


def make(cls=GapNet, seed: int = 0, dtype=torch.float64) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = cls()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.3, 0.3)
    return model.to(dtype).eval()


def inputs(n: int = 4, size: int = 8, seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 3, size, size), generator=g, dtype=dtype)
    y = torch.arange(n) % N_CLASSES
    return x, y


def rng_states():
    legacy_numpy = np.random.get_state()  # noqa: NPY002 - the global state must not move
    return (torch.get_rng_state().clone(), legacy_numpy, random.getstate())


def same_rng(a, b) -> bool:
    return (
        torch.equal(a[0], b[0])
        and all(np.array_equal(u, v) if isinstance(u, np.ndarray) else u == v
                for u, v in zip(a[1], b[1], strict=True))
        and a[2] == b[2]
    )


def module_state(model: nn.Module):
    """Everything explain() must leave as it was: attributes, hook tables, flags, params."""
    out = []
    for name, m in model.named_modules():
        attrs = {k: v for k, v in vars(m).items()}
        hooks = {k: list(v) for k, v in attrs.items() if "hook" in k and isinstance(v, dict)}
        out.append((name, set(attrs), hooks, m.training))
    params = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    grads = {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()}
    return out, params, grads


def assert_unchanged(model: nn.Module, before) -> None:
    modules, params, grads = before
    after_modules, after_params, after_grads = module_state(model)
    assert modules == after_modules
    for k, v in params.items():
        assert torch.equal(v, after_params[k]), k
        assert v.dtype == after_params[k].dtype
    for k, g in grads.items():
        if g is None:
            assert after_grads[k] is None, k
        else:
            assert torch.equal(g, after_grads[k]), k
    for p in model.parameters():
        assert p.requires_grad


class CountingExplainer:
    """``evalkit.explain`` that records the rows of every call (the explain calls a metric
    makes)."""

    def __init__(self, chunks_internally: bool = False) -> None:
        self.rows: list[int] = []
        #: say, as evalkit.explain does, that it computes in its own chunks
        self.chunks_internally = chunks_internally

    def __call__(self, model, x, y, **kwargs):
        import evalkit

        self.rows.append(int(x.shape[0]))
        return evalkit.explain(model, x, y, **kwargs)
