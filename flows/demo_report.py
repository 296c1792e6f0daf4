"""The demo's combined report: one markdown file with every shift's fit, ER table, plots and reading, plus Parquet tables.

Reads the experiments the demo's flows wrote (metrics from stored predictions, sub-splits from the split
flow) and uses the ER engine's two views: the paper's full-range line and the comparable-baseline fit.
"""
from __future__ import annotations

from typing import Any, Sequence

import polars as pl

from askshift.flows.demo_config import (
    BASELINE_GROUP,
    DEMO_EXPERIMENT,
    ER_TABLE,
    MIXED_SPLIT_NAME,
    MODELS_TABLE,
    DemoConfig,
    DemoShift,
    er_group_rows,
    er_table,
    format_duration,
    shift_reading,
    summary_lines,
    why_notes,
)
from askshift.lib.data.specs import get_spec
from askshift.lib.report.markdown import (
    comparable_fits_markdown,
    ensure_metrics,
    er_rows,
    fit_markdown,
    group_table_markdown,
)
from askshift.lib.report.plots import accuracy_on_the_line, er_by_group
from askshift.lib.robustness.comparison import compare_fits
from askshift.lib.robustness.er import accuracy_pairs
from askshift.lib.robustness.lines import ERInputError
from askshift.lib.store import ExperimentStore, atomic_write_text, content_hash, load_torch, safe_name
from askshift.lib.support.known_answer import membership_recovery
from askshift.lib.support.ratios import DEFAULT_EPSILON

REFERENCE_SPLIT = "source_val"
SUB_TITLES = {"all": "whole shifted set", "in_support": "in-support part", "out_of_support": "out-of-support part"}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def _interval(lo: float | None, hi: float | None) -> str:
    return "n/a" if lo is None or hi is None else f"[{_pct(lo)}, {_pct(hi)}]"


def _caution(text: str | None) -> str:
    return f" ({text})" if text else ""


def compare_on_split(metrics: pl.DataFrame, split: str, sub_split: str = "all"):
    """FitComparison (full-range vs comparable baselines) of every group on ``split`` against source_val."""
    reference = metrics.filter((pl.col("split") == REFERENCE_SPLIT) & (pl.col("sub_split") == "all"))
    shifted = metrics.filter((pl.col("split") == split) & (pl.col("sub_split") == sub_split))
    if "n" in shifted.columns:
        shifted = shifted.filter(pl.col("n") > 0)
    pairs = accuracy_pairs(pl.concat([reference, shifted], how="vertical_relaxed"), REFERENCE_SPLIT, split)
    # Every group but the baselines is judged, the same-architecture control included: each gets its own
    # comparable window around its own reference accuracies (the control sits far below the fine-tuned models).
    judged = [g for g in sorted(set(pairs["group"].to_list())) if g != BASELINE_GROUP]
    return compare_fits(pairs, baseline_group=BASELINE_GROUP, judged_groups=judged)


def section(demo_exp: ExperimentStore, comparison, shift: DemoShift, rows: list[dict], heading: str,
            stem: str, notes: Sequence[str]) -> str:
    """One shift's markdown: reading, fit diagnostics, ER table (both views), words on disagreement, plots."""
    aotl = demo_exp.plot_path(f"accuracy_on_the_line_{stem}")
    erp = demo_exp.plot_path(f"er_by_group_{stem}")
    accuracy_on_the_line(comparison.full, comparison.windows(), title=f"Accuracy on the line: {shift.title}",
                         reference_label="reference (source_val) accuracy", shifted_label="shifted accuracy", path=aotl)
    er_by_group(comparison.full, comparison.windows(), title=f"Effective robustness: {shift.title}", path=erp)
    rel = lambda p: p.relative_to(demo_exp.root).as_posix()  # noqa: E731 -- paths relative to report.md
    lines = [heading, "", f"*{shift.about}.* Support: **{shift.support}**; the paper expects {shift.expected}.", "",
             f"**Reading:** {shift_reading(rows, shift)}", "",
             fit_markdown(comparison.full.fit, "Fit, all baselines (the paper's view)")]
    for line in comparable_fits_markdown(comparison):
        lines += ["", line]
    lines += ["", group_table_markdown(comparison), "", comparison.message, ""]
    if notes:
        lines += ["Why it may look this way:", "", *[f"- {n}" for n in notes], ""]
    lines += [f"![accuracy on the line]({rel(aotl)})", f"![effective robustness by group]({rel(erp)})", ""]
    return "\n".join(lines)


def _reference_size(config: DemoConfig, shift_name: str) -> int | None:
    try:
        from askshift.lib.data.loaders import split_info

        return split_info(get_spec(shift_name, dataset=config.dataset), "source_train", str(config.store.resolved_cache_dir())).num_examples
    except Exception:  # noqa: BLE001 -- a size for a sentence; never worth failing the report
        return None


def _summary_markdown(table: pl.DataFrame, shifts: Sequence[DemoShift]) -> str:
    header = ["shift", "support", "paper expects"]
    groups = [g for g in ("ft", "lp-ft", "scratch-same-arch") if g in set(table["group"].to_list())]
    for g in groups:
        header += [f"{g}: ER, all baselines", f"{g}: ER, comparable baselines"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in shifts:
        part = table.filter(pl.col("shift") == s.name)
        cells = [s.name, s.support, s.expected]
        for g in groups:
            r = part.filter(pl.col("group") == g)
            if r.height == 0:
                cells += ["n/a", "n/a"]
                continue
            r = r.row(0, named=True)
            cells.append(f"{_pct(r['effective_robustness'])} {_interval(r['er_lower'], r['er_upper'])}"
                         f"{_caution(r.get('caution'))}")
            if r["comparable_effective_robustness"] is None:
                note = r.get("comparable_note") or ""
                cells.append("n/a (too few comparable baselines)" if "too few" in note else f"n/a{_caution(note)}")
            else:
                cells.append(f"{_pct(r['comparable_effective_robustness'])} "
                             f"{_interval(r['comparable_er_lower'], r['comparable_er_upper'])}"
                             f"{_caution(r.get('comparable_caution') or r.get('comparable_note'))}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mixed_sections(config: DemoConfig, demo_exp: ExperimentStore, models: dict[str, list[str]] | None = None
                   ) -> tuple[list[str], list[dict], list[pl.DataFrame]]:
    """The split section: membership recovery, the split flow's own section, and ER on each part."""
    name = config.mixed_experiment_name()
    exp = config.store.experiment(name)
    split = f"{MIXED_SPLIT_NAME}_val"
    lines = ["## Mixed natural-like shift, split into in-support and out-of-support parts", "",
             "The reference distribution is digits with a spurious palette tint (each digit gets its class's colour "
             "with probability 0.5, another palette colour otherwise). The shifted set mixes held-out digits "
             "with palette colours (in-support: only the colour-class pairing changed) and digits tinted with hues "
             "the palette never uses or flipped upside down (out-of-support). The split flow does not see this "
             "truth: a domain classifier, cross-fitted and calibrated, estimates density ratios and calls an "
             "example out-of-support when r >= 1/epsilon. ER is then measured on each part with the same "
             "baselines and fine-tuned models.", ""]
    rows_out: list[dict] = []
    model_frames: list[pl.DataFrame] = []
    truth_line = _recovery_line(exp, split)
    if truth_line:
        lines += [truth_line, ""]
    split_md = exp.root / f"support_{MIXED_SPLIT_NAME}.md"
    if split_md.exists():
        text = split_md.read_text()
        # The split flow's images are relative to its experiment folder; the demo report sits in STORE/demo/.
        text = text.replace("](plots/", f"](../{exp.root.name}/plots/").replace("](./plots/", f"](../{exp.root.name}/plots/")
        text = "\n".join(("#" + line) if line.startswith("#") else line for line in text.splitlines())
        lines += ["<details><summary>The split flow's own section (sizes per epsilon, calibration, examples)</summary>",
                  "", text, "", "</details>", ""]
    try:
        metrics = only_models(ensure_metrics(exp), models, name)
    except Exception as exc:  # noqa: BLE001
        return lines + [f"No ER for the mixed shift: {exc}", ""], rows_out, model_frames
    for sub in ("in_support", "out_of_support", "all"):
        present = metrics.filter((pl.col("split") == split) & (pl.col("sub_split") == sub))
        if present.height == 0 or ("n" in present.columns and int(present["n"].max() or 0) == 0):
            lines += [f"### {SUB_TITLES[sub]}", "", f"No examples in the {SUB_TITLES[sub]}.", ""]
            continue
        support = {"in_support": "in", "out_of_support": "out"}.get(sub, "out")
        shift = DemoShift(name=f"{MIXED_SPLIT_NAME}/{sub}", title=f"Mixed shift: {SUB_TITLES[sub]}", preset="mixed",
                          target=MIXED_SPLIT_NAME, support=support,
                          about=f"{int(present['n'].max())} shifted examples" if "n" in present.columns else sub)
        try:
            comparison = compare_on_split(metrics, split, sub)
        except ERInputError as exc:
            lines += [f"### {shift.title}", "", f"No ER: {exc}.", ""]
            continue
        rows = er_group_rows(comparison, shift, name, split, sub, config.seed, config.variant())
        lines.append(section(demo_exp, comparison, shift, rows, f"### {shift.title}", safe_name(f"mixed_{sub}"),
                             why_notes(rows, shift)))
        if sub != "all":  # the whole mixed set has no single support: it stays in the report only
            rows_out += rows
            model_frames.append(er_rows(comparison, shift.name, sub).with_columns(pl.lit(support).alias("support")))
    return lines, rows_out, model_frames


def _recovery_line(exp: ExperimentStore, split: str) -> str | None:
    """How well the split recovered the known membership (the mixture keeps the truth)."""
    try:
        import numpy as np

        with np.load(exp.root / "mixture.npz", allow_pickle=False) as data:
            truth = data["shifted_out_of_support"].astype(bool)
        sub = exp.read_subsplit(split)
        rec = membership_recovery(sub["index"].to_numpy(), sub["ratio"].to_numpy(), truth, (DEFAULT_EPSILON,))
        row = rec.table.row(0, named=True)
        return (f"**Split quality (known truth):** {int(truth.sum())} of {truth.size} shifted examples are truly "
                f"out-of-support; the density ratio ranks them with AUROC {rec.auroc:.3f}; at epsilon = "
                f"{DEFAULT_EPSILON:g} the split calls {row['out_of_support']} out-of-support and "
                f"{row['in_support']} in-support (accuracy {row['accuracy']:.2f} against the truth).")
    except Exception:  # noqa: BLE001 -- no subsplit yet, or no truth: nothing to say
        return None


def only_models(metrics: pl.DataFrame, models: dict[str, list[str]] | None, experiment: str) -> pl.DataFrame:
    """The metrics of the models a demo run produced (all registered models when ``models`` is None)."""
    if models is None or experiment not in models:
        return metrics
    return metrics.filter(pl.col("model").is_in(list(models[experiment])))


def build_demo_report(config: DemoConfig, seconds: float | None = None,
                      models: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Write STORE/demo/report.md, tables/demo_er.parquet (shift x group) and tables/demo_models.parquet.

    ``models`` (experiment -> model ids) restricts each experiment to the models of this run."""
    store = config.store.store()
    demo_exp = store.experiment(DEMO_EXPERIMENT)
    shift_lines: list[str] = []
    rows: list[dict] = []
    model_frames: list[pl.DataFrame] = []
    shifts = config.active_shifts()
    counts: dict[str, int] = {}
    for preset in config.presets():
        name = config.experiment_name(preset)
        exp = store.experiment(name)
        metrics = only_models(ensure_metrics(exp), models, name)
        counts[preset] = metrics.filter(pl.col("split") == REFERENCE_SPLIT).height
        n_reference = _reference_size(config, preset)
        for shift in [s for s in shifts if s.preset == preset]:
            try:
                comparison = compare_on_split(metrics, shift.split)
            except ERInputError as exc:
                shift_lines += [f"## {shift.title}", "", f"No ER: {exc}.", ""]
                continue
            shift_rows = er_group_rows(comparison, shift, name, shift.split, "all", config.seed, config.variant())
            rows += shift_rows
            model_frames.append(er_rows(comparison, shift.name).with_columns(pl.lit(shift.support).alias("support")))
            shift_lines.append(section(demo_exp, comparison, shift, shift_rows, f"## {shift.title}",
                                       safe_name(shift.name), why_notes(shift_rows, shift, n_reference)))
    split_lines: list[str] = []
    if config.split:
        split_lines, split_rows, split_frames = mixed_sections(config, demo_exp, models)
        rows += split_rows
        model_frames += split_frames

    table = er_table(rows)
    config_json = config.model_dump(mode="json")
    er_path = demo_exp.write_table(ER_TABLE, table, config=config_json)
    models = pl.concat(model_frames, how="diagonal_relaxed") if model_frames else pl.DataFrame()
    models_path = demo_exp.write_table(MODELS_TABLE, models, config=config_json)

    summary = summary_lines(table, shifts)
    readings = [f"- **{s.name}** ({'in-support' if s.support == 'in' else 'out-of-support'}): {shift_reading(table.filter(pl.col('shift') == s.name).to_dicts(), s)}"
                for s in shifts if table.filter(pl.col("shift") == s.name).height]
    n_models = sum(counts.values())
    intro = [
        f"# askshift demo: does pre-training help under this shift? ({config.dataset}, {config.variant()} variant, seed {config.seed})",
        "",
        "The paper's experiment in miniature (Cohen-Wang, Vendrow, Madry: *Ask Your Distribution Shift if "
        "Pre-Training is Right for You*). Baselines: small CNNs trained from scratch on the reference data "
        f"(widths {', '.join(f'{w:g}' for w in config.baseline_widths)} x training fractions "
        f"{', '.join(f'{f:g}' for f in config.baseline_fractions)} x {config.baseline_seeds} seed(s) x kept epochs "
        f"{', '.join(str(e) for e in config.baseline_keep_epochs)} of {config.baseline_epochs}). Pre-trained: the same CNN "
        f"pre-trained on a generated corpus of letter glyphs ({config.pretrain_steps} steps; a local stand-in for "
        f"CLIP/AugReg{_pretrain_accuracy(config)}), fine-tuned with {', '.join(s.upper() for s in config.strategies)} "
        f"(learning rate picked on reference validation from {', '.join(f'{lr:g}' for lr in config.lr_grid)}, "
        f"{config.copies} copies; the probe stage of LP-FT trains the head alone for {config.lp_epochs} epochs at "
        f"{config.lp_lr:g}, to convergence, so that fine-tuning starts from a head that already reads the features). "
        f"Control (`scratch-same-arch`): the same architecture trained from scratch with the "
        f"fine-tuning recipe. {n_models} models evaluated in all"
        + (f"; the run took {format_duration(seconds)}." if seconds is not None else "."),
        "",
        "Effective robustness (ER) = shifted accuracy minus what the probit line fitted on the baselines predicts. "
        "Each shift shows the paper's number (line fitted on **all** baselines) beside the same number against "
        "**comparable** baselines (only those whose reference accuracy lies near the fine-tuned models'), with the "
        "fits' r, residual spread and reference-accuracy range. When the two views disagree the report says so: a "
        "bent baseline trend (shortcut-reliant baselines piling up) can credit a model with ER it does not have. "
        "Intervals are 95%: a group's is the interval of its mean over copies (the fitted line's uncertainty at "
        "the copies plus the spread between them, with t quantiles for so few copies); each group, the control "
        "included, gets its own comparable window around its own reference accuracies. Numbers resting on an "
        "extrapolated, weak (r < 0.9) or inverse line say so in brackets.",
        "",
        *(["**This is the quick smoke variant** (few, short runs; a barely pre-trained model): it checks that "
            "everything runs, its numbers are not the experiment's finding. Run `askshift demo` for that.", ""]
          if config.quick else []),
        "## Summary",
        "",
        "ER per group (mean over copies) with the 95% interval of that mean (the verdicts use it; the per-shift "
        "tables below show the same intervals).",
        "",
        _summary_markdown(table, shifts + ([] if not config.split else [])),
        "",
        *readings,
        "",
        "```",
        *summary,
        "```",
        "",
    ]
    footer = ["## Tables", "",
              f"- `{er_path.relative_to(store.root)}`: one row per (shift, group): `effective_robustness`, `er_lower`, "
              "`er_upper` (the paper's full-range view, copies aggregated), `comparable_*` (comparable baselines), "
              "verdicts, fit diagnostics.",
              f"- `{models_path.relative_to(store.root)}`: one row per (shift, view, model).",
              "- Each experiment folder (`" + "`, `".join(config.experiment_name(p) for p in config.presets())
              + "`) holds its predictions and `tables/metrics.parquet`.", ""]
    markdown = "\n".join(intro + shift_lines + split_lines + footer).rstrip() + "\n"
    report_path = atomic_write_text(demo_exp.report_path, markdown)
    return {"report": str(report_path), "er_table": str(er_path), "models_table": str(models_path),
            "summary": summary}


__all__ = ["build_demo_report", "compare_on_split", "mixed_sections", "section"]


def _pretrain_accuracy(config) -> str:
    """What the corpus covers and the checkpoint's held-out accuracy on it: the premise of the experiment is a
    pre-training whose data hold what the out-of-support shifts show (colours, tints, flips), as CLIP's do."""
    from askshift.lib.models.pretrain import CHARACTERS

    pre = config.pretrain_config()
    cover = (f": {len(CHARACTERS)} letter classes, none a digit or digit look-alike, in many fonts, random colours and "
             f"backgrounds, with {pre.flip_p:.0%} flipped upside down and {pre.flip_p / 2:.0%} mirrored, {pre.quarter_turn_p:.0%} "
             f"quarter-turned, {pre.tint_p:.0%} tinted and {pre.clutter_p:.0%} with distractor strokes")
    path = config.store.resolved_cache_dir() / "pretrained"
    try:
        key = content_hash(pre)
        for file in sorted(path.glob("*.pt")):
            meta = load_torch(file).get("meta", {})
            if meta.get("config_hash") == key:
                return cover + f"; held-out accuracy on unseen corpus batches {meta['val_accuracy']:.1%} (chance {1 / len(CHARACTERS):.1%})"
    except Exception:  # noqa: BLE001 -- the accuracy is a note; the run's tables do not depend on it
        pass
    return cover
