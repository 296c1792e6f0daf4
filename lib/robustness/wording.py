"""Effective robustness in words: verdicts, intervals as text, cautions, and the two baseline views compared.

Every sentence a person reads about an ER number is built here; the numbers come from
``askshift.lib.robustness.er`` and ``askshift.lib.robustness.comparison``.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: those modules build on this one
    from askshift.lib.robustness.comparison import FitComparison
    from askshift.lib.robustness.er import ERResult
    from askshift.lib.robustness.lines import LineFit


def verdict(er_lower: float, er_upper: float) -> str:
    """'helped' when the whole interval is above 0, 'hurt' when below, else 'no clear effect'."""
    if er_lower is None or er_upper is None or not (math.isfinite(er_lower) and math.isfinite(er_upper)):
        return "unknown"
    if er_lower > 0:
        return "helped"
    if er_upper < 0:
        return "hurt"
    return "no clear effect"


def group_verdict(row: dict) -> str:
    """Verdict of a group-summary row, on the group mean's interval."""
    return verdict(row.get("er_lower_total", row["er_lower"]), row.get("er_upper_total", row["er_upper"]))


def _pct(x: float) -> str:
    return f"{100 * x:+.2f}%"


def describe_interval(row: dict) -> str:
    """``+9.20% [+7.28%, +11.12%]``, with the row's cautions in brackets (``(extrapolated; weak line ...)``)."""
    lo, hi = row.get("er_lower_total", row["er_lower"]), row.get("er_upper_total", row["er_upper"])
    text = f"{_pct(row['effective_robustness'])} [{_pct(lo)}, {_pct(hi)}]"
    return f"{text} ({row['caution']})" if row.get("caution") else text


def model_caution(extrapolated: bool, fit: LineFit) -> str:
    """The ``caution`` of one model's row: extrapolated, and the line's own cautions (weak, inverse)."""
    return "; ".join((["extrapolated"] if extrapolated else []) + fit.cautions())


def group_caution(n_models: int, n_extrapolated: int, spread_only: bool, fit: LineFit | None,
                  weak_line: bool = False, inverse_line: bool = False) -> str:
    """The ``caution`` of a group's (or a model's copies') row: how many of its models are extrapolated, an interval
    without the line's uncertainty (``spread_only``), and the line's cautions (from ``fit``, else the flags)."""
    parts = []
    if n_extrapolated:
        parts.append("extrapolated" if n_models == 1 else f"extrapolated ({n_extrapolated} of {n_models} models)")
    if spread_only:
        parts.append("spread between models only (no line uncertainty)")
    if fit is not None:
        parts += fit.cautions()
    else:
        parts += [w for w, flag in (("inverse line", inverse_line), ("weak line", weak_line)) if flag]
    return "; ".join(parts)


def too_few_baselines_note(n_window: int, window: tuple[float, float], need: int) -> str:
    """Why a judged group has no comparable-baseline fit: too few baselines in its window."""
    return (f"only {n_window} baseline model{'s have' if n_window != 1 else ' has'} reference accuracy in "
            f"[{window[0]:.3f}, {window[1]:.3f}]: too few for a comparable-baseline fit (need {need})")


def no_window_fit_note(window: tuple[float, float], reason: str) -> str:
    """Why a judged group has no comparable-baseline fit: the fit itself failed (``reason``)."""
    return f"no comparable-baseline fit in [{window[0]:.3f}, {window[1]:.3f}]: {reason}"


def window_note(result: ERResult, group: str) -> str:
    """What to be careful about in a comparable window: its line extrapolates, or it is weak/inverse."""
    parts = []
    row = result.group(group)
    if row["n_extrapolated"]:
        parts.append(f"the window's line is extrapolated to {row['n_extrapolated']} of {row['n_models']} {group} "
                     f"models (its {result.fit.n} baselines span reference accuracy "
                     f"{result.fit.reference_min:.3f}-{result.fit.reference_max:.3f})")
    parts += [f"the window's line is {c}" for c in result.fit.cautions()]
    return "; ".join(parts)


def comparison_message(comparison: FitComparison) -> str:
    """Per judged group, its ER and verdict against all baselines and against comparable ones, whether they
    disagree and what to be careful about; then the full-range line's own cautions."""
    full = comparison.full
    parts = []
    if not comparison.judged_groups:
        parts.append("Only baseline models are present: there is no other group to judge.")
    verdicts = comparison.verdicts()
    for g in comparison.judged_groups:
        f = full.group(g)
        fv, wv = verdicts[g]
        text = f"{g}: ER {describe_interval(f)} against all {full.fit.n} baselines ({fv})"
        view = comparison.views[g]
        w = view.row
        lo, hi = view.fit_range
        if w is not None:
            text += (f", {describe_interval(w)} against the {view.result.fit.n} baselines with reference accuracy "
                     f"in [{lo:.3f}, {hi:.3f}] ({wv})")
            if wv != fv:
                text += " - the views disagree"
            elif w["er_lower"] > f["er_upper"] or f["er_lower"] > w["er_upper"]:
                text += " - same verdict, but the sizes differ (the intervals do not overlap)"
            if view.note:
                text += f"; careful: {view.note}"
        else:
            text += f"; {view.note}, so only the full-range line is shown"
        parts.append(text + ".")
    if comparison.weak_fit:
        parts.append(
            f"The baseline fit is weak (r = {full.fit.r:.3f} < {full.fit.min_r:g}): accuracy may not lie on a line "
            f"here, so prefer the comparable-baseline view."
        )
    if full.fit.inverse_line:
        parts.append(f"The baseline line is inverse (slope {full.fit.slope:.3f} <= 0): its ER numbers do not "
                     f"measure robustness beyond the trend.")
    if comparison.disagree:
        parts.insert(0, "The full-range and comparable-baseline fits disagree; trust neither number alone.")
    return " ".join(parts)


__all__ = ["comparison_message", "describe_interval", "group_caution", "group_verdict", "model_caution",
           "no_window_fit_note", "too_few_baselines_note", "verdict", "window_note"]
