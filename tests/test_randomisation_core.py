"""Layer re-initialisation options used by the randomisation metrics (TorchModel core)."""

from __future__ import annotations

import torch
from torch import nn

from evalkit.models import wrap_model


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 3))
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 2.0)
        net[1].bias.uniform_(-1, 1)
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 3.0)
        net[1].num_batches_tracked.fill_(7)
    return net.eval()


def test_keep_buffers_restores_running_statistics():
    net = _bn_net()
    w = wrap_model(net)
    mean, var = net[1].running_mean.clone(), net[1].running_var.clone()
    with w.randomised(["1"], seed=3) as reset:
        bn = reset.model[1]
        assert torch.equal(bn.weight, torch.ones(4)) and torch.equal(bn.bias, torch.zeros(4))
        assert torch.equal(bn.running_mean, torch.zeros(4))
        assert torch.equal(bn.running_var, torch.ones(4))
        assert int(bn.num_batches_tracked) == 0
    with w.randomised(["1"], seed=3, keep_buffers=True) as kept:
        bn = kept.model[1]
        assert torch.equal(bn.weight, torch.ones(4)) and torch.equal(bn.bias, torch.zeros(4))
        assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
        assert int(bn.num_batches_tracked) == 7
    # the user's model is untouched
    assert torch.equal(net[1].running_mean, mean)
    assert not torch.equal(net[1].weight, torch.ones(4))


def test_keep_buffers_in_randomise_layers_and_weights_unchanged():
    net = _bn_net()
    w = wrap_model(net)
    plain = {n: {k: v.clone() for k, v in rw.model.state_dict().items()}
             for n, rw in w.randomise_layers("bottom_up", seed=5)}
    kept = {n: {k: v.clone() for k, v in rw.model.state_dict().items()}
            for n, rw in w.randomise_layers("bottom_up", seed=5, keep_buffers=True)}
    for step in plain:
        for key in plain[step]:
            if key.startswith("1.running") or key == "1.num_batches_tracked":
                continue
            assert torch.equal(plain[step][key], kept[step][key]), (step, key)
    assert torch.equal(kept["4"]["1.running_var"], net[1].running_var)
