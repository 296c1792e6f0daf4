"""What the split flow reports: ER per sub-split, a histogram of calibrated probabilities, example images, markdown."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from askshift.lib.report.markdown import stored_correctness
from askshift.lib.robustness.er import accuracy_pairs, effective_robustness, example_bootstrap
from askshift.lib.robustness.lines import ERInputError, fit_columns
from askshift.lib.robustness.metrics import metrics_table
from askshift.lib.store import ExperimentStore, write_with
from askshift.lib.support.ratios import SupportEstimate, out_of_support, separation_failure

SUB_SPLITS = ("all", "in_support", "out_of_support")
SUB_SPLIT_LABELS = {"all": "whole split", "in_support": "in-support", "out_of_support": "out-of-support"}


# --- ER per sub-split ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SupportER:
    """ER per (sub-split, group) with 95% intervals of the group mean; ``message`` says why a sub-split has none."""

    groups: pl.DataFrame  # sub_split, group, n_models, effective_robustness, er_lower, er_upper, n_examples, cautions...
    models: pl.DataFrame  # sub_split, model, group, reference/shifted accuracy, ER and interval, cautions
    messages: dict[str, str]
    fits: pl.DataFrame = field(default_factory=pl.DataFrame)  # sub_split + the line's diagnostics, one row per part


_GROUP_SCHEMA = {"sub_split": pl.String, "group": pl.String, "n_models": pl.Int64, "effective_robustness": pl.Float64,
                 "er_lower": pl.Float64, "er_upper": pl.Float64, "n_examples": pl.Int64, "er_se": pl.Float64,
                 "line_se": pl.Float64, "spread_se": pl.Float64, "n_extrapolated": pl.Int64, "extrapolated": pl.Boolean,
                 "weak_line": pl.Boolean, "inverse_line": pl.Boolean, "caution": pl.String,
                 "er_lower_example_bootstrap": pl.Float64, "er_upper_example_bootstrap": pl.Float64}
_MODEL_COLUMNS = ("model", "group", "reference_accuracy", "shifted_accuracy", "reference_n", "shifted_n",
                  "effective_robustness", "er_lower", "er_upper", "extrapolated", "caution", "line_se",
                  "er_lower_example_bootstrap", "er_upper_example_bootstrap")


def support_er(exp: ExperimentStore, reference_split: str, shifted_split: str, baseline_group: str = "baseline",
               scale: str = "probit", bootstrap_examples: int = 0, seed: int = 0) -> SupportER:
    """Effective robustness of every registered model group on the whole shifted split and on each part.

    Each part has its own line (fit diagnostics in ``fits``); accuracies are clipped at 1/(2n) with n the
    part's size.  ``bootstrap_examples=N`` adds percentile intervals from N resamples of the part's examples
    and of the reference examples (jointly for all models) and of the baselines (askshift.lib.robustness.er.example_bootstrap).
    """
    reference = metrics_table(exp, splits=[reference_split])
    group_frames, model_frames, fit_rows, messages = [], [], [], {}
    cache: dict = {}
    for sub in SUB_SPLITS:
        if reference.height == 0:
            messages[sub] = (f"no registered model has predictions on {reference_split!r} "
                             f"(train or evaluate models in this experiment, e.g. zoo_evaluate, then re-run)")
            continue
        shifted = metrics_table(exp, splits=[shifted_split], sub_split=sub)
        shifted = shifted.filter(pl.col("n") > 0)
        if shifted.height == 0:
            messages[sub] = f"no predictions on the {SUB_SPLIT_LABELS[sub]} part of {shifted_split!r} (is it empty?)"
            continue
        try:
            pairs = accuracy_pairs(pl.concat([reference, shifted], how="vertical_relaxed"), reference_split, shifted_split)
            result = effective_robustness(pairs, baseline_group=baseline_group, scale=scale)
            if bootstrap_examples:
                models = result.table["model"].to_list()
                ref_c = stored_correctness(exp, models, reference_split, None, cache)
                shift_c = stored_correctness(exp, models, shifted_split, None if sub == "all" else sub, cache)
                result.with_example_bootstrap(example_bootstrap(
                    models, result.table["group"].to_list(), ref_c, shift_c, result.table["in_fit"].to_numpy(),
                    scale=scale, n_boot=bootstrap_examples, seed=seed))
        except ERInputError as exc:
            messages[sub] = str(exc)
            continue
        n_examples = int(shifted["n"].max())
        group_frames.append(result.groups.select([c for c in _GROUP_SCHEMA if c in result.groups.columns])
                            .with_columns(pl.lit(sub).alias("sub_split"), pl.lit(n_examples).alias("n_examples")))
        model_frames.append(result.table.select([c for c in _MODEL_COLUMNS if c in result.table.columns])
                            .with_columns(pl.lit(sub).alias("sub_split")))
        fit_rows.append({"sub_split": sub, "n_examples": n_examples, **fit_columns(result.fit),
                         "describe": result.fit.describe()})
    groups = pl.DataFrame(schema=_GROUP_SCHEMA)
    if group_frames:
        joined = pl.concat(group_frames, how="diagonal_relaxed")
        groups = joined.select([pl.col(c) if c in joined.columns else pl.lit(None).alias(c) for c in _GROUP_SCHEMA]
                               ).cast(_GROUP_SCHEMA)
    models = pl.concat(model_frames, how="diagonal_relaxed") if model_frames else pl.DataFrame()
    fits = pl.DataFrame(fit_rows) if fit_rows else pl.DataFrame()
    return SupportER(groups, models, messages, fits)


# --- plots ------------------------------------------------------------------------------------------------

def probability_histogram(estimate: SupportEstimate, path: str | Path, title: str = "") -> Path:
    """Calibrated P(shifted) of reference and shifted examples (cross-fitted), with the ε threshold."""
    from matplotlib.figure import Figure

    p = estimate.probabilities
    fig = Figure(figsize=(6.0, 3.4), dpi=110, layout="constrained")
    ax = fig.subplots()
    bins = np.linspace(0, 1, 41)
    for domain, label, colour in ((0, "reference", "#4c72b0"), (1, "shifted", "#dd8452")):
        ax.hist(p[estimate.data.domain == domain], bins=bins, alpha=0.6, label=label, color=colour)
    # r >= 1/eps  <=>  p >= t with t/(1-t) * n_ref/n_shift = 1/eps
    odds = (1 / estimate.epsilon) * estimate.data.n_shifted / estimate.data.n_reference
    threshold = odds / (1 + odds)
    ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"out-of-support (ε={estimate.epsilon:g})")
    ax.set_yscale("log")
    ax.set_xlabel("calibrated P(shifted | x)")
    ax.set_ylabel("examples")
    ax.set_title(title or "Domain classifier (cross-fitted, calibrated)")
    ax.legend(fontsize=8)
    return write_with(path, lambda tmp: fig.savefig(tmp, format="png"))


def example_grid(rows: Sequence[tuple[str, np.ndarray]], path: str | Path, title: str = "") -> Path:
    """One row of images (uint8 NHWC or float NCHW in [0, 1]) per label: reference / in-support / out-of-support."""
    from matplotlib.figure import Figure

    width = max((len(images) for _, images in rows), default=1) or 1
    fig = Figure(figsize=(1.1 * width + 1.2, 1.2 * len(rows) + 0.4), dpi=110, layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), width, squeeze=False))
    for r, (label, images) in enumerate(rows):
        for c in range(width):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                ax.imshow(_hwc(images[c]), interpolation="nearest")
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return write_with(path, lambda tmp: fig.savefig(tmp, format="png"))


def _hwc(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = image.transpose(1, 2, 0)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return image.squeeze(-1) if image.shape[-1] == 1 else image


def pick_examples(estimate: SupportEstimate, epsilon: float | None, per_row: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Positions (in ``estimate.data``) of random reference, in-support and out-of-support examples."""
    rng = np.random.default_rng(seed)
    eps = estimate.epsilon if epsilon is None else epsilon
    ref = np.flatnonzero(estimate.data.domain == 0)
    shifted_index = np.flatnonzero(estimate.data.domain == 1)
    out = out_of_support(estimate.shifted_ratios(), eps)

    def take(values: np.ndarray) -> np.ndarray:
        return np.sort(rng.choice(values, size=min(per_row, values.size), replace=False)) if values.size else values

    return {"reference": take(ref), "in-support": take(shifted_index[~out]), "out-of-support": take(shifted_index[out])}


# --- markdown -------------------------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:+.2f}%"


def sweep_markdown(sweep: pl.DataFrame, chosen: float) -> str:
    lines = ["| ε | threshold 1/ε | in-support | out-of-support | out fraction |", "|---|---|---|---|---|"]
    for row in sweep.iter_rows(named=True):
        mark = " **(chosen)**" if abs(row["epsilon"] - chosen) < 1e-12 else ""
        lines.append(f"| {row['epsilon']:g}{mark} | {row['threshold']:g} | {row['in_support']} | "
                     f"{row['out_of_support']} | {row['out_fraction']:.3f} |")
    return "\n".join(lines)


def er_markdown(er: SupportER) -> str:
    """ER per part and group (the group mean's 95% interval, with its cautions) and each part's line."""
    if er.groups.height == 0:
        distinct = list(dict.fromkeys(er.messages.values()))
        if len(distinct) == 1:
            return f"No ER per sub-split: {distinct[0]}."
        reasons = "; ".join(f"{SUB_SPLIT_LABELS[k]}: {v}" for k, v in er.messages.items()) or "no models"
        return f"No ER per sub-split: {reasons}."
    has_boot = "er_lower_example_bootstrap" in er.groups.columns and er.groups["er_lower_example_bootstrap"].is_not_null().any()
    header = "| part | examples | group | models | ER (95% interval) |" + (" example bootstrap |" if has_boot else "") + " cautions |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    order = {s: i for i, s in enumerate(SUB_SPLITS)}
    for row in sorted(er.groups.iter_rows(named=True), key=lambda r: (order.get(r["sub_split"], 9), r["group"])):
        cells = [SUB_SPLIT_LABELS[row["sub_split"]], row["n_examples"], row["group"], row["n_models"],
                 f"{_pct(row['effective_robustness'])} [{_pct(row['er_lower'])}, {_pct(row['er_upper'])}]"]
        if has_boot:
            lo, hi = row.get("er_lower_example_bootstrap"), row.get("er_upper_example_bootstrap")
            cells.append("n/a" if lo is None else f"[{_pct(lo)}, {_pct(hi)}]")
        cells.append(row.get("caution") or "")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if er.fits.height:
        lines += ["", "Line per part:", ""]
        for row in sorted(er.fits.iter_rows(named=True), key=lambda r: order.get(r["sub_split"], 9)):
            lines.append(f"- {SUB_SPLIT_LABELS[row['sub_split']]}: {row['describe']}.")
    for sub, message in er.messages.items():
        lines.append(f"\n{SUB_SPLIT_LABELS[sub]}: {message}")
    return "\n".join(lines)


def section_markdown(target: str, shifted_split: str, estimate: SupportEstimate, lr: float,
                     tuning: pl.DataFrame | None, er: SupportER, plots: dict[str, Path], base: Path,
                     classifier: str) -> str:
    """The report section of one split target."""
    cal = estimate.calibration
    sizes = estimate.sweep()
    chosen = sizes.filter(pl.col("epsilon") == estimate.epsilon).row(0, named=True)
    failure = separation_failure(estimate.auroc)
    lines = [f"## Support split: `{shifted_split}`", ""]
    if failure:
        lines += [f"**Warning:** {failure}.", ""]
    else:
        lines += [f"At ε = {estimate.epsilon:g}, **{chosen['in_support']}** shifted examples are in-support and "
                  f"**{chosen['out_of_support']}** out-of-support (density ratio r ≥ {1 / estimate.epsilon:g}).", ""]
    lines += [
        f"- Domain classifier `{classifier}`, learning rate {lr:g}; cross-fitted AUROC (reference vs shifted) "
        f"**{estimate.auroc:.3f}**.",
        f"- Temperature calibration: α = {cal.alpha:.4g} (BCE {cal.loss_uncalibrated:.4f} → {cal.loss:.4f})"
        + (" — α hit its bound: the scores separate the sets perfectly, so ratios are extreme." if cal.at_bound else "."),
        f"- Reference examples {estimate.data.n_reference}, shifted examples {estimate.data.n_shifted}; "
        f"r = p/(1−p) · {estimate.data.n_reference}/{estimate.data.n_shifted}. "
        f"ε = 0.2 is the paper's text; the released notebook used 0.1.",
        "",
    ]
    if tuning is not None and tuning.height > 1:
        lines += ["Learning rate by held-out AUROC: " + ", ".join(
            f"{r['lr']:g} → {r['auroc']:.3f}" for r in tuning.iter_rows(named=True)), ""]
    if failure:
        # Sizes stay visible (they show that nothing stands out), but ER per part would compare arbitrary parts.
        lines += ["### Split sizes per ε (not meaningful: the classifier did not separate the sets)", "",
                  sweep_markdown(sizes, estimate.epsilon), "",
                  "ER per part is not reported: without a domain classifier that tells the sets apart, the "
                  "in/out-of-support parts are noise. Report ER on the whole split instead.", ""]
    else:
        lines += ["### Split sizes per ε", "", sweep_markdown(sizes, estimate.epsilon), "",
                  "### Effective robustness per part", "", er_markdown(er), ""]
    for name, path in plots.items():
        lines.append(f"![{name}]({path.relative_to(base).as_posix()})")
    return "\n".join(lines).rstrip() + "\n"
