"""Markdown reports of effective robustness (tables, fit diagnostics, a one-sentence reading, plots) and
``build_report``: metrics -> ER -> tables, plots and report.md for one experiment folder of the store.

Reports embed PNGs by relative path (``plots/<name>.png``, next to ``report.md``); ``inline_images``
turns them into base64 data URIs for places that cannot follow a path (Prefect markdown artifacts).
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import polars as pl

from lib.er import (
    ERInputError,
    ERResult,
    FitComparison,
    LineFit,
    accuracy_pairs,
    compare_fits,
    describe_interval,
    fit_columns,
    group_verdict,
)
from lib.store import ExperimentStore, atomic_write_text, safe_name

SUB_SPLIT_TITLES = {"all": "whole split", "in_support": "in-support part", "out_of_support": "out-of-support part"}
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


# --- small markdown pieces -------------------------------------------------------------------------


def pct(x: float | None, sign: bool = True) -> str:
    if x is None or x != x:
        return "n/a"
    return f"{100 * x:+.2f}%" if sign else f"{100 * x:.2f}%"


def interval(row: dict) -> str:
    return f"[{pct(row['er_lower'])}, {pct(row['er_upper'])}]"


def interval_total(row: dict) -> str:
    """The group interval that includes the line's band (falls back to the plain interval)."""
    return f"[{pct(row.get('er_lower_total', row['er_lower']))}, {pct(row.get('er_upper_total', row['er_upper']))}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fit_markdown(fit: LineFit, label: str = "Fit") -> str:
    """The diagnostics line printed with every ER number."""
    return f"**{label}:** {fit.describe()}."


def group_table_markdown(comparison: FitComparison) -> str:
    """ER per group, full-range and comparable-baseline views side by side.

    Two intervals per view: mean ± 1.96·SE over the group's models (METHOD.md) and the wider one that also
    carries the line's band (``er_lower_total``/``er_upper_total``), on which the verdict is based.
    """
    full, window = comparison.full, comparison.window
    views = [("all baselines", full)]
    if window is not None:
        lo, hi = comparison.fit_range
        views.append((f"baselines {lo:.2f}-{hi:.2f}", window))
    header = ["group", "models"]
    for name, _ in views:
        header += [f"ER ({name})", "± 1.96 SE", "with line band", "verdict"]
    rows = []
    for row in full.groups.to_dicts():
        cells = [row["group"], row["n_models"]]
        for _, result in views:
            r = result.group(row["group"])
            cells += [pct(r["effective_robustness"]), interval(r), interval_total(r), group_verdict(r)]
        rows.append(cells)
    return markdown_table(header, rows)


def model_table_markdown(result: ERResult, max_rows: int = 15, groups: Sequence[str] | None = None) -> str:
    """Models with the highest ER (non-baseline groups unless ``groups`` says otherwise)."""
    table = result.table
    groups = list(groups) if groups is not None else [g for g in table["group"].unique().to_list() if g != result.baseline_group]
    part = table.filter(pl.col("group").is_in(groups)).sort("effective_robustness", descending=True)
    shown = part.head(max_rows)
    rows = [
        [r["model"], r["group"], pct(r["reference_accuracy"], False), pct(r["shifted_accuracy"], False),
         pct(r["predicted_shifted_accuracy"], False), pct(r["effective_robustness"]), interval(r)]
        for r in shown.to_dicts()
    ]
    text = markdown_table(["model", "group", "reference acc.", "shifted acc.", "predicted", "ER", "95% interval"], rows)
    if part.height > shown.height:
        text += f"\n\n({shown.height} of {part.height} models shown, highest ER first; all are in the ER table.)"
    return text


def reading(comparison: FitComparison, subject: str = "Pre-training") -> str:
    """One sentence: helped / did not help / the views disagree."""
    verdicts = comparison.verdicts()
    if not verdicts:
        return "Only baseline models are present, so there is nothing to judge yet."
    if comparison.disagree:
        flips = ", ".join(f"{g}: {f} with all baselines but {w} with comparable ones" for g, (f, w) in verdicts.items() if f != w)
        return f"The views disagree ({flips}); the straight-line fit over all baselines is not trustworthy here."
    # Agreeing views: judge by the comparable-baseline view when there is one.
    result = comparison.window or comparison.full
    view = "comparable baselines" if comparison.window is not None else "all baselines"
    parts = {g: (v[1] or v[0], result.group(g)) for g, v in verdicts.items()}
    helped = [g for g, (v, _) in parts.items() if v == "helped"]
    detail = "; ".join(f"{g} ER {describe_interval(row)}" for g, (_, row) in parts.items())
    if len(helped) == len(parts):
        head = f"{subject} helped on this shift"
    elif not helped:
        hurt = [g for g, (v, _) in parts.items() if v == "hurt"]
        head = f"{subject} did not help on this shift" + (" (it hurt)" if len(hurt) == len(parts) else "")
    else:
        head = f"{subject} helped for {', '.join(helped)} but not for {', '.join(g for g in parts if g not in helped)}"
    weak = f" (weak baseline fit, r = {comparison.full.fit.r:.3f})" if comparison.weak_fit else ""
    return f"{head}: {detail}, against {view}{weak}."


def png_data_uri(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def inline_images(markdown: str, base_dir: str | Path) -> str:
    """Replace ``![alt](relative.png)`` links by base64 data URIs (for Prefect markdown artifacts)."""
    base_dir = Path(base_dir)

    def replace(match: re.Match) -> str:
        target = base_dir / match.group(2)
        return f"![{match.group(1)}]({png_data_uri(target)})" if target.exists() else match.group(0)

    return _IMAGE.sub(replace, markdown)


# --- one shift: plots + markdown section + rows of the ER table ----------------------------------------


@dataclass
class ShiftSection:
    """Everything reported for one (shift, sub-split)."""

    shift: str
    sub_split: str
    comparison: FitComparison | None
    markdown: str
    plots: list[Path] = field(default_factory=list)
    error: str | None = None

    @property
    def reading(self) -> str:
        return reading(self.comparison) if self.comparison is not None else f"No ER: {self.error}"


def er_rows(comparison: FitComparison, shift: str, sub_split: str = "all") -> pl.DataFrame:
    """The ER table rows of both views with shift, sub_split, view and flat fit diagnostics."""
    frames = []
    for view, result in (("full", comparison.full), ("comparable", comparison.window)):
        if result is None:
            continue
        cols = ["model", "group", "reference_accuracy", "shifted_accuracy", "predicted_shifted_accuracy",
                "effective_robustness", "er_lower", "er_upper", "in_fit"]
        frames.append(
            result.table.select(cols).with_columns(
                pl.lit(shift).alias("shift"), pl.lit(sub_split).alias("sub_split"), pl.lit(view).alias("view"),
                *[pl.lit(v).alias(k) for k, v in fit_columns(result.fit).items()],
            ).select("shift", "sub_split", "view", *cols, pl.exclude(["shift", "sub_split", "view", *cols]))
        )
    return pl.concat(frames, how="vertical_relaxed")


def shift_section(
    exp: ExperimentStore,
    comparison: FitComparison,
    shift: str,
    sub_split: str = "all",
    title: str | None = None,
    reference_label: str = "reference accuracy",
    shifted_label: str = "shifted accuracy",
    subject: str = "Pre-training",
    max_models: int = 15,
) -> ShiftSection:
    """Draw the two plots into ``exp``'s plots/ folder and return the markdown section that embeds them."""
    from lib.plots import accuracy_on_the_line, er_by_group

    stem = safe_name(shift if sub_split == "all" else f"{shift}_{sub_split}")
    title = title or (shift if sub_split == "all" else f"{shift} ({SUB_SPLIT_TITLES.get(sub_split, sub_split)})")
    aotl = exp.plot_path(f"accuracy_on_the_line_{stem}")
    erp = exp.plot_path(f"er_by_group_{stem}")
    accuracy_on_the_line(comparison.full, comparison.window, title=f"Accuracy on the line: {title}",
                         reference_label=reference_label, shifted_label=shifted_label, path=aotl)
    er_by_group(comparison.full, comparison.window, title=f"Effective robustness: {title}", path=erp)
    rel = lambda p: p.relative_to(exp.root).as_posix()  # noqa: E731 - paths relative to report.md
    lines = [
        f"## {title}",
        "",
        f"**Reading:** {reading(comparison, subject)}",
        "",
        fit_markdown(comparison.full.fit, "Fit, all baselines"),
    ]
    if comparison.window is not None:
        lines.append("")
        lines.append(fit_markdown(comparison.window.fit, "Fit, comparable baselines"))
    lines += [
        "",
        group_table_markdown(comparison),
        "",
        comparison.message,
        "",
        f"![accuracy on the line]({rel(aotl)})",
        f"![effective robustness by group]({rel(erp)})",
        "",
    ]
    if comparison.judged_groups:
        lines += [
            f"<details><summary>Models with the highest ER ({title})</summary>",
            "",
            model_table_markdown(comparison.full, max_rows=max_models),
            "",
            "</details>",
            "",
        ]
    return ShiftSection(shift, sub_split, comparison, "\n".join(lines), [aotl, erp])


def document(title: str, intro: Sequence[str], sections: Sequence[ShiftSection], footer: Sequence[str] = ()) -> str:
    return "\n".join([f"# {title}", "", *intro, "", *[s.markdown for s in sections], *footer]).rstrip() + "\n"


# --- a whole experiment ------------------------------------------------------------------------------


@dataclass
class ReportResult:
    """What ``build_report`` wrote and computed."""

    experiment: str
    report_path: Path
    metrics_path: Path
    er_path: Path
    summary_path: Path
    plots: list[Path]
    markdown: str
    metrics: pl.DataFrame
    er_table: pl.DataFrame
    summary: pl.DataFrame
    sections: list[ShiftSection]

    @property
    def readings(self) -> dict[str, str]:
        return {f"{s.shift}/{s.sub_split}": s.reading for s in self.sections}


def _newest_input(exp: ExperimentStore) -> float:
    times = [p.stat().st_mtime for folder in ("predictions", "subsplits", "models")
             for p in (exp.root / folder).rglob("*") if p.is_file()]
    return max(times, default=0.0)


def ensure_metrics(exp: ExperimentStore, refresh: bool = False) -> pl.DataFrame:
    """tables/metrics.parquet, recomputed from stored predictions when missing or older than any input."""
    from lib.metrics import metrics_table

    path = exp.table_path("metrics")
    if not refresh and path.exists() and path.stat().st_mtime >= _newest_input(exp):
        metrics = pl.read_parquet(path)
        if "sub_split" not in metrics.columns:  # written by other code: it covers whole splits
            metrics = metrics.with_columns(sub_split=pl.lit("all"))
        has_parts = any((exp.root / "subsplits").glob("*.parquet"))
        if {"model", "group", "split"} <= set(metrics.columns) and (
            not has_parts or set(metrics["sub_split"].to_list()) & {"in_support", "out_of_support"}
        ):
            return metrics
    parts = [metrics_table(exp, sub_split=s) for s in (None, "in_support", "out_of_support")]
    metrics = pl.concat(parts, how="vertical_relaxed")
    exp.write_table("metrics", metrics, config={"source": "stored predictions", "sub_splits": ["all", "in_support", "out_of_support"]})
    return metrics


def build_report(
    exp: ExperimentStore,
    reference_split: str = "source_val",
    fit_range: tuple[float, float] | None = None,
    scale: str = "probit",
    metric: str = "accuracy",
    baseline_group: str = "baseline",
    margin: float = 0.05,
    bootstrap: int = 0,
    seed: int = 0,
    binomial: bool = False,
    refresh_metrics: bool = False,
    title: str | None = None,
) -> ReportResult:
    """ER of every shifted split ``<target>_val`` (whole, and in/out-of-support parts when the split flow
    wrote them) against ``reference_split``; writes tables/metrics.parquet, tables/er.parquet,
    tables/er_summary.parquet, plots/*.png and report.md into ``exp`` and returns what it wrote.

    ``fit_range=(lo, hi)`` fixes the comparable-baseline window; by default it is the judged models'
    reference-accuracy range ± ``margin``.
    """
    metrics = ensure_metrics(exp, refresh=refresh_metrics)
    if metrics.height == 0:
        raise ERInputError(f"experiment {exp.name!r} has no stored predictions of registered models ({exp.root})")
    if metric not in metrics.columns:
        raise ERInputError(f"unknown metric {metric!r}; choose one of: {', '.join(c for c in metrics.columns if metrics[c].dtype == pl.Float64)}")
    reference = metrics.filter((pl.col("split") == reference_split) & (pl.col("sub_split") == "all"))
    if reference.height == 0:
        raise ERInputError(f"no predictions on the reference split {reference_split!r} in experiment {exp.name!r}")
    shifts = sorted(s for s in metrics["split"].unique().to_list() if s != reference_split and s.endswith("_val"))
    sections: list[ShiftSection] = []
    er_frames, summary_frames = [], []
    for shift in shifts:
        present = set(metrics.filter(pl.col("split") == shift)["sub_split"].to_list())
        for sub in [s for s in ("all", "in_support", "out_of_support") if s in present]:
            shifted = metrics.filter((pl.col("split") == shift) & (pl.col("sub_split") == sub))
            pairs = accuracy_pairs(pl.concat([reference, shifted]), reference_split, shift, metric=metric)
            try:
                comparison = compare_fits(pairs, baseline_group=baseline_group, scale=scale, fit_range=fit_range,
                                          margin=margin, bootstrap=bootstrap, seed=seed, binomial=binomial)
            except ERInputError as exc:
                head = f"## {shift} ({SUB_SPLIT_TITLES.get(sub, sub)})"
                sections.append(ShiftSection(shift, sub, None, f"{head}\n\nNo ER: {exc}.\n", error=str(exc)))
                continue
            section = shift_section(exp, comparison, shift, sub,
                                    reference_label=f"{reference_split} {metric}", shifted_label=f"{shift} {metric}")
            sections.append(section)
            er_frames.append(er_rows(comparison, shift, sub))
            summary_frames.append(comparison.summary().with_columns(pl.lit(shift).alias("shift"), pl.lit(sub).alias("sub_split")))
    er_table = pl.concat(er_frames, how="vertical_relaxed") if er_frames else pl.DataFrame()
    summary = pl.concat(summary_frames, how="vertical_relaxed") if summary_frames else pl.DataFrame()
    config = {"reference_split": reference_split, "fit_range": fit_range, "scale": scale, "metric": metric,
              "baseline_group": baseline_group, "margin": margin, "bootstrap": bootstrap, "seed": seed, "binomial": binomial}
    er_path = exp.write_table("er", er_table, config=config)
    summary_path = exp.write_table("er_summary", summary, config=config)
    intro = [
        f"Effective robustness (ER) of each model = {metric} on the shifted split minus the {metric} predicted "
        f"by a {scale} line fitted on the `{baseline_group}` models (reference split `{reference_split}`). "
        f"Intervals are 95%.",
        "",
        *[f"- **{s.shift}** ({SUB_SPLIT_TITLES.get(s.sub_split, s.sub_split)}): {s.reading}" for s in sections],
    ]
    if not sections:
        intro.append(f"No shifted split (`<target>_val`) has predictions yet; splits present: {', '.join(sorted(metrics['split'].unique()))}.")
    footer = ["", f"Tables: `{exp.table_path('er').relative_to(exp.root)}` (per model), "
                  f"`{exp.table_path('er_summary').relative_to(exp.root)}` (per group), "
                  f"`{exp.table_path('metrics').relative_to(exp.root)}` (all metrics)."]
    markdown = document(title or f"Effective robustness report: {exp.name}", intro, sections, footer)
    atomic_write_text(exp.report_path, markdown)
    return ReportResult(
        experiment=exp.name,
        report_path=exp.report_path,
        metrics_path=exp.table_path("metrics"),
        er_path=er_path,
        summary_path=summary_path,
        plots=[p for s in sections for p in s.plots],
        markdown=markdown,
        metrics=metrics,
        er_table=er_table,
        summary=summary,
        sections=sections,
    )


__all__ = [
    "ReportResult",
    "ShiftSection",
    "build_report",
    "document",
    "ensure_metrics",
    "er_rows",
    "fit_markdown",
    "group_table_markdown",
    "inline_images",
    "model_table_markdown",
    "png_data_uri",
    "reading",
    "shift_section",
]
