"""Density-ratio math of askshift.lib.support.ratios: calibration, cross-fitting, ratios, thresholds, ε sweep, input checks."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from askshift.lib.support import ratios as support


def simulated_logits(alpha_true: float, n: int = 40_000, seed: int = 0):
    """Logits whose labels follow sigmoid(alpha_true · logit) exactly."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-alpha_true * logits))).astype(float)
    return logits, labels


@pytest.mark.parametrize("alpha_true", [0.25, 1.0, 2.5])
def test_calibration_recovers_known_temperature(alpha_true):
    logits, labels = simulated_logits(alpha_true)
    cal = support.calibrate_temperature(logits, labels)
    assert cal.alpha == pytest.approx(alpha_true, rel=0.08)
    assert not cal.at_bound
    assert cal.loss <= cal.loss_uncalibrated + 1e-12


def test_calibration_is_the_exact_minimum_of_the_bce():
    logits, labels = simulated_logits(0.7, n=5000, seed=3)
    cal = support.calibrate_temperature(logits, labels)
    for delta in (1e-3, -1e-3):
        assert support._bce(cal.alpha + delta, logits, labels) > cal.loss


def test_calibration_flags_perfectly_separated_scores():
    logits = np.array([-2.0, -1.0, 1.0, 2.0])
    cal = support.calibrate_temperature(logits, np.array([0.0, 0.0, 1.0, 1.0]))
    assert cal.at_bound and cal.alpha > 0


def test_cross_fitting_never_scores_an_example_with_a_model_that_trained_on_it():
    data = support.build_domain_data(np.arange(60), np.arange(25))
    trained_on: list[set[int]] = []

    def fit_and_score(train, heldout):
        trained_on.append(set(train.tolist()))
        # a "model" that remembers its training set: score = 1 if seen, else the position's parity
        return np.array([1.0 if p in trained_on[-1] else -1.0 for p in heldout])

    logits = support.cross_fit(data, folds=5, fit_and_score=fit_and_score, seed=1)
    assert len(trained_on) == 5
    assert (logits == -1.0).all()  # every example was scored by a model that never saw it
    plan = support.fold_plan(data, 5, seed=1)
    assert sorted(np.concatenate([f.heldout for f in plan]).tolist()) == list(range(len(data)))


def test_assemble_cross_fit_refuses_a_fold_that_scores_its_own_training_examples():
    bad = support.Fold(0, train=np.array([0, 1, 2]), heldout=np.array([2, 3]))
    good = support.Fold(1, train=np.array([2, 3]), heldout=np.array([0, 1]))
    with pytest.raises(ValueError, match="trained on"):
        support.assemble_cross_fit(4, [bad, good], [np.zeros(2), np.zeros(2)])


def test_assemble_cross_fit_refuses_uncovered_positions():
    fold = support.Fold(0, train=np.array([2, 3]), heldout=np.array([0, 1]))
    with pytest.raises(ValueError, match="never scored"):
        support.assemble_cross_fit(4, [fold], [np.zeros(2)])


def test_stratified_folds_keep_both_domains_in_every_fold():
    data = support.build_domain_data(np.arange(100), np.arange(30))
    assignment = support.fold_assignments(data, 10, seed=0)
    for k in range(10):
        domains = data.domain[assignment == k]
        assert (domains == 0).sum() == 10 and (domains == 1).sum() == 3


def test_group_kfold_keeps_groups_together():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 12, size=80)
    data = support.build_domain_data(np.arange(50), np.arange(80), shifted_groups=groups)
    assignment = support.fold_assignments(data, 4, seed=0)
    shifted_folds = assignment[data.domain == 1]
    for g in np.unique(groups):
        assert np.unique(shifted_folds[groups == g]).size == 1
    assert set(assignment.tolist()) == {0, 1, 2, 3}


def test_tuning_fold_holds_out_a_fraction_disjoint_from_training():
    data = support.build_domain_data(np.arange(90), np.arange(30))
    fold = support.tuning_fold(data, 10)
    assert np.intersect1d(fold.train, fold.heldout).size == 0
    assert fold.heldout.size == 12 and set(data.domain[fold.heldout].tolist()) == {0, 1}


def test_density_ratio_on_hand_made_probabilities():
    p = np.array([0.5, 0.8, 0.2, 0.99])
    r = support.density_ratios(p, n_reference=200, n_shifted=100)
    np.testing.assert_allclose(r, [2.0, 8.0, 0.5, 198.0])
    # r >= 1/eps is out-of-support: with eps = 0.2 the threshold is 5
    assert support.support_labels(r, 0.2).tolist() == ["in", "out", "in", "out"]
    assert support.support_labels(r, 0.5).tolist() == ["out", "out", "in", "out"]
    # exactly at the threshold counts as out-of-support
    assert support.out_of_support(np.array([5.0]), 0.2).tolist() == [True]


def test_log_ratios_agree_with_probability_ratios():
    logits = np.array([-3.0, 0.0, 1.5])
    alpha = 0.8
    p = support.calibrated_probabilities(logits, alpha)
    np.testing.assert_allclose(np.exp(support.log_density_ratios(logits, alpha, 30, 10)),
                               support.density_ratios(p, 30, 10))


def test_epsilon_sweep_sizes_are_monotone():
    ratios = np.exp(np.random.default_rng(0).normal(0, 3, 500))
    sweep = support.epsilon_sweep(ratios, support.EPSILONS)
    assert sweep["epsilon"].to_list() == sorted(support.EPSILONS)
    out = sweep["out_of_support"].to_list()
    assert all(a <= b for a, b in zip(out, out[1:]))  # a larger ε lowers the bar 1/ε
    assert out[0] < out[-1]
    assert (sweep["in_support"] + sweep["out_of_support"] == 500).all()


def test_choose_lr_picks_the_best_heldout_auroc():
    assert support.choose_lr([(1e-3, 0.7), (3e-4, 0.9), (1e-4, float("nan"))]) == 3e-4


def test_estimate_support_end_to_end_on_simulated_scores():
    rng = np.random.default_rng(1)
    data = support.build_domain_data(np.arange(400), np.arange(200))
    logits = np.where(data.domain == 1, 2.0, -2.0) + rng.normal(0, 1.0, len(data))
    est = support.estimate_support(data, logits, np.zeros(len(data), int), epsilon=0.2)
    assert est.auroc > 0.95 and est.separated
    table = est.subsplit_table()
    assert table.height == 200 and set(table["support"].unique()) <= {"in", "out"}
    assert table["index"].to_list() == list(range(200))
    assert "out_eps=0.2" in table.columns


@pytest.mark.parametrize("eps", [0.0, 1.0, -0.1, 2.0, float("nan")])
def test_epsilon_outside_unit_interval_is_one_clear_line(eps):
    with pytest.raises(support.SupportInputError) as info:
        support.check_epsilons([eps])
    assert "outside (0, 1)" in str(info.value) and "\n" not in str(info.value)


def test_shifted_classes_missing_from_reference_are_refused():
    with pytest.raises(support.SupportInputError, match="class\\(es\\) the reference set lacks") as info:
        support.check_classes(np.array([0, 1, 2]), np.array([1, 2, 7, 9]))
    assert "7, 9" in str(info.value)


def test_fewer_examples_than_folds_is_refused():
    with pytest.raises(support.SupportInputError, match="fewer than the 10 folds"):
        support.fold_assignments(support.build_domain_data(np.arange(100), np.arange(6)), 10)


def test_fewer_groups_than_folds_is_refused():
    data = support.build_domain_data(np.arange(100), np.arange(40), shifted_groups=np.arange(40) % 3)
    with pytest.raises(support.SupportInputError, match="3 group"):
        support.fold_assignments(data, 5)


def test_reference_restricted_to_the_shifted_classes():
    ref = np.repeat(np.arange(10), 20)
    shifted = np.array([1, 3, 3, 5])
    idx = support.sample_reference(ref, shifted, size=30, seed=0)
    assert idx.size == 30 and set(ref[idx].tolist()) <= {1, 3, 5}
    assert support.sample_reference(ref, shifted, size=None).size == 60


def test_a_classifier_at_chance_is_reported_as_failing_to_separate():
    assert support.separation_failure(0.52) is not None
    assert "failed to separate" in support.separation_failure(0.5)
    assert support.separation_failure(0.9) is None


def _report_inputs(separation: float, tmp_path):
    from askshift.lib.report.support import SupportER

    rng = np.random.default_rng(0)
    data = support.build_domain_data(np.arange(300), np.arange(100))
    logits = separation * np.where(data.domain == 1, 1.0, -1.0) + rng.normal(0, 1.0, len(data))
    est = support.estimate_support(data, logits, np.zeros(len(data), int))
    empty = SupportER(groups=pl.DataFrame(), models=pl.DataFrame(),
                      messages={"all": "no models"})
    return est, empty


def test_report_says_the_split_is_meaningless_when_the_classifier_is_at_chance(tmp_path):
    from askshift.lib.report.support import section_markdown

    est, er = _report_inputs(0.0, tmp_path)
    assert not est.separated
    text = section_markdown("t", "t_val", est, 1e-3, None, er, {}, tmp_path, "cnn:tiny")
    assert "failed to separate" in text and "not meaningful" in text
    assert "Effective robustness per part" not in text

    est, er = _report_inputs(3.0, tmp_path)
    text = section_markdown("t", "t_val", est, 1e-3, None, er, {}, tmp_path, "cnn:tiny")
    assert est.separated and "failed to separate" not in text and "Effective robustness per part" in text
