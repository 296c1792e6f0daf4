"""Seaborn/matplotlib figures: "accuracy on the line" on probit axes and effective robustness per group.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state), so they are safe in
worker threads and headless machines; pass ``path=`` to write a PNG atomically.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import polars as pl

from askshift.lib.robustness.er import ERResult
from askshift.lib.robustness.lines import get_scale
from askshift.lib.store import write_with

TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
BASELINE_COLOR = "0.45"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    return fig, fig.subplots()


def save_png(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG through a temporary file renamed into place."""
    return write_with(path, lambda tmp: fig.savefig(tmp, format="png"))


def _palette(groups: list[str], baseline_group: str) -> dict[str, tuple]:
    import seaborn as sns

    others = [g for g in groups if g != baseline_group]
    colors = sns.color_palette("colorblind", max(len(others), 1))
    out = {g: colors[i % len(colors)] for i, g in enumerate(others)}
    out[baseline_group] = BASELINE_COLOR
    return out


def _windows(window) -> dict[str | None, ERResult]:
    """``window`` as {judged group (None: every group) -> comparable fit}: one ERResult or a mapping of them."""
    if window is None:
        return {}
    if isinstance(window, Mapping):
        return {g: r for g, r in window.items() if r is not None}
    return {None: window}


def _accuracy_ticks(ax, scale, lo: float, hi: float) -> None:
    """Axis positions are transformed accuracies; labels say the accuracy itself."""
    ticks = [t for t in TICKS if lo <= scale.to_axis(t) <= hi]
    positions = scale.to_axis(ticks)
    labels = [f"{100 * t:g}%" for t in ticks]
    ax.set_xticks(positions, labels)
    ax.set_yticks(positions, labels)


def accuracy_on_the_line(
    result: ERResult,
    window: ERResult | Mapping[str, ERResult] | None = None,
    title: str | None = None,
    reference_label: str = "reference accuracy",
    shifted_label: str = "shifted accuracy",
    path: str | os.PathLike | None = None,
):
    """Shifted vs reference accuracy on transformed axes: baselines, fitted line with its band, other
    groups by colour and marker, the comparable-baseline lines (``window``: one fit, or judged group -> its
    own window's fit, drawn in that group's colour) and y = x."""
    import seaborn as sns

    scale = get_scale(result.fit.scale)
    df = result.table
    groups = sorted(set(df["group"].to_list()), key=lambda g: (g != result.baseline_group, g))
    palette = _palette(groups, result.baseline_group)
    fig, ax = _figure(6.4, 5.2)
    data = df.select(
        pl.col("group"),
        pl.Series("x", scale.to_axis(df["reference_accuracy"].to_numpy())),
        pl.Series("y", scale.to_axis(df["shifted_accuracy"].to_numpy())),
    ).to_pandas()
    sizes = {g: (18 if g == result.baseline_group else 34) for g in groups}
    for i, g in enumerate(groups):
        part = data[data["group"] == g]
        sns.scatterplot(data=part, x="x", y="y", ax=ax, color=palette[g], marker=MARKERS[i % len(MARKERS)],
                        s=sizes[g], alpha=0.75 if g == result.baseline_group else 0.9, edgecolor="none",
                        label=f"{g} ({len(part)})", zorder=3 if g != result.baseline_group else 2)
    xs = np.concatenate([data["x"].to_numpy(), data["y"].to_numpy()])
    lo, hi = float(xs.min()), float(xs.max())
    pad = 0.08 * (hi - lo if hi > lo else 1.0)
    lo, hi = lo - pad, hi + pad
    grid = np.linspace(lo, hi, 200)

    fit = result.fit
    ax.plot(grid, fit.predict_axis(grid), color="black", lw=1.6, label=f"baseline fit (r = {fit.r:.2f})", zorder=4)
    h = fit.half_width_axis(grid)
    ax.fill_between(grid, fit.predict_axis(grid) - h, fit.predict_axis(grid) + h, color="black", alpha=0.15,
                    lw=0, label=f"{int(round(100 * fit.confidence))}% band", zorder=1)
    drawn: dict[tuple[float, float], list[str]] = {}
    windows = _windows(window)
    for g, w in windows.items():
        if w.fit.fit_range is not None:
            drawn.setdefault(w.fit.fit_range, []).append(g)
    for fit_range, owners in drawn.items():
        w = windows[owners[0]]
        wlo, whi = (float(v) for v in scale.to_axis(fit_range))
        wgrid = np.linspace(max(wlo, lo), min(whi, hi), 100)
        named = [g for g in owners if g is not None]
        colour = palette[named[0]] if len(named) == 1 and named[0] in palette else "tab:red"
        ax.plot(wgrid, w.fit.predict_axis(wgrid), color=colour, lw=1.6, ls="--", zorder=4,
                label=(f"comparable baselines{' for ' + ', '.join(named) if named else ''} "
                       f"{fit_range[0]:.2f}-{fit_range[1]:.2f} (n = {w.fit.n})"))
    ax.plot([lo, hi], [lo, hi], color="0.6", lw=1, ls=":", label="y = x", zorder=0)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    _accuracy_ticks(ax, scale, lo, hi)
    ax.set_xlabel(f"{reference_label} ({scale.name} scale)")
    ax.set_ylabel(f"{shifted_label} ({scale.name} scale)")
    ax.set_title(title or "Accuracy on the line")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7, frameon=True)
    if path is not None:
        save_png(fig, path)
    return fig


def er_by_group(
    result: ERResult,
    window: ERResult | Mapping[str, ERResult] | None = None,
    title: str | None = None,
    path: str | os.PathLike | None = None,
):
    """Each model's ER (points) and each group's mean with the interval of that mean (error bars: the shared
    line's uncertainty and the spread between models, as the verdicts use); the comparable-baseline view
    beside it when ``window`` is given (one fit for every group, or judged group -> its own window's fit)."""
    import seaborn as sns

    windows = _windows(window)
    groups = sorted(set(result.table["group"].to_list()), key=lambda g: (g != result.baseline_group, g))
    # Per view: group -> (summary row, that group's model rows).
    full_rows = {row["group"]: row for row in result.groups.to_dicts()}
    views = [("full range", {g: (full_rows[g], result.table.filter(pl.col("group") == g)) for g in groups})]
    if windows:
        comparable = {}
        for g in groups:
            w = windows.get(g, windows.get(None))
            if w is not None and w.has_group(g):
                comparable[g] = (w.group(g), w.table.filter(pl.col("group") == g))
        views.append(("comparable baselines", comparable))
    palette = _palette(groups, result.baseline_group)
    fig, ax = _figure(max(4.5, 1.4 * len(groups) + 2), 4.2)
    dodge = len(views) > 1
    points = pl.concat([t.select("group", "effective_robustness").with_columns(pl.lit(v).alias("view"))
                        for v, rows in views for _, t in rows.values()]).to_pandas()
    sns.stripplot(data=points, x="group", y="effective_robustness", hue="view" if dodge else None,
                  hue_order=[v for v, _ in views] if dodge else None,
                  order=groups, dodge=dodge, ax=ax, size=3, alpha=0.35, jitter=0.2,
                  color=None if dodge else "0.4", legend=False, zorder=1)
    width = 0.4 if dodge else 0.0
    for j, (view, rows) in enumerate(views):
        labelled = False
        for i, g in enumerate(groups):
            if g not in rows:
                continue
            row = rows[g][0]
            x = i + (j - (len(views) - 1) / 2) * width
            mean = row["effective_robustness"]
            lo, hi = row.get("er_lower_total", row["er_lower"]), row.get("er_upper_total", row["er_upper"])
            ax.errorbar([x], [mean], yerr=[[mean - lo], [hi - mean]], fmt="D" if j else "o",
                        color=palette[g] if j == 0 else "tab:red", ms=7, capsize=5, lw=2, zorder=3,
                        label=view if not labelled else None)
            labelled = True
    ax.axhline(0, color="black", lw=1)
    ax.set_ylabel("effective robustness (accuracy)")
    ax.set_xlabel("")
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))
    ax.set_title(title or "Effective robustness by group\n(mean, 95% interval of the mean; points: models)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if path is not None:
        save_png(fig, path)
    return fig


__all__ = ["accuracy_on_the_line", "er_by_group", "save_png"]
