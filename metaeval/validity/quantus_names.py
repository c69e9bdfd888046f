"""Metric names that mean something different in evalkit than in Quantus 0.6.

evalkit keeps Quantus' metric names, but for some of them the default call computes another
quantity: another direction, another default perturbation or feature, another definition, or
another kind of return value. A score of "the same metric" from the two libraries is then not
comparable, and a validity verdict of one does not carry over to the other. This module is the
one machine-readable list of those names (:data:`SAME_NAME_DIFFERENT_MEANING`); the validity
report card and ``docs/migrating-quantus.md`` ("Same name, different meaning") render it.
Differences that only fix a crash or a numerical detail are not listed here: they are the
deviations of ``docs/migrating-quantus.md``, cited by id in ``deviations``.

This module never imports quantus; ``tests/test_validity_card.py`` checks the claims that can be
read off the released package (names, declared directions, defaults) against it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: what kind of difference an entry is
ASPECTS = ("direction", "default", "definition", "output")


@dataclass(frozen=True)
class QuantusNameDifference:
    """One way a metric of the same name differs from Quantus 0.6 at its defaults.

    ``aspect`` is one of :data:`ASPECTS`: ``"direction"`` (higher/lower is better differs),
    ``"default"`` (a default argument gives another quantity), ``"definition"`` (the formula or
    procedure differs), ``"output"`` (the return value is another kind of number).
    ``reproduce`` is evalkit code that gives Quantus' meaning: a constructor call, or
    ``metric.<attribute>`` read after a call ("" where there is none: the Quantus quantity is a
    bug or has no counterpart);
    ``deviations`` are the ids of ``docs/migrating-quantus.md`` that document the cause.
    """

    aspect: str
    quantus: str
    evalkit: str
    reproduce: str = ""
    deviations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.aspect not in ASPECTS:
            raise ValueError(f"Unknown aspect {self.aspect!r}; one of {ASPECTS}.")


_D = QuantusNameDifference



def _pixels(metric: str) -> QuantusNameDifference:
    return _D("default", "a feature is one channel value",
              "a feature is a pixel (all its channels together)",
              f'{metric}(grouping="channel_values")')


#: metric name -> its differences from the Quantus 0.6 metric of the same name
SAME_NAME_DIFFERENT_MEANING: dict[str, tuple[QuantusNameDifference, ...]] = {
    "AttributionLocalisation": (
        _D("default", "abs=True, positive_attributions=False: the share of |a| inside the mask",
           "abs=False, positive_attributions=True (the paper): the share of the positive "
           "relevance inside the mask, so negative evidence does not count as localised",
           "AttributionLocalisation(abs=True)"),
    ),
    "Completeness": (
        _D("definition", "exact float equality of sum(a) and f(x) - f(x') after normalising a "
           "by its maximum (normalise=True): every sample fails",
           "equality within rtol=0.05 (and atol), normalise=False; the default baseline is the "
           "explainer's own where it is known (Quantus: always black)",
           "", ("C3",)),
    ),
    "Consistency": (
        _D("direction", "lower is better", "higher is better, as in the paper", "",
           ("C10",)),
        _D("definition", "top_n_sign labels a map by its first n flattened entries, so on "
           "images nearly every map gets the same label",
           "top_n_sign labels a map by its n most relevant features", "", ("C10",)),
    ),
    "Continuity": (
        _D("definition", "always translates along x with a black fill (perturb_func and "
           "perturb_baseline are ignored) and scores the zero shift with +1e-9 in the "
           "denominator: a random explainer scores about 1e9 times its noise",
           "the chosen perturbation; the zero shift is left out (the paper's max over "
           "x' != x; include_zero_shift=True scores it: NaN for a random explainer)", "",
           ("C19", "C38")),
    ),
    "EfficientMPRT": (
        _D("definition", "the original explanation is a re-explanation of the trained model "
           "(a_batch only sets the histogram bins)", "the original explanation is the given a",
           ""),
    ),
    "FaithfulnessCorrelation": (_pixels("FaithfulnessCorrelation"),),
    "FaithfulnessEstimate": (_pixels("FaithfulnessEstimate"),),
    "Infidelity": (
        _D("default", "replaces p x p patches (p = 4) by a black baseline cumulatively in "
           "raster order: deterministic, and n_perturb_samples repeats identical work",
           "the paper's expectation over Gaussian perturbations I ~ N(0, noise_std^2)",
           'Infidelity(perturb_func="patches")', ("C12",)),
    ),
    "IROF": (
        _D("output", "G - trapz(curve[1:]) with unit spacing: grows with the number of "
           "segments G", "the area above the curve over the fraction of segments removed, "
           "in [0, 1] for a falling curve", ""),
    ),
    "MPRT": (
        _D("output", "a dict of per-layer similarities (return_average_correlation=False); "
           "its average includes the un-randomised model's self-similarity",
           "one number per sample: the mean over the randomised layers only",
           "metric.layer_scores_", ("C5",)),
    ),
    "Monotonicity": (
        _D("definition", "re-applies the baseline at every step instead of restoring the "
           "features of x, so the result never depends on the attribution",
           "restores the features of x in ascending order of attribution (Arya et al.)", "",
           ("C2",)),
    ),
    "MonotonicityCorrelation": (
        _pixels("MonotonicityCorrelation"),
        _D("default", 'the "uniform" baseline draws one value per sample',
           "one value per element", "", ("C27",)),
    ),
    "NonSensitivity": (
        _pixels("NonSensitivity"),
        _D("definition", "a feature counts as zero when a < eps (negative attributions "
           "count as zero when abs=False)", "when |a| < eps", ""),
    ),
    "PixelFlipping": (
        _pixels("PixelFlipping"),
        _D("output", "the per-sample curves (return_auc_per_sample=False); with True, their "
           "area with unit spacing over T steps, without the unperturbed point",
           "the area under the curve over the fraction of features removed, from the "
           "unperturbed input", "metric.curves_"),
    ),
    "PointingGame": (
        _D("definition", "a hit when any position holding the map's maximum lies in the mask, "
           "so a constant map or a plateau hits whenever it touches the mask",
           'ties="mean": the share of the tied maxima inside the mask (the expected hit of a '
           "random tie-break)", 'PointingGame(ties="any")', ("C30",)),
    ),
    "ROAD": (
        _D("direction", "lower is better (the MoRF accuracy curve)",
           'higher is better at the default order="combined": (LeRF - MoRF) / 2',
           'ROAD(order="morf")'),
        _D("output", "the MoRF accuracy averaged over the samples, one value per percentage "
           "(1, 3, ..., 99), of the first batch chunk only",
           "one value per sample, averaged over the percentages (10, 20, ..., 90)",
           'ROAD(order="morf", percentages=range(1, 100, 2)); metric.curves_.mean(0)',
           ("C4",)),
    ),
    "RandomLogit": (
        _D("definition", "SSIM of the flattened maps (a 1-D window over the raster order)",
           "SSIM on the maps' own 2-D shape",
           "RandomLogit(similarity_func=lambda a, b: ssim(a.flatten(1), b.flatten(1)))"),
    ),
    "RegionPerturbation": (
        _D("direction", "lower is better, though with order=\"morf\" a larger drop is a "
           "better explanation", 'higher is better with order="morf", lower with "lerf"',
           "", ("C17",)),
        _D("output", "the per-sample curves of drops", "the area under the curve of drops "
           '(score="auc"; score="aopc" for the paper\'s AOPC)', "metric.curves_"),
    ),
    "Selectivity": (
        _D("output", "the per-sample curves, without the unperturbed point",
           "the area under the curve over the fraction of patches removed",
           "metric.curves_"),
    ),
    "SensitivityN": (
        _D("definition", "set-level: top-n features, correlated across the samples of the "
           "first batch chunk, pairing the cumulative output change with the last step's "
           "attributions only", "per sample: random subsets of each size n (the paper as "
           "AttriBench and saliency-metrics implement it)", 'SensitivityN(subsets="morf")',
           ("C4", "C24")),
    ),
    "SmoothMPRT": (
        _D("output", "a dict of per-layer similarities; explains with quantus.explain "
           "whatever explain_func is", "one number per sample (the mean over the "
           "randomised layers); the given explain function", "", ("C5", "C6")),
    ),
    "RelativeRepresentationStability": (
        _D("default", "all layers (every module except nn.Sequential containers)",
           "no default: layer_names must be given (\"all\": the leaf modules that run)",
           'RelativeRepresentationStability(layer_names="all")',
           ("C32",)),
    ),
}


def same_name_rows() -> list[dict[str, str]]:
    """The table as rows (metric, aspect, quantus, evalkit, reproduce, deviations), sorted by
    metric name: what the report card's data file and the docs render."""
    rows = []
    for metric in sorted(SAME_NAME_DIFFERENT_MEANING):
        for d in SAME_NAME_DIFFERENT_MEANING[metric]:
            rows.append({"metric": metric, "aspect": d.aspect, "quantus": d.quantus,
                         "evalkit": d.evalkit, "reproduce": d.reproduce,
                         "deviations": ", ".join(d.deviations)})
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def same_name_markdown(deviation_links: str = "migrating-quantus.md") -> str:
    """A Markdown table of :data:`SAME_NAME_DIFFERENT_MEANING` (deviation ids link to their
    rows on ``deviation_links``; ``""`` for links within the same page)."""
    lines = ["| Metric | Differs in | Quantus 0.6 | evalkit (default) | Quantus' meaning in "
             "evalkit | Deviations |", "|---|---|---|---|---|---|"]
    for row in same_name_rows():
        ids = ", ".join(f"[{i}]({deviation_links}#{i.lower()})"
                        for i in row["deviations"].split(", ") if i)
        reproduce = f"`{row['reproduce']}`" if row["reproduce"] else "none"
        lines.append(f"| {row['metric']} | {row['aspect']} | {_cell(row['quantus'])} | "
                     f"{_cell(row['evalkit'])} | {_cell(reproduce)} | {ids} |")
    return "\n".join(lines) + "\n"
