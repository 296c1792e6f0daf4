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
from typing import Any, Sequence

import numpy as np
import polars as pl

from askshift.lib.report.plots import accuracy_on_the_line, er_by_group
from askshift.lib.robustness.comparison import FitComparison, compare_fits
from askshift.lib.robustness.er import (
    EXAMPLE_BOOTSTRAP_COLUMNS,
    ERResult,
    ERSettings,
    accuracy_pairs,
    example_bootstrap,
)
from askshift.lib.robustness.lines import ERInputError, LineFit, fit_columns
from askshift.lib.robustness.metrics import SUB_SPLITS, metrics_table
from askshift.lib.robustness.wording import describe_interval, group_verdict
from askshift.lib.store import ExperimentStore, atomic_write_text, safe_name

SUB_SPLIT_TITLES = {"all": "whole split", "in_support": "in-support part", "out_of_support": "out-of-support part"}
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


# --- small markdown pieces -------------------------------------------------------------------------


def pct(x: float | None, sign: bool = True) -> str:
    if x is None or x != x:
        return "n/a"
    return f"{100 * x:+.2f}%" if sign else f"{100 * x:.2f}%"


def interval(row: dict) -> str:
    """``[lo, hi]`` of a model row (its band) or a group row (the group mean's interval)."""
    return f"[{pct(row['er_lower'])}, {pct(row['er_upper'])}]"


def interval_total(row: dict) -> str:
    """The group interval (``er_lower_total``/``er_upper_total`` are its former name; the same numbers)."""
    return f"[{pct(row.get('er_lower_total', row['er_lower']))}, {pct(row.get('er_upper_total', row['er_upper']))}]"


def bootstrap_interval(row: dict) -> str | None:
    lo, hi = (row.get(c) for c in EXAMPLE_BOOTSTRAP_COLUMNS)
    return None if lo is None or hi is None else f"[{pct(lo)}, {pct(hi)}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fit_markdown(fit: LineFit, label: str = "Fit") -> str:
    """The diagnostics line printed with every ER number."""
    return f"**{label}:** {fit.describe()}."


def comparable_fits_markdown(comparison: FitComparison) -> list[str]:
    """One diagnostics line per distinct comparable window (judged groups sharing a window share a line)."""
    by_range: dict[tuple[float, float], list[str]] = {}
    for g, view in comparison.views.items():
        if view.result is not None:
            by_range.setdefault(view.fit_range, []).append(g)
    return [fit_markdown(comparison.views[groups[0]].result.fit,
                         f"Fit, comparable baselines for {', '.join(groups)}") for groups in by_range.values()]


def group_table_markdown(comparison: FitComparison) -> str:
    """ER per group, the full-range view beside each judged group's comparable-baseline view.

    The interval is the group mean's (the shared line's uncertainty at the group's models plus the spread
    between them, t quantiles; askshift.lib.robustness.er); the verdict is read from it.  Cautions (extrapolated, weak or
    inverse line, a window that extrapolates) are in the last column.
    """
    full = comparison.full
    has_boot = any(c in full.groups.columns for c in EXAMPLE_BOOTSTRAP_COLUMNS)
    header = ["group", "models", "ER, all baselines (95%)", "verdict", "ER, comparable baselines (95%)",
              "window (baselines)", "verdict"]
    if has_boot:
        header += ["example bootstrap (all baselines)"]
    header += ["cautions"]
    rows = []
    for row in full.groups.to_dicts():
        g = row["group"]
        cells = [g, row["n_models"], f"{pct(row['effective_robustness'])} {interval(row)}", group_verdict(row)]
        notes = [f"all baselines: {row['caution']}"] if row.get("caution") else []
        view = comparison.views.get(g)
        if view is None:
            cells += ["-", "-", "-"]
        else:
            lo, hi = view.fit_range
            w = view.row
            if w is None:
                cells += ["n/a", f"{lo:.2f}-{hi:.2f} ({view.n_baselines})", "-"]
            else:
                cells += [f"{pct(w['effective_robustness'])} {interval(w)}", f"{lo:.2f}-{hi:.2f} ({view.result.fit.n})",
                          group_verdict(w)]
                if w.get("caution"):
                    notes.append(f"comparable: {w['caution']}")
            if view.note:
                notes.append(view.note)
        if has_boot:
            cells.append(bootstrap_interval(row) or "n/a")
        cells.append("; ".join(notes) or "")
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
         pct(r["predicted_shifted_accuracy"], False), pct(r["effective_robustness"]), interval(r), r.get("caution") or ""]
        for r in shown.to_dicts()
    ]
    band = "line band and the model's test-set noise" if result.binomial else "line band"
    text = markdown_table(["model", "group", "reference acc.", "shifted acc.", "predicted", "ER",
                           f"95% interval ({band})", "cautions"], rows)
    if part.height > shown.height:
        text += f"\n\n({shown.height} of {part.height} models shown, highest ER first; all are in the ER table.)"
    return text


def reading(comparison: FitComparison, subject: str = "Pre-training") -> str:
    """One sentence: helped / did not help / the views disagree, with the cautions of the numbers it rests on."""
    verdicts = comparison.verdicts()
    if not verdicts:
        return "Only baseline models are present, so there is nothing to judge yet."
    if comparison.disagree:
        flips = ", ".join(f"{g}: {f} with all baselines but {w} with comparable ones" for g, (f, w) in verdicts.items()
                          if w is not None and f != w)
        return f"The views disagree ({flips}); the straight-line fit over all baselines is not trustworthy here."
    # Agreeing views: judge each group by its comparable-baseline view when it has one.
    parts = {}
    for g, (full_verdict, window_verdict) in verdicts.items():
        row = comparison.comparable_row(g)
        parts[g] = ((window_verdict, row, "comparable baselines") if row is not None
                    else (full_verdict, comparison.full.group(g), "all baselines"))
    helped = [g for g, (v, _, _) in parts.items() if v == "helped"]
    detail = "; ".join(f"{g} ER {describe_interval(row)} against {view}" for g, (_, row, view) in parts.items())
    if len(helped) == len(parts):
        head = f"{subject} helped on this shift"
    elif not helped:
        hurt = [g for g, (v, _, _) in parts.items() if v == "hurt"]
        head = f"{subject} did not help on this shift" + (" (it hurt)" if len(hurt) == len(parts) else "")
    else:
        head = f"{subject} helped for {', '.join(helped)} but not for {', '.join(g for g in parts if g not in helped)}"
    weak = f" (weak baseline fit, r = {comparison.full.fit.r:.3f})" if comparison.weak_fit else ""
    return f"{head}: {detail}{weak}."


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


ER_ROW_COLUMNS = ("model", "group", "reference_accuracy", "shifted_accuracy", "predicted_shifted_accuracy",
                  "effective_robustness", "er_lower", "er_upper", "in_fit", "extrapolated", "weak_line", "inverse_line",
                  "caution", "line_se", "er_se", "reference_n", "shifted_n", *EXAMPLE_BOOTSTRAP_COLUMNS)


def er_rows(comparison: FitComparison, shift: str, sub_split: str = "all") -> pl.DataFrame:
    """The ER table rows with shift, sub_split, view and flat fit diagnostics: every model against all
    baselines (view "full"), and each judged group's models against its own comparable window ("comparable")."""
    frames = []
    views = [("full", comparison.full, None)]
    views += [("comparable", v.result, g) for g, v in comparison.views.items() if v.result is not None]
    for view, result, group in views:
        table = result.table if group is None else result.table.filter(pl.col("group") == group)
        cols = [c for c in ER_ROW_COLUMNS if c in table.columns]
        frames.append(
            table.select(cols).with_columns(
                pl.lit(shift).alias("shift"), pl.lit(sub_split).alias("sub_split"), pl.lit(view).alias("view"),
                *[pl.lit(v).alias(k) for k, v in fit_columns(result.fit).items()],
            ).select("shift", "sub_split", "view", *cols, pl.exclude(["shift", "sub_split", "view", *cols]))
        )
    return pl.concat(frames, how="diagonal_relaxed")


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
    stem = safe_name(shift if sub_split == "all" else f"{shift}_{sub_split}")
    title = title or (shift if sub_split == "all" else f"{shift} ({SUB_SPLIT_TITLES.get(sub_split, sub_split)})")
    aotl = exp.plot_path(f"accuracy_on_the_line_{stem}")
    erp = exp.plot_path(f"er_by_group_{stem}")
    accuracy_on_the_line(comparison.full, comparison.windows(), title=f"Accuracy on the line: {title}",
                         reference_label=reference_label, shifted_label=shifted_label, path=aotl)
    er_by_group(comparison.full, comparison.windows(), title=f"Effective robustness: {title}", path=erp)
    rel = lambda p: p.relative_to(exp.root).as_posix()  # noqa: E731 - paths relative to report.md
    lines = [
        f"## {title}",
        "",
        f"**Reading:** {reading(comparison, subject)}",
        "",
        fit_markdown(comparison.full.fit, "Fit, all baselines"),
    ]
    for line in comparable_fits_markdown(comparison):
        lines += ["", line]
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
    artifacts: dict[str, str] = field(default_factory=dict)  # what -> key, filled by the report flow
    report_run: str | None = None  # the flow run holding those artifacts

    @property
    def readings(self) -> dict[str, str]:
        return {f"{s.shift}/{s.sub_split}": s.reading for s in self.sections}

    @property
    def tables(self) -> dict[str, Path]:
        """The Parquet tables behind every artifact, with what each holds."""
        return {"per model, every column": self.er_path, "per group": self.summary_path, "all metrics": self.metrics_path}


def _newest_input(exp: ExperimentStore) -> float:
    times = [p.stat().st_mtime for folder in ("predictions", "subsplits", "models")
             for p in (exp.root / folder).rglob("*") if p.is_file()]
    return max(times, default=0.0)


def ensure_metrics(exp: ExperimentStore, refresh: bool = False) -> pl.DataFrame:
    """tables/metrics.parquet, recomputed from stored predictions when missing or older than any input."""
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


def stored_correctness(exp: ExperimentStore, models: Sequence[str], split: str, sub_split: str | None = None,
                       cache: dict | None = None) -> np.ndarray:
    """(models, examples) per-example correctness (1/0; NaN: no prediction) from stored predictions on ``split``,
    restricted to the examples of a sub-split ("in_support"/"out_of_support") when given; columns are the
    split's example indices in ascending order, the same for every model (the example bootstrap resamples
    them jointly)."""
    cache = {} if cache is None else cache
    per_model = {}
    for model in models:
        key = (model, split)
        if key not in cache:
            df = exp.read_predictions(model, split)
            cache[key] = (df["index"].to_numpy(), (df["prediction"] == df["label"]).to_numpy().astype(float))
        per_model[model] = cache[key]
    support = SUB_SPLITS.get(sub_split)
    keep = None
    if support is not None:
        keep = exp.read_subsplit(split).filter(pl.col("support") == support)["index"].to_numpy()
    index = np.unique(np.concatenate([ix for ix, _ in per_model.values()])) if per_model else np.zeros(0, np.int64)
    if keep is not None:
        index = np.intersect1d(index, keep)
    out = np.full((len(models), len(index)), np.nan)
    for row, model in enumerate(models):
        ix, correct = per_model[model]
        pos = np.searchsorted(index, ix)
        ok = (pos < len(index)) & (index[np.minimum(pos, len(index) - 1)] == ix) if len(index) else np.zeros(len(ix), bool)
        out[row, pos[ok]] = correct[ok]
    return out


def add_example_bootstrap(exp: ExperimentStore, comparison: FitComparison, reference_split: str, shifted_split: str,
                          sub_split: str = "all", n_boot: int = 1000, seed: int = 0, cache: dict | None = None) -> None:
    """Percentile intervals from resampled examples and baselines (askshift.lib.robustness.er.example_bootstrap) for the
    full-range fit and every comparable window: columns ``er_lower_example_bootstrap``/``er_upper_...``."""
    models = comparison.full.table["model"].to_list()
    groups = comparison.full.table["group"].to_list()
    ref = stored_correctness(exp, models, reference_split, None, cache)
    shifted = stored_correctness(exp, models, shifted_split, None if sub_split == "all" else sub_split, cache)
    seen = set()
    for result in [comparison.full, *comparison.windows().values()]:
        if id(result) in seen:
            continue
        seen.add(id(result))
        boot = example_bootstrap(models, groups, ref, shifted, result.table["in_fit"].to_numpy(), scale=result.fit.scale,
                                 n_boot=n_boot, seed=seed, confidence=result.confidence)
        result.with_example_bootstrap(boot)


def build_report(
    exp: ExperimentStore,
    settings: ERSettings | None = None,
    reference_split: str = "source_val",
    refresh_metrics: bool = False,
    title: str | None = None,
    **er: Any,
) -> ReportResult:
    """ER of every shifted split ``<target>_val`` (whole, and in/out-of-support parts when the split flow
    wrote them) against ``reference_split``; writes tables/metrics.parquet, tables/er.parquet,
    tables/er_summary.parquet, plots/*.png and report.md into ``exp`` and returns what it wrote.

    ``settings`` (``ERSettings``; keyword arguments ``er`` override its fields): with ``fit_range=(lo, hi)`` the
    comparable-baseline window is fixed; by default each judged group's window is its own reference-accuracy range
    ± ``margin``.  ``bootstrap_examples=N`` adds percentile intervals from N resamples of the test examples (jointly
    for all models) and of the baseline models (accuracy only).
    """
    settings = ERSettings.model_validate({**(settings or ERSettings()).model_dump(), **er})
    scale, metric, baseline_group = settings.scale, settings.metric, settings.baseline_group
    margin, bootstrap_examples, seed, binomial = settings.margin, settings.bootstrap_examples, settings.seed, settings.binomial
    if bootstrap_examples and metric != "accuracy":
        raise ERInputError(f"--bootstrap-examples resamples per-example correctness: it needs --metric accuracy, not {metric!r}")
    metrics = ensure_metrics(exp, refresh=refresh_metrics)
    if metrics.height == 0:
        raise ERInputError(f"experiment {exp.name!r} has no stored predictions of registered models ({exp.root})")
    if metric not in metrics.columns:
        raise ERInputError(f"unknown metric {metric!r}; choose one of: {', '.join(c for c in metrics.columns if metrics[c].dtype == pl.Float64)}")
    reference = metrics.filter((pl.col("split") == reference_split) & (pl.col("sub_split") == "all"))
    if reference.height == 0:
        raise ERInputError(f"no predictions on the reference split {reference_split!r} in experiment {exp.name!r}")
    groups = sorted(set(reference["group"].to_list()))
    if baseline_group not in groups:
        raise ERInputError(
            f"experiment {exp.name!r} has no models in group {baseline_group!r} (groups: {', '.join(groups)}); choose "
            f"the group the line is fitted on with --baseline-group (form field baseline_group). Nothing was written: "
            f"the tables of the last report ({exp.table_path('er').parent}) are kept")
    shifts = sorted(s for s in metrics["split"].unique().to_list() if s != reference_split and s.endswith("_val"))
    sections: list[ShiftSection] = []
    er_frames, summary_frames = [], []
    predictions_cache: dict = {}
    for shift in shifts:
        present = set(metrics.filter(pl.col("split") == shift)["sub_split"].to_list())
        for sub in [s for s in ("all", "in_support", "out_of_support") if s in present]:
            shifted = metrics.filter((pl.col("split") == shift) & (pl.col("sub_split") == sub))
            pairs = accuracy_pairs(pl.concat([reference, shifted]), reference_split, shift, metric=metric)
            try:
                comparison = compare_fits(pairs, **settings.comparison_kwargs())
            except ERInputError as exc:
                head = f"## {shift} ({SUB_SPLIT_TITLES.get(sub, sub)})"
                sections.append(ShiftSection(shift, sub, None, f"{head}\n\nNo ER: {exc}.\n", error=str(exc)))
                continue
            if bootstrap_examples:
                add_example_bootstrap(exp, comparison, reference_split, shift, sub, bootstrap_examples, seed,
                                      predictions_cache)
            section = shift_section(exp, comparison, shift, sub,
                                    reference_label=f"{reference_split} {metric}", shifted_label=f"{shift} {metric}")
            sections.append(section)
            er_frames.append(er_rows(comparison, shift, sub))
            summary_frames.append(comparison.summary().with_columns(pl.lit(shift).alias("shift"), pl.lit(sub).alias("sub_split")))
    if sections and not er_frames:
        # Every shift failed (too few baselines, ...): an empty table must not replace the last report's.
        raise ERInputError(f"no effective robustness for experiment {exp.name!r}: {sections[0].error}. Nothing was "
                           f"written: the tables of the last report ({exp.table_path('er').parent}) are kept")
    er_table = pl.concat(er_frames, how="vertical_relaxed") if er_frames else pl.DataFrame()
    summary = pl.concat(summary_frames, how="vertical_relaxed") if summary_frames else pl.DataFrame()
    config = {"reference_split": reference_split, **settings.model_dump()}
    er_path = exp.write_table("er", er_table, config=config)
    summary_path = exp.write_table("er_summary", summary, config=config)
    intro = [
        f"Effective robustness (ER) of each model = {metric} on the shifted split minus the {metric} predicted "
        f"by a {scale} line fitted on the `{baseline_group}` models (reference split `{reference_split}`). "
        f"Intervals are 95%: a group's is the interval of its mean ER (the fitted line's uncertainty at the group's "
        f"models plus the spread between them, t quantiles for few models); a model's is the line's band"
        + (" and its own test-set noise" if binomial else "") + ". Each judged group is also compared with the "
        f"baselines whose reference accuracy is near its own (± {margin:g}). Numbers that rest on an extrapolated, "
        f"weak (r < 0.9) or inverse line say so. Choose the line's group with --baseline-group (form field "
        f"baseline_group) and a fixed comparable window with --fit-range LO:HI (form field fit_range)."
        + (f" Example bootstrap: {bootstrap_examples} resamples of the test examples and the baselines." if bootstrap_examples else ""),
        "",
        *[f"- **{s.shift}** ({SUB_SPLIT_TITLES.get(s.sub_split, s.sub_split)}): {s.reading}" for s in sections],
    ]
    if not sections:
        intro.append(f"No shifted split (`<target>_val`) has predictions yet; splits present: {', '.join(sorted(metrics['split'].unique()))}.")
    footer = ["", f"Tables (Parquet, every column): `{exp.table_path('er').resolve()}` (per model), "
                  f"`{exp.table_path('er_summary').resolve()}` (per group), "
                  f"`{exp.table_path('metrics').resolve()}` (all metrics). This report: `{exp.report_path.resolve()}`."]
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


# --- short views for the Prefect UI (the Parquet tables keep every column) ------------------------------


def _pct_round(x: float | None) -> float | None:
    return None if x is None or x != x else round(100 * float(x), 2)


def _interval_pct(lo: float | None, hi: float | None) -> str:
    if lo is None or hi is None or lo != lo or hi != hi:
        return "n/a"
    return f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"


def _flags(row: dict, extra: Sequence[str] = ()) -> str:
    flags = [f for f in extra if f]
    if row.get("caution"):
        flags.append(str(row["caution"]))
    else:
        flags += [label for col, label in (("extrapolated", "extrapolated"), ("weak_line", "weak line"),
                                           ("inverse_line", "inverse line")) if row.get(col)]
    return "; ".join(flags)


def er_display_table(er_table: pl.DataFrame) -> pl.DataFrame:
    """Per model, against all baselines: shift, (part), model, group, reference and shifted accuracy, ER and its
    95% interval, all in % rounded to 0.01, and flags; judged groups first, highest ER first."""
    if er_table.height == 0:
        return pl.DataFrame()
    full = er_table.filter(pl.col("view") == "full") if "view" in er_table.columns else er_table
    with_parts = "sub_split" in full.columns and set(full["sub_split"].to_list()) != {"all"}
    order = {"all": 0, "in_support": 1, "out_of_support": 2}
    # Per shift and part (whole split first), judged groups above the baselines, highest ER first.
    def rank(r: dict) -> tuple:
        er = r["effective_robustness"]
        return r["shift"], order.get(r["sub_split"], 3), bool(r.get("in_fit")), -er if er is not None and er == er else 1e9

    ranked = sorted(full.to_dicts(), key=rank)
    rows = []
    for r in ranked:
        row = {"shift": r["shift"]}
        if with_parts:
            row["part"] = SUB_SPLIT_TITLES.get(r["sub_split"], r["sub_split"])
        row.update({
            "model": r["model"], "group": r["group"],
            "reference acc. %": _pct_round(r["reference_accuracy"]), "shifted acc. %": _pct_round(r["shifted_accuracy"]),
            "ER %": _pct_round(r["effective_robustness"]), "ER 95% interval %": _interval_pct(r["er_lower"], r["er_upper"]),
            "flags": _flags(r, ["fits the line"] if r.get("in_fit") else []),
        })
        rows.append(row)
    return pl.DataFrame(rows)


def summary_display_table(summary: pl.DataFrame) -> pl.DataFrame:
    """Per (shift, part, view, group): models, mean ER and the group interval in % rounded to 0.01, verdict, flags."""
    if summary.height == 0:
        return pl.DataFrame()
    with_parts = "sub_split" in summary.columns and set(summary["sub_split"].to_list()) != {"all"}
    views = {"full": "all baselines", "comparable": "comparable baselines"}
    rows = []
    for r in summary.to_dicts():
        row = {"shift": r.get("shift")}
        if with_parts:
            row["part"] = SUB_SPLIT_TITLES.get(r["sub_split"], r["sub_split"])
        row.update({
            "group": r["group"], "line from": views.get(r["view"], r["view"]), "models": r["n_models"],
            "ER %": _pct_round(r["effective_robustness"]),
            "ER 95% interval %": _interval_pct(r.get("er_lower_total", r["er_lower"]), r.get("er_upper_total", r["er_upper"])),
            "verdict": r.get("verdict"), "flags": _flags(r, [r.get("window_note") or ""]),
        })
        rows.append(row)
    return pl.DataFrame(rows)


def result_line(result: "ReportResult") -> str:
    """One line: each shift's reading (whole split), or for baseline-only experiments how well the line fits."""
    parts = []
    for s in result.sections:
        if s.sub_split != "all":
            continue
        if s.comparison is None:
            parts.append(f"{s.shift}: no ER ({s.error})")
        elif s.comparison.judged_groups:
            parts.append(f"{s.shift}: {s.reading}")
        else:
            fit = s.comparison.full.fit
            parts.append(f"{s.shift}: {fit.n} baseline models, {fit.scale} line r = {fit.r:.3f} (reference "
                         f"accuracy {fit.reference_min:.3f}-{fit.reference_max:.3f}); no other group to judge yet")
    return " ".join(parts) if parts else "no shifted split has predictions yet"


def note_markdown(headline: str, line: str, items: dict[str, str | Path] | None = None) -> str:
    """A result note without a report: one line of result, then labelled absolute paths."""
    lines = [f"**{headline}**: {line}", ""]
    lines += [f"- {label}: `{Path(path).expanduser().resolve() if isinstance(path, Path) else path}`"
              for label, path in (items or {}).items()]
    return "\n".join(lines) + "\n"


def result_markdown(headline: str, result: "ReportResult", report_link: str | None, store: str | Path,
                    keys: Sequence[str] = ()) -> str:
    """The note on the run the user opened: one line of result, then where the report and the tables are."""
    lines = [f"**{headline}**: {result_line(result)}", ""]
    report = f"`{Path(result.report_path).resolve()}`"
    lines.append(f"- Report: [open the report]({report_link}) (plots inline), file {report}" if report_link
                 else f"- Report: {report}")
    lines.append("- Tables (Parquet): " + ", ".join(f"`{Path(path).resolve()}` ({what})" for what, path in result.tables.items()))
    lines.append(f"- Store: `{Path(store).expanduser().resolve()}`, experiment folder `{Path(result.report_path).parent.resolve()}`")
    if keys:
        lines.append("- Artifacts (Artifacts page, by key): " + ", ".join(f"`{k}`" for k in keys)
                     + ". Keys are slugs: lowercase letters, digits and '-' only.")
    return "\n".join(lines) + "\n"


__all__ = [
    "ReportResult",
    "er_display_table",
    "note_markdown",
    "result_line",
    "result_markdown",
    "summary_display_table",
    "ShiftSection",
    "add_example_bootstrap",
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
    "stored_correctness",
]
