"""The report of ``askshift ask``: the verdict, its evidence (tables, plots, example grids) and a label-free ER."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import polars as pl

from askshift.lib.report.support import example_grid
from askshift.lib.robustness.atc import atc_estimates, label_free_er
from askshift.lib.store import ExperimentStore
from askshift.lib.support.evidence import (
    agreement,
    expected_calibration_error,
    knn_second_opinion,
    reliability_plot,
    reliability_table,
    share_sweep,
    share_sweep_plot,
    verdict,
    verdict_rule,
)
from askshift.lib.support.ratios import out_of_support

PARTS = {"all": None, "in_support": "in", "out_of_support": "out"}
# Next to every label-free number that rests on out-of-support images (ATC's calibration assumption is weakest there).
OUT_OF_SUPPORT_CAUTION = "out-of-support images: ATC may overstate accuracy"


@dataclass(frozen=True)
class AskReport:
    """What the ask flow prints and publishes: the verdict, one headline sentence, the markdown and the numbers."""

    verdict: str
    headline: str
    markdown: str
    summary: dict[str, Any]


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")) if text else ""


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def ask_report(exp: ExperimentStore, scores: pl.DataFrame, images: Callable[[np.ndarray], np.ndarray], epsilon: float,
               epsilons: Sequence[float], auroc_value: float, resamples: int = 2000, quantile: float = 0.99,
               examples: int = 8, seed: int = 0, er: dict[str, Any] | None = None,
               classifier: str = "") -> AskReport:
    """The evidence behind the verdict, from the split's cross-fitted scores (``support_scores_<target>``: one row per
    position, reference rows first, with probability, ratio, fold, nn_distance, nn_position); ``images(positions)``
    returns uint8 NCHW images of positions for the grids."""
    domain = (scores["domain"] == "shifted").to_numpy().astype(np.int64)
    shifted = np.flatnonzero(domain == 1)
    ratios = scores["ratio"].to_numpy()
    probability = scores["probability"].to_numpy()
    sweep = share_sweep(ratios[shifted], tuple(epsilons), resamples=resamples, seed=seed)
    chosen = sweep.filter(pl.col("epsilon") == epsilon).row(0, named=True)
    out = out_of_support(ratios[shifted], epsilon)
    answer = verdict(auroc_value, chosen["share"])
    reliability = reliability_table(probability, domain)
    ece = expected_calibration_error(reliability)
    opinion = knn_second_opinion(scores["nn_distance"].to_numpy(), domain, scores["fold"].to_numpy(), quantile=quantile)
    agree = agreement(out, opinion.far)

    exp.write_table("ask_reliability", reliability)
    exp.write_table("ask_share_sweep", sweep)
    plots = {
        "reliability": reliability_plot(reliability, exp.plot_path("ask_reliability"),
                                        title=f"domain classifier reliability (ECE {ece:.3f})"),
        "share": share_sweep_plot(sweep, exp.plot_path("ask_share_sweep"), epsilon,
                                  title="out-of-support share of the shifted images"),
    }
    order = shifted[np.argsort(ratios[shifted], kind="stable")]
    most_in, most_out = order[:examples].copy(), order[::-1][:examples].copy()
    nearest = scores["nn_position"].to_numpy()[most_in]
    plots["examples"] = example_grid(
        [("most out-of-support", images(most_out)), ("most in-support", images(most_in)),
         ("their nearest reference", images(nearest))],
        exp.plot_path("ask_examples"), title=f"shifted images at the extremes of the density ratio (ε = {epsilon:g})")

    headline = (f"{_pct(chosen['share'])} of the {chosen['n']} shifted images are out-of-support "
                f"[{_pct(chosen['share_lo'])}, {_pct(chosen['share_hi'])}] at ε = {epsilon:g} "
                f"(domain classifier AUROC {auroc_value:.3f}): pre-training is {answer}"
                if answer != "no detectable shift" else
                f"the domain classifier cannot tell the shifted images from the reference (AUROC {auroc_value:.3f}): "
                f"no detectable shift")
    summary = {"auroc": float(auroc_value), "share": float(chosen["share"]), "share_lo": float(chosen["share_lo"]),
               "share_hi": float(chosen["share_hi"]), "out_of_support": int(chosen["out_of_support"]),
               "n": int(chosen["n"]), "epsilon": float(epsilon), "verdict": answer, "headline": headline,
               "knn_share": float(opinion.share), "ece": float(ece)}
    markdown = _markdown(exp, headline, answer, chosen, epsilon, auroc_value, ece, opinion, agree, quantile, plots,
                         er, classifier)
    return AskReport(answer, headline, markdown, summary)


def _markdown(exp, headline, answer, chosen, epsilon, auroc_value, ece, opinion, agree, quantile, plots, er,
              classifier) -> str:
    def image(path) -> str:
        return f"![{path.stem}](plots/{path.name})"

    lines = [
        "# Will pre-training help on this shift?", "",
        f"**Verdict: {answer}.** {headline[0].upper()}{headline[1:]}.", "",
        f"The rule: {verdict_rule()} It rests on the paper's finding (Cohen-Wang, Vendrow, Madry, TMLR 2025): "
        "pre-training raised effective robustness under out-of-support shifts (inputs the reference data does not "
        "contain) and not under in-support ones (where the reference's biases are the problem: look at the data "
        "instead, e.g. DFR or a de-biased fine-tuning set).", "",
        "## Evidence", "",
        f"- **Domain classifier** ({classifier or 'see the split section'}): cross-fitted AUROC {auroc_value:.3f} "
        "(0.5: the two sets look alike to it).",
        f"- **Out-of-support share** at ε = {epsilon:g}: {chosen['out_of_support']} of {chosen['n']} = "
        f"{_pct(chosen['share'])}, 95% interval [{_pct(chosen['share_lo'])}, {_pct(chosen['share_hi'])}] over the "
        "shifted examples (the classifier held fixed). The whole ε sweep is in `tables/ask_share_sweep.parquet`.",
        f"- **Calibration**: expected calibration error {ece:.3f} of the temperature-calibrated probabilities "
        "(the density ratios rest on them).",
        f"- **Second opinion** (nearest neighbours in each fold model's feature space): {_pct(opinion.share)} of the "
        f"shifted images lie farther from every reference image than {_pct(quantile)} of held-out reference images "
        f"do [{_pct(opinion.share_lo)}, {_pct(opinion.share_hi)}]; a set drawn like the reference gives about "
        f"{_pct(opinion.expected_share)}. {_sentence(agree.words())}", "",
        image(plots["share"]), "", image(plots["reliability"]), "", image(plots["examples"]), "",
        "The grid shows the shifted images the classifier finds least like the reference (top), most like it "
        "(middle) and, under those, the reference image nearest to each in the classifier's features.", "",
    ]
    lines += _er_lines(er)
    lines += ["", f"Tables: `{exp.table_path('ask_share_sweep')}`, `{exp.table_path('ask_reliability')}`, "
                  f"`{exp.subsplit_path('shifted_val')}` (membership per image)."]
    return "\n".join(lines) + "\n"


def _er_lines(er: dict[str, Any] | None) -> list[str]:
    lines = ["## Label-free effective robustness (estimate)", ""]
    if er is None:
        return lines + ["No trained models were found, so there is no ER estimate: train baselines and fine-tuned "
                        "models on the reference data (`askshift run baseline`, `askshift run finetune`), then ask "
                        "again with `--models-from EXPERIMENT`."]
    table: pl.DataFrame = er["table"]
    if table.height == 0:
        return lines + [f"The models of `{er.get('experiment', '')}` were predicted on the shifted images, but no ER "
                        "estimate follows: it needs 3 or more baselines and a group of pre-trained models (`askshift "
                        "run finetune`)."] + [f"- {part}: {msg}" for part, msg in er.get("messages", {}).items()]
    lines += ["Every accuracy on the shifted images below is an **estimate** (average thresholded confidence: the "
              "confidence threshold that reproduces each model's reference-validation accuracy, applied to the "
              "shifted images); the line is fitted on the baselines' estimates too. ER in points, 95% interval of "
              "the group mean. ATC assumes a model's confidence means the same on the shifted images as on the "
              "reference; on out-of-support images models are often confidently wrong, so there the estimates "
              "overstate accuracy (on the demo's unseen tint: +20 points estimated against -9 measured for FT).",
              "", "| part | group | models | ER (estimate) | interval | caution |", "|---|---|---|---|---|---|"]
    for r in table.iter_rows(named=True):
        caution = "; ".join(c for c in (r.get("caution"), OUT_OF_SUPPORT_CAUTION if r["part"] != "in_support" else None)
                            if c)
        lines.append(f"| {r['part']} | {r['group']} | {r['n_models']} | {100 * r['effective_robustness']:+.1f} "
                     f"(estimate) | [{100 * r['er_lower']:+.1f}, {100 * r['er_upper']:+.1f}] | {caution} |")
    lines += [""] + [f"- {part}: {msg}" for part, msg in er.get("messages", {}).items()]
    return lines


def models_with_reference_predictions(exp: ExperimentStore, reference_split: str) -> list[str]:
    """Registered models of ``exp`` with stored predictions on ``reference_split`` (what ATC's threshold needs)."""
    if not (exp.root / "models").is_dir():
        return []
    return [m for m in exp.models()["model"].to_list() if exp.has_predictions(m, reference_split)]


def estimate_er_per_part(exp: ExperimentStore, membership: pl.DataFrame, models: Sequence[str], reference_split: str,
                         shifted_split: str, baseline_group: str = "baseline") -> dict[str, Any]:
    """Label-free ER of every model group on the whole shifted set and on each part (``membership``: index, support).

    Returns {"table": part, group, n_models, effective_robustness, er_lower, er_upper, caution; "messages": why a
    part has none}.
    """
    groups = dict(exp.models().select("model", "group").iter_rows())
    reference, shifted = {}, {}
    for model in models:
        ref = exp.read_predictions(model, reference_split)
        reference[model] = (np.stack(ref["logits"].to_numpy()), ref["label"].to_numpy())
        shifted[model] = exp.read_predictions(model, shifted_split)
    frames, messages = [], {}
    for part, support in PARTS.items():
        keep = (membership if support is None else membership.filter(pl.col("support") == support))["index"]
        if keep.len() == 0:
            messages[part] = "no shifted images in this part"
            continue
        logits = {m: np.stack(p.filter(pl.col("index").is_in(keep.implode()))["logits"].to_numpy())
                  for m, p in shifted.items()}
        estimates = atc_estimates(reference, logits, {m: groups[m] for m in models})
        try:
            result = label_free_er(estimates, baseline_group=baseline_group)
        except ValueError as exc:  # too few baselines, or all of them alike
            messages[part] = " ".join(str(exc).split())
            continue
        frames.append(result.groups.filter(pl.col("group") != baseline_group).select(
            pl.lit(part).alias("part"), "group", "n_models", "effective_robustness", "er_lower", "er_upper", "caution"))
    table = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    return {"table": table, "messages": messages, "experiment": exp.name}


__all__ = ["AskReport", "PARTS", "ask_report", "estimate_er_per_part", "models_with_reference_predictions"]
