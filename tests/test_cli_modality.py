"""The optional ``[modality]`` table of a TOML configuration: a column spec or a mask token id
given to ``evaluate(..., modality=...)``; the tabular demo uses it, so its one-hot group is
scored as one feature."""

from __future__ import annotations

import pytest

from evalkit.cli import _build_modality, _demo_config, _toml, run_config
from evalkit.datasets import make_tabular
from evalkit.modality import TabularModality, TokensModality


def test_the_modality_table_builds_the_modality():
    assert _build_modality({}) is None
    spec = _toml().loads("""
        [modality]
        kind = "tabular"
        kinds = ["continuous", "ordinal", "categorical", "categorical", "categorical"]
        groups = [[2, 3, 4]]
        categories = { 1 = [0, 1, 2] }
    """)["modality"]
    got = _build_modality(spec)
    assert got == TabularModality(kinds=["continuous", "ordinal", "categorical", "categorical",
                                         "categorical"], groups=[[2, 3, 4]],
                                  categories={1: [0, 1, 2]})
    tokens = _build_modality({"kind": "tokens", "mask_token_id": 2})
    assert tokens == TokensModality(mask_token_id=2)


@pytest.mark.parametrize(("spec", "message"), [
    ({"groups": [[0, 1]]}, r"kind must be one of \['image', 'series', 'tabular', 'tokens'\]"),
    ({"kind": "audio"}, "kind must be one of"),
    ({"kind": "tokens", "groups": [[0, 1]]}, r"\[modality\] for kind = 'tokens'.*groups"),
    ({"kind": "tabular", "categories": {"a": [0]}}, "categories must map column indices"),
    ({"kind": "tabular", "kinds": ["continuous", "colour"]}, "`kinds` must be among"),
])
def test_a_wrong_modality_table_says_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        _build_modality(spec)


def test_the_tabular_demo_scores_the_one_hot_group_as_one_feature(tmp_path):
    config = _demo_config("tabular")
    data = make_tabular(8, seed=2026)
    assert [tuple(g) for g in config["modality"]["groups"]] == list(data.feature_groups)
    config["data"]["args"]["n"] = 8
    config["leaderboard"]["n_boot"] = 20
    config["methods"] = {"Saliency": {}}
    config["metrics"] = {"PixelFlipping": {}}
    quiet = {"store": False, "report": False, "progress": False, "echo": lambda *a: None}
    grouped = run_config(config, out=tmp_path / "a", **quiet)["results"]
    # 12 columns, the 3 one-hot columns one feature: 10 features, 11 points on the curve
    assert grouped.curve_x["Saliency", "PixelFlipping"].shape == (11,)
    config.pop("modality")
    plain = run_config(config, out=tmp_path / "b", **quiet)["results"]
    assert plain.curve_x["Saliency", "PixelFlipping"].shape == (13,)


def test_validate_config_checks_the_modality_table_before_any_work():
    from evalkit.cli import ConfigError, validate_config

    config = _toml().loads("""
        [data]
        n = 4
        [methods.Random]
        [metrics.Sparseness]
        [modality]
        kind = "tabular"
        grups = [[0, 1]]
    """)
    with pytest.raises(ConfigError, match=r"\[modality\] for kind = 'tabular'.*grups"):
        validate_config(config)
    del config["modality"]["grups"]
    validate_config(config)  # a known section with valid keys passes
