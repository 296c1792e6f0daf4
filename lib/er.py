"""Effective robustness: the "accuracy on the line" fit on baseline models and every model's distance from it.

Definition (METHOD.md): transform accuracies with probit (default) or logit, fit shifted on reference
accuracy by ordinary least squares over the baseline models, and call

    ER(model) = shifted accuracy - inverse(slope * transform(reference accuracy) + intercept).

The 95% band of the fitted line at x is ``t(n-2, 0.975) * s * sqrt(1/n + (x - mean x)^2 / Sxx)`` in
transformed units (s: residual standard error with n-2 degrees of freedom), mapped back to accuracy;
a model's ER interval is ``(shifted - upper, shifted - predicted, shifted - lower)``.

Options beyond the paper, each documented where it is applied:
- ``bootstrap=B``: the band is the 2.5/97.5 percentile of B line fits on baseline models resampled
  with replacement (seeded), instead of the t band.
- ``binomial=True`` (needs ``reference_n``/``shifted_n``): Clopper-Pearson intervals of each accuracy
  are combined with the line band (see :func:`_widen_with_binomial`).
- ``fit_range=(lo, hi)``: fit only baselines whose reference accuracy lies in [lo, hi];
  :func:`compare_fits` shows the full-range and the comparable-baseline views side by side and says
  in words whether they disagree (a bent baseline trend can credit a model with ER it does not have).

Accuracies of exactly 0 or 1 have no probit/logit; they are clipped to [EPS, 1 - EPS] before the transform.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import polars as pl
from scipy import special  # not scipy.stats: it triples the start-up time of `askshift er`

from lib.registry import Registry, UnknownNameError

EPS = 1e-4
REQUIRED_COLUMNS = ("model", "group", "reference_accuracy", "shifted_accuracy")
OUTPUT_COLUMNS = (
    "model",
    "group",
    "reference_accuracy",
    "shifted_accuracy",
    "predicted_shifted_accuracy",
    "effective_robustness",
    "er_lower",
    "er_upper",
)
GROUP_COLUMNS = ("group", "n_models", "effective_robustness", "er_lower", "er_upper", "er_lower_total", "er_upper_total")
# Multiplier of the standard error for group / copy aggregation (METHOD.md: mean ± 1.96·SE).
Z95 = 1.96


class ERInputError(ValueError):
    """Input the ER engine cannot use; the message is one line saying what is wrong and what to do."""


# --- scales ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """A monotone map of accuracies to the axis on which the baseline trend is linear."""

    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray], np.ndarray]

    def to_axis(self, accuracy) -> np.ndarray:
        return self.forward(np.clip(np.asarray(accuracy, dtype=float), EPS, 1 - EPS))

    def to_accuracy(self, value) -> np.ndarray:
        return self.inverse(np.asarray(value, dtype=float))


SCALES: Registry[Scale] = Registry("scale")
SCALES.add("probit", Scale("probit", special.ndtri, special.ndtr), "inverse normal CDF of accuracy (the paper's default)")
SCALES.add("logit", Scale("logit", special.logit, special.expit), "log(accuracy / (1 - accuracy))")


def get_scale(scale: str | Scale) -> Scale:
    if isinstance(scale, Scale):
        return scale
    try:
        return SCALES.get(scale)
    except UnknownNameError as exc:
        raise ERInputError(str(exc)) from None


# --- the line -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LineFit:
    """OLS line of transformed shifted accuracy on transformed reference accuracy, with its diagnostics."""

    scale: str
    slope: float
    intercept: float
    n: int
    x_mean: float  # transformed units
    sxx: float  # sum of squared deviations of x, transformed units
    residual_sd: float  # s, residual standard error with n-2 dof, transformed units
    r: float  # Pearson correlation of the transformed accuracies
    t_crit: float  # t(n-2, (1+confidence)/2)
    reference_min: float  # ID range of the baselines used (accuracy)
    reference_max: float
    fit_range: tuple[float, float] | None = None
    confidence: float = 0.95

    @property
    def _scale(self) -> Scale:
        return get_scale(self.scale)

    def predict_axis(self, x_axis) -> np.ndarray:
        return self.slope * np.asarray(x_axis, dtype=float) + self.intercept

    def half_width_axis(self, x_axis) -> np.ndarray:
        """Half-width of the confidence band of the line at x (transformed units)."""
        x_axis = np.asarray(x_axis, dtype=float)
        return self.t_crit * self.residual_sd * np.sqrt(1.0 / self.n + (x_axis - self.x_mean) ** 2 / self.sxx)

    def predict(self, reference_accuracy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predicted shifted accuracy and the band's (lower, upper) at the given reference accuracies."""
        scale = self._scale
        x = scale.to_axis(reference_accuracy)
        y = self.predict_axis(x)
        h = self.half_width_axis(x)
        return scale.to_accuracy(y), scale.to_accuracy(y - h), scale.to_accuracy(y + h)

    def diagnostics(self) -> dict:
        """What every ER number is reported with: scale, n, r, residual sd, ID range, line, fit range."""
        lo, hi = self.fit_range if self.fit_range is not None else (None, None)
        return {
            "scale": self.scale,
            "n_baselines": self.n,
            "r": self.r,
            "residual_sd": self.residual_sd,
            "reference_min": self.reference_min,
            "reference_max": self.reference_max,
            "slope": self.slope,
            "intercept": self.intercept,
            "fit_range_lo": lo,
            "fit_range_hi": hi,
        }

    def describe(self) -> str:
        """One line: ``probit fit on 78 baselines: r = 0.98, residual sd = 0.05 (probit units), ID range 0.62-0.81``."""
        window = f" (fit range {self.fit_range[0]:.3f}-{self.fit_range[1]:.3f})" if self.fit_range else ""
        return (
            f"{self.scale} fit on {self.n} baseline models{window}: r = {self.r:.3f}, "
            f"residual sd = {self.residual_sd:.3f} ({self.scale} units), "
            f"reference accuracy {self.reference_min:.3f}-{self.reference_max:.3f}, "
            f"slope {self.slope:.3f}, intercept {self.intercept:+.3f}"
        )


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """slope, intercept, x_mean, Sxx, residual sd (n-2 dof), r."""
    n = len(x)
    x_mean, y_mean = float(x.mean()), float(y.mean())
    dx, dy = x - x_mean, y - y_mean
    sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
    slope = sxy / sxx
    intercept = y_mean - slope * x_mean
    residuals = y - (slope * x + intercept)
    s = math.sqrt(float(residuals @ residuals) / (n - 2))
    r = sxy / math.sqrt(sxx * syy) if syy > 0 else float("nan")
    return slope, intercept, x_mean, sxx, s, r


def fit_line(
    reference_accuracy: Sequence[float] | np.ndarray,
    shifted_accuracy: Sequence[float] | np.ndarray,
    scale: str | Scale = "probit",
    fit_range: tuple[float, float] | None = None,
    confidence: float = 0.95,
) -> LineFit:
    """Fit the baseline line; ``fit_range=(lo, hi)`` keeps only points with reference accuracy in [lo, hi]."""
    sc = get_scale(scale)
    ref = np.asarray(reference_accuracy, dtype=float)
    shift = np.asarray(shifted_accuracy, dtype=float)
    if ref.shape != shift.shape or ref.ndim != 1:
        raise ERInputError("reference and shifted accuracies must be 1-D arrays of the same length")
    if fit_range is not None:
        lo, hi = _check_fit_range(fit_range)
        keep = (ref >= lo) & (ref <= hi)
        if keep.sum() < 3:
            raise ERInputError(
                f"only {int(keep.sum())} baseline models have reference accuracy in [{lo:g}, {hi:g}] "
                f"(need at least 3 to fit a line); widen the fit range"
            )
        ref, shift = ref[keep], shift[keep]
        fit_range = (lo, hi)
    n = len(ref)
    if n < 3:
        raise ERInputError(f"need at least 3 baseline models to fit a line, got {n}")
    x, y = sc.to_axis(ref), sc.to_axis(shift)
    if np.ptp(x) == 0:
        raise ERInputError("all baseline models have the same reference accuracy: a line cannot be fitted")
    slope, intercept, x_mean, sxx, s, r = _ols(x, y)
    return LineFit(
        scale=sc.name,
        slope=slope,
        intercept=intercept,
        n=n,
        x_mean=x_mean,
        sxx=sxx,
        residual_sd=s,
        r=r,
        t_crit=float(special.stdtrit(n - 2, 0.5 + confidence / 2)),
        reference_min=float(ref.min()),
        reference_max=float(ref.max()),
        fit_range=fit_range,
        confidence=confidence,
    )


def _check_fit_range(fit_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in fit_range)
    except (TypeError, ValueError):
        raise ERInputError(f"fit range must be two accuracies LO:HI, got {fit_range!r}") from None
    if not (0 <= lo < hi <= 1):
        raise ERInputError(f"fit range {lo:g}:{hi:g} must satisfy 0 <= LO < HI <= 1 (accuracies as fractions)")
    return lo, hi


def parse_fit_range(text: str | None) -> tuple[float, float] | None:
    """``"0.7:0.9"`` -> (0.7, 0.9); None stays None."""
    if text is None:
        return None
    parts = str(text).split(":")
    if len(parts) != 2:
        raise ERInputError(f"fit range must look like LO:HI (e.g. 0.7:0.9), got {text!r}")
    try:
        return _check_fit_range((float(parts[0]), float(parts[1])))
    except ValueError as exc:
        raise ERInputError(str(exc) if isinstance(exc, ERInputError) else f"fit range {text!r} is not two numbers LO:HI") from None


def bootstrap_band(
    baseline_ref: np.ndarray,
    baseline_shift: np.ndarray,
    reference_accuracy: np.ndarray,
    scale: str | Scale = "probit",
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) predicted shifted accuracy: percentiles of line fits on resampled baseline models."""
    sc = get_scale(scale)
    x, y = sc.to_axis(baseline_ref), sc.to_axis(baseline_shift)
    at = sc.to_axis(reference_accuracy)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    xb, yb = x[idx], y[idx]
    dx = xb - xb.mean(axis=1, keepdims=True)
    sxx = (dx * dx).sum(axis=1)
    ok = sxx > 0  # a resample of one repeated point has no slope; drop it
    slope = (dx * (yb - yb.mean(axis=1, keepdims=True))).sum(axis=1)[ok] / sxx[ok]
    intercept = yb.mean(axis=1)[ok] - slope * xb.mean(axis=1)[ok]
    preds = slope[:, None] * at[None, :] + intercept[:, None]
    alpha = 1 - confidence
    lo, hi = np.percentile(preds, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return sc.to_accuracy(lo), sc.to_accuracy(hi)


def clopper_pearson(accuracy, n, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact binomial interval of an accuracy measured on n examples (k = round(accuracy * n))."""
    accuracy = np.asarray(accuracy, dtype=float)
    n = np.asarray(n, dtype=float)
    k = np.round(accuracy * n)
    alpha = 1 - confidence
    with np.errstate(invalid="ignore"):
        lo = np.where(k > 0, special.betaincinv(k, n - k + 1, alpha / 2), 0.0)
        hi = np.where(k < n, special.betaincinv(k + 1, n - k, 1 - alpha / 2), 1.0)
    return lo, hi


# --- input validation -----------------------------------------------------------------------


def validate_table(table: pl.DataFrame) -> pl.DataFrame:
    """Check columns and values; return model/group as strings and accuracies as floats."""
    if not isinstance(table, pl.DataFrame):
        raise ERInputError(f"expected a Polars DataFrame, got {type(table).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ERInputError(
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)} "
            f"(need {', '.join(REQUIRED_COLUMNS)}; found {', '.join(table.columns) or 'none'})"
        )
    if table.height == 0:
        raise ERInputError("the table has no rows")
    models = table["model"].cast(pl.String)
    for col in ("model", "group"):
        nulls = table[col].is_null()
        if nulls.any():
            row = int(nulls.arg_true()[0]) + 1
            raise ERInputError(f"row {row}: column {col!r} is empty")
    dup = models.is_duplicated()
    if dup.any():
        name = models.filter(dup)[0]
        rows = (dup & (models == name)).arg_true().to_list()
        raise ERInputError(
            f"model {name!r} appears more than once (rows {', '.join(str(r + 1) for r in rows)}); "
            f"give copies distinct names (e.g. a seed suffix)"
        )
    out = {"model": models, "group": table["group"].cast(pl.String)}
    for col in ("reference_accuracy", "shifted_accuracy"):
        out[col] = _accuracy_column(table, col, models)
    for col in ("reference_n", "shifted_n"):
        if col in table.columns:
            try:
                values = table[col].cast(pl.Float64)
            except Exception:
                raise ERInputError(f"column {col!r} must hold numbers of examples") from None
            if (values.is_not_null() & (values <= 0)).any():
                row = int(((values <= 0) & values.is_not_null()).arg_true()[0]) + 1
                raise ERInputError(f"row {row} (model {models[row - 1]!r}): {col} must be a positive count")
            out[col] = values
    return pl.DataFrame(out)


def _accuracy_column(table: pl.DataFrame, col: str, models: pl.Series) -> pl.Series:
    try:
        values = table[col].cast(pl.Float64)
    except Exception:
        raise ERInputError(f"column {col!r} must hold numbers (accuracies as fractions in [0, 1])") from None
    bad_null = values.is_null() | values.is_nan()
    if bad_null.any():
        row = int(bad_null.arg_true()[0]) + 1
        raise ERInputError(f"row {row} (model {models[row - 1]!r}): {col} is missing")
    arr = values.to_numpy()
    outside = (arr < 0) | (arr > 1)
    if outside.any():
        # Percentages: most values above 1 but none above 100.  Reported as such, never silently rescaled.
        if (arr > 1).mean() >= 0.5 and arr.min() >= 0 and arr.max() <= 100:
            raise ERInputError(f"{col} values look like percentages: divide by 100 (largest value {arr.max():g})")
        row = int(np.flatnonzero(outside)[0]) + 1
        raise ERInputError(
            f"row {row} (model {models[row - 1]!r}): {col} = {arr[row - 1]:g} is outside [0, 1] "
            f"(accuracies must be fractions)"
        )
    return values


# --- effective robustness ---------------------------------------------------------------------


@dataclass
class ERResult:
    """ER per model (``table``), the baseline line (``fit``) and a summary per group (``groups``)."""

    table: pl.DataFrame
    fit: LineFit
    groups: pl.DataFrame
    baseline_group: str
    band: str  # "t" (METHOD.md) or "bootstrap"
    binomial: bool

    def output_table(self) -> pl.DataFrame:
        """The columns of the CLI contract, in its order."""
        return self.table.select(OUTPUT_COLUMNS)

    def group(self, name: str) -> dict:
        rows = self.groups.filter(pl.col("group") == name).to_dicts()
        if not rows:
            raise KeyError(f"no group {name!r}; groups: {', '.join(self.groups['group'].to_list())}")
        return rows[0]

    def to_dict(self) -> dict:
        """JSON-ready: models (contract columns), per-group summary, fit diagnostics."""
        return {
            "models": _jsonable_rows(self.output_table()),
            "groups": _jsonable_rows(self.groups.select(GROUP_COLUMNS)),
            "fit": {
                **_nan_to_none(self.fit.diagnostics()),
                "baseline_group": self.baseline_group,
                "band": self.band,
                "binomial": self.binomial,
            },
        }


def _nan_to_none(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _jsonable_rows(df: pl.DataFrame) -> list[dict]:
    return [_nan_to_none(row) for row in df.to_dicts()]


def effective_robustness(
    table: pl.DataFrame,
    baseline_group: str = "baseline",
    scale: str = "probit",
    fit_range: tuple[float, float] | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    binomial: bool = False,
    confidence: float = 0.95,
) -> ERResult:
    """ER of every row of ``table`` (model, group, reference_accuracy, shifted_accuracy[, reference_n, shifted_n]).

    The line is fitted on rows whose group is ``baseline_group`` (and, with ``fit_range``, whose reference
    accuracy is in [lo, hi]).  ``bootstrap=B`` replaces the t band by a percentile band of B resampled fits.
    ``binomial=True`` widens each interval by the Clopper-Pearson uncertainty of the model's own accuracies.
    """
    sc = get_scale(scale)
    if bootstrap < 0:
        raise ERInputError(f"bootstrap must be a number of resamples >= 0, got {bootstrap}")
    df = validate_table(table)
    is_base = (df["group"] == baseline_group).to_numpy()
    n_base = int(is_base.sum())
    if n_base < 3:
        groups = sorted(set(df["group"].to_list()))
        raise ERInputError(
            f"group {baseline_group!r} has {n_base} model{'s' if n_base != 1 else ''}; need at least 3 baseline "
            f"models to fit a line (groups present: {', '.join(groups)}; choose one with --baseline-group)"
        )
    ref = df["reference_accuracy"].to_numpy()
    shift = df["shifted_accuracy"].to_numpy()
    fit = fit_line(ref[is_base], shift[is_base], sc, fit_range=fit_range, confidence=confidence)
    in_fit = is_base.copy()
    if fit.fit_range is not None:
        in_fit &= (ref >= fit.fit_range[0]) & (ref <= fit.fit_range[1])

    pred, lower, upper = fit.predict(ref)
    band = "t"
    if bootstrap:
        lower, upper = bootstrap_band(ref[in_fit], shift[in_fit], ref, sc, bootstrap, seed, confidence)
        band = "bootstrap"
    er = shift - pred
    er_lower, er_upper = shift - upper, shift - lower
    columns = {
        "model": df["model"],
        "group": df["group"],
        "reference_accuracy": ref,
        "shifted_accuracy": shift,
        "predicted_shifted_accuracy": pred,
        "effective_robustness": er,
        "er_lower": er_lower,
        "er_upper": er_upper,
        "line_lower": lower,
        "line_upper": upper,
        "in_fit": in_fit,
    }
    if binomial:
        if "reference_n" not in df.columns or "shifted_n" not in df.columns:
            raise ERInputError("binomial intervals need columns 'reference_n' and 'shifted_n' (numbers of examples)")
        ref_n, shift_n = df["reference_n"].to_numpy(), df["shifted_n"].to_numpy()
        if np.isnan(ref_n).any() or np.isnan(shift_n).any():
            raise ERInputError("binomial intervals need reference_n and shifted_n on every row")
        r_lo, r_hi = clopper_pearson(ref, ref_n, confidence)
        s_lo, s_hi = clopper_pearson(shift, shift_n, confidence)
        columns["er_lower"], columns["er_upper"] = _widen_with_binomial(fit, ref, shift, pred, lower, upper, r_lo, r_hi, s_lo, s_hi)
        columns.update(reference_lower=r_lo, reference_upper=r_hi, shifted_lower=s_lo, shifted_upper=s_hi)
    for col in ("reference_n", "shifted_n"):
        if col in df.columns:
            columns[col] = df[col]
    out = pl.DataFrame(columns)
    return ERResult(
        table=out,
        fit=fit,
        groups=aggregate_copies(out, by="group"),
        baseline_group=baseline_group,
        band=band,
        binomial=binomial,
    )


def _widen_with_binomial(fit, ref, shift, pred, lower, upper, r_lo, r_hi, s_lo, s_hi):
    """Combine three independent 95% half-widths in quadrature (each roughly normal), per direction.

    ER = shifted - predicted.  ER is larger when the shifted accuracy is higher (CP upper - shifted),
    the line is lower (predicted - band lower) or the true reference accuracy is such that the line
    predicts less (predicted - min over the reference CP ends, through the fitted line); and vice versa.
    """
    p_at_lo, _, _ = fit.predict(r_lo)
    p_at_hi, _, _ = fit.predict(r_hi)
    ref_down = np.maximum(pred - np.minimum(p_at_lo, p_at_hi), 0)
    ref_up = np.maximum(np.maximum(p_at_lo, p_at_hi) - pred, 0)
    er = shift - pred
    up = np.sqrt((s_hi - shift) ** 2 + (pred - lower) ** 2 + ref_down**2)
    down = np.sqrt((shift - s_lo) ** 2 + (upper - pred) ** 2 + ref_up**2)
    return er - down, er + up


# --- aggregation --------------------------------------------------------------------------------


def aggregate_copies(table: pl.DataFrame, by: str | Sequence[str] = "group") -> pl.DataFrame:
    """Mean ER per key with interval mean ± 1.96·SE (SE = sample std / sqrt(n), METHOD.md).

    Use ``by="group"`` for a per-group summary, or a column naming the copies of one model (seeds) to
    aggregate copies.  A key with a single row keeps that row's own interval (no spread to estimate).

    The METHOD.md interval only reflects the spread between copies; all copies are judged against the same
    fitted line, whose error does not average out.  ``er_lower_total`` / ``er_upper_total`` therefore
    combine 1.96·SE and the mean half-width of the members' own intervals in quadrature; verdicts
    ("helped" / "no clear effect" / "hurt") use these.
    """
    keys = [by] if isinstance(by, str) else list(by)
    missing = [k for k in keys + ["effective_robustness", "er_lower", "er_upper"] if k not in table.columns]
    if missing:
        raise ERInputError(f"cannot aggregate: missing column(s) {', '.join(missing)}")
    extra = [c for c in ("reference_accuracy", "shifted_accuracy", "predicted_shifted_accuracy") if c in table.columns]
    er = pl.col("effective_robustness")
    n = pl.len().cast(pl.Float64)
    se = er.std(ddof=1) / n.sqrt()
    half = ((pl.col("er_upper") - pl.col("er_lower")) / 2).mean()
    total = ((Z95 * se) ** 2 + half**2).sqrt()
    several = pl.len() > 1
    agg = table.group_by(keys, maintain_order=True).agg(
        pl.len().alias("n_models"),
        er.mean().alias("effective_robustness"),
        pl.when(several).then(er.mean() - Z95 * se).otherwise(pl.col("er_lower").first()).alias("er_lower"),
        pl.when(several).then(er.mean() + Z95 * se).otherwise(pl.col("er_upper").first()).alias("er_upper"),
        pl.when(several).then(se).otherwise(None).alias("er_se"),
        pl.when(several).then(er.mean() - total).otherwise(pl.col("er_lower").first()).alias("er_lower_total"),
        pl.when(several).then(er.mean() + total).otherwise(pl.col("er_upper").first()).alias("er_upper_total"),
        *[pl.col(c).mean() for c in extra],
    )
    return agg.with_columns(pl.col("n_models").cast(pl.Int64)).sort(keys)


# --- verdicts and the comparable-baseline view ----------------------------------------------------


def verdict(er_lower: float, er_upper: float) -> str:
    """'helped' when the whole interval is above 0, 'hurt' when below, else 'no clear effect'."""
    if er_lower is None or er_upper is None or not (math.isfinite(er_lower) and math.isfinite(er_upper)):
        return "unknown"
    if er_lower > 0:
        return "helped"
    if er_upper < 0:
        return "hurt"
    return "no clear effect"


def group_verdict(row: dict) -> str:
    """Verdict of a group-summary row, on its interval that includes the line's uncertainty."""
    return verdict(row.get("er_lower_total", row["er_lower"]), row.get("er_upper_total", row["er_upper"]))


def comparable_fit_range(table: pl.DataFrame, judged_groups: Sequence[str], margin: float = 0.05) -> tuple[float, float]:
    """Reference-accuracy window of the judged models, widened by ``margin`` on each side (clipped to [0, 1])."""
    ref = table.filter(pl.col("group").is_in(list(judged_groups)))["reference_accuracy"]
    if ref.len() == 0:
        raise ERInputError(f"no models in groups {', '.join(judged_groups)} to define comparable baselines")
    return max(0.0, float(ref.min()) - margin), min(1.0, float(ref.max()) + margin)


def _pct(x: float) -> str:
    return f"{100 * x:+.2f}%"


def describe_interval(row: dict) -> str:
    """``+9.20% [+7.28%, +11.12%]``, the interval including the line's uncertainty when the row has it."""
    lo, hi = row.get("er_lower_total", row["er_lower"]), row.get("er_upper_total", row["er_upper"])
    return f"{_pct(row['effective_robustness'])} [{_pct(lo)}, {_pct(hi)}]"


@dataclass
class FitComparison:
    """ER from the full-range baseline fit and from baselines of comparable reference accuracy."""

    full: ERResult
    window: ERResult | None
    fit_range: tuple[float, float]
    judged_groups: list[str]
    n_window_baselines: int
    disagree: bool
    message: str
    weak_fit: bool

    def verdicts(self) -> dict[str, tuple[str, str | None]]:
        """group -> (verdict with the full-range fit, verdict with comparable baselines or None)."""
        out = {}
        for g in self.judged_groups:
            f = self.full.group(g)
            w = self.window.group(g) if self.window is not None else None
            out[g] = (group_verdict(f), group_verdict(w) if w else None)
        return out

    def summary(self) -> pl.DataFrame:
        """One row per (view, group): view ("full" / "comparable"), group, n_models, ER, interval, verdict, fit diagnostics."""
        frames = []
        for view, result in (("full", self.full), ("comparable", self.window)):
            if result is None:
                continue
            rows = result.groups.select(GROUP_COLUMNS).to_dicts()
            for row in rows:
                frames.append({"view": view, **row, "verdict": group_verdict(row), **fit_columns(result.fit)})
        return pl.DataFrame(frames, infer_schema_length=None)


def fit_columns(fit: LineFit) -> dict:
    """Fit diagnostics as flat columns (``fit_r``, ``fit_residual_sd``, ``fit_n``, ``fit_reference_min`` ...)."""
    d = fit.diagnostics()
    return {
        "scale": d["scale"],
        "fit_n": d["n_baselines"],
        "fit_r": d["r"],
        "fit_residual_sd": d["residual_sd"],
        "fit_reference_min": d["reference_min"],
        "fit_reference_max": d["reference_max"],
        "fit_slope": d["slope"],
        "fit_intercept": d["intercept"],
        "fit_range_lo": float("nan") if d["fit_range_lo"] is None else d["fit_range_lo"],
        "fit_range_hi": float("nan") if d["fit_range_hi"] is None else d["fit_range_hi"],
    }


def compare_fits(
    table: pl.DataFrame,
    baseline_group: str = "baseline",
    scale: str = "probit",
    fit_range: tuple[float, float] | None = None,
    margin: float = 0.05,
    judged_groups: Sequence[str] | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    binomial: bool = False,
    min_r: float = 0.9,
) -> FitComparison:
    """Full-range fit vs a fit on comparable baselines, and a sentence saying whether they disagree.

    The comparable window is ``fit_range`` when given, else the judged models' reference-accuracy range
    ± ``margin``.  The views disagree when, for some judged group, their verdicts (helped / hurt /
    no clear effect) differ.  A fit with r < ``min_r`` is called weak (the trend may not be a line).
    """
    kwargs = dict(baseline_group=baseline_group, scale=scale, bootstrap=bootstrap, seed=seed, binomial=binomial)
    full = effective_robustness(table, **kwargs)
    all_groups = full.groups["group"].to_list()
    judged = list(judged_groups) if judged_groups is not None else [g for g in all_groups if g != baseline_group]
    unknown = [g for g in judged if g not in all_groups]
    if unknown:
        raise ERInputError(f"unknown group(s) {', '.join(unknown)}; groups present: {', '.join(all_groups)}")
    if fit_range is not None:
        window_range = _check_fit_range(fit_range)
    elif judged:
        window_range = comparable_fit_range(full.table, judged, margin)
    else:  # only baselines: nothing to compare against, keep the full range
        window_range = (full.fit.reference_min, full.fit.reference_max)
    base_ref = full.table.filter(pl.col("group") == baseline_group)["reference_accuracy"]
    n_window = int(((base_ref >= window_range[0]) & (base_ref <= window_range[1])).sum())
    window = None
    if n_window >= 3 and (judged or fit_range is not None):
        try:
            window = effective_robustness(table, fit_range=window_range, **kwargs)
        except ERInputError:  # e.g. all comparable baselines share one reference accuracy
            window = None
    weak = not (full.fit.r >= min_r)
    message, disagree = _comparison_message(full, window, window_range, judged, n_window, weak, min_r)
    return FitComparison(full, window, window_range, judged, n_window, disagree, message, weak)


def _comparison_message(full, window, window_range, judged, n_window, weak, min_r) -> tuple[str, bool]:
    lo, hi = window_range
    parts = []
    disagree = False
    if not judged:
        parts.append("Only baseline models are present: there is no other group to judge.")
    for g in judged:
        f = full.group(g)
        fv = group_verdict(f)
        text = f"{g}: ER {describe_interval(f)} against all {full.fit.n} baselines ({fv})"
        if window is not None:
            w = window.group(g)
            wv = group_verdict(w)
            text += f", {describe_interval(w)} against the {window.fit.n} baselines with reference accuracy in [{lo:.3f}, {hi:.3f}] ({wv})"
            if wv != fv:
                disagree = True
                text += " - the views disagree"
            elif w["er_lower_total"] > f["er_upper_total"] or f["er_lower_total"] > w["er_upper_total"]:
                text += " - same verdict, but the sizes differ (the intervals do not overlap)"
        parts.append(text + ".")
    if window is None and judged:
        parts.append(
            f"Only {n_window} baseline model{'s' if n_window != 1 else ''} have reference accuracy in [{lo:.3f}, {hi:.3f}]: "
            f"too few for a comparable-baseline fit, so only the full-range line is shown."
        )
    if weak:
        parts.append(
            f"The baseline fit is weak (r = {full.fit.r:.3f} < {min_r:g}): accuracy may not lie on a line here, "
            f"so prefer the comparable-baseline view."
        )
    if disagree:
        parts.insert(0, "The full-range and comparable-baseline fits disagree; trust neither number alone.")
    return " ".join(parts), disagree


# --- tables of accuracies --------------------------------------------------------------------------


def accuracy_pairs(
    metrics: pl.DataFrame,
    reference_split: str,
    shifted_split: str,
    metric: str = "accuracy",
) -> pl.DataFrame:
    """Long metrics (model, group, split, <metric>[, n]) -> one row per model with reference and shifted values.

    Models missing from either split are dropped.  ``n`` (number of examples) becomes reference_n/shifted_n.
    """
    need = ["model", "group", "split", metric]
    missing = [c for c in need if c not in metrics.columns]
    if missing:
        raise ERInputError(f"metrics table lacks column(s) {', '.join(missing)}")
    splits = sorted(set(metrics["split"].to_list()))
    extra = ["n"] if "n" in metrics.columns else []

    def side(split: str, prefix: str) -> pl.DataFrame:
        part = metrics.filter(pl.col("split") == split)
        if part.height == 0:
            raise ERInputError(f"no metrics for split {split!r}; splits present: {', '.join(splits)}")
        cols = [pl.col("model"), pl.col(metric).alias(f"{prefix}_accuracy")]
        if prefix == "reference":
            cols.insert(1, pl.col("group"))
        cols += [pl.col("n").alias(f"{prefix}_n") for _ in extra]
        return part.select(cols)

    joined = side(reference_split, "reference").join(side(shifted_split, "shifted"), on="model", how="inner")
    order = ["model", "group", "reference_accuracy", "shifted_accuracy"] + (["reference_n", "shifted_n"] if extra else [])
    return joined.select(order)


__all__ = [
    "ERInputError",
    "ERResult",
    "FitComparison",
    "LineFit",
    "SCALES",
    "accuracy_pairs",
    "aggregate_copies",
    "bootstrap_band",
    "clopper_pearson",
    "compare_fits",
    "comparable_fit_range",
    "effective_robustness",
    "fit_columns",
    "fit_line",
    "group_verdict",
    "parse_fit_range",
    "validate_table",
    "verdict",
]
