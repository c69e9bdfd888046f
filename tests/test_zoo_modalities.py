"""The shipped tabular, series and text models (evalkit.zoo) on their synthetic data sets
(evalkit.datasets): loaders, held-out accuracy, metadata, reproducible training, and that the
models decide from the ground truth the data sets ship."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from evalkit.datasets import (
    SERIES_CLASS_NAMES,
    TABULAR_CLASS_NAMES,
    TEXT_CLASS_NAMES,
    TEXT_PAD_ID,
    TEXT_VOCABULARY,
    make_series,
    make_tabular,
    make_text,
)
from evalkit.zoo import (
    SeriesCNN,
    TabularMLP,
    TextEncoder,
    load_series_cnn,
    load_tabular_mlp,
    load_text_encoder,
    series_cnn_info,
    tabular_mlp_info,
    text_encoder_info,
)

ROOT = Path(__file__).resolve().parents[1]
# held-out data: a seed the training scripts never use (they train on 0 and test on 1)
HELD_OUT_SEED = 123
#: the accuracy each shipped model must reach on held-out data
MIN_ACCURACY = {"tabular_mlp": 0.95, "series_cnn": 0.95, "text_encoder": 0.95}
LOADERS = {"tabular_mlp": load_tabular_mlp, "series_cnn": load_series_cnn,
           "text_encoder": load_text_encoder}
INFOS = {"tabular_mlp": tabular_mlp_info, "series_cnn": series_cnn_info,
         "text_encoder": text_encoder_info}
DATA = {"tabular_mlp": make_tabular, "series_cnn": make_series, "text_encoder": make_text}
CLASSES = {"tabular_mlp": TABULAR_CLASS_NAMES, "series_cnn": SERIES_CLASS_NAMES,
           "text_encoder": TEXT_CLASS_NAMES}


def _predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).argmax(1).numpy()


def test_architectures() -> None:
    mlp = TabularMLP()
    assert {"fc1", "relu1", "fc2", "relu2", "fc3"} <= dict(mlp.named_modules()).keys()
    assert mlp.eval()(torch.randn(3, 12)).shape == (3, 2)
    cnn = SeriesCNN()
    names = dict(cnn.named_modules())
    assert {"features.conv1", "features.conv2", "features.conv3", "gap", "fc"} <= names.keys()
    assert cnn.cam_layer in names
    for length in (16, 64, 100):
        assert cnn.eval()(torch.randn(2, 2, length)).shape == (2, 3)
    text = TextEncoder()
    assert isinstance(text.embedding, nn.Embedding)
    assert text.embedding.num_embeddings == len(TEXT_VOCABULARY)
    assert text.eval()(torch.randint(3, 51, (2, 64))).shape == (2, 2)
    with pytest.raises(ValueError, match="64 tokens"):
        text(torch.randint(3, 51, (2, 65)))
    for model in (mlp, cnn, text):  # separate, hookable activations for captum
        assert not any(getattr(m, "inplace", False) for m in model.modules())


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_loaders_give_the_trained_weights_in_eval_mode(name: str) -> None:
    model = LOADERS[name]()
    assert not any(m.training for m in model.modules())
    assert all(p.device.type == "cpu" for p in model.parameters())
    fresh = LOADERS[name](pretrained=False)
    assert not fresh.training
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters(),
                                                       strict=True))


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_held_out_accuracy(name: str) -> None:
    data = DATA[name](1000, seed=HELD_OUT_SEED)
    accuracy = float((_predict(LOADERS[name](), data.x) == data.y).mean())
    assert accuracy >= MIN_ACCURACY[name], accuracy


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_weights_files_and_metadata(name: str) -> None:
    weights = resources.files("evalkit").joinpath("assets", f"{name}.pt").read_bytes()
    assert len(weights) < 300 * 1024  # a few hundred KB at most
    info = INFOS[name]()
    assert info["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert info["test"]["accuracy"] >= MIN_ACCURACY[name]
    assert info["test"]["seed"] != info["train"]["seed"] != HELD_OUT_SEED
    assert info["class_names"] == list(CLASSES[name])
    assert info["script"] == f"scripts/train_{name}.py" and (ROOT / info["script"]).is_file()
    assert info["n_parameters"] == sum(p.numel() for p in LOADERS[name]().parameters())


def test_training_reproduces_the_shipped_weights(tmp_path: Path) -> None:
    # The fastest of the three scripts (a few seconds); the others share its code
    # (scripts/_training.py). Same torch on the same kind of CPU: the same bytes; elsewhere
    # float results may differ in the last bits, so compare values and the accuracy.
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_tabular_mlp.py"),
                           "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    state = torch.load(tmp_path / "tabular_mlp.pt", weights_only=True)
    shipped = load_tabular_mlp().state_dict()
    for key, value in shipped.items():
        torch.testing.assert_close(state[key], value, atol=1e-4, rtol=1e-4)
    info = json.loads((tmp_path / "tabular_mlp.json").read_text(encoding="utf-8"))
    expected = tabular_mlp_info()
    assert info["test"] == expected["test"] and info["train"] == expected["train"]
    if info["torch_version"] == expected["torch_version"]:
        assert info["weights_sha256"] == expected["weights_sha256"]


def test_package_data_ships_the_assets() -> None:
    # setup.cfg's package_data pattern covers every committed asset and configuration
    cfg = (ROOT / "setup.cfg").read_text(encoding="utf-8")
    assert "assets/*" in cfg and "configs/*" in cfg
    for name in LOADERS:
        assert (ROOT / "evalkit" / "assets" / f"{name}.pt").is_file()
        assert (ROOT / "evalkit" / "assets" / f"{name}.json").is_file()


# --- the models decide from the ground truth --------------------------------------------------


def test_tabular_model_reads_the_informative_columns() -> None:
    data = make_tabular(2000, seed=HELD_OUT_SEED)
    model, rng = load_tabular_mlp(), np.random.default_rng(0)
    before = _predict(model, data.x)
    noise = [j for j in range(data.x.shape[1]) if j not in data.informative]
    informative = list(data.informative)
    shuffled_noise, shuffled_informative = data.x.copy(), data.x.copy()
    shuffled_noise[:, noise] = data.x[rng.permutation(len(data))][:, noise]
    shuffled_informative[:, informative] = data.x[rng.permutation(len(data))][:, informative]
    assert (_predict(model, shuffled_noise) == before).mean() >= 0.97
    assert (_predict(model, shuffled_informative) == before).mean() <= 0.7


def test_series_model_reads_the_window() -> None:
    # Each series keeps its window but takes the background from a series of another class
    # (where that one has no pattern): the prediction follows the window.
    data = make_series(600, seed=HELD_OUT_SEED)
    other = np.roll(np.arange(len(data)), 1)  # labels cycle, so the neighbour's class differs
    assert (data.y[other] != data.y).all()
    mixed = np.where(data.masks | data.masks[other], data.x, data.x[other])
    assert (_predict(load_series_cnn(), mixed) == data.y).mean() >= 0.95
    # and shuffling the time steps outside the window barely changes a prediction
    rng = np.random.default_rng(0)
    shuffled = data.x.copy()
    for i in range(len(data)):
        outside = np.flatnonzero(~data.masks[i, 0])
        shuffled[i][:, outside] = data.x[i][:, rng.permutation(outside)]
    model = load_series_cnn()
    assert (_predict(model, shuffled) == _predict(model, data.x)).mean() >= 0.95


def test_text_model_reads_the_rationale() -> None:
    data = make_text(600, seed=HELD_OUT_SEED)
    model = load_text_encoder()
    negative = [TEXT_VOCABULARY.index(w) for w in ("bad", "awful", "terrible", "boring")]
    positive = [TEXT_VOCABULARY.index(w) for w in ("good", "great", "excellent", "wonderful")]
    # Flipping the polarity of the planted words flips the prediction ...
    rng = np.random.default_rng(0)
    flipped = data.x.copy()
    for i in range(len(data)):
        where = np.flatnonzero(data.masks[i])
        flipped[i, where] = rng.choice(negative if data.y[i] == 1 else positive, len(where))
    assert (_predict(model, flipped) == 1 - data.y).mean() >= 0.95
    # ... while deleting every filler word (replacing it by padding) changes nothing.
    filler_deleted = np.where(data.masks, data.x, TEXT_PAD_ID)
    assert (_predict(model, filler_deleted) == data.y).mean() >= 0.95


def test_text_encoder_ignores_padding_and_has_one_code_path() -> None:
    model = load_text_encoder()
    data = make_text(8, seed=HELD_OUT_SEED, length=16)
    x = torch.from_numpy(data.x)
    padded = torch.nn.functional.pad(x, (0, 20), value=TEXT_PAD_ID)
    with torch.inference_mode():
        logits = model(x)
        torch.testing.assert_close(model(padded), logits, atol=1e-5, rtol=1e-5)
        empty = model(torch.zeros(2, 16, dtype=torch.int64))
    torch.testing.assert_close(empty, model.fc.bias.detach().expand(2, -1))
    # an odd number of heads keeps PyTorch off its inference fast path: with and without
    # gradients the model computes the same numbers
    assert torch.equal(model(x).detach(), logits)


def test_embedding_layer_attribution_through_captum() -> None:
    # `embedding` is the documented layer for embedding-level explainers
    captum = pytest.importorskip("captum.attr")
    model = load_text_encoder()
    data = make_text(4, seed=HELD_OUT_SEED)
    x = torch.from_numpy(data.x)
    attr = captum.LayerIntegratedGradients(model, model.embedding).attribute(
        x, baselines=torch.full_like(x, TEXT_PAD_ID), target=torch.from_numpy(data.y),
        n_steps=8)
    assert attr.shape == (*x.shape, model.embedding.embedding_dim)
    per_token = attr.sum(-1).abs()
    assert torch.isfinite(per_token).all()
    assert (per_token[~torch.from_numpy(data.attention_mask)] == 0).all()
