"""Figures of evaluation results (matplotlib).

Every function returns a ``matplotlib.figure.Figure`` built without ``pyplot`` (no global
figure state, any backend): save it with ``fig.savefig(path)``; notebooks display it.
:meth:`evalkit.results.Results.plot` dispatches here by name.

* :func:`plot_radar`: a radar ("spyder") chart of each method's family ranks, as in the Quantus
  tutorial, drawn so that the best rank is on the outside;
* :func:`plot_bars`: mean score per method and metric with bootstrap confidence intervals;
* :func:`plot_distributions`: per-sample scores (violins or boxes);
* :func:`plot_curves`: mean removal/insertion curves with their spread across samples;
* :func:`plot_explanations`: explanations overlaid on their inputs with each method's score
  printed on the map (the benchmark figure of pytorch-grad-cam's CAM metrics tutorial), per
  modality: images, series (lines with the attribution shaded), tables (bars per feature) and
  tokens (text coloured by attribution; :func:`tokens_html` gives the same as HTML);
* :func:`plot_rank_frequency`: how often each method takes each rank across many settings
  (e.g. a metric's parameterisations), from :func:`rank_frequencies`, next to the ideal of a
  method that always takes the same rank (the parameter-sensitivity figure of the Quantus
  tutorial).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .ranking import place_shares

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

    from ._types import ScoredResults
    from .leaderboard import Leaderboard

__all__ = [
    "plot",
    "plot_bars",
    "plot_curves",
    "plot_distributions",
    "plot_explanations",
    "plot_radar",
    "plot_rank_frequency",
    "rank_frequencies",
    "tokens_html",
]

_KINDS = ("radar", "bars", "distributions", "violin", "box", "curves", "explanations")


def plot(results: ScoredResults, kind: str = "radar", **kwargs: Any) -> Figure:
    """Dispatch by name: ``"radar"``, ``"bars"``, ``"distributions"`` (``"violin"``,
    ``"box"``), ``"curves"`` or ``"explanations"``."""
    if kind == "radar":
        return plot_radar(results, **kwargs)
    if kind == "bars":
        return plot_bars(results, **kwargs)
    if kind in ("distributions", "violin", "box"):
        if kind != "distributions":
            kwargs.setdefault("style", kind)
        return plot_distributions(results, **kwargs)
    if kind == "curves":
        return plot_curves(results, **kwargs)
    if kind == "explanations":
        return plot_explanations(results, **kwargs)
    raise ValueError(f"`kind` must be one of {_KINDS}; got {kind!r}.")


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _colours(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _select(values: Sequence[str] | None, available: Sequence[str], what: str) -> list[str]:
    if values is None:
        return list(available)
    out = list(values)
    for v in out:
        if v not in available:
            raise ValueError(f"Unknown {what} {v!r}; available: {list(available)}.")
    return out


def _grid(n: int, ncols: int, cell: tuple[float, float]) -> tuple[Figure, list[Any]]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = _figure(cell[0] * ncols, cell[1] * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes[:n]


def _arrow(results: ScoredResults, metric: str) -> str:
    return "↑" if results.higher_is_better(metric) else "↓"


# ---------------------------------------------------------------------- radar
def plot_radar(
    results: ScoredResults,
    *,
    leaderboard: Leaderboard | None = None,
    by: str = "family",
    methods: Sequence[str] | None = None,
    title: str | None = None,
    fill: bool = True,
    **leaderboard_kwargs: Any,
) -> Figure:
    """A radar chart with one axis per family (``by="family"``) or metric (``by="metric"``)
    and one polygon per method. The radius is ``n_methods + 1 - rank``: the best rank (1)
    lies on the outside, as in the Quantus tutorial, and every axis points the same way
    whatever the metrics' directions."""
    from .leaderboard import Leaderboard

    if by not in ("family", "metric"):
        raise ValueError(f"`by` must be 'family' or 'metric'; got {by!r}.")
    board = leaderboard if leaderboard is not None else Leaderboard(
        results, **{"n_boot": 0, **leaderboard_kwargs})
    names = _select(methods, board.methods, "method")
    if by == "family":
        axes_names = list(board.families_order)
        values = np.array([[board.table.loc[m, f"{f} rank"] for f in axes_names] for m in names])
    else:
        axes_names = list(board.metrics)
        values = np.array([[board.ranks.loc[m, k] for k in axes_names] for m in names])
    top = len(board.methods)
    radius = top + 1 - values
    angles = np.linspace(0, 2 * np.pi, len(axes_names), endpoint=False)
    closed = np.concatenate([angles, angles[:1]])
    fig = _figure(9.0, 6.5)
    ax = fig.add_subplot(projection="polar")
    ax.set_theta_offset(np.pi / 2)
    ax.set_theta_direction(-1)
    for colour, name, r in zip(_colours(len(names)), names, radius, strict=True):
        r = np.where(np.isfinite(r), r, 0.0)
        rc = np.concatenate([r, r[:1]])
        ax.plot(closed, rc, color=colour, linewidth=2, label=name)
        if fill:
            ax.fill(closed, rc, color=colour, alpha=0.12)
    ax.set_xticks(angles)
    ax.set_xticklabels(axes_names)
    ax.tick_params(axis="x", pad=10)
    ax.set_ylim(0, top + 0.2)
    ax.set_yticks(np.arange(1, top + 1))
    ax.set_yticklabels([f"{top + 1 - t:g}" for t in range(1, top + 1)], fontsize="x-small")
    mode = board.mode.replace("_", " ")
    fig.suptitle(title or f"Ranks by {by} (outside = rank 1 = best; {mode})", fontsize="medium")
    fig.legend(loc="outside right upper", fontsize="small", frameon=False)
    return fig


# ---------------------------------------------------------------------- bars
def plot_bars(
    results: ScoredResults,
    *,
    metrics: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    leaderboard: Leaderboard | None = None,
    ncols: int = 4,
    **leaderboard_kwargs: Any,
) -> Figure:
    """One panel per metric: each method's mean score with its bootstrap confidence interval
    (from ``leaderboard``, else a new :class:`~evalkit.leaderboard.Leaderboard`; the standard
    error when it has no resamples)."""
    from .leaderboard import Leaderboard

    board = leaderboard if leaderboard is not None else Leaderboard(results, **leaderboard_kwargs)
    metric_names = _select(metrics, board.metrics, "metric")
    names = _select(methods, board.methods, "method")
    value = "scaled" if board.rescale is not None else "score"
    fig, axes = _grid(len(metric_names), ncols, (3.2, 2.8))
    colours = _colours(len(names))
    long = board.long.set_index(["method", "metric"])
    summary = None
    for ax, k in zip(axes, metric_names, strict=True):
        mean = np.array([long.loc[(m, k), value] for m in names], dtype=float)
        lo = np.array([long.loc[(m, k), f"{value}_lo"] for m in names], dtype=float)
        hi = np.array([long.loc[(m, k), f"{value}_hi"] for m in names], dtype=float)
        if not np.isfinite(lo).any() and value == "score":  # no resamples: standard errors
            summary = results.summary() if summary is None else summary
            sem = summary.loc[[(m, k) for m in names], "sem"].to_numpy(dtype=float)
            lo, hi = mean - sem, mean + sem
        err = np.vstack([np.clip(mean - lo, 0, None), np.clip(hi - mean, 0, None)])
        err = np.where(np.isfinite(err), err, 0.0)
        pos = np.arange(len(names))
        ax.bar(pos, np.where(np.isfinite(mean), mean, 0.0), yerr=err, color=colours,
               capsize=3, edgecolor="none")
        for p, v in zip(pos, mean, strict=True):
            if not np.isfinite(v):
                ax.text(p, 0, "n/a", ha="center", va="bottom", fontsize="x-small")
        ax.set_xticks(pos)
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize="small")
        label = f"{k} {_arrow(results, k)}" if value == "score" else f"{k} (scaled)"
        ax.set_title(label, fontsize="medium")
        ax.axhline(0, color="black", linewidth=0.6)
    return fig


# ---------------------------------------------------------------------- distributions
def plot_distributions(
    results: ScoredResults,
    *,
    metrics: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    style: str = "violin",
    ncols: int = 4,
) -> Figure:
    """One panel per metric: the per-sample scores of each method (NaN left out), as violins
    (``style="violin"``, with the median marked) or boxes (``style="box"``)."""
    if style not in ("violin", "box"):
        raise ValueError(f"`style` must be 'violin' or 'box'; got {style!r}.")
    metric_names = _select(metrics, results.metrics, "metric")
    names = _select(methods, results.methods, "method")
    fig, axes = _grid(len(metric_names), ncols, (3.2, 2.8))
    colours = _colours(len(names))
    for ax, k in zip(axes, metric_names, strict=True):
        data = [results.scores[m, k][np.isfinite(results.scores[m, k])] for m in names]
        pos = [i for i, d in enumerate(data) if d.size]
        present = [data[i] for i in pos]
        if present:
            if style == "violin":
                parts = ax.violinplot(present, positions=pos, showmedians=True, widths=0.8)
                for body, i in zip(parts["bodies"], pos, strict=True):
                    body.set_facecolor(colours[i])
                    body.set_alpha(0.6)
                for key in ("cmedians", "cbars", "cmins", "cmaxes"):
                    if key in parts:
                        parts[key].set_color("0.25")
                        parts[key].set_linewidth(0.8)
            else:
                box = ax.boxplot(present, positions=pos, widths=0.6, patch_artist=True)
                for patch, i in zip(box["boxes"], pos, strict=True):
                    patch.set_facecolor(colours[i])
                    patch.set_alpha(0.6)
        for i, d in enumerate(data):
            if not d.size:
                ax.text(i, 0.5, "n/a", ha="center", transform=ax.get_xaxis_transform(),
                        fontsize="x-small")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize="small")
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_title(f"{k} {_arrow(results, k)}", fontsize="medium")
    return fig


# ---------------------------------------------------------------------- curves
def plot_curves(
    results: ScoredResults,
    *,
    metrics: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    spread: str | None = "iqr",
    ncols: int = 3,
) -> Figure:
    """One panel per metric that records curves (``Metric.curves_``, e.g. PixelFlipping,
    Deletion, Insertion, ROAD): each method's mean curve over the samples with its spread
    (``"iqr"``: 25th-75th percentiles, ``"std"``: one standard deviation, ``"sem"``: one
    standard error, None: none)."""
    if spread not in ("iqr", "std", "sem", None):
        raise ValueError(f"`spread` must be 'iqr', 'std', 'sem' or None; got {spread!r}.")
    names = _select(methods, results.methods, "method")
    with_curves = [k for k in results.metrics
                   if any((m, k) in results.curves for m in results.methods)]
    metric_names = _select(metrics, with_curves, "metric with curves") if metrics is not None \
        else with_curves
    if not metric_names:
        raise ValueError("None of the metrics recorded curves (e.g. PixelFlipping, Deletion, "
                         "Insertion, ROAD do).")
    fig, axes = _grid(len(metric_names), ncols, (3.8, 3.0))
    colours = _colours(len(names))
    for ax, k in zip(axes, metric_names, strict=True):
        for colour, m in zip(colours, names, strict=True):
            c = results.curves.get((m, k))
            if c is None:
                continue
            rows = c[np.isfinite(c).any(1)]
            if not rows.size:
                continue
            xs = results.curve_x.get((m, k))
            xs = np.arange(rows.shape[1]) if xs is None or len(xs) != rows.shape[1] \
                else np.asarray(xs, dtype=float)
            mean = np.nanmean(rows, 0)
            ax.plot(xs, mean, color=colour, label=m, linewidth=1.6)
            if spread is not None and rows.shape[0] > 1:
                if spread == "iqr":
                    lo, hi = np.nanpercentile(rows, [25, 75], axis=0)
                else:
                    sd = np.nanstd(rows, 0, ddof=1)
                    if spread == "sem":
                        sd = sd / np.sqrt(np.isfinite(rows).sum(0).clip(min=1))
                    lo, hi = mean - sd, mean + sd
                ax.fill_between(xs, lo, hi, color=colour, alpha=0.08, linewidth=0)
        ax.set_title(f"{k} {_arrow(results, k)}", fontsize="medium")
        xs_all = [results.curve_x[m, k] for m in names if (m, k) in results.curve_x]
        fraction = bool(xs_all) and all(np.nanmin(v) >= 0 and np.nanmax(v) <= 1 for v in xs_all)
        ax.set_xlabel("fraction of features" if fraction else "step", fontsize="small")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper",
               fontsize="small", frameon=False)
    return fig


# ---------------------------------------------------------------------- explanations
def _image(x: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, 3) floats in [0, 1] (min-max scaled when outside)."""
    img = np.asarray(x, dtype=np.float64)
    if img.shape[0] == 1:
        img = np.repeat(img, 3, 0)
    elif img.shape[0] != 3:
        img = np.repeat(img.mean(0, keepdims=True), 3, 0)
    img = np.moveaxis(img, 0, -1)
    lo, hi = img.min(), img.max()
    if lo < 0 or hi > 1:
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img


def _map(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else np.abs(a).sum(0)
    return np.where(np.isfinite(a), a, 0.0)


def plot_explanations(
    results: ScoredResults | None = None,
    x: Any = None,
    attributions: Mapping[str, Any] | None = None,
    *,
    metric: str | None = None,
    samples: int | Sequence[int] = 4,
    methods: Sequence[str] | None = None,
    sample_indices: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    y: Any = None,
    colormap: str = "jet",
    image_weight: float = 0.5,
    modality: Any = None,
    feature_names: Sequence[str] | None = None,
    vocab: Any = None,
    pad_id: int | None = None,
) -> Figure:
    """Explanations next to their inputs, one row per sample and one column per method, with
    the method's score on ``metric`` for that sample printed in its cell. The drawing follows
    the modality of ``x`` (inferred from its shape and dtype, or ``modality=``):

    * **images** (k, C, H, W), C in {1, 3}: the input, then each map overlaid on it
      (:func:`evalkit.explain.show_cam_on_image`); multi-channel maps are shown as the sum of
      absolute values over channels;
    * **series** (k, C, T): each channel as a line, with its attribution shaded between the
      line and the line plus the attribution (over the line where it is positive, under it
      where it is negative), scaled so that the largest |attribution| of the map spans a
      quarter of the series' range; a one-channel map shades every channel;
    * **tabular** (k, F): a bar per feature (red positive, blue negative), labelled with
      ``feature_names`` if given (the map of :meth:`~evalkit.modality.Modality.display_map`);
    * **tokens** (k, L) integer ids: the tokens as text, each on a background coloured by its
      attribution (red positive, blue negative, scaled by the map's largest |value|); ``vocab``
      maps ids to strings (a sequence, a mapping or a callable; default the id), tokens equal
      to ``pad_id`` are left out. :func:`tokens_html` renders the same as HTML.

    Parameters
    ----------
    results:
        Where the scores come from (None: no scores printed).
    x:
        The inputs shown.
    attributions:
        ``{method: (k, ...)}`` explanations of those inputs (e.g. from
        :func:`evalkit.evaluate.explain_methods`).
    metric:
        Whose scores are printed (default: the first metric of ``results``).
    samples:
        How many of the given inputs to show, or which of them.
    sample_indices:
        The indices of the shown inputs in ``results`` (default: the positions in ``x``), to
        look up their scores.
    class_names, y:
        Labels printed above each row's first cell.
    """
    from .modality import as_modality

    if x is None or attributions is None:
        raise ValueError("plot_explanations needs the inputs `x` and their `attributions` "
                         "({method: array}); see evalkit.evaluate.explain_methods.")
    xs = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    kind = as_modality(modality, xs)
    chosen = list(range(min(int(samples), xs.shape[0]))) if isinstance(samples, int | np.integer) \
        else [int(i) for i in samples]
    names = list(attributions) if methods is None else list(methods)
    for m in names:
        if m not in attributions:
            raise ValueError(f"No attributions for method {m!r}.")
    if results is not None and metric is None:
        metric = results.metrics[0]
    if results is not None and metric not in results.metrics:
        raise ValueError(f"Unknown metric {metric!r}; results have {results.metrics}.")
    maps = {m: _as_array(attributions[m]) for m in names}
    grid = _Grid(results, metric, chosen, names,
                 list(sample_indices) if sample_indices is not None else list(range(xs.shape[0])),
                 None if y is None else np.asarray(y.cpu() if hasattr(y, "cpu") else y),
                 class_names)
    if kind.name == "series":
        return _plot_series(grid, xs, maps)
    if kind.name == "tabular":
        return _plot_tabular(grid, xs, maps, kind, feature_names)
    if kind.name == "tokens":
        return _plot_tokens(grid, xs, maps, kind, vocab, pad_id)
    if xs.ndim != 4:
        raise ValueError(f"`x` must be images (k, C, H, W); got shape {xs.shape}.")
    return _plot_images(grid, xs, maps, colormap, image_weight)


def _as_array(value: Any) -> np.ndarray:
    return np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value,
                      dtype=np.float64)


class _Grid:
    """What every explanation figure shares: which samples and methods, their scores and the
    labels of the rows."""

    def __init__(self, results: ScoredResults | None, metric: str | None, chosen: list[int],
                 names: list[str], index_of: list[int], labels: np.ndarray | None,
                 class_names: Sequence[str] | None) -> None:
        self.results, self.metric, self.chosen, self.names = results, metric, chosen, names
        self.index_of, self.labels, self.class_names = index_of, labels, class_names

    def head(self, i: int) -> str:
        head = f"sample {self.index_of[i]}"
        if self.labels is not None:
            label = self.labels[i]
            head += (f": {self.class_names[int(label)]}" if self.class_names is not None
                     else f": y={label}")
        return head

    def score_text(self, method: str, i: int) -> str | None:
        if self.results is None or method not in self.results.methods:
            return None
        v = self.results.scores[method, self.metric][self.index_of[i]]
        return f"{v:.3f}" if np.isfinite(v) else "n/a"

    def title(self, fig: Figure) -> None:
        if self.results is not None:
            assert self.metric is not None
            fig.suptitle(f"{self.metric} {_arrow(self.results, self.metric)} per sample",
                         fontsize="medium")

    def axes(self, ncols: int, cell: tuple[float, float]) -> tuple[Figure, np.ndarray]:
        fig = _figure(cell[0] * ncols, cell[1] * len(self.chosen) + 0.4)
        return fig, fig.subplots(len(self.chosen), ncols, squeeze=False)


def _plot_images(grid: _Grid, xs: np.ndarray, maps: dict[str, np.ndarray], colormap: str,
                 image_weight: float) -> Figure:
    from matplotlib import patheffects

    from .explain.visualise import show_cam_on_image

    fig, axes = grid.axes(len(grid.names) + 1, (1.9, 2.0))
    outline = [patheffects.withStroke(linewidth=2.2, foreground="black")]
    for r, i in enumerate(grid.chosen):
        img = _image(xs[i])
        axes[r, 0].imshow(img)
        axes[r, 0].set_title(grid.head(i), fontsize="small")
        for c, m in enumerate(grid.names, start=1):
            amap = _map(maps[m][i])
            if amap.shape != img.shape[:2]:
                raise ValueError(f"attributions[{m!r}] maps are {amap.shape}; images are "
                                 f"{img.shape[:2]}.")
            ax = axes[r, c]
            ax.imshow(show_cam_on_image(img, amap, colormap=colormap, image_weight=image_weight))
            if r == 0:
                ax.set_title(m, fontsize="small")
            text = grid.score_text(m, i)
            if text is not None:
                ax.text(0.04, 0.04, text, transform=ax.transAxes, color="white",
                        fontsize="small", fontweight="bold", path_effects=outline)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    grid.title(fig)
    return fig


def _score_corner(ax: Any, text: str | None) -> None:
    if text is not None:
        ax.text(0.98, 0.96, text, transform=ax.transAxes, ha="right", va="top",
                fontsize="small", fontweight="bold",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.5})


def _plot_series(grid: _Grid, xs: np.ndarray, maps: dict[str, np.ndarray]) -> Figure:
    if xs.ndim != 3:
        raise ValueError(f"`x` must be series (k, C, T); got shape {xs.shape}.")
    _, c_count, t_count = xs.shape
    colours = _colours(c_count)
    fig, axes = grid.axes(len(grid.names), (3.2, 1.9))
    steps = np.arange(t_count)
    for r, i in enumerate(grid.chosen):
        series = xs[i]
        span = float(series.max() - series.min()) or 1.0
        for c, m in enumerate(grid.names):
            a = maps[m][i]
            a = a.reshape(1, -1) if a.ndim == 1 else a
            if a.ndim != 2 or a.shape[-1] != t_count or a.shape[0] not in (1, c_count):
                raise ValueError(f"attributions[{m!r}] maps are {maps[m].shape[1:]}; series are "
                                 f"{(c_count, t_count)} (images (k, C, H, W) need 4-D `x`).")
            a = np.where(np.isfinite(a), a, 0.0)
            top = float(np.abs(a).max())
            shade = a / top * span / 4 if top > 0 else np.zeros_like(a)
            ax = axes[r, c]
            for ch in range(c_count):
                line = series[ch]
                ax.plot(steps, line, color=colours[ch], linewidth=1.0, label=f"channel {ch}")
                ax.fill_between(steps, line, line + shade[min(ch, shade.shape[0] - 1)],
                                color=colours[ch], alpha=0.35, linewidth=0)
            if r == 0:
                ax.set_title(m, fontsize="small")
            if c == 0:
                ax.set_ylabel(grid.head(i), fontsize="small")
            _score_corner(ax, grid.score_text(m, i))
            ax.tick_params(labelsize="x-small")
    grid.title(fig)
    return fig


def _plot_tabular(grid: _Grid, xs: np.ndarray, maps: dict[str, np.ndarray], kind: Any,
                  feature_names: Sequence[str] | None) -> Figure:
    f_count = xs.shape[1]
    if feature_names is not None and len(feature_names) != f_count:
        raise ValueError(f"`feature_names` has {len(feature_names)} names for {f_count} "
                         "features.")
    labels = list(feature_names) if feature_names is not None else [str(j) for j in
                                                                     range(f_count)]
    fig, axes = grid.axes(len(grid.names), (max(2.6, 0.28 * f_count + 1.0), 2.0))
    for r, i in enumerate(grid.chosen):
        for c, m in enumerate(grid.names):
            values = kind.display_map(maps[m][i]).reshape(-1)
            if values.shape[0] != f_count:
                raise ValueError(f"attributions[{m!r}] maps have {values.shape[0]} values; the "
                                 f"table has {f_count} features.")
            values = np.where(np.isfinite(values), values, 0.0)
            ax = axes[r, c]
            ax.bar(np.arange(f_count), values,
                   color=np.where(values >= 0, "tab:red", "tab:blue").tolist())
            ax.axhline(0.0, color="black", linewidth=0.6)
            ax.set_xticks(np.arange(f_count), labels, rotation=90, fontsize="x-small")
            ax.tick_params(axis="y", labelsize="x-small")
            if r == 0:
                ax.set_title(m, fontsize="small")
            if c == 0:
                ax.set_ylabel(grid.head(i), fontsize="small")
            _score_corner(ax, grid.score_text(m, i))
    grid.title(fig)
    return fig


def _token_strings(ids: np.ndarray, vocab: Any) -> list[str]:
    out = []
    for t in np.asarray(ids).reshape(-1).tolist():
        t = int(t)
        if vocab is None:
            out.append(str(t))
        elif callable(vocab):
            out.append(str(vocab(t)))
        else:
            out.append(str(vocab[t]))
    return out


def _token_colours(values: np.ndarray) -> np.ndarray:
    """RGBA (L, 4) backgrounds: white at 0, red for the largest positive |value| of the map,
    blue for the largest negative one (a diverging scale around zero)."""
    import matplotlib

    values = np.where(np.isfinite(values), values, 0.0)
    top = float(np.abs(values).max())
    scaled = values / top if top > 0 else np.zeros_like(values)
    return matplotlib.colormaps["bwr"]((scaled + 1) / 2)


def _plot_tokens(grid: _Grid, xs: np.ndarray, maps: dict[str, np.ndarray], kind: Any,
                 vocab: Any, pad_id: int | None) -> Figure:
    length = xs.shape[1]
    fig, axes = grid.axes(len(grid.names), (4.2, 1.6))
    for r, i in enumerate(grid.chosen):
        tokens = _token_strings(xs[i], vocab)
        for c, m in enumerate(grid.names):
            values = kind.display_map(maps[m][i]).reshape(-1)
            if values.shape[0] != length:
                raise ValueError(f"attributions[{m!r}] maps have {values.shape[0]} values; the "
                                 f"sequences have {length} tokens.")
            colours = _token_colours(values)
            ax = axes[r, c]
            ax.set_axis_off()
            # a monospace-like advance per character: axes fractions, wrapped at the cell's edge
            per_char, line_height = 0.026, 0.16
            x_pos, y_pos = 0.0, 0.86
            for j, tok in enumerate(tokens):
                if pad_id is not None and int(xs[i, j]) == pad_id:
                    continue
                width = per_char * (len(tok) + 1)
                if x_pos > 0 and x_pos + width > 1.0:
                    x_pos, y_pos = 0.0, y_pos - line_height
                ax.text(x_pos, y_pos, tok, transform=ax.transAxes, fontsize="small",
                        family="monospace", va="top",
                        bbox={"facecolor": colours[j], "edgecolor": "none", "pad": 1.0})
                x_pos += width
            if r == 0:
                ax.set_title(m, fontsize="small")
            if c == 0:
                ax.text(0.0, 1.0, grid.head(i), transform=ax.transAxes, fontsize="x-small",
                        va="bottom")
            _score_corner(ax, grid.score_text(m, i))
    grid.title(fig)
    return fig


class HTMLString(str):
    """A string of HTML that notebooks (IPython) display rendered (``_repr_html_``)."""

    def _repr_html_(self) -> str:
        return str(self)


def tokens_html(ids: Any, attributions: Any, *, vocab: Any = None,
                pad_id: int | None = None) -> HTMLString:
    """Tokens as HTML, each on a background coloured by its attribution (red positive, blue
    negative, scaled by the map's largest |value|; the value is the token's tooltip).

    ``ids``: (L,) or (k, L) token ids; ``attributions``: the same shape (one value per
    token); ``vocab``: id -> string (a sequence, a mapping or a callable; default the id);
    tokens equal to ``pad_id`` are left out. Token strings are HTML-escaped. Returns an
    :class:`HTMLString` (a ``str`` that IPython renders as HTML), one ``<div>`` per sequence.
    """
    import html

    ids_a = np.asarray(ids.detach().cpu().numpy() if hasattr(ids, "detach") else ids)
    values = _as_array(attributions)
    if ids_a.ndim == 1:
        ids_a, values = ids_a[None], values.reshape(1, -1)
    if ids_a.ndim != 2 or values.reshape(ids_a.shape[0], -1).shape != ids_a.shape:
        raise ValueError(f"`attributions` {values.shape} must hold one value per token of "
                         f"`ids` {ids_a.shape}.")
    values = values.reshape(ids_a.shape)
    rows = []
    for seq, vals in zip(ids_a, values, strict=True):
        colours = _token_colours(vals)
        spans = []
        for tok_id, tok, v, rgba in zip(seq.tolist(), _token_strings(seq, vocab), vals.tolist(),
                                        colours, strict=True):
            if pad_id is not None and int(tok_id) == pad_id:
                continue
            r, g, b = (int(255 * float(ch) + 0.5) for ch in rgba[:3])
            spans.append(f'<span style="background-color: rgb({r}, {g}, {b}); padding: 0 2px; '
                         f'margin: 0 1px; border-radius: 2px" title="{v:.4g}">'
                         f"{html.escape(tok)}</span>")
        rows.append('<div style="font-family: monospace; line-height: 1.8">'
                    + " ".join(spans) + "</div>")
    return HTMLString("\n".join(rows))


# ---------------------------------------------------------------------- rank frequencies
def _score_table(scores: Any) -> tuple[np.ndarray, list[str]]:
    """(settings, methods) float array and the method names from a DataFrame (columns are the
    methods), a mapping ``{method: values}`` or a 2-D array (methods named M1, M2, ...)."""
    import pandas as pd

    if isinstance(scores, pd.DataFrame):
        names = [str(c) for c in scores.columns]
        values = scores.to_numpy(dtype=np.float64)
    elif isinstance(scores, Mapping):
        names = [str(k) for k in scores]
        columns = [np.asarray(v, dtype=np.float64).reshape(-1) for v in scores.values()]
        if len({c.shape[0] for c in columns}) > 1:
            raise ValueError("`scores` maps every method to the same number of settings; got "
                             f"lengths {[c.shape[0] for c in columns]}.")
        values = np.stack(columns, 1) if columns else np.empty((0, 0))
    else:
        values = np.asarray(scores, dtype=np.float64)
        if values.ndim != 2:
            raise ValueError("`scores` must be a DataFrame (settings x methods), a dict "
                             f"{{method: values}} or a 2-D array; got shape {values.shape}.")
        names = [f"M{j + 1}" for j in range(values.shape[1])]
    if values.ndim != 2 or values.shape[1] < 2:
        raise ValueError(f"`scores` needs at least two methods (columns); got shape "
                         f"{values.shape}.")
    return values, names


def rank_frequencies(scores: Any, higher_is_better: bool = True) -> pd.DataFrame:
    """How often each method takes each rank, over the rows of ``scores``.

    Parameters
    ----------
    scores:
        One row per setting (a metric's parameterisation, a metric, a sample, ...) and one
        column per method: a ``DataFrame`` (e.g. ``results.summary(wide=True).T`` of an
        evaluation whose metrics are the parameterisations), ``{method: values}`` or a 2-D
        array.
    higher_is_better:
        The scores' direction: rank 1 is the best method of a row.

    Returns
    -------
    ``DataFrame`` methods x ranks ``1..M``: the fraction of rows in which the method takes each
    rank (each row of the frame sums to 1). Tied methods share the places of their tie (the
    tie rule of :mod:`evalkit.ranking`, so a method's mean place in a row is its average rank
    there): two methods tied for first each count half a first and half a second place. Rows with a
    non-finite score are left out; ``attrs`` records ``n_settings`` (rows used) and
    ``n_dropped``.
    """
    import pandas as pd

    values, names = _score_table(scores)
    finite = np.isfinite(values).all(1)
    kept = values[finite]
    if kept.shape[0] == 0:
        raise ValueError("No row of `scores` is finite for every method; nothing to rank.")
    share = place_shares(kept, higher_is_better)  # (R, M, places)
    places = np.arange(1, len(names) + 1)
    frame = pd.DataFrame(share.mean(0), index=pd.Index(names, name="method"),
                         columns=pd.Index(places, name="rank"))
    frame.attrs["n_settings"] = int(kept.shape[0])
    frame.attrs["n_dropped"] = int((~finite).sum())
    return frame


def plot_rank_frequency(
    scores: Any,
    higher_is_better: bool = True,
    *,
    reference: bool = True,
    title: str | None = None,
    xlabel: str | None = None,
) -> Figure:
    """Stacked bars, one per method: the share of settings in which it takes rank 1 (best,
    bottom), 2, ... (from :func:`rank_frequencies`, same arguments).

    With ``reference=True`` the bars are preceded by the ideal, one reference method per rank
    that takes it in every setting ("expectation"), as in the parameter-sensitivity figure of
    the Quantus tutorial: a metric whose ranking does not depend on its parameters would give
    bars like these.
    """
    from matplotlib.ticker import PercentFormatter

    freq = rank_frequencies(scores, higher_is_better)
    names = list(freq.index)
    m = len(names)
    labels = names
    table = freq.to_numpy()
    if reference:
        ideal = [chr(ord("A") + j) if j < 26 else f"R{j + 1}" for j in range(m)]
        labels = ideal + names
        table = np.vstack([np.eye(m), table])
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    colours = [cmap(j / max(1, m - 1)) for j in range(m)]
    fig = _figure(max(4.5, 0.55 * len(labels) + 2.0), 4.2)
    ax = fig.add_subplot()
    pos = np.arange(len(labels))
    bottom = np.zeros(len(labels))
    for r in range(m):
        ax.bar(pos, 100 * table[:, r], bottom=100 * bottom, color=colours[r], width=0.65,
               edgecolor="white", linewidth=0.5, label=_ordinal(r + 1))
        bottom += table[:, r]
    if reference:
        ax.axvline(m - 0.5, color="black", linewidth=1.0)
    ax.set_xticks(pos)
    ax.set_xticklabels(labels, rotation=30 if max(map(len, labels)) > 4 else 0,
                       ha="right" if max(map(len, labels)) > 4 else "center")
    ax.set_ylim(0, 100)
    ax.yaxis.set_major_formatter(PercentFormatter())
    ax.set_ylabel("share of settings at each rank")
    n_text = f"{freq.attrs['n_settings']} settings"
    if freq.attrs["n_dropped"]:
        n_text += f", {freq.attrs['n_dropped']} with undefined scores left out"
    default_x = ("expectation | reality" if reference else "method") + f" ({n_text})"
    ax.set_xlabel(xlabel or default_x)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    # below the axes, so that a long title never runs into it
    fig.legend(loc="outside lower center", title="rank (1 = best)", fontsize="small",
               ncols=min(m, 8), frameon=False)
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"
