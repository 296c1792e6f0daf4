"""Effective robustness engine: the line, its band, ER intervals, options and validation (askshift.lib.robustness)."""
from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from askshift.lib.robustness.comparison import compare_fits
from askshift.lib.robustness.er import accuracy_pairs, aggregate_copies, effective_robustness
from askshift.lib.robustness.lines import ERInputError, clopper_pearson, fit_line, parse_fit_range
from askshift.lib.robustness.wording import verdict

PHI = stats.norm.cdf


def table(ref, shift, groups, n=None):
    data = {"model": [f"m{i}" for i in range(len(ref))], "group": groups,
            "reference_accuracy": list(ref), "shifted_accuracy": list(shift)}
    if n is not None:
        data["reference_n"] = [n[0]] * len(ref)
        data["shifted_n"] = [n[1]] * len(ref)
    return pl.DataFrame(data)


def random_table(rng, n_base=20, n_other=5, noise=0.05):
    ref = rng.uniform(0.4, 0.9, n_base + n_other)
    z = 0.9 * stats.norm.ppf(ref) - 0.4 + rng.normal(0, noise, len(ref))
    z[n_base:] += 0.3
    return table(ref, PHI(z), ["baseline"] * n_base + ["pre"] * n_other)


def test_er_matches_hand_computed_probit_line_and_band():
    # Baselines at probit x = -1, 0, 1, 2 with y = -1, 0.2, 0.8, 2.0: by hand x̄ = ȳ = 0.5, Sxx = 5, Sxy = 4.8,
    # slope 0.96, intercept 0.02, residuals ±0.06, ±0.18 -> s = sqrt(0.072 / 2); band at x = x̄: t(2) s / 2.
    xs, ys = np.array([-1.0, 0.0, 1.0, 2.0]), np.array([-1.0, 0.2, 0.8, 2.0])
    df = table(list(PHI(xs)) + [PHI(0.5)], list(PHI(ys)) + [PHI(1.0)], ["baseline"] * 4 + ["pre"])
    result = effective_robustness(df)
    assert result.fit.slope == pytest.approx(0.96)
    assert result.fit.intercept == pytest.approx(0.02)
    assert result.fit.residual_sd == pytest.approx(math.sqrt(0.036))
    assert result.fit.n == 4
    pre = result.table.filter(pl.col("model") == "m4").row(0, named=True)
    h = 4.302652729911275 * math.sqrt(0.036) * 0.5
    assert pre["predicted_shifted_accuracy"] == pytest.approx(PHI(0.5))
    assert pre["effective_robustness"] == pytest.approx(PHI(1.0) - PHI(0.5))
    assert pre["er_lower"] == pytest.approx(PHI(1.0) - PHI(0.5 + h))
    assert pre["er_upper"] == pytest.approx(PHI(1.0) - PHI(0.5 - h))


@pytest.mark.parametrize("scale", ["probit", "logit"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_er_agrees_with_scipy_linregress_on_random_tables(scale, seed):
    rng = np.random.default_rng(seed)
    df = random_table(rng, n_base=int(rng.integers(5, 40)))
    fwd, inv = {"probit": (stats.norm.ppf, stats.norm.cdf), "logit": (stats.logistic.ppf, stats.logistic.cdf)}[scale]
    base = df.filter(pl.col("group") == "baseline")
    x, y = fwd(base["reference_accuracy"].to_numpy()), fwd(base["shifted_accuracy"].to_numpy())
    lr = stats.linregress(x, y)
    n = len(x)
    sxx = ((x - x.mean()) ** 2).sum()
    s = lr.stderr * math.sqrt(sxx)  # linregress: stderr of the slope = s / sqrt(Sxx)
    at = fwd(df["reference_accuracy"].to_numpy())
    half = stats.t.ppf(0.975, n - 2) * s * np.sqrt(1 / n + (at - x.mean()) ** 2 / sxx)
    pred = lr.slope * at + lr.intercept
    shift = df["shifted_accuracy"].to_numpy()

    result = effective_robustness(df, scale=scale)
    assert result.fit.slope == pytest.approx(lr.slope)
    assert result.fit.r == pytest.approx(lr.rvalue)
    np.testing.assert_allclose(result.table["predicted_shifted_accuracy"], inv(pred), rtol=1e-9)
    np.testing.assert_allclose(result.table["effective_robustness"], shift - inv(pred), atol=1e-12)
    np.testing.assert_allclose(result.table["er_lower"], shift - inv(pred + half), atol=1e-12)
    np.testing.assert_allclose(result.table["er_upper"], shift - inv(pred - half), atol=1e-12)


def test_band_shrinks_as_baseline_models_are_added():
    rng = np.random.default_rng(3)
    widths = []
    for n_base in (5, 20, 80, 320):
        ref = rng.uniform(0.5, 0.9, n_base)
        shift = PHI(stats.norm.ppf(ref) - 0.5 + rng.normal(0, 0.05, n_base))
        df = table(list(ref) + [0.7], list(shift) + [0.6], ["baseline"] * n_base + ["pre"])
        row = effective_robustness(df).table.row(-1, named=True)
        widths.append(row["er_upper"] - row["er_lower"])
    assert all(a > b for a, b in zip(widths, widths[1:])), widths


def test_probit_and_logit_give_different_lines_but_same_sign_of_er():
    df = random_table(np.random.default_rng(4))
    probit, logit = effective_robustness(df, scale="probit"), effective_robustness(df, scale="logit")
    assert probit.fit.scale == "probit" and logit.fit.scale == "logit"
    assert probit.fit.slope != pytest.approx(logit.fit.slope)
    assert probit.group("pre")["effective_robustness"] > 0 and logit.group("pre")["effective_robustness"] > 0
    assert probit.group("pre")["effective_robustness"] != pytest.approx(logit.group("pre")["effective_robustness"])


def test_fit_range_fits_only_baselines_inside_the_window():
    df = random_table(np.random.default_rng(5), n_base=40)
    result = effective_robustness(df, fit_range=(0.6, 0.8))
    inside = df.filter((pl.col("group") == "baseline") & pl.col("reference_accuracy").is_between(0.6, 0.8))
    assert result.fit.n == inside.height
    assert result.fit.fit_range == (0.6, 0.8)
    assert 0.6 <= result.fit.reference_min and result.fit.reference_max <= 0.8
    assert result.table["in_fit"].sum() == inside.height
    with pytest.raises(ERInputError, match="widen the fit range"):
        effective_robustness(df, fit_range=(0.899, 0.9))


def test_bootstrap_band_is_seeded_and_close_to_the_t_band_for_a_clean_line():
    df = random_table(np.random.default_rng(6), n_base=60, noise=0.03)
    t_band = effective_robustness(df)
    b1 = effective_robustness(df, bootstrap=400, seed=1)
    b2 = effective_robustness(df, bootstrap=400, seed=1)
    b3 = effective_robustness(df, bootstrap=400, seed=2)
    assert b1.band == "bootstrap" and t_band.band == "t"
    assert b1.table.equals(b2.table)
    assert not b1.table["er_lower"].equals(b3.table["er_lower"])
    width_t = (t_band.table["er_upper"] - t_band.table["er_lower"]).mean()
    width_b = (b1.table["er_upper"] - b1.table["er_lower"]).mean()
    assert 0.5 < width_b / width_t < 1.5
    np.testing.assert_allclose(b1.table["effective_robustness"], t_band.table["effective_robustness"])


def test_clopper_pearson_matches_beta_quantiles_and_edges():
    lo, hi = clopper_pearson([0.3, 0.0, 1.0], [100, 50, 50])
    assert lo[0] == pytest.approx(stats.beta.ppf(0.025, 30, 71))
    assert hi[0] == pytest.approx(stats.beta.ppf(0.975, 31, 70))
    assert lo[1] == 0.0 and hi[2] == 1.0


def test_binomial_intervals_widen_er_more_for_fewer_examples():
    rng = np.random.default_rng(7)
    base = random_table(rng, n_base=30)
    plain = effective_robustness(base.with_columns(reference_n=pl.lit(10_000), shifted_n=pl.lit(10_000)))
    big = effective_robustness(base.with_columns(reference_n=pl.lit(10_000), shifted_n=pl.lit(10_000)), binomial=True)
    small = effective_robustness(base.with_columns(reference_n=pl.lit(200), shifted_n=pl.lit(200)), binomial=True)
    width = lambda r: (r.table["er_upper"] - r.table["er_lower"]).to_numpy()  # noqa: E731
    assert (width(big) > width(plain)).all()
    assert (width(small) > width(big)).all()
    assert {"reference_lower", "shifted_upper"} <= set(small.table.columns)
    with pytest.raises(ERInputError, match="reference_n"):
        effective_robustness(base, binomial=True)


def test_copies_without_line_columns_aggregate_to_mean_plus_minus_t_standard_errors():
    # A table that carries no line uncertainty: the spread between copies only, with t(m-1) (1.96 covers about
    # 85% at 4 copies), and the caution says so.
    df = pl.DataFrame({"model": list("abcd"), "group": ["ft"] * 3 + ["lp"], "effective_robustness": [0.1, 0.2, 0.3, 0.05],
                       "er_lower": [0.0, 0.1, 0.2, 0.01], "er_upper": [0.2, 0.3, 0.4, 0.09]})
    out = {r["group"]: r for r in aggregate_copies(df, by="group").to_dicts()}
    se = np.std([0.1, 0.2, 0.3], ddof=1) / math.sqrt(3)
    assert out["ft"]["n_models"] == 3
    assert out["ft"]["effective_robustness"] == pytest.approx(0.2)
    assert out["ft"]["er_lower"] == pytest.approx(0.2 - stats.t.ppf(0.975, 2) * se)
    assert out["ft"]["er_upper"] == pytest.approx(0.2 + stats.t.ppf(0.975, 2) * se)
    assert "spread between models only" in out["ft"]["caution"]
    assert (out["lp"]["er_lower"], out["lp"]["er_upper"]) == (0.01, 0.09)  # one copy keeps its own interval


def test_group_interval_adds_the_shared_line_variance_to_the_spread_between_models():
    # Hand-checked against the formula: Var(mean ER) = Var(mean line prediction) + s_ER^2 / m, where the mean
    # line prediction's variance averages level and slope parts over the group before squaring.
    rng = np.random.default_rng(12)
    df = random_table(rng, n_base=12, n_other=4)
    result = effective_robustness(df)
    fit, pre = result.fit, result.table.filter(pl.col("group") == "pre")
    x = stats.norm.ppf(pre["reference_accuracy"].to_numpy())
    gain = stats.norm.pdf(fit.slope * x + fit.intercept)
    level = gain.mean() * fit.residual_sd / math.sqrt(fit.n)
    slope = (gain * (x - fit.x_mean)).mean() * fit.residual_sd / math.sqrt(fit.sxx)
    v_line, v_spread = level**2 + slope**2, pre["effective_robustness"].var() / 4
    t_line, t_spread = stats.t.ppf(0.975, fit.n - 2), stats.t.ppf(0.975, 3)
    nu = (v_line + v_spread) ** 2 / (v_line**2 / (fit.n - 2) + v_spread**2 / 3)
    welch = stats.t.ppf(0.975, nu) * math.sqrt(v_line + v_spread)
    bound = math.sqrt(t_line**2 * v_line + t_spread**2 * v_spread)
    weight = 0.5 + 0.3 * min(1, 8 / (fit.n - 2))  # Welch's weight grows as the best-determined part's dof fall
    half = weight * welch + (1 - weight) * bound
    row = result.group("pre")
    assert row["line_se"] == pytest.approx(math.sqrt(v_line), rel=1e-9)
    assert row["spread_se"] == pytest.approx(math.sqrt(v_spread), rel=1e-9)
    assert row["er_upper"] - row["effective_robustness"] == pytest.approx(half, rel=1e-9)
    assert (row["er_lower_total"], row["er_upper_total"]) == (row["er_lower"], row["er_upper"])  # one interval
    # the same numbers from the copies aggregation of the model table
    again = aggregate_copies(result.table, by="group", fit=result.fit).filter(pl.col("group") == "pre").row(0, named=True)
    assert again["er_lower"] == pytest.approx(row["er_lower"]) and again["er_upper"] == pytest.approx(row["er_upper"])


def test_group_interval_does_not_depend_on_binomial_but_the_model_interval_does():
    df = random_table(np.random.default_rng(13), n_base=20).with_columns(reference_n=pl.lit(500), shifted_n=pl.lit(500))
    plain, binomial = effective_robustness(df), effective_robustness(df, binomial=True)
    assert plain.group("pre")["er_lower"] == pytest.approx(binomial.group("pre")["er_lower"])
    assert ((binomial.table["er_upper"] - binomial.table["er_lower"]) > (plain.table["er_upper"] - plain.table["er_lower"])).all()


def test_clipping_uses_half_an_example_when_the_number_of_examples_is_known():
    # A judged model at 100% reference accuracy (baselines at 0.90-0.97): with the fixed 1e-4 the clip alone
    # moves its prediction 10% up the line, so its ER is 10% lower than with 1/(2n), n = 1000.
    ref = np.linspace(0.90, 0.97, 8)
    base = table(list(ref) + [1.0], list(PHI(stats.norm.ppf(ref) - 2.5)) + [0.3],
                 ["baseline"] * 8 + ["pre"])
    fixed = effective_robustness(base).table.row(-1, named=True)
    counted = effective_robustness(base.with_columns(reference_n=pl.lit(1000), shifted_n=pl.lit(1000)))
    with_n = counted.table.row(-1, named=True)
    line = counted.fit
    assert with_n["predicted_shifted_accuracy"] == pytest.approx(PHI(line.slope * stats.norm.ppf(1 - 1 / 2000) + line.intercept))
    assert fixed["predicted_shifted_accuracy"] == pytest.approx(PHI(stats.norm.ppf(1 - 1e-4) - 2.5), abs=2e-3)
    # (the counted fit's slope is also corrected for test-set noise, which moves the other way)
    assert with_n["effective_robustness"] - fixed["effective_robustness"] > 0.04
    assert with_n["extrapolated"] and "extrapolated" in with_n["caution"]


def test_slope_is_corrected_for_test_set_noise_in_reference_accuracy():
    # 150 examples per test set: OLS on noisy reference accuracies flattens the line (regression dilution).
    rng = np.random.default_rng(14)
    n_sets, n_base, n = 200, 40, 150
    x = stats.norm.ppf(rng.uniform(0.6, 0.9, (n_sets, n_base)))
    ref = rng.binomial(n, PHI(x)) / n
    shift = rng.binomial(n, PHI(1.2 * x - 0.5)) / n
    ols, corrected = [], []
    for i in range(n_sets):
        ols.append(fit_line(ref[i], shift[i]).slope)
        corrected.append(fit_line(ref[i], shift[i], reference_n=[n] * n_base, shifted_n=[n] * n_base).slope)
    assert abs(np.mean(corrected) - 1.2) < 0.03 < abs(np.mean(ols) - 1.2)
    fit = fit_line(ref[0], shift[0], reference_n=[n] * n_base, shifted_n=[n] * n_base)
    assert fit.reliability < 1 and "reliability" in fit.describe()


def test_guardrails_say_extrapolated_weak_and_inverse_in_columns_and_words():
    ref = np.linspace(0.5, 0.7, 10)
    shift = PHI(-0.8 * stats.norm.ppf(ref) + np.tile([0.3, -0.3], 5))  # inverted and noisy
    df = table(list(ref) + [0.6, 0.95], list(shift) + [0.5, 0.5], ["baseline"] * 10 + ["pre"] * 2)
    result = effective_robustness(df)
    assert result.fit.inverse_line and result.fit.weak_line
    rows = result.table.filter(pl.col("group") == "pre").to_dicts()
    assert [r["extrapolated"] for r in rows] == [False, True]
    assert all(r["weak_line"] and r["inverse_line"] for r in rows)
    assert "inverse line" in rows[0]["caution"] and "weak line" in rows[0]["caution"]
    group = result.group("pre")
    assert group["n_extrapolated"] == 1 and group["extrapolated"]
    assert "extrapolated (1 of 2 models)" in group["caution"] and "CAUTION" in result.fit.describe()
    clean = effective_robustness(random_table(np.random.default_rng(15)))
    assert clean.group("pre")["caution"] == "" and not clean.fit.weak_line


def test_each_judged_group_gets_its_own_comparable_window():
    # The same-architecture control sits at 0.70, the fine-tuned models at 0.93-0.97: judging the control in
    # the fine-tuned window would extrapolate a line from accurate baselines down to it.
    ref = np.linspace(0.55, 0.98, 40)
    z = stats.norm.ppf
    df = table(list(ref) + [0.69, 0.70, 0.71, 0.93, 0.95, 0.97],
               list(PHI(z(ref) - 0.5 + np.tile([0.02, -0.02], 20))) + list(PHI(z(np.array([0.69, 0.70, 0.71])) - 0.5))
               + list(PHI(z(np.array([0.93, 0.95, 0.97])) - 0.5)),
               ["baseline"] * 40 + ["control"] * 3 + ["ft"] * 3)
    comparison = compare_fits(df)
    lo_c, hi_c = comparison.views["control"].fit_range
    lo_f, hi_f = comparison.views["ft"].fit_range
    assert (lo_c, hi_c) == pytest.approx((0.64, 0.76)) and (lo_f, hi_f) == pytest.approx((0.88, 1.0))
    control = comparison.comparable_row("control")
    assert control is not None and not control["extrapolated"]
    assert abs(control["effective_robustness"]) < 0.03
    summary = comparison.summary().filter(pl.col("view") == "comparable")
    assert set(summary["group"]) == {"control", "ft"}
    assert dict(zip(summary["group"], summary["fit_range_lo"])) == pytest.approx({"control": 0.64, "ft": 0.88})


def test_comparable_view_says_when_its_line_extrapolates():
    ref = np.concatenate([np.linspace(0.5, 0.8, 30), np.linspace(0.85, 0.87, 6)])
    df = table(list(ref) + [0.93, 0.94], list(PHI(stats.norm.ppf(ref) - 0.5 + np.tile([0.01, -0.01], 18))) + [0.8, 0.81],
               ["baseline"] * 36 + ["ft"] * 2)
    comparison = compare_fits(df, margin=0.085)
    view = comparison.views["ft"]
    assert view.result is not None and view.n_baselines == 6
    assert "extrapolated" in view.note and "extrapolated" in comparison.message


def test_comparable_baselines_disagree_with_a_bent_full_range_line():
    # The miniature of METHOD.md: most baselines follow a shallow trend, the few accurate ones a steep one, and
    # the fine-tuned models sit on the steep one.  The full-range line credits them with ER that baselines of
    # comparable reference accuracy do not confirm.  Deterministic residuals keep the verdicts stable.
    z = stats.norm.ppf
    alt = lambda n, a: a * (-1.0) ** np.arange(n)  # noqa: E731
    low = np.linspace(0.3, 0.75, 40)
    high = np.linspace(0.86, 0.96, 10)
    pre = np.array([0.9, 0.905, 0.91, 0.915])
    df = table(list(low) + list(high) + list(pre),
               list(PHI(0.5 * z(low) - 0.8 + alt(40, 0.04))) + list(PHI(2.5 * z(high) - 2.2 + alt(10, 0.05)))
               + list(PHI(2.5 * z(pre) - 2.2 + np.array([0.02, -0.02, 0.01, -0.01]))),
               ["baseline"] * 50 + ["ft"] * 4)
    comparison = compare_fits(df)
    full, window = comparison.verdicts()["ft"]
    assert full == "helped" and window == "no clear effect"
    assert comparison.disagree and "disagree" in comparison.message
    assert comparison.window.fit.n == 10
    summary = comparison.summary()
    assert set(summary["view"]) == {"full", "comparable"}
    assert summary.filter(pl.col("view") == "comparable")["group"].to_list() == ["ft"]
    assert {"fit_r", "fit_residual_sd", "fit_n", "fit_reference_min", "fit_reference_max"} <= set(summary.columns)


def test_comparison_falls_back_to_full_range_when_too_few_comparable_baselines():
    df = table([0.5, 0.55, 0.6, 0.95], [0.3, 0.35, 0.4, 0.9], ["baseline"] * 3 + ["ft"])
    comparison = compare_fits(df, margin=0.01)
    assert comparison.window is None and not comparison.disagree
    assert comparison.views["ft"].result is None and comparison.views["ft"].n_baselines == 0
    assert "too few" in comparison.message


def test_verdict_words():
    assert verdict(0.01, 0.2) == "helped"
    assert verdict(-0.2, -0.01) == "hurt"
    assert verdict(-0.01, 0.2) == "no clear effect"


def test_accuracy_pairs_turns_long_metrics_into_one_row_per_model():
    metrics = pl.DataFrame({"model": ["a", "a", "b", "b", "c"], "group": ["baseline"] * 4 + ["ft"],
                            "split": ["source_val", "tint_val"] * 2 + ["source_val"],
                            "accuracy": [0.9, 0.7, 0.8, 0.6, 0.85], "n": [100, 50, 100, 50, 100]})
    pairs = accuracy_pairs(metrics, "source_val", "tint_val")
    assert pairs.columns == ["model", "group", "reference_accuracy", "shifted_accuracy", "reference_n", "shifted_n"]
    assert pairs.sort("model").rows() == [("a", "baseline", 0.9, 0.7, 100, 50), ("b", "baseline", 0.8, 0.6, 100, 50)]
    with pytest.raises(ERInputError, match="no metrics for split 'vflip_val'"):
        accuracy_pairs(metrics, "source_val", "vflip_val")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda df: df.drop("shifted_accuracy"), "missing column 'shifted_accuracy'"),
        (lambda df: df.with_columns(pl.col("reference_accuracy") * 100), "look like percentages: divide by 100"),
        (lambda df: df.with_columns(pl.when(pl.col("model") == "m2").then(1.5).otherwise(pl.col("shifted_accuracy"))
                                    .alias("shifted_accuracy")), "row 3 .*outside \\[0, 1\\]"),
        (lambda df: df.with_columns(group=pl.lit("pre")), "need at least 3 baseline models"),
    ],
)
def test_bad_tables_raise_one_line_input_errors(change, message):
    df = random_table(np.random.default_rng(9), n_base=5)
    with pytest.raises(ERInputError, match=message) as info:
        effective_robustness(change(df))
    assert "\n" not in str(info.value)


def test_unknown_scale_and_bad_fit_range_are_input_errors():
    df = random_table(np.random.default_rng(10))
    with pytest.raises(ERInputError, match="unknown scale 'probitt'"):
        effective_robustness(df, scale="probitt")
    assert parse_fit_range("0.6:0.8") == (0.6, 0.8)
    for bad in ("0.8:0.6", "x:y", "0.5", "10:90"):
        with pytest.raises(ERInputError):
            parse_fit_range(bad)
    with pytest.raises(ERInputError, match="same reference accuracy"):
        fit_line([0.5, 0.5, 0.5], [0.3, 0.4, 0.5])


def test_example_bootstrap_resamples_the_same_examples_for_every_model():
    from askshift.lib.robustness.er import example_bootstrap

    rng = np.random.default_rng(16)
    n_base, n_ex = 12, 400
    difficulty = rng.normal(0, 1, n_ex)
    ability = np.linspace(-0.5, 1.5, n_base)
    ref = (rng.random((n_base, n_ex)) < PHI(ability[:, None] * 1.5 - difficulty)).astype(float)
    shift = (rng.random((n_base, n_ex)) < PHI(ability[:, None] * 1.5 - 0.7 - difficulty)).astype(float)
    # "copy" has exactly the predictions of baseline 3: on jointly resampled examples its ER equals b3's every time
    ref, shift = np.vstack([ref, ref[3]]), np.vstack([shift, shift[3]])
    models = [f"b{i}" for i in range(n_base)] + ["copy"]
    groups = ["baseline"] * n_base + ["pre"]
    in_fit = np.array([g == "baseline" for g in groups])
    boot = example_bootstrap(models, groups, ref, shift, in_fit, n_boot=200, seed=5)
    rows = {r["model"]: r for r in boot.models.to_dicts()}
    assert rows["copy"]["er_lower_example_bootstrap"] == pytest.approx(rows["b3"]["er_lower_example_bootstrap"])
    assert rows["copy"]["er_upper_example_bootstrap"] == pytest.approx(rows["b3"]["er_upper_example_bootstrap"])
    assert boot.n_boot == 200 and boot.models.equals(example_bootstrap(models, groups, ref, shift, in_fit, n_boot=200, seed=5).models)
    # a missing prediction (NaN) is left out of that model's accuracy, not counted wrong
    ref[-1, :10] = np.nan
    assert example_bootstrap(models, groups, ref, shift, in_fit, n_boot=50, seed=5).groups.height == 2
