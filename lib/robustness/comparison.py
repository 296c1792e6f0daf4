"""The full-range baseline fit beside, per judged group, a fit on baselines of comparable reference accuracy.

A line fitted over every baseline can mislead a judged group that sits at one end of it (pre-trained models near
the top of the baselines' range, a from-scratch control near the bottom).  :func:`compare_fits` therefore also fits,
for each judged group, only the baselines within its own reference-accuracy range plus or minus a margin (or a given
``fit_range``), and says in words whether the two views disagree (``askshift.lib.robustness.wording``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import polars as pl

from askshift.lib.robustness.er import EXAMPLE_BOOTSTRAP_COLUMNS, GROUP_COLUMNS, ERResult, effective_robustness
from askshift.lib.robustness.lines import MIN_R, ERInputError, check_fit_range, fit_columns
from askshift.lib.robustness.wording import (
    comparison_message,
    group_verdict,
    no_window_fit_note,
    too_few_baselines_note,
    window_note,
)

MIN_WINDOW_BASELINES = 5  # fewest baselines a comparable-baseline window is fitted on


def comparable_fit_range(table: pl.DataFrame, judged_groups: Sequence[str], margin: float = 0.05) -> tuple[float, float]:
    """Reference-accuracy window of the judged models, widened by ``margin`` on each side (clipped to [0, 1])."""
    ref = table.filter(pl.col("group").is_in(list(judged_groups)))["reference_accuracy"]
    if ref.len() == 0:
        raise ERInputError(f"no models in groups {', '.join(judged_groups)} to define comparable baselines")
    return max(0.0, float(ref.min()) - margin), min(1.0, float(ref.max()) + margin)


@dataclass
class ComparableView:
    """One judged group against the baselines whose reference accuracy is near its own."""

    group: str
    fit_range: tuple[float, float]
    n_baselines: int
    result: ERResult | None
    note: str = ""  # words: why there is no fit, or what to be careful about

    @property
    def row(self) -> dict | None:
        return self.result.group(self.group) if self.result is not None and self.result.has_group(self.group) else None


@dataclass
class FitComparison:
    """ER from the full-range baseline fit and, per judged group, from baselines of comparable reference accuracy."""

    full: ERResult
    views: dict[str, ComparableView]
    judged_groups: list[str]
    fixed_range: tuple[float, float] | None = None

    @property
    def disagree(self) -> bool:
        """For some judged group, the two views' verdicts (helped / hurt / no clear effect) differ."""
        return any(comparable is not None and comparable != whole for whole, comparable in self.verdicts().values())

    @property
    def weak_fit(self) -> bool:
        """The full-range line is weak (r below its ``min_r``): the trend may not be a line."""
        return self.full.fit.weak_line

    @property
    def message(self) -> str:
        """The comparison in words (``askshift.lib.robustness.wording.comparison_message``)."""
        return comparison_message(self)

    def comparable(self, group: str) -> ERResult | None:
        """The comparable-baseline fit of ``group`` (None: not judged, or too few baselines in its window)."""
        view = self.views.get(group)
        return view.result if view is not None else None

    def comparable_row(self, group: str) -> dict | None:
        view = self.views.get(group)
        return view.row if view is not None else None

    @property
    def window(self) -> ERResult | None:
        """The comparable fit of the first judged group (all judged groups share it when ``fit_range`` was given)."""
        return self.views[self.judged_groups[0]].result if self.judged_groups else None

    @property
    def fit_range(self) -> tuple[float, float]:
        """The window of the first judged group (or the given ``fit_range``)."""
        if self.fixed_range is not None:
            return self.fixed_range
        if self.judged_groups:
            return self.views[self.judged_groups[0]].fit_range
        return (self.full.fit.reference_min, self.full.fit.reference_max)

    @property
    def n_window_baselines(self) -> int:
        return self.views[self.judged_groups[0]].n_baselines if self.judged_groups else self.full.fit.n

    def windows(self) -> dict[str, ERResult]:
        """Judged group -> its comparable fit, for the groups that have one."""
        return {g: v.result for g, v in self.views.items() if v.result is not None}

    def verdicts(self) -> dict[str, tuple[str, str | None]]:
        """group -> (verdict with the full-range fit, verdict with comparable baselines or None)."""
        out = {}
        for g in self.judged_groups:
            w = self.comparable_row(g)
            out[g] = (group_verdict(self.full.group(g)), group_verdict(w) if w else None)
        return out

    def summary(self) -> pl.DataFrame:
        """One row per (view, group): view ("full" / "comparable"), group, n_models, ER, interval, verdict,
        cautions and fit diagnostics.  The comparable view has one row per judged group, from its own window."""
        frames = []
        extra = [c for c in EXAMPLE_BOOTSTRAP_COLUMNS if c in self.full.groups.columns]
        for row in self.full.groups.select(*GROUP_COLUMNS, *extra).to_dicts():
            frames.append({"view": "full", **row, "verdict": group_verdict(row), "window_note": "",
                           **fit_columns(self.full.fit)})
        for g in self.judged_groups:
            view = self.views[g]
            row = view.row
            if row is None:
                continue
            cols = [c for c in (*GROUP_COLUMNS, *EXAMPLE_BOOTSTRAP_COLUMNS) if c in row]
            frames.append({"view": "comparable", **{c: row[c] for c in cols}, "verdict": group_verdict(row),
                           "window_note": view.note, **fit_columns(view.result.fit)})
        return pl.DataFrame(frames, infer_schema_length=None)


def compare_fits(
    table: pl.DataFrame,
    baseline_group: str = "baseline",
    scale: str = "probit",
    fit_range: tuple[float, float] | None = None,
    margin: float = 0.05,
    judged_groups: Sequence[str] | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    binomial: bool = False,
    min_r: float = MIN_R,
    min_window_baselines: int = MIN_WINDOW_BASELINES,
) -> FitComparison:
    """Full-range fit vs, per judged group, a fit on baselines of comparable reference accuracy, and words.

    Each judged group's window is ``fit_range`` when given, else that group's own reference-accuracy range
    ± ``margin`` (so a from-scratch control at 0.70 is not judged in the window of fine-tuned models at
    0.95).  A window with fewer than ``min_window_baselines`` baselines gets no fit, and says so.  The views
    disagree when, for some judged group, their verdicts (helped / hurt / no clear effect) differ.  A fit
    with r < ``min_r`` is called weak (the trend may not be a line).
    """
    kwargs = dict(baseline_group=baseline_group, scale=scale, bootstrap=bootstrap, seed=seed, binomial=binomial,
                  min_r=min_r)
    full = effective_robustness(table, **kwargs)
    all_groups = full.groups["group"].to_list()
    judged = list(judged_groups) if judged_groups is not None else [g for g in all_groups if g != baseline_group]
    unknown = [g for g in judged if g not in all_groups]
    if unknown:
        raise ERInputError(f"unknown group(s) {', '.join(unknown)}; groups present: {', '.join(all_groups)}")
    fixed = check_fit_range(fit_range) if fit_range is not None else None
    base_ref = full.table.filter(pl.col("group") == baseline_group)["reference_accuracy"]
    fits: dict[tuple[float, float], ERResult | str] = {}
    views = {}
    for g in judged:
        window = fixed if fixed is not None else comparable_fit_range(full.table, [g], margin)
        n_window = int(((base_ref >= window[0]) & (base_ref <= window[1])).sum())
        result, note = None, ""
        if n_window < min_window_baselines:
            note = too_few_baselines_note(n_window, window, min_window_baselines)
        else:
            if window not in fits:
                try:
                    fits[window] = effective_robustness(table, fit_range=window, **kwargs)
                except ERInputError as exc:  # e.g. all comparable baselines share one reference accuracy
                    fits[window] = str(exc)
            found = fits[window]
            if isinstance(found, str):
                note = no_window_fit_note(window, found)
            else:
                result = found
                note = window_note(result, g)
        views[g] = ComparableView(g, window, n_window, result, note)
    return FitComparison(full, views, judged, fixed_range=fixed)


__all__ = ["MIN_WINDOW_BASELINES", "ComparableView", "FitComparison", "comparable_fit_range", "compare_fits"]
