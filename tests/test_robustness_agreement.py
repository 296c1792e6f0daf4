"""askshift.lib.robustness.agreement: pairwise agreement, the agreement line, ALine-D's accuracy estimates."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import special
from simulated_zoo import simulated_zoo

from askshift.lib.robustness import agreement, atc
from askshift.lib.robustness.er import effective_robustness


def group_er(table: pl.DataFrame) -> dict[str, float]:
    groups = effective_robustness(table).groups
    return dict(groups.select("group", "effective_robustness").iter_rows())


def with_truth(estimates: pl.DataFrame, truth: dict[str, float]) -> pl.DataFrame:
    return estimates.with_columns(pl.col("model").replace_strict(truth, return_dtype=pl.Float64)
                                  .alias("shifted_accuracy"))


@pytest.fixture(scope="module")
def zoo():
    reference, shifted, groups, truth = simulated_zoo()
    return reference, shifted, groups, truth, agreement.aline_fit(reference, shifted, groups)


def test_aline_d_recovers_the_shifted_accuracies_of_simulated_linear_models(zoo):
    reference, _, _, truth, result = zoo
    assert not result.line.weak
    table = result.estimates
    ref = dict(table.select("model", "reference_accuracy").iter_rows())
    assert min(ref[m] - truth[m] for m in truth if m.startswith("baseline")) > 0.01  # the shift costs accuracy
    assert max(ref[m] - truth[m] for m in truth) > 0.05
    estimate = dict(table.select("model", "shifted_accuracy").iter_rows())
    errors = {m: estimate[m] - truth[m] for m in truth}
    # In this family the absolute estimates run a few points low (the agreement line's intercept sits below the
    # accuracy line's), alike for every model, so the ER, a difference from the baselines' line, comes out close.
    assert max(abs(e) for e in errors.values()) < 0.08, errors
    assert np.corrcoef([estimate[m] for m in truth], list(truth.values()))[0, 1] > 0.97


def test_aline_d_gets_the_er_of_a_group_above_the_line_and_of_one_on_it(zoo):
    _, _, _, truth, result = zoo
    true_er = group_er(with_truth(result.estimates, truth))
    estimated_er = group_er(result.estimates)
    assert true_er["robust"] > 0.02 and abs(true_er["on_line"]) < 0.01  # the setup: one group above, one on
    assert estimated_er["robust"] > 0.01
    assert estimated_er["robust"] == pytest.approx(true_er["robust"], abs=0.015)
    assert estimated_er["on_line"] == pytest.approx(true_er["on_line"], abs=0.015)


def test_aline_d_holds_where_atc_is_confidently_wrong(zoo):
    """The shift inflates every logit (more noise through the weights), so the models grow more confident while
    they lose accuracy: ATC overstates every accuracy and ranks the robust group below the line; the models'
    agreement still tells."""
    reference, shifted, groups, truth, result = zoo
    atc_table = atc.atc_estimates(reference, shifted, groups)
    atc_error = {m: est - truth[m] for m, est in atc_table.select("model", "shifted_accuracy").iter_rows()}
    assert min(atc_error[m] for m in truth if not m.startswith("robust")) > 0.05, atc_error
    true_er = group_er(with_truth(result.estimates, truth))
    assert group_er(atc_table)["robust"] < 0 < true_er["robust"]  # ATC: wrong sign
    assert group_er(result.estimates)["robust"] > 0  # ALine-D: right sign


def test_aline_d_solver_is_exact_when_each_pair_residual_is_the_mean_of_its_models():
    rng = np.random.default_rng(4)
    k, slope, intercept = 7, 0.7, -0.4
    p = rng.normal(0.5, 0.4, k)  # probit reference accuracies
    z = slope * p + intercept + rng.normal(0, 0.2, k)  # probit shifted accuracies: off the line, each its own way
    i, j = np.triu_indices(k, 1)
    ref_agree = rng.normal(1.0, 0.3, i.size)
    shift_agree = slope * ref_agree + intercept + ((z - slope * p - intercept)[i] + (z - slope * p - intercept)[j]) / 2
    n = 10**12  # the 1/(2n) clip never binds
    estimate, rms = agreement.solve_aline_d(special.ndtr(p), i, j, special.ndtr(ref_agree), special.ndtr(shift_agree),
                                            slope, n, n)
    assert estimate == pytest.approx(special.ndtr(z), abs=1e-6)
    assert rms < 1e-6
    wrong, _ = agreement.solve_aline_d(special.ndtr(p), i, j, special.ndtr(ref_agree), special.ndtr(shift_agree),
                                       slope + 0.3, n, n)
    assert np.abs(wrong - special.ndtr(z)).max() > 0.01  # the slope matters


def test_agreement_matrix_counts_shared_predictions():
    predictions = np.array([[0, 1, 2, 3], [0, 1, 0, 0], [1, 1, 2, 3]])
    expected = np.array([[1, 0.5, 0.75], [0.5, 1, 0.25], [0.75, 0.25, 1]])
    assert agreement.agreement_matrix(predictions) == pytest.approx(expected)


def test_fit_agreement_line_recovers_slope_intercept_and_flags_a_weak_line():
    x = np.linspace(-1, 1.5, 30)
    line = agreement.fit_agreement_line(special.ndtr(x), special.ndtr(0.6 * x - 0.3), 10**12, 10**12)
    assert (line.slope, line.intercept, line.r) == pytest.approx((0.6, -0.3, 1.0), abs=1e-6)
    assert not line.weak and line.n_pairs == 30
    scattered = 0.6 * x - 0.3 + np.random.default_rng(0).normal(0, 1.0, x.size)
    weak = agreement.fit_agreement_line(special.ndtr(x), special.ndtr(scattered), 10**12, 10**12)
    assert weak.weak and "weak" in weak.describe()


def test_aline_estimates_give_the_table_label_free_er_takes(zoo):
    reference, shifted, groups, _, result = zoo
    table = agreement.aline_estimates(reference, shifted, groups)
    assert table.columns == list(atc.ESTIMATE_SCHEMA) and table.schema == pl.Schema(atc.ESTIMATE_SCHEMA)
    assert table["threshold"].is_null().all() and table["estimated"].all()
    assert table.equals(result.estimates)
    er = atc.label_free_er(table)
    assert er.table["estimated"].all() and er.group("robust")["effective_robustness"] > 0
    assert result.pairs.height == len(reference) * (len(reference) - 1) // 2


def test_aline_estimates_take_predicted_classes_as_well_as_logits(zoo):
    reference, shifted, groups, _, result = zoo
    as_classes = agreement.aline_estimates({m: (logits.argmax(axis=1), labels) for m, (logits, labels) in
                                            reference.items()}, {m: s.argmax(axis=1) for m, s in shifted.items()},
                                           groups)
    assert as_classes.equals(result.estimates)


def three_models(n: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    reference = {f"m{k}": (rng.integers(0, 3, n), labels) for k in range(3)}
    shifted = {f"m{k}": rng.integers(0, 3, n) for k in range(3)}
    return reference, shifted, {f"m{k}": "baseline" for k in range(3)}


@pytest.mark.parametrize("breaking, message", [
    ("two_models", "3 or more models"),
    ("identical_models", "no slope"),
    ("fewer_shifted_examples", "same shifted examples"),
    ("missing_shifted", "incomplete: m2"),
    ("wrong_labels", "labels for"),
    ("float_predictions", "integer predictions"),
])
def test_degenerate_inputs_raise_one_clear_value_error(breaking, message):
    reference, shifted, groups = three_models()
    if breaking == "two_models":
        reference.pop("m2"), shifted.pop("m2")
    elif breaking == "identical_models":
        reference = {m: reference["m0"] for m in reference}
    elif breaking == "fewer_shifted_examples":
        shifted["m1"] = shifted["m1"][:-1]
    elif breaking == "missing_shifted":
        shifted.pop("m2")
    elif breaking == "wrong_labels":
        reference["m1"] = (reference["m1"][0], reference["m1"][1][:-1])
    elif breaking == "float_predictions":
        shifted["m0"] = shifted["m0"].astype(float)
    with pytest.raises(ValueError, match=message):
        agreement.aline_estimates(reference, shifted, groups)


def test_a_model_registered_twice_adds_no_pair_equation_and_keeps_its_estimate(zoo):
    """A copy agrees with its original on every example of both sets; that pair says nothing about accuracy (its
    equation would pull both towards their reference accuracy) and is left out."""
    reference, shifted, groups, truth, result = zoo
    reference = {**reference, "copy": reference["baseline-9"]}
    with_copy = agreement.aline_fit(reference, {**shifted, "copy": shifted["baseline-9"]}, {**groups, "copy": "copy"})
    estimate = dict(with_copy.estimates.select("model", "shifted_accuracy").iter_rows())
    assert estimate["copy"] == pytest.approx(estimate["baseline-9"])
    assert abs(estimate["copy"] - truth["baseline-9"]) < 0.08
    assert with_copy.pairs.filter(~pl.col("used"))[["model_a", "model_b"]].rows() == [("baseline-9", "copy")]
    assert with_copy.line.n_pairs == with_copy.pairs.height - 1
