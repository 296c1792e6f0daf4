"""askshift.lib.robustness.atc: confidence scores, the ATC threshold, accuracy estimates, label-free ER."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import special

from askshift.lib.robustness import atc
from askshift.lib.robustness.er import effective_robustness

CLASSES = 10


def calibrated_set(n: int, hard_share: float, seed: int, easy_margin: float = 10.0, hard_margin: float = 1.0):
    """Logits and labels drawn from the model's own softmax (calibrated by construction).

    Each example is easy (one class far ahead) or hard (near chance); a shift that makes more examples hard
    lowers the accuracy while calibration holds on every example.
    """
    rng = np.random.default_rng(seed)
    margin = np.where(rng.random(n) < hard_share, hard_margin, easy_margin)
    logits = rng.normal(size=(n, CLASSES))
    logits[np.arange(n), rng.integers(0, CLASSES, n)] += margin
    p = special.softmax(logits, axis=1)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, labels


def accuracy(logits, labels) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


@pytest.mark.parametrize("score", atc.SCORES)
def test_atc_recovers_the_true_accuracy_of_a_harder_calibrated_shift(score):
    ref_logits, ref_labels = calibrated_set(20_000, hard_share=0.1, seed=1)
    shift_logits, shift_labels = calibrated_set(20_000, hard_share=0.4, seed=2)
    truth = accuracy(shift_logits, shift_labels)
    assert accuracy(ref_logits, ref_labels) - truth > 0.15  # the shift matters: the reference accuracy is no answer
    t = atc.fit_threshold(atc.confidence_scores(ref_logits, score), ref_logits.argmax(axis=1) == ref_labels)
    estimate = atc.estimate_accuracy(atc.confidence_scores(shift_logits, score), t)
    assert estimate == pytest.approx(truth, abs=0.02)


def test_fit_threshold_reproduces_the_labelled_accuracy_exactly():
    rng = np.random.default_rng(0)
    scores = rng.random(1001)
    for share in (0.0, 0.137, 0.5, 0.93, 1.0):
        correct = rng.random(scores.size) < share
        t = atc.fit_threshold(scores, correct)
        assert atc.estimate_accuracy(scores, t) == correct.mean()


def test_fit_threshold_resolves_ties_to_the_closest_share_whatever_the_order():
    scores = np.array([0.9, 0.8, 0.8, 0.8, 0.1])
    correct = np.array([True, True, False, False, False])  # 2 of 5: the tied block gives 1 or 4 above
    t = atc.fit_threshold(scores, correct)
    assert atc.estimate_accuracy(scores, t) == 0.2
    order = np.array([3, 0, 4, 2, 1])
    assert atc.fit_threshold(scores[order], correct[order]) == t
    # 3 of 5: 4 above (the block counted) is closer than 1 above
    assert atc.estimate_accuracy(scores, atc.fit_threshold(scores, np.array([1, 1, 1, 0, 0], bool))) == 0.8


def test_confidence_scores_are_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    assert atc.confidence_scores(logits, "max_softmax") == pytest.approx([1.0, 1 / 3])
    assert atc.confidence_scores(logits, "negative_entropy") == pytest.approx([0.0, -np.log(3)])


def test_confidence_scores_refuse_an_unknown_score():
    with pytest.raises(ValueError, match="unknown score"):
        atc.confidence_scores(np.zeros((2, 3)), "entropy")


def line_table(offsets: dict[str, float]) -> pl.DataFrame:
    """An atc_estimates-shaped table: 10 baselines on a probit line, and per other group 4 models at
    ``offset`` above it (in accuracy)."""
    rows = []

    def on_line(ref: float) -> float:
        return float(special.ndtr(0.9 * special.ndtri(ref) - 0.5))

    wiggle = [0.004, -0.003, 0.002, -0.004, 0.001, 0.003, -0.002, -0.001, 0.0, 0.0]
    for i, ref in enumerate(np.linspace(0.6, 0.9, 10)):
        rows.append(("base-%d" % i, "baseline", ref, on_line(ref) + wiggle[i]))
    for group, offset in offsets.items():
        for i, ref in enumerate(np.linspace(0.7, 0.85, 4)):
            rows.append((f"{group}-{i}", group, ref, on_line(ref) + offset))
    return pl.DataFrame({
        "model": [r[0] for r in rows], "group": [r[1] for r in rows],
        "reference_accuracy": [r[2] for r in rows], "shifted_accuracy": [r[3] for r in rows],
        "reference_n": [10_000] * len(rows), "shifted_n": [10_000] * len(rows),
        "threshold": [0.5] * len(rows), "estimated": [True] * len(rows),
    }, schema=atc.ESTIMATE_SCHEMA)


def test_label_free_er_is_positive_above_the_baselines_line_and_zero_on_it():
    result = atc.label_free_er(line_table({"pretrained": 0.05, "on_line": 0.0}))
    above, on = result.group("pretrained"), result.group("on_line")
    assert above["effective_robustness"] == pytest.approx(0.05, abs=0.01)
    assert above["er_lower"] > 0
    assert on["effective_robustness"] == pytest.approx(0.0, abs=0.01)
    assert on["er_lower"] < 0 < on["er_upper"]


def test_label_free_er_marks_every_number_as_an_estimate():
    result = atc.label_free_er(line_table({"pretrained": 0.05}))
    assert result.table["estimated"].all() and result.groups["estimated"].all()


def test_label_free_er_refuses_a_table_mixing_measured_and_estimated_accuracies():
    table = line_table({"pretrained": 0.05}).with_columns(
        (pl.col("group") == "baseline").alias("estimated"))
    with pytest.raises(ValueError, match="mixes measured and estimated"):
        atc.label_free_er(table)


def test_atc_estimates_give_the_table_effective_robustness_takes():
    reference, shifted, groups = {}, {}, {}
    for i, (ref_hard, shift_hard) in enumerate([(0.05, 0.3), (0.1, 0.4), (0.15, 0.5), (0.2, 0.6)]):
        reference[f"m{i}"] = calibrated_set(2000, ref_hard, seed=10 * i)
        shifted[f"m{i}"] = calibrated_set(2000, shift_hard, seed=10 * i + 1)[0]
        groups[f"m{i}"] = "baseline"
    table = atc.atc_estimates(reference, shifted, groups)
    assert table.columns == list(atc.ESTIMATE_SCHEMA)
    assert table["estimated"].all() and (table["shifted_n"] == 2000).all()
    assert (table["shifted_accuracy"] < table["reference_accuracy"]).all()
    for m, (logits, labels) in reference.items():
        assert table.filter(pl.col("model") == m)["reference_accuracy"].item() == accuracy(logits, labels)
    assert effective_robustness(table).table.height == 4


def test_atc_estimates_name_models_without_shifted_logits():
    logits = np.zeros((3, 2))
    with pytest.raises(ValueError, match="without shifted logits: b"):
        atc.atc_estimates({"a": (logits, np.zeros(3)), "b": (logits, np.zeros(3))}, {"a": logits},
                          {"a": "baseline", "b": "baseline"})


def test_class_prior_bound_is_the_overlap_of_predicted_and_true_class_shares():
    prior = np.full(4, 0.25)
    collapsed = np.tile([5.0, 0.0, 0.0, 0.0], (100, 1))  # every image sent to class 0
    assert atc.class_prior_bound(collapsed, prior) == pytest.approx(0.25)
    spread = np.eye(4)[np.arange(100) % 4] * 5  # predicted shares equal the prior: no bound
    assert atc.class_prior_bound(spread, prior) == pytest.approx(1.0)
    piled = np.eye(4)[np.r_[np.zeros(52, int), np.arange(48) % 4]] * 5  # 64% class 0, 12% each other class
    assert atc.class_prior_bound(piled, prior) == pytest.approx(0.25 + 3 * 0.12)
    for bad in (np.full(3, 1 / 3), np.array([0.5, 0.5, 0.5, -0.5]), np.full(4, 0.3)):
        with pytest.raises(ValueError, match="prior"):
            atc.class_prior_bound(spread, bad)


def test_bounded_atc_catches_a_confidently_wrong_model_that_atc_misses():
    """On the shifted set the model sends every image to one class with high confidence: ATC reads its confidence
    (near-perfect accuracy), the class bound reads its predictions (at most one class's share); the truth is that
    share.  A model that keeps the class proportions is not changed."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 5, 2000)
    reference_logits = 4.0 * np.eye(5)[labels] + rng.normal(size=(2000, 5))
    shifted_labels = rng.integers(0, 5, 2000)
    collapsed = np.c_[np.full(2000, 9.0), rng.normal(size=(2000, 4))]
    truth = float((collapsed.argmax(1) == shifted_labels).mean())
    reference = {"m": (reference_logits, labels), "same": (reference_logits, labels)}
    shifted = {"m": collapsed, "same": reference_logits}
    groups = {"m": "ft", "same": "baseline"}
    plain = dict(atc.atc_estimates(reference, shifted, groups).select("model", "shifted_accuracy").iter_rows())
    bounded = dict(atc.bounded_atc_estimates(reference, shifted, groups).select("model", "shifted_accuracy").iter_rows())
    assert plain["m"] > 0.9 and abs(bounded["m"] - truth) < 0.03
    assert bounded["same"] == plain["same"]
