"""The report of ``askshift ask``: the verdict, its evidence (tables, plots, example grids) and a label-free ER.

The label-free ER (:func:`estimate_er_per_part`) comes from three estimates of each model's accuracy on the
unlabeled shifted images, on the whole set and on its in-support and out-of-support parts: ATC (average thresholded
confidence, ``askshift.lib.robustness.atc``), ATC capped by the class-proportion bound (``class_prior_bound``) and
ALine-D (agreement-on-the-line, ``askshift.lib.robustness.agreement``).  The report shows all three, flags a group
whose estimates disagree in sign, and leads each part with one of them (:func:`headline_method`): ATC on in-support
images, where its calibration assumption holds; on out-of-support ones, where models are often confidently wrong and
ATC overstates their accuracy, the class bound when it caps most models (their predictions pile up on a few classes),
else ALine-D; the whole set follows its majority part.  The rule and the measurements behind it are
:data:`HEADLINE_RULE`, printed in the report; ``benchmarks/label_free_er.py`` reproduces them.  A weak agreement
line (r < 0.9) marks a part where ALine-D missed by 17 points on average on the demo.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import polars as pl

from askshift.lib.report.support import example_grid
from askshift.lib.robustness.agreement import AgreementLine, ALineResult, aline_fit
from askshift.lib.robustness.atc import atc_estimates, cap_by_class_bound, label_free_er
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
# average thresholded confidence; the same capped by the class-proportion bound; agreement-on-the-line (ALine-D)
METHODS = ("atc", "atc_bounded", "agreement")
METHOD_NAMES = {"atc": "ATC", "atc_bounded": "ATC within the class bound", "agreement": "ALine-D"}
MIN_BINDING_SHARE = 0.5  # the class bound leads an out-of-support part when it caps at least this share of models
MIN_LEAD_MODELS = 5  # fewest models (10 pairs) whose agreement line may lead a part
HEADLINE_RULE = (
    "ATC on in-support images; on out-of-support ones ATC within the class bound when the bound caps at least "
    f"{MIN_BINDING_SHARE:.0%} of the models, else ALine-D (with {MIN_LEAD_MODELS} or more models); the 'all' part "
    "follows its majority. Measured against the true ER on three quick-demo seeds (3, 0, 773; "
    "`benchmarks/label_free_er.py`, 18 (seed, group) cases of each support): on out-of-support images this rule had "
    "the sign in 13 cases and missed by 4.4 points on average, against 5 cases and 16.9 points for ATC alone, 14 and "
    "5.2 for ATC within the class bound alone, 10 and 16.4 for ALine-D alone; on in-support images ATC missed by 4.2 "
    "points (the class bound 5.9, ALine-D 8.4; the true ER there is within a few points of 0, so its sign is a coin "
    "toss). On the unseen tint the class bound capped 8 to 10 of 13 models and missed by 0.6 to 8.6 points "
    "(sign right on 5 of 6). Where the agreement line is weak (r < 0.9) ALine-D missed by 17 points on average.")
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
    lines += ["Every accuracy on the shifted images below is an **estimate**, by three methods that use no shifted "
              "label; the baselines' line is fitted on their estimates too. **ATC** (average thresholded confidence): "
              "the confidence threshold that reproduces each model's reference-validation accuracy, applied to the "
              "shifted images; it assumes confidence means the same there, which fails where models are confidently "
              "wrong (out-of-support images). **ATC within the class bound**: ATC capped by the accuracy the model's "
              "predictions allow if the shifted images keep the reference's class proportions (1 - the total "
              "variation between its predicted classes and those proportions); it catches models that send most "
              "images to a few classes, and is wrong under label shift. **ALine-D** (agreement-on-the-line): how "
              "often each pair of models predicts the same class, on the reference and on the shifted images; it "
              "assumes the pairs' agreements fall on a line (its r is below) and that models err on different classes. ER in points, 95% interval "
              "of the group mean (the line's error, not the method's bias); the leading estimate is in bold.", "",
              f"Which one leads: {HEADLINE_RULE}", "",
              "| part | group | models | " + " | ".join(f"{METHOD_NAMES[m]}: ER (estimate)" for m in METHODS)
              + " | leads | caution |", "|---" * (len(METHODS) + 5) + "|"]
    lines += [_er_row(rows, er.get("lines", {}).get(part)) for (part, group), rows in _by_part_and_group(table)]
    lines += [""]
    for part, (_, why) in er.get("headline", {}).items():
        line = er.get("lines", {}).get(part)
        lines.append(f"- {part}: {why} leads." + ("" if line is None else
                     f" ALine-D's agreement line: probit(shifted) = {line['slope']:.2f} × probit(reference) "
                     f"{line['intercept']:+.2f}, r = {line['r']:.2f} over {line['n_pairs']} pairs of "
                     f"{line['n_models']} models" + (" (weak)." if line["weak"] else ".")))
    lines += [f"- {part}: {msg}" for part, msg in er.get("messages", {}).items()]
    return lines


def _by_part_and_group(table: pl.DataFrame) -> list[tuple[tuple[str, str], dict[str, dict]]]:
    """(part, group) -> {method: row}, in the table's order."""
    found: dict[tuple[str, str], dict[str, dict]] = {}
    for r in table.iter_rows(named=True):
        found.setdefault((r["part"], r["group"]), {})[r.get("method", "atc")] = r
    return list(found.items())


def _er_cell(r: dict | None) -> str:
    if r is None:
        return "none"
    text = f"{100 * r['effective_robustness']:+.1f}"
    text = f"**{text}**" if r.get("headline") else text
    return f"{text} (estimate) [{100 * r['er_lower']:+.1f}, {100 * r['er_upper']:+.1f}]"


def _er_row(rows: dict[str, dict], line: dict | None) -> str:
    present = [(m, rows.get(m)) for m in METHODS]
    first = next(r for _, r in present if r)
    lead = next((METHOD_NAMES[m] for m, r in rows.items() if r.get("headline")), "")
    # each method fits the baselines' line on its own estimates, so its cautions are named by the method
    cautions = [f"{METHOD_NAMES[m]}: {c}" for m, r in present if r for c in (r.get("caution") or "").split("; ") if c]
    if rows.get("atc") and first["part"] != "in_support":
        cautions.append(OUT_OF_SUPPORT_CAUTION)
    if line and line["weak"]:
        cautions.append(f"weak agreement line (r = {line['r']:.2f}): ALine-D unreliable")
    signs = {np.sign(r["effective_robustness"]) for _, r in present if r and r["effective_robustness"] != 0}
    if len(signs) > 1:
        cautions.append("**the methods disagree in sign**")
    cells = " | ".join(_er_cell(r) for _, r in present)
    return f"| {first['part']} | {first['group']} | {first['n_models']} | {cells} | {lead} | {'; '.join(cautions)} |"


def models_with_reference_predictions(exp: ExperimentStore, reference_split: str) -> list[str]:
    """Registered models of ``exp`` with stored predictions on ``reference_split`` (what ATC's threshold needs)."""
    if not (exp.root / "models").is_dir():
        return []
    return [m for m in exp.models()["model"].to_list() if exp.has_predictions(m, reference_split)]


def headline_method(part: str, line: AgreementLine | None, out_share: float = 0.0,
                    binding_share: float = 0.0) -> tuple[str, str]:
    """Which label-free estimate leads ``part`` (a :data:`METHODS` name) and a few words why (:data:`HEADLINE_RULE`).

    ``line``: the part's agreement line (None: ALine-D gave none); ``out_share``: the out-of-support share of the
    part's images (decides the 'all' part); ``binding_share``: the share of models whose ATC estimate the class
    bound caps on this part (their predictions pile up on a few classes).
    """
    if part == "in_support" or (part == "all" and out_share < 0.5):
        where = "in-support images" if part == "in_support" else f"{_pct(out_share)} of the images out-of-support"
        return "atc", f"{where}: ATC"
    where = "out-of-support images" if part == "out_of_support" else f"{_pct(out_share)} of the images out-of-support"
    if binding_share >= MIN_BINDING_SHARE:
        return "atc_bounded", (f"{where}, and the class bound caps {_pct(binding_share)} of the models (their "
                               "predictions pile up on a few classes): ATC within the class bound")
    if line is None or line.n_models < MIN_LEAD_MODELS:
        have = "no agreement line" if line is None else f"only {line.n_models} models"
        return "atc", f"{where}, but {have} for ALine-D: ATC"
    return "agreement", f"{where}, the class bound caps {_pct(binding_share)} of the models: ALine-D"


def _common_examples(frames: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """Every model's rows on the examples all of them were predicted on, in index order (agreement compares them
    example by example)."""
    common = None
    for frame in frames.values():
        index = frame["index"]
        common = index if common is None else common.filter(common.is_in(index.implode()))
    return {m: f.filter(pl.col("index").is_in(common.implode())).sort("index") for m, f in frames.items()}


def _estimates(method: str, reference, logits, groups, found: dict[str, pl.DataFrame]
               ) -> tuple[pl.DataFrame, ALineResult | None]:
    """``method``'s estimates; ``found``: the estimates of the methods before it (the class bound caps ATC's)."""
    if method == "atc":
        return atc_estimates(reference, logits, groups), None
    if method == "atc_bounded":
        atc = found["atc"] if "atc" in found else atc_estimates(reference, logits, groups)  # raises as ATC did
        return cap_by_class_bound(atc, reference, logits), None
    fit = aline_fit(reference, logits, groups)
    return fit.estimates, fit


def estimate_er_per_part(exp: ExperimentStore, membership: pl.DataFrame, models: Sequence[str], reference_split: str,
                         shifted_split: str, baseline_group: str = "baseline") -> dict[str, Any]:
    """Label-free ER of every model group on the whole shifted set and on each part (``membership``: index, support),
    by each method of :data:`METHODS`.

    Returns {"table": part, method, group, n_models, effective_robustness, er_lower, er_upper, caution, headline
    (this row's method leads its part); "lines": part -> the agreement line (slope, intercept, r, n_pairs, n_models,
    weak, rms_residual); "headline": part -> (method, why); "messages": "part" or "part, method" -> why none}.
    """
    groups = dict(exp.models().select("model", "group").iter_rows())
    model_groups = {m: groups[m] for m in models}
    ref_frames = _common_examples({m: exp.read_predictions(m, reference_split) for m in models})
    reference = {m: (np.stack(f["logits"].to_numpy()), f["label"].to_numpy()) for m, f in ref_frames.items()}
    shifted = _common_examples({m: exp.read_predictions(m, shifted_split) for m in models})
    frames, messages, lines, headline, fits = [], {}, {}, {}, {}
    for part, support in PARTS.items():
        keep = (membership if support is None else membership.filter(pl.col("support") == support))["index"]
        if keep.len() == 0:
            messages[part] = "no shifted images in this part"
            continue
        logits = {m: np.stack(p.filter(pl.col("index").is_in(keep.implode()))["logits"].to_numpy())
                  for m, p in shifted.items()}
        found, estimated = {}, {}
        for method in METHODS:
            try:
                estimates, fit = _estimates(method, reference, logits, model_groups, estimated)
                estimated[method] = estimates
                result = label_free_er(estimates, baseline_group=baseline_group)
            except ValueError as exc:  # too few baselines or models, or all of them alike
                messages[f"{part}, {method}"] = " ".join(str(exc).split())
                continue
            if fit is not None:
                fits[part] = fit
                lines[part] = {**fit.line.as_dict(), "rms_residual": fit.rms_residual}
            found[method] = result.groups.filter(pl.col("group") != baseline_group).select(
                pl.lit(part).alias("part"), pl.lit(method).alias("method"), "group", "n_models",
                "effective_robustness", "er_lower", "er_upper", "caution")
        if not found:
            reasons = {messages[f"{part}, {m}"] for m in METHODS}
            if len(reasons) == 1:  # the same reason for every method (too few baselines): say it once
                messages = {k: v for k, v in messages.items() if not k.startswith(f"{part}, ")} | {part: reasons.pop()}
            continue
        out_share = float((membership.filter(pl.col("index").is_in(keep.implode()))["support"] == "out").mean())
        binding = (float((estimated["atc_bounded"]["shifted_accuracy"] < estimated["atc"]["shifted_accuracy"]).mean())
                   if {"atc", "atc_bounded"} <= set(estimated) else 0.0)
        lead, why = headline_method(part, fits[part].line if part in fits else None, out_share, binding)
        if lead not in found:
            other = next(iter(found))
            lead, why = other, f"{METHOD_NAMES[lead]} gave no estimate here: {METHOD_NAMES[other]}"
        headline[part] = (lead, why)
        frames += [f.with_columns(pl.lit(m == lead).alias("headline")) for m, f in found.items()]
    table = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    return {"table": table, "messages": messages, "lines": lines, "headline": headline, "experiment": exp.name}


__all__ = ["AskReport", "METHODS", "PARTS", "ask_report", "estimate_er_per_part", "headline_method",
           "models_with_reference_predictions"]
