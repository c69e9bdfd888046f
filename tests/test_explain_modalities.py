"""The whole explainer registry on tabular (N, F) rows through a tiny MLP and on (N, C, T)
series through a tiny Conv1d network: every method defined for the modality runs and gives
finite attributions of the documented shape; every other method is refused with an error that
names it. Plus the known answers that are new for these modalities (Sobel along time, LRP
through Conv1d)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit.explain import available_methods, explainer_info

N, FEATURES, CHANNELS, STEPS, CLASSES = 4, 6, 2, 12, 3
#: layer methods: the layer a tabular model is explained at (tables have no default layer)
LAYER_METHODS = ("LayerActivation", "LayerConductance", "InternalInfluence",
                 "LayerGradientXActivation", "LayerIntegratedGradients")


def _mlp() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(FEATURES, 8), nn.ReLU(), nn.Linear(8, CLASSES)).double()


class SeriesNet(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> global average pooling over time -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(CHANNELS, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv1d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.flatten(self.pool(h)))


def _series_net() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return SeriesNet().double()


def _data(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(shape, generator=gen, dtype=torch.float64), torch.arange(N) % CLASSES


def _kwargs(method: str, x: torch.Tensor) -> dict:
    info = explainer_info(method)
    kw: dict = {}
    if info.needs_masks:
        kw["masks"] = torch.ones((x.shape[0], 1, *x.shape[2:]) if x.ndim > 2 else x.shape)
    if info.stochastic:
        kw["seed"] = 1
    return kw


@pytest.mark.parametrize("method", available_methods())
def test_every_method_on_a_tabular_mlp(method):
    model, (x, y) = _mlp(), _data((N, FEATURES))
    info = explainer_info(method)
    kw = _kwargs(method, x)
    if not info.supports("tabular"):
        with pytest.raises(ValueError, match=rf"{method} does not apply to tabular"):
            ek.explain(model, x, y, method, **kw)
        return
    if method in LAYER_METHODS:
        with pytest.raises(ValueError, match=rf"{method}: .*layer="):
            ek.explain(model, x, y, method, **kw)
        a = ek.explain(model, x, y, method, layer="0", raw=True, **kw)
        assert a.shape == (N, 8)
        with pytest.raises(ValueError, match="raw=True"):
            ek.explain(model, x, y, method, layer="0", **kw)
    else:
        a = ek.explain(model, x, y, method, **kw)
        assert a.shape == x.shape, method
    assert a.dtype == torch.float64 and bool(torch.isfinite(a).all()), method


@pytest.mark.parametrize("method", available_methods())
def test_every_method_on_a_conv1d_series_model(method):
    model, (x, y) = _series_net(), _data((N, CHANNELS, STEPS))
    info = explainer_info(method)
    kw = _kwargs(method, x)
    if not info.supports("series"):
        with pytest.raises(ValueError, match=rf"{method} does not apply to series"):
            ek.explain(model, x, y, method, **kw)
        return
    a = ek.explain(model, x, y, method, **kw)
    assert a.shape in ((N, CHANNELS, STEPS), (N, 1, STEPS)), (method, a.shape)
    assert a.dtype == torch.float64 and bool(torch.isfinite(a).all()), method


def test_the_registry_declares_modalities():
    for method in available_methods():
        info = explainer_info(method)
        assert info.modalities, method
        assert set(info.modalities) <= {"image", "series", "tabular", "tokens"}, method
        assert info.supports("image"), method
    assert "GradCAM" in available_methods("series")
    assert "GradCAM" not in available_methods("tabular")
    assert "Occlusion" in available_methods("tokens")


def test_sobel_on_series_is_the_central_difference_along_time():
    x = torch.tensor([[[0.0, 1.0, 4.0, 9.0, 16.0], [2.0, 3.0, 6.0, 11.0, 18.0]]])
    a = ek.explain(_series_net().float(), x, None, "Sobel")
    s = x.mean(1)[0]  # 1, 2, 5, 10, 17
    expected = torch.tensor([0.0, (s[2] - s[0]) / 2, (s[3] - s[1]) / 2, (s[4] - s[2]) / 2, 0.0])
    assert a.shape == (1, 1, 5)
    torch.testing.assert_close(a[0, 0], expected)
    with pytest.raises(ValueError, match="Sobel does not apply to tokens"):
        ek.explain(_mlp(), torch.randint(0, 5, (2, 6)), None, "Sobel")


def test_lrp_through_conv1d_equals_lrp_through_the_same_conv2d():
    """The 1-D layers get the epsilon rule captum gives their 2-D counterparts: a Conv1d model
    and the same model written with (1 x k) Conv2d layers get the same relevances."""
    one_d = _series_net()

    class TwoD(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(CHANNELS, 4, (1, 3), padding=(0, 1))
            self.relu1 = nn.ReLU()
            self.conv2 = nn.Conv2d(4, 4, (1, 3), padding=(0, 1))
            self.relu2 = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, CLASSES)

        def forward(self, x):
            h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
            return self.fc(torch.flatten(self.pool(h), 1))

    two_d = TwoD().double()
    with torch.no_grad():
        for name in ("conv1", "conv2"):
            getattr(two_d, name).weight.copy_(getattr(one_d, name).weight.unsqueeze(2))
            getattr(two_d, name).bias.copy_(getattr(one_d, name).bias)
        two_d.fc.load_state_dict(one_d.fc.state_dict())
    x, y = _data((N, CHANNELS, STEPS))
    a1 = ek.explain(one_d, x, y, "LRP")
    a2 = ek.explain(two_d, x.unsqueeze(2), y, "LRP")
    torch.testing.assert_close(a1, a2[:, :, 0])
    # the rules evalkit and captum attached were removed again
    assert not any(hasattr(m, "rule") for m in one_d.modules())
