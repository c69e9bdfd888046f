"""Issue 21: leaderboards with coverage, cost estimates and progress, user-facing messages,
the CLI's configuration checks and exit codes, docs that run, and metaeval's reports.

Each test here failed on the main branch the issue was filed against.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import evalkit as ek
import metaeval as me
from evalkit.datasets import make_shapes
from evalkit.zoo import load_shapes_cnn

pytestmark = pytest.mark.filterwarnings("ignore::evalkit.EvalkitWarning")


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(6, seed=3), load_shapes_cnn()


# ---------------------------------------------------------------------- metaeval (item 6)
def test_single_metaevaluation_names_its_dataset_and_model(shapes):
    data, model = shapes
    run = me.MetaEvaluation(me.default_suite(), {"Saliency": {}}, iterations=1,
                            nr_perturbations=1, seed=0)
    summary = run({"Sparseness": ek.metrics.Sparseness()}, model, data.x[:4], data.y[:4]).summary()
    assert (summary["dataset"] == "x(4, 3, 32, 32)").all()
    assert (summary["model"] == type(model).__name__).all()
    named = run({"Sparseness": ek.metrics.Sparseness()}, model, data.x[:4], data.y[:4],
                dataset="shapes", model_name="cnn").summary()
    assert set(named["dataset"]) == {"shapes"} and set(named["model"]) == {"cnn"}


def test_significance_reports_direction_and_test_separately():
    # 40 samples: 30 tie the baseline exactly, 10 are better: the median difference is 0,
    # the signed-rank test is clearly significant, and the method is better
    n = 40
    base = np.linspace(0.0, 1.0, n)
    better = base.copy()
    better[:10] += 0.5
    frame = pd.concat([pd.DataFrame({"metric": "M", "method": m, "sample": np.arange(n),
                                     "score": s}) for m, s in (("A", better),
                                                               ("Random", base))])
    sig = me.reliability_report(frame, higher_is_better=True, n_boot=10).significance.iloc[0]
    assert sig["median_diff"] == 0.0 and sig["p"] < 0.01
    assert sig["significant"] and sig["direction"] == "better"
    assert sig["better"] and not sig["worse"]
    lower = me.reliability_report(frame, higher_is_better=False, n_boot=10).significance.iloc[0]
    assert lower["direction"] == "worse" and lower["worse"] and not lower["better"]
