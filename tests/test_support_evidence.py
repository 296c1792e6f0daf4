"""askshift.lib.support.evidence: calibration, out-of-support share intervals, the k-NN opinion, the verdict."""
from __future__ import annotations

import numpy as np
import pytest

from askshift.lib.support import evidence
from askshift.lib.support.ratios import EPSILONS, out_of_support

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def calibrated(n: int, seed: int = 0):
    """Probabilities and domains drawn so that P(domain = 1 | p) = p exactly."""
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    return p, (rng.random(n) < p).astype(np.int64)


def test_perfectly_calibrated_probabilities_have_a_small_ece():
    p, domain = calibrated(20_000)
    table = evidence.reliability_table(p, domain)
    assert table["n"].sum() == 20_000
    assert evidence.expected_calibration_error(table) < 0.03


def test_overconfident_probabilities_have_a_large_ece():
    p, domain = calibrated(20_000)
    sharpened = np.where(p > 0.5, 1 - (1 - p) / 4, p / 4)
    assert evidence.expected_calibration_error(evidence.reliability_table(sharpened, domain)) > 0.1


def test_reliability_table_drops_empty_bins_and_keeps_p_equal_one():
    table = evidence.reliability_table(np.array([0.05, 0.07, 1.0]), np.array([0, 1, 1]), bins=10)
    assert table["bin_lo"].to_list() == [0.0, 0.9]
    assert table["n"].to_list() == [2, 1]
    assert table["observed_share"].to_list() == [0.5, 1.0]


def test_share_interval_covers_the_true_share_at_its_confidence():
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(300):
        share, lo, hi = evidence.share_interval(rng.random(200) < 0.3)
        covered += lo <= 0.3 <= hi
    assert covered / 300 >= 0.93


@pytest.mark.parametrize("flag", [False, True])
def test_share_interval_never_collapses_when_none_or_all_are_out(flag):
    share, lo, hi = evidence.share_interval(np.full(50, flag))
    assert share == float(flag)
    assert lo <= share <= hi and hi - lo > 0.03


def test_share_sweep_falls_as_epsilon_shrinks():
    rng = np.random.default_rng(1)
    ratios = np.exp(rng.normal(0.0, 3.0, 5000))
    table = evidence.share_sweep(ratios, EPSILONS, resamples=500)
    assert table["epsilon"].to_list() == sorted(EPSILONS)
    for column in ("out_of_support", "share", "share_lo", "share_hi"):
        values = table[column].to_numpy()
        assert (np.diff(values) >= 0).all(), column  # ε ascending: share non-decreasing, so falls as ε shrinks
    assert (table["share_lo"] <= table["share"]).all() and (table["share"] <= table["share_hi"]).all()


def test_share_sweep_counts_what_out_of_support_counts():
    ratios = np.array([0.1, 1.0, 4.99, 5.0, 10.0, 1e4, np.inf, np.nan])
    table = evidence.share_sweep(ratios, [0.2, 0.01, 1e-4], resamples=100)
    for row in table.to_dicts():
        assert row["out_of_support"] == out_of_support(ratios, row["epsilon"]).sum()
        assert row["n"] == ratios.size


def test_share_sweep_of_one_epsilon_is_share_interval_of_that_split():
    ratios = np.exp(np.random.default_rng(2).normal(0.0, 2.0, 300))
    row = evidence.share_sweep(ratios, [0.2], seed=5).row(0, named=True)
    assert (row["share"], row["share_lo"], row["share_hi"]) == evidence.share_interval(out_of_support(ratios, 0.2),
                                                                                       seed=5)


def knn_positions(shift_up: float, folds: int = 5, per_fold: int = 2000, seed: int = 0):
    """Distances of held-out positions to their nearest reference neighbour, per fold; each fold has its own
    scale (another model's feature space).  Shifted distances are reference-like plus ``shift_up``."""
    rng = np.random.default_rng(seed)
    distances, domain, fold = [], [], []
    for k in range(folds):
        scale = 1.0 + k
        distances += [scale * rng.gamma(4.0, 1.0, per_fold), scale * (rng.gamma(4.0, 1.0, per_fold) + shift_up)]
        domain += [np.zeros(per_fold, np.int64), np.ones(per_fold, np.int64)]
        fold += [np.full(2 * per_fold, k)]
    return np.concatenate(distances), np.concatenate(domain), np.concatenate(fold)


def test_knn_opinion_of_a_shift_free_set_is_one_minus_the_quantile():
    opinion = evidence.knn_second_opinion(*knn_positions(shift_up=0.0))
    assert opinion.expected_share == pytest.approx(0.01)
    assert opinion.share == pytest.approx(0.01, abs=0.006)
    assert opinion.share_lo <= 0.01 <= opinion.share_hi
    assert opinion.pooled_folds == ()


def test_knn_opinion_of_a_far_shifted_set_is_nearly_all():
    opinion = evidence.knn_second_opinion(*knn_positions(shift_up=30.0))
    assert opinion.share > 0.98


def test_knn_opinion_keeps_the_order_of_the_shifted_positions():
    distances = np.array([1.0, 9.0, 2.0, 0.5, 3.0] * 10)
    domain = np.array([0, 1, 0, 1, 0] * 10)
    opinion = evidence.knn_second_opinion(distances, domain, np.zeros(50, np.int64), quantile=0.9)
    assert opinion.far.tolist() == [True, False] * 10


def test_knn_opinion_pools_reference_distances_of_small_folds():
    distances, domain, fold = knn_positions(shift_up=0.0, folds=2, per_fold=500)
    small = np.array([0.1] * 5 + [50.0] * 5)
    distances = np.concatenate([distances, small])
    domain = np.concatenate([domain, np.array([0] * 5 + [1] * 5)])
    fold = np.concatenate([fold, np.full(10, 7)])
    opinion = evidence.knn_second_opinion(distances, domain, fold)
    assert opinion.pooled_folds == (7,)
    assert opinion.thresholds[7] == pytest.approx(np.quantile(distances[domain == 0], 0.99))
    assert opinion.thresholds[0] == pytest.approx(np.quantile(distances[(domain == 0) & (fold == 0)], 0.99))


def test_agreement_counts_add_up_and_words_name_them():
    rng = np.random.default_rng(3)
    out = rng.random(1000) < 0.3
    far = np.where(rng.random(1000) < 0.9, out, ~out)
    a = evidence.agreement(out, far)
    assert a.both + a.only_classifier + a.only_knn + a.neither == a.n == 1000
    assert a.both == int((out & far).sum()) and a.only_knn == int((~out & far).sum())
    assert 0.6 < a.cohen_kappa < 0.9
    text = a.words()
    assert f"{a.only_classifier} examples are out-of-support only by the classifier" in text
    assert f"{a.only_knn} only by the nearest-neighbour test" in text


def test_agreement_kappa_is_undefined_when_both_flag_nothing():
    a = evidence.agreement(np.zeros(10, bool), np.zeros(10, bool))
    assert a.neither == 10 and np.isnan(a.cohen_kappa)
    assert "kappa undefined" in a.words()


@pytest.mark.parametrize("auroc, share, expected", [
    (0.5999, 0.9, "no detectable shift"),
    (float("nan"), 0.9, "no detectable shift"),
    (0.6, 0.25, "likely to help"),
    (0.95, 0.8, "likely to help"),
    (0.6, 0.2499, "unlikely to help"),
    (0.99, 0.0, "unlikely to help"),
])
def test_verdict_at_and_around_its_documented_boundaries(auroc, share, expected):
    assert evidence.verdict(auroc, share) == expected
    assert expected in evidence.VERDICTS


def test_verdict_rule_states_the_thresholds_it_applies():
    rule = evidence.verdict_rule()
    assert "0.6" in rule and "0.25" in rule and "25%" in rule
    assert all(v in rule for v in evidence.VERDICTS)
    assert evidence.NO_SHIFT_AUROC == 0.6 and evidence.HELP_SHARE == 0.25


def test_plots_write_png_files(tmp_path):
    p, domain = calibrated(2000)
    written = evidence.reliability_plot(evidence.reliability_table(p, domain), tmp_path / "r" / "rel.png", "calib")
    assert written.read_bytes()[:8] == PNG_MAGIC
    sweep = evidence.share_sweep(np.exp(np.random.default_rng(0).normal(0, 3, 500)), EPSILONS, resamples=200)
    written = evidence.share_sweep_plot(sweep, tmp_path / "sweep.png", 0.2, "sweep")
    assert written.read_bytes()[:8] == PNG_MAGIC
    assert sorted(f.name for f in tmp_path.rglob("*") if f.is_file()) == ["rel.png", "sweep.png"]
