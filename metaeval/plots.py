"""Plots of meta-evaluation results (matplotlib): the area ("kite") plots and criteria scatter
plots of MetaQuantus (Hedström et al., TMLR 2023).

The kite of one space has its vertices on the axes at (-IAC_AR, 0), (0, IAC_NR), (IEC_AR, 0)
and (0, -IEC_NR); the ideal m* = (1, 1, 1, 1) is the grey diamond of area 2. The kite's area is
½ (IAC_AR + IEC_AR)(IAC_NR + IEC_NR), which is *not* the MC score (the mean of the four); both are
printed. The metric's chance-level kite (its chance levels given the observed ties, averaged
over the spaces; (0.5, 0.5, 1/L, 0.5) for continuous scores) is drawn dotted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .criteria import CRITERIA, chance_levels

__all__ = ["kite_area", "plot_area", "plot_scatter"]

_STYLE = {"Input": {"alpha": 0.75, "hatch": None}, "Model": {"alpha": 0.5, "hatch": "/"}}


def kite_area(iac_nr: float, iac_ar: float, iec_nr: float, iec_ar: float) -> float:
    """Area of the kite with vertices (-IAC_AR, 0), (0, IAC_NR), (IEC_AR, 0), (0, -IEC_NR)."""
    return 0.5 * (iac_ar + iec_ar) * (iac_nr + iec_nr)


def _kite(ax: Any, v: dict[str, float], **kw: Any) -> None:
    xs = [-v["IAC_AR"], 0.0, v["IEC_AR"], 0.0]
    ys = [0.0, v["IAC_NR"], 0.0, -v["IEC_NR"]]
    ax.fill(xs, ys, **kw)


def plot_area(result: Any, *, dataset: str | None = None, model: str | None = None,
              metrics: Sequence[str] | None = None, n_cols: int = 5,
              colours: dict[str, Any] | None = None, figsize: tuple[float, float] | None = None,
              show_chance: bool = True) -> Any:
    """One panel per metric: the Input kite (solid) and Model kite (hatched) over m*.

    Panel titles give MC̄ (the mean MC over the applicable spaces); the legend gives each
    space's MC and kite area. Returns the matplotlib Figure (nothing is written to disk).
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    s = _select(result.summary(), dataset, model)
    names = list(dict.fromkeys(s["metric"])) if metrics is None else list(metrics)
    if not names:
        raise ValueError("No metric to plot.")
    n_cols = max(1, min(n_cols, len(names)))
    n_rows = int(np.ceil(len(names) / n_cols))
    figsize = figsize or (4.0 * n_cols, 4.0 * n_rows)
    # a Figure without pyplot: nothing is registered with a backend, so notebooks show it once
    fig = Figure(figsize=figsize)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    cmap = colormaps["tab10"]
    for i, name in enumerate(names):
        ax = axes[i // n_cols][i % n_cols]
        rows = s[s["metric"] == name]
        colour = (colours or {}).get(name, cmap(i % 10))
        ax.fill([-1, 0, 1, 0], [0, 1, 0, -1], color="black", alpha=0.075, label="m*")
        if show_chance and len(rows):
            mean = rows[rows["space"] == "Mean"]
            r0 = mean.iloc[0] if len(mean) else rows.iloc[0]
            chance = {c: r0[f"chance_{c}"] for c in CRITERIA}
            if all(np.isfinite(list(chance.values()))):
                _kite(ax, chance, fill=False, linestyle=":", edgecolor="grey", label="chance")
        for space in ("Input", "Model"):
            r = rows[rows["space"] == space]
            if not len(r):
                continue
            r = r.iloc[0]
            vals = {c: r[c] for c in CRITERIA}
            if not r["applicable"] or not all(np.isfinite(list(vals.values()))):
                ax.plot([], [], " ", label=f"{space}: n/a")
                continue
            st = _STYLE[space]
            area = kite_area(vals["IAC_NR"], vals["IAC_AR"], vals["IEC_NR"], vals["IEC_AR"])
            _kite(ax, vals, color=colour, alpha=st["alpha"], hatch=st["hatch"],
                  edgecolor="black",
                  label=f"{space}: MC {r['MC']:.3f}, area {area:.3f}")
        mean = rows[rows["space"] == "Mean"]
        mc = mean.iloc[0]["MC"] if len(mean) else (rows.iloc[0]["MC"] if len(rows) else np.nan)
        ax.set_title(f"{name} (MC̄ {mc:.3f})" if np.isfinite(mc) else f"{name} (MC̄ n/a)")
        ax.set_xlim(-1.1, 1.1)
        ax.set_ylim(-1.1, 1.1)
        ax.set_aspect("equal")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.annotate("IAC$_{AR}$", (-1.05, 0.05), fontsize=9)
        ax.annotate("IAC$_{NR}$", (0.05, 0.95), fontsize=9)
        ax.annotate("IEC$_{AR}$", (0.7, 0.05), fontsize=9)
        ax.annotate("IEC$_{NR}$", (0.05, -1.0), fontsize=9)
        ax.set_xticks([-1, -0.5, 0, 0.5, 1], ["1", "0.5", "0", "0.5", "1"])
        ax.set_yticks([-1, -0.5, 0, 0.5, 1], ["1", "0.5", "0", "0.5", "1"])
        ax.legend(loc="lower left", fontsize=7)
    for j in range(len(names), n_rows * n_cols):
        axes[j // n_cols][j % n_cols].axis("off")
    fig.tight_layout()
    return fig


def plot_scatter(result: Any, *, dataset: str | None = None, model: str | None = None,
                 figsize: tuple[float, float] = (10.0, 4.5)) -> Any:
    """Two panels: IAC_NR vs IAC_AR and IEC_NR vs IEC_AR, one point per (metric, space)
    (▲ Input, ● Model), with the chance levels for continuous scores (0.5, 0.5, 1/L, 0.5) as
    dotted lines (with ties, each metric's own levels are in ``summary()``). Returns the
    Figure."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    s = _select(result.summary(), dataset, model)
    s = s[s["space"].isin(["Model", "Input"]) & s["applicable"]]
    blocks = [b for b in result.blocks if (dataset is None or b.dataset == dataset)
              and (model is None or b.model == model)]
    chance = chance_levels(len(blocks[0].methods)) if blocks else {}
    fig = Figure(figsize=figsize)
    axes = fig.subplots(1, 2)
    cmap = colormaps["tab10"]
    names = list(dict.fromkeys(s["metric"]))
    for ax, (cx, cy) in zip(axes, (("IAC_NR", "IAC_AR"), ("IEC_NR", "IEC_AR")), strict=True):
        for i, name in enumerate(names):
            for space, marker in (("Input", "^"), ("Model", "o")):
                r = s[(s["metric"] == name) & (s["space"] == space)]
                if len(r):
                    ax.scatter(r[cx], r[cy], marker=marker, color=cmap(i % 10), s=60,
                               edgecolor="black",
                               label=f"{name} ({space})")
        if len(s):
            ax.axvline(chance[cx], color="grey", ls=":", lw=1)
            ax.axhline(chance[cy], color="grey", ls=":", lw=1)
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel(cx)
        ax.set_ylabel(cy)
        ax.grid(alpha=0.3)
    if names:
        axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7)
    fig.tight_layout()
    return fig


def _select(s: Any, dataset: str | None, model: str | None) -> Any:
    if dataset is None and s["dataset"].nunique() > 1:
        raise ValueError("The result holds several data sets; pass `dataset=`.")
    if model is None and s["model"].nunique() > 1:
        raise ValueError("The result holds several models; pass `model=`.")
    if dataset is not None:
        s = s[s["dataset"] == dataset]
    if model is not None:
        s = s[s["model"] == model]
    return s
