"""The ask report's label-free ER: ATC, ATC within the class bound and ALine-D per part, which one leads, and how the section shows them."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from simulated_zoo import gaussian_set, linear_model

from askshift.lib.report.ask import (
    HEADLINE_RULE,
    MIN_BINDING_SHARE,
    MIN_LEAD_MODELS,
    _er_lines,
    estimate_er_per_part,
    headline_method,
)
from askshift.lib.robustness.agreement import AgreementLine
from askshift.lib.store import Store


def line(r: float = 0.95, models: int = 13) -> AgreementLine:
    return AgreementLine(slope=0.8, intercept=-0.2, r=r, n_pairs=models * (models - 1) // 2, n_models=models)


@pytest.mark.parametrize("part, agreement_line, out_share, binding, lead", [
    ("in_support", line(), 0.0, 0.9, "atc"),  # in-support: ATC, whatever the bound does
    ("out_of_support", line(), 1.0, 0.0, "agreement"),
    ("out_of_support", line(r=0.3), 1.0, 0.0, "agreement"),  # weak: still leads, with the caution in its row
    ("out_of_support", line(models=MIN_LEAD_MODELS - 1), 1.0, 0.0, "atc"),
    ("out_of_support", None, 1.0, 0.0, "atc"),
    ("out_of_support", line(), 1.0, MIN_BINDING_SHARE, "atc_bounded"),  # predictions pile up: the bound leads
    ("out_of_support", None, 1.0, 0.7, "atc_bounded"),
    ("all", line(), 0.6, 0.0, "agreement"),
    ("all", line(), 0.6, 0.8, "atc_bounded"),
    ("all", line(), 0.2, 0.8, "atc"),
])
def test_headline_is_atc_in_support_and_the_bound_or_agreement_out_of_support(part, agreement_line, out_share,
                                                                              binding, lead):
    method, why = headline_method(part, agreement_line, out_share, binding)
    assert method == lead and why


@pytest.fixture(scope="module")
def half_shifted_store(tmp_path_factory):
    """An experiment whose shifted split is half reference-like (in-support) and half with noisier nuisance
    dimensions (out-of-support), with baselines and a robust 'ft' group; every model's rows are stored in its own order."""
    rng = np.random.default_rng(1)
    ref_x, ref_y = gaussian_set(3000, 1.0, rng)
    in_x, in_y = gaussian_set(1500, 1.0, rng)
    out_x, out_y = gaussian_set(1500, 3.0, rng)
    shift_x, shift_y = np.concatenate([in_x, out_x]), np.concatenate([in_y, out_y])
    exp = Store(tmp_path_factory.mktemp("ask-er")).experiment("half")
    for group, alphas, weight in (("baseline", np.linspace(0.15, 0.6, 10), 1.0), ("ft", np.linspace(0.25, 0.45, 4), 0.2)):
        for k, alpha in enumerate(alphas):
            w, model = linear_model(alpha, rng, weight), f"{group}-{k}"
            exp.register_model(model, group)
            exp.write_predictions(model, "source_val", ref_x @ w.T, ref_y)
            order = rng.permutation(shift_y.size)  # stored rows in an order of their own: agreement must align
            exp.write_predictions(model, "shifted_val", (shift_x @ w.T)[order], shift_y[order], indices=order)
    membership = pl.DataFrame({"index": np.arange(shift_y.size), "support": ["in"] * 1500 + ["out"] * 1500})
    er = estimate_er_per_part(exp, membership, exp.models()["model"].to_list(), "source_val", "shifted_val")
    return er


def test_estimate_er_per_part_gives_both_methods_and_leads_each_part_by_its_support(half_shifted_store):
    er = half_shifted_store
    table = er["table"]
    assert set(table["method"]) == {"atc", "atc_bounded", "agreement"} and set(table["part"]) == {"all", "in_support",
                                                                                 "out_of_support"}
    assert {part: lead for part, (lead, _) in er["headline"].items()} == {
        "all": "agreement", "in_support": "atc", "out_of_support": "agreement"}  # 'all' is half out: agreement
    leads = table.filter(pl.col("headline"))
    assert leads.height == 3 and set(leads["group"]) == {"ft"}
    # The simulated models keep the class proportions on the shifted images: the class bound caps none of them.
    bounded = table.filter(pl.col("method") == "atc_bounded").sort("part", "group")["effective_robustness"]
    assert bounded.to_list() == table.filter(pl.col("method") == "atc").sort("part", "group")["effective_robustness"].to_list()
    assert set(er["lines"]) == {"all", "in_support", "out_of_support"}
    assert er["lines"]["out_of_support"]["n_models"] == 14 and not er["messages"]


def test_agreement_sees_the_robust_group_where_atc_is_confidently_wrong(half_shifted_store):
    """Out-of-support, the noisier nuisance dimensions inflate the baselines' logits: ATC overstates their accuracy
    and puts the robust group below their line; ALine-D (on rows aligned by index) puts it above."""
    er = half_shifted_store
    out = er["table"].filter((pl.col("part") == "out_of_support") & (pl.col("group") == "ft"))
    by_method = dict(out.select("method", "effective_robustness").iter_rows())
    assert by_method["agreement"] > 0.02 > 0 > by_method["atc"]


def er_fixture(atc_er: float, agreement_er: float, r: float) -> dict:
    rows = [{"part": "all", "method": m, "group": "ft", "n_models": 2, "effective_robustness": v,
             "er_lower": v - 0.05, "er_upper": v + 0.05, "caution": None, "headline": m == "agreement"}
            for m, v in (("atc", atc_er), ("agreement", agreement_er))]
    return {"table": pl.DataFrame(rows), "messages": {}, "experiment": "demo",
            "lines": {"all": {**line(r=r).as_dict(), "rms_residual": 0.1}},
            "headline": {"all": ("agreement", "80% of the images out-of-support: ALine-D")}}


def test_er_section_shows_both_estimates_bolds_the_lead_and_flags_a_sign_disagreement():
    text = "\n".join(_er_lines(er_fixture(0.20, -0.09, r=0.36)))
    row = next(x for x in text.splitlines() if x.startswith("| all | ft |"))
    assert "+20.0 (estimate)" in row and "**-9.0** (estimate)" in row and "| ALine-D |" in row
    assert "disagree in sign" in row and "weak agreement line (r = 0.36)" in row
    assert HEADLINE_RULE in text and "80% of the images out-of-support: ALine-D leads" in text
    assert "r = 0.36 over 78 pairs of 13 models (weak)" in text


def test_er_section_flags_nothing_when_the_estimates_agree_on_a_strong_line():
    row = next(x for x in _er_lines(er_fixture(0.04, 0.05, r=0.97)) if x.startswith("| all | ft |"))
    assert "disagree" not in row and "weak agreement line" not in row


def test_too_few_baselines_give_one_message_per_part_and_no_table(tmp_path):
    rng = np.random.default_rng(2)
    ref_x, ref_y = gaussian_set(300, 1.0, rng)
    shift_x, shift_y = gaussian_set(300, 2.0, rng)
    exp = Store(tmp_path).experiment("few")
    for model, group, alpha in (("b0", "baseline", 0.3), ("b1", "baseline", 0.5), ("f0", "ft", 0.4)):
        w = linear_model(alpha, rng)
        exp.register_model(model, group)
        exp.write_predictions(model, "source_val", ref_x @ w.T, ref_y)
        exp.write_predictions(model, "shifted_val", shift_x @ w.T, shift_y)
    membership = pl.DataFrame({"index": np.arange(300), "support": "in"})
    er = estimate_er_per_part(exp, membership, ["b0", "b1", "f0"], "source_val", "shifted_val")
    assert er["table"].height == 0 and not er["headline"]
    assert set(er["messages"]) == {"all", "in_support", "out_of_support"}
    assert "baseline" in er["messages"]["all"], er["messages"]
    assert "no ER estimate follows" in "\n".join(_er_lines(er))
