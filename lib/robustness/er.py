"""Effective robustness: the "accuracy on the line" fit on baseline models, every model's distance from it,
and intervals for models and groups that hold their 95%.

Definition (METHOD.md): transform accuracies with probit (default) or logit, fit shifted on reference
accuracy by least squares over the baseline models, and call

    ER(model) = shifted accuracy - inverse(slope * transform(reference accuracy) + intercept).

The line (:func:`fit_line`).  Ordinary least squares; when the baselines' numbers of reference examples
are known (``reference_n``), the slope is corrected for the test-set noise in their reference accuracies,
which flattens an OLS line (regression dilution): ``slope = Sxy / (lambda * Sxx)`` with reliability
``lambda = 1 - (1 - 1/n) * sum(v_i) / Sxx`` (``v_i``: binomial variance of baseline i's transformed
reference accuracy, delta method; ``lambda`` is kept >= 0.5).  At 50,000 examples lambda is 1.000; at 150
examples, 80 baselines and judged models at the top of their range, the uncorrected line let the group
interval cover the truth in 75% of simulated tables instead of 95%.

Clipping.  Accuracies of exactly 0 or 1 have no probit/logit: they are clipped to [1/(2n), 1 - 1/(2n)]
when the number of examples n is known (``reference_n``/``shifted_n``), else to [1e-4, 1 - 1e-4].

Intervals (all ``confidence``, default 95%):

- **The line's error.**  Without numbers of examples: the classic band ``t(n-2) * s * sqrt(1/n + (x - mean
  x)^2 / Sxx)`` (METHOD.md).  With them, each baseline's residual variance is ``tau^2 + v_i`` (its own
  deviation plus its known test-set noise, which on the probit axis doubles from 50% to 90% accuracy), so
  the line's error at the accurate end, where pre-trained models sit, is not understated by one pooled
  variance; ``tau^2`` is estimated from the residuals and the degrees of freedom follow Satterthwaite.
- **Per model** (``er_lower``/``er_upper`` of ``ERResult.table``): the line's band at the model's reference
  accuracy, in transformed units, mapped back to accuracy (``shifted - upper, shifted - lower``).  That
  covers the line's error only.  With ``binomial=True`` it also carries the model's own test-set noise:
  Wilson intervals of its reference accuracy (through the fitted line) and of its shifted accuracy,
  combined with the band in quadrature per direction (:func:`_widen_with_binomial`).
- **Per group, and per model over copies** (``ERResult.groups``, :func:`aggregate_copies`): the interval
  of the group's mean ER.  Its variance has two parts:

  * ``line_se``: the variance of the group's mean line prediction.  All models share one fitted line, so
    its errors do not average out: model j's prediction error is ``gain_j * (height error + dx_j * slope
    error)`` (``gain_j``: d accuracy / d axis at its prediction, ``dx_j``: its distance from the baselines'
    mean), so the mean's is ``mean(gain) * height error + mean(gain * dx) * slope error`` (delta method);
  * ``spread_se``: the sample variance of the members' ER divided by m.  It already holds each model's
    deviation from the line and its test-set noise.

  The quantile: Welch-Satterthwaite t is liberal when the spread has 2-3 degrees of freedom (92% measured
  at 3 models and 80 baselines), the bound ``sqrt(t_line^2 line_se^2 + t(m-1)^2 spread_se^2)`` is
  conservative (up to 98%); the half-width is a weighted mean of the two (:func:`combined_half_width`),
  which measured 94-97% in every regime of ``tests/test_er_coverage.py`` (10-80 baselines, 3-55 models, 150 to
  50,000 examples, with and without per-model deviations).  A group of one model keeps that model's
  interval.  ``er_lower_total``/``er_upper_total`` are the same numbers (their former name).

Options beyond the paper, each documented where it is applied:
- ``bootstrap=B``: the band is the 2.5/97.5 percentile of B line fits on baseline models resampled
  with replacement (seeded), instead of the t band; a group's line variance is then the variance of its
  mean prediction over those fits.
- :func:`example_bootstrap`: resample the test examples (jointly for all models) and the baseline models,
  refit, and take percentiles; from stored predictions, see ``askshift.lib.report.markdown``.
- ``fit_range=(lo, hi)``: fit only baselines whose reference accuracy lies in [lo, hi];
  :func:`compare_fits` shows the full-range view beside a comparable-baseline view per judged group
  (its own window around its own reference accuracies) and says in words whether they disagree.

Guardrails, as columns and as words (``caution``) next to every number: ``extrapolated`` (the model's
reference accuracy is outside the fitted baselines' range by more than ``extrapolation_margin`` of that
range on the transformed axis), ``weak_line`` (r < 0.9), ``inverse_line`` (slope <= 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, NamedTuple, Sequence

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field
from scipy import special  # not scipy.stats: it triples the start-up time of `askshift er`

from askshift.lib.registry import Registry, UnknownNameError

EPS = 1e-4  # clip of accuracies whose number of examples is unknown
MIN_R = 0.9  # below: "weak line"
EXTRAPOLATION_MARGIN = 0.1  # fraction of the baselines' span (transformed axis) beyond which a model is extrapolated
MIN_RELIABILITY = 0.5  # floor of the errors-in-variables correction of the slope
MIN_WINDOW_BASELINES = 5  # fewest baselines a comparable-baseline window is fitted on
REQUIRED_COLUMNS = ("model", "group", "reference_accuracy", "shifted_accuracy")
# `askshift er` contract: these first, in this order; later columns may be added, never renamed.
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
GUARDRAIL_COLUMNS = ("extrapolated", "weak_line", "inverse_line", "caution")
CLI_COLUMNS = OUTPUT_COLUMNS + GUARDRAIL_COLUMNS
GROUP_COLUMNS = (
    "group", "n_models", "effective_robustness", "er_lower", "er_upper", "er_lower_total", "er_upper_total",
    "er_se", "line_se", "spread_se", "n_extrapolated", "extrapolated", "weak_line", "inverse_line", "caution",
)


Fraction = Annotated[float, Field(ge=0, le=1)]
Resamples = Annotated[int, Field(ge=0)]
MetricName = Literal["accuracy", "balanced_accuracy", "worst_group_accuracy", "macro_f1", "auroc"]


class ERSettings(BaseModel):
    """How effective robustness is computed and judged: the one definition of these settings, read by
    ``build_report``, the report flow (its UI form), ``askshift run report`` and the flows that report; ``fit_kwargs``
    and ``comparison_kwargs`` are what ``effective_robustness`` and ``compare_fits`` take."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    baseline_group: str = Field("baseline", description="group of models the line is fitted on, with 3 or more "
                                                        "models (CLI --baseline-group)")
    scale: Literal["probit", "logit"] = Field("probit", description="axis transform of the line, probit (default) or "
                                                                    "logit (CLI --scale)")
    metric: MetricName = Field("accuracy", description="metric on both axes (CLI --metric)")
    fit_range: tuple[Fraction, Fraction] | None = Field(
        None, description="comparable-baseline window of reference accuracy, two fractions LO, HI (CLI --fit-range "
                          "LO:HI); empty: each judged group's own reference-accuracy range plus or minus the margin")
    margin: Fraction = Field(0.05, description="half-width added around a judged group's reference-accuracy range for "
                                               "its comparable baselines")
    bootstrap: Resamples = Field(0, description="bootstrap band from this many resampled line fits; 0 = the t band "
                                                "(CLI --bootstrap)")
    binomial: bool = Field(False, description="per-model intervals also carry each model's own test-set noise "
                                              "(CLI --binomial)")
    bootstrap_examples: Resamples = Field(0, description="percentile intervals from this many resamples of the test "
                                                         "examples and baselines; 0 = off; accuracy only "
                                                         "(CLI --bootstrap-examples)")
    seed: Annotated[int, Field(ge=0)] = Field(0, description="seed of the bootstraps, 0 or more (CLI --seed)")

    def fit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``effective_robustness``."""
        return {"baseline_group": self.baseline_group, "scale": self.scale, "bootstrap": self.bootstrap,
                "seed": self.seed, "binomial": self.binomial}

    def comparison_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``compare_fits``."""
        return {**self.fit_kwargs(), "fit_range": self.fit_range, "margin": self.margin}


class ERInputError(ValueError):
    """Input the ER engine cannot use; the message is one line saying what is wrong and what to do."""


# --- scales ---------------------------------------------------------------------------------


def clip_epsilon(n=None, shape=()) -> np.ndarray:
    """1/(2n) where the number of examples n is known (finite, > 0), else ``EPS``."""
    if n is None:
        return np.full(shape, EPS)
    n = np.broadcast_to(np.asarray(n, dtype=float), shape) if shape else np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(n) & (n > 0), 0.5 / n, EPS)


@dataclass(frozen=True)
class Scale:
    """A monotone map of accuracies to the axis on which the baseline trend is linear."""

    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray], np.ndarray]
    derivative: Callable[[np.ndarray], np.ndarray]  # d inverse / d axis (accuracy per axis unit)

    def to_axis(self, accuracy, n=None) -> np.ndarray:
        """Transformed accuracy, clipped first to [1/(2n), 1 - 1/(2n)] (n known) or [EPS, 1 - EPS]."""
        acc = np.asarray(accuracy, dtype=float)
        eps = clip_epsilon(n, acc.shape)
        return self.forward(np.clip(acc, eps, 1 - eps))

    def to_accuracy(self, value) -> np.ndarray:
        return self.inverse(np.asarray(value, dtype=float))

    def axis_variance(self, accuracy, n) -> np.ndarray:
        """Binomial variance of the transformed accuracy (delta method); 0 where n is unknown."""
        acc = np.asarray(accuracy, dtype=float)
        if n is None:
            return np.zeros(acc.shape)
        n = np.broadcast_to(np.asarray(n, dtype=float), acc.shape)
        eps = clip_epsilon(n, acc.shape)
        p = np.clip(acc, eps, 1 - eps)
        with np.errstate(divide="ignore", invalid="ignore"):
            v = p * (1 - p) / n / self.derivative(self.forward(p)) ** 2
        return np.where(np.isfinite(v), v, 0.0)


def _normal_density(z):
    return np.exp(-0.5 * np.asarray(z, dtype=float) ** 2) / math.sqrt(2 * math.pi)


def _logistic_density(z):
    p = special.expit(np.asarray(z, dtype=float))
    return p * (1 - p)


SCALES: Registry[Scale] = Registry("scale")
SCALES.add("probit", Scale("probit", special.ndtri, special.ndtr, _normal_density),
           "inverse normal CDF of accuracy (the paper's default)")
SCALES.add("logit", Scale("logit", special.logit, special.expit, _logistic_density), "log(accuracy / (1 - accuracy))")


def get_scale(scale: str | Scale) -> Scale:
    if isinstance(scale, Scale):
        return scale
    try:
        return SCALES.get(scale)
    except UnknownNameError as exc:
        raise ERInputError(str(exc)) from None


# --- the line: array core (leading axes are a batch of tables) -------------------------------------


class _Line(NamedTuple):
    """Least-squares lines along the last axis of (x, y); every field has the batch shape.

    The line's error is (height error at x_mean, slope error).  Its covariance is estimated from the
    residuals, under residual variance ``tau^2 + v_i`` for baseline i (``v_i``: the known test-set noise of
    its accuracies, 0 when the numbers of examples are unknown; ``tau^2``: the models' own deviations,
    ``s^2 - noise_mean``)."""

    slope: np.ndarray
    intercept: np.ndarray
    x_mean: np.ndarray
    sxx: np.ndarray
    s: np.ndarray  # residual standard error, n-2 dof
    r: np.ndarray
    reliability: np.ndarray  # errors-in-variables factor lambda (1: no correction)
    slope_ols: np.ndarray
    noise_mean: np.ndarray  # expected contribution of the known noise to s^2
    noise_level: np.ndarray  # known-noise part of Var(height at x_mean)
    noise_slope: np.ndarray  # known-noise part of Var(slope)
    noise_cov: np.ndarray  # known-noise part of Cov(height, slope): noise varies with accuracy
    n: int


def _fit_arrays(x: np.ndarray, y: np.ndarray, vx: np.ndarray | None = None, vy: np.ndarray | None = None) -> _Line:
    """OLS of y on x along the last axis; ``vx``/``vy``: known test-set noise variances of x and y.

    With ``vx`` the slope is divided by the reliability lambda (regression dilution).  With noise variances
    the line's error covariance uses each baseline's own residual variance ``tau^2 + vy_i + slope^2 vx_i``
    instead of one pooled variance: binomial noise on the probit axis doubles from 50% to 90% accuracy, so a
    pooled variance understates the line's error at the accurate end, where pre-trained models sit
    (measured: 93% coverage instead of 95% with 55 models there)."""
    n = x.shape[-1]
    x_mean, y_mean = x.mean(-1), y.mean(-1)
    dx, dy = x - x_mean[..., None], y - y_mean[..., None]
    sxx, syy, sxy = (dx * dx).sum(-1), (dy * dy).sum(-1), (dx * dy).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope_ols = sxy / sxx
        if vx is None:
            lam = np.ones_like(sxx)
        else:
            lam = np.clip(1 - (1 - 1 / n) * np.nan_to_num(vx).sum(-1) / sxx, MIN_RELIABILITY, 1.0)
        slope = slope_ols / lam
        intercept = y_mean - slope * x_mean
        res = y - (slope[..., None] * x + intercept[..., None])
        s = np.sqrt((res * res).sum(-1) / (n - 2))
        r = sxy / np.sqrt(sxx * syy)
        v = np.zeros_like(x)
        if vy is not None:
            v = v + np.nan_to_num(vy)
        if vx is not None:
            v = v + slope[..., None] ** 2 * np.nan_to_num(vx)
        leverage = 1 / n + dx * dx / sxx[..., None]
        noise_mean = (v * (1 - leverage)).sum(-1) / (n - 2)
        slope_scale = sxx * lam
        noise_level = v.sum(-1) / n**2
        noise_slope = (dx * dx * v).sum(-1) / slope_scale**2
        noise_cov = (dx * v).sum(-1) / (n * slope_scale)
    return _Line(slope, intercept, x_mean, sxx, s, r, lam, slope_ols, noise_mean, noise_level, noise_slope,
                 noise_cov, n)


def _line_variances(line: _Line, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Variance of a * height error + b * slope error (a, b: batch shape + (k,)) and its degrees of freedom.

    Var = A tau^2 + K with tau^2 = s^2 - noise_mean: A s^2 is estimated (n-2 dof), K - A noise_mean is known,
    so the dof are Satterthwaite's (n-2) (Var / A s^2)^2; without known noise this is the classic
    t(n-2) band of METHOD.md."""
    e = lambda f: np.asarray(f)[..., None]  # noqa: E731 -- batch scalars against the points axis
    with np.errstate(divide="ignore", invalid="ignore"):
        coef = a * a / line.n + b * b / (e(line.sxx) * e(line.reliability) ** 2)
        estimated = coef * e(line.s) ** 2
        known = (a * a * e(line.noise_level) + b * b * e(line.noise_slope) + 2 * a * b * e(line.noise_cov)
                 - coef * e(line.noise_mean))
        var = np.maximum(estimated + known, 0.0)
        df = np.where(estimated > 0, (line.n - 2) * (var / estimated) ** 2, np.inf)
    return var, np.maximum(df, 1.0)


def _t(df, confidence: float) -> np.ndarray:
    return special.stdtrit(np.asarray(df, dtype=float), 0.5 + confidence / 2)


def combined_half_width(components: Sequence[tuple[np.ndarray, float]], confidence: float = 0.95) -> np.ndarray:
    """Half-width of an interval whose variance is a sum of parts, each (variance, degrees of freedom).

    A weighted mean of the Welch-Satterthwaite half-width (liberal when a part with 2-3 dof matters: 92%)
    and the bound sqrt(sum t(df_k)^2 v_k) (conservative: up to 98%).  The weight on Welch is 1/2, rising to
    0.8 as the best-determined part's dof fall to 8 (with few dof everywhere Welch is nearly exact and the
    bound most conservative).  On normal variance estimates this covers 94-96.6% for dof 2-inf x 4-inf and
    any ratio of the parts.  Infinite dof: a known variance.  One part: the t interval itself."""
    parts = [(np.asarray(v, dtype=float), np.asarray(df, dtype=float)) for v, df in components]
    total = sum(v for v, _ in parts)
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = sum(np.where(np.isfinite(df), v * v / df, 0.0) for v, df in parts)
        nu = np.where(np.asarray(denom) > 0, total**2 / denom, np.inf)
        welch = np.where(total > 0, _t(nu, confidence) * np.sqrt(total), 0.0)
        best = np.maximum.reduce([np.broadcast_to(df, np.shape(total)) for _, df in parts])
        weight = 0.5 + 0.3 * np.minimum(1.0, 8.0 / best)
    bound = np.sqrt(sum(_t(df, confidence) ** 2 * v for v, df in parts))
    return weight * welch + (1 - weight) * bound


def _band(line: _Line, x_at: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction, standard error, half-width) of the line at x_at, transformed units."""
    e = lambda f: np.asarray(f)[..., None]  # noqa: E731
    pred = e(line.slope) * x_at + e(line.intercept)
    dx = x_at - e(line.x_mean)
    var, df = _line_variances(line, np.ones_like(dx), dx)
    return pred, np.sqrt(var), combined_half_width([(var, df)], confidence)


def _group_line_variance(line: _Line, gain: np.ndarray, dx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(variance, dof) of the mean line prediction over the models on the last axis (accuracy units).

    Every model's prediction error is gain_j * (height error + dx_j * slope error) of the one shared line,
    so the mean's is mean(gain) * height error + mean(gain * dx) * slope error."""
    var, df = _line_variances(line, gain.mean(-1, keepdims=True), (gain * dx).mean(-1, keepdims=True))
    return var[..., 0], df[..., 0]


def wilson_interval(accuracy, n, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of an accuracy measured on n examples (closer to its 95% than Clopper-Pearson)."""
    p = np.asarray(accuracy, dtype=float)
    n = np.asarray(n, dtype=float)
    z = float(special.ndtri(0.5 + confidence / 2))
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * np.sqrt(np.maximum(p * (1 - p), 0) / n + z * z / (4 * n * n)) / d
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


# --- the line as users see it ---------------------------------------------------------------------


@dataclass(frozen=True)
class LineFit:
    """Least-squares line of transformed shifted accuracy on transformed reference accuracy, with its diagnostics."""

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
    reliability: float = 1.0  # errors-in-variables factor of the slope (1: uncorrected OLS)
    slope_ols: float | None = None
    axis_min: float | None = None  # transformed range of the baselines' reference accuracies (after clipping)
    axis_max: float | None = None
    min_r: float = MIN_R
    # Known test-set noise in the line's error (see _Line); 0: the classic homoscedastic band.
    noise_mean: float = 0.0
    noise_level: float = 0.0
    noise_slope: float = 0.0
    noise_cov: float = 0.0

    @property
    def _scale(self) -> Scale:
        return get_scale(self.scale)

    @property
    def _line(self) -> _Line:
        f = np.float64
        return _Line(f(self.slope), f(self.intercept), f(self.x_mean), f(self.sxx), f(self.residual_sd), f(self.r),
                     f(self.reliability), f(self.slope if self.slope_ols is None else self.slope_ols),
                     f(self.noise_mean), f(self.noise_level), f(self.noise_slope), f(self.noise_cov), self.n)

    @property
    def weak_line(self) -> bool:
        return not (self.r >= self.min_r)

    @property
    def inverse_line(self) -> bool:
        return not (self.slope > 0)

    def predict_axis(self, x_axis) -> np.ndarray:
        return self.slope * np.asarray(x_axis, dtype=float) + self.intercept

    def se_axis(self, x_axis) -> np.ndarray:
        """Standard error of the line's height at x (transformed units)."""
        x_axis = np.atleast_1d(np.asarray(x_axis, dtype=float))
        return _band(self._line, x_axis[None, :], self.confidence)[1][0].reshape(np.shape(x_axis))

    def half_width_axis(self, x_axis) -> np.ndarray:
        """Half-width of the confidence band of the line at x (transformed units): t(n-2) * s * sqrt(1/n +
        (x - mean x)^2 / (lambda^2 Sxx)) when the numbers of examples are unknown (METHOD.md)."""
        shape = np.shape(x_axis)
        x_axis = np.atleast_1d(np.asarray(x_axis, dtype=float))
        return _band(self._line, x_axis[None, :], self.confidence)[2][0].reshape(shape)

    def predict(self, reference_accuracy, reference_n=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predicted shifted accuracy and the band's (lower, upper) at the given reference accuracies."""
        scale = self._scale
        x = scale.to_axis(reference_accuracy, reference_n)
        y = self.predict_axis(x)
        h = self.half_width_axis(x)
        return scale.to_accuracy(y), scale.to_accuracy(y - h), scale.to_accuracy(y + h)

    def cautions(self) -> list[str]:
        """Words for a broken line: weak (r < min_r) and/or inverse (slope <= 0)."""
        out = []
        if self.inverse_line:
            out.append(f"inverse line (slope {self.slope:.2f} <= 0)")
        if self.weak_line:
            out.append(f"weak line (r = {self.r:.2f} < {self.min_r:g})")
        return out

    def diagnostics(self) -> dict:
        """What every ER number is reported with: scale, n, r, residual sd, ID range, line, fit range, guardrails."""
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
            "reliability": self.reliability,
            "weak_line": self.weak_line,
            "inverse_line": self.inverse_line,
        }

    def describe(self) -> str:
        """One line: ``probit fit on 78 baselines: r = 0.98, residual sd = 0.05 (probit units), ID range 0.62-0.81``."""
        window = f" (fit range {self.fit_range[0]:.3f}-{self.fit_range[1]:.3f})" if self.fit_range else ""
        text = (
            f"{self.scale} fit on {self.n} baseline models{window}: r = {self.r:.3f}, "
            f"residual sd = {self.residual_sd:.3f} ({self.scale} units), "
            f"reference accuracy {self.reference_min:.3f}-{self.reference_max:.3f}, "
            f"slope {self.slope:.3f}, intercept {self.intercept:+.3f}"
        )
        if self.reliability < 0.999 and self.slope_ols is not None:
            text += (f" (slope corrected for test-set noise in the baselines' reference accuracy: reliability "
                     f"{self.reliability:.3f}, OLS slope {self.slope_ols:.3f})")
        cautions = self.cautions()
        if cautions:
            text += " - CAUTION: " + ", ".join(cautions)
        return text


def _as_n(values, length: int) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values, dtype=float)
    if arr.shape != (length,):
        raise ERInputError("numbers of examples must match the accuracies one to one")
    return arr


def fit_line(
    reference_accuracy: Sequence[float] | np.ndarray,
    shifted_accuracy: Sequence[float] | np.ndarray,
    scale: str | Scale = "probit",
    fit_range: tuple[float, float] | None = None,
    confidence: float = 0.95,
    reference_n: Sequence[float] | np.ndarray | None = None,
    shifted_n: Sequence[float] | np.ndarray | None = None,
    min_r: float = MIN_R,
) -> LineFit:
    """Fit the baseline line; ``fit_range=(lo, hi)`` keeps only points with reference accuracy in [lo, hi].

    ``reference_n``/``shifted_n`` (numbers of examples) set the clip to 1/(2n) and correct the slope for the
    test-set noise of the reference accuracies (module docstring)."""
    sc = get_scale(scale)
    ref = np.asarray(reference_accuracy, dtype=float)
    shift = np.asarray(shifted_accuracy, dtype=float)
    if ref.shape != shift.shape or ref.ndim != 1:
        raise ERInputError("reference and shifted accuracies must be 1-D arrays of the same length")
    ref_n, shift_n = _as_n(reference_n, len(ref)), _as_n(shifted_n, len(ref))
    if fit_range is not None:
        lo, hi = _check_fit_range(fit_range)
        keep = (ref >= lo) & (ref <= hi)
        if keep.sum() < 3:
            raise ERInputError(
                f"only {int(keep.sum())} baseline models have reference accuracy in [{lo:g}, {hi:g}] "
                f"(need at least 3 to fit a line); widen the fit range"
            )
        ref, shift = ref[keep], shift[keep]
        ref_n = ref_n[keep] if ref_n is not None else None
        shift_n = shift_n[keep] if shift_n is not None else None
        fit_range = (lo, hi)
    n = len(ref)
    if n < 3:
        raise ERInputError(f"need at least 3 baseline models to fit a line, got {n}")
    x, y = sc.to_axis(ref, ref_n), sc.to_axis(shift, shift_n)
    if np.ptp(x) == 0:
        raise ERInputError("all baseline models have the same reference accuracy: a line cannot be fitted")
    vx = sc.axis_variance(ref, ref_n) if ref_n is not None else None
    vy = sc.axis_variance(shift, shift_n) if shift_n is not None else None
    line = _fit_arrays(x, y, vx, vy)
    return LineFit(
        scale=sc.name,
        slope=float(line.slope),
        intercept=float(line.intercept),
        n=n,
        x_mean=float(line.x_mean),
        sxx=float(line.sxx),
        residual_sd=float(line.s),
        r=float(line.r),
        t_crit=float(_t(n - 2, confidence)),
        reference_min=float(ref.min()),
        reference_max=float(ref.max()),
        fit_range=fit_range,
        confidence=confidence,
        reliability=float(line.reliability),
        slope_ols=float(line.slope_ols),
        axis_min=float(x.min()),
        axis_max=float(x.max()),
        min_r=min_r,
        noise_mean=float(line.noise_mean),
        noise_level=float(line.noise_level),
        noise_slope=float(line.noise_slope),
        noise_cov=float(line.noise_cov),
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


def _bootstrap_predictions(x, y, vx, at, n_boot, seed) -> np.ndarray:
    """(fits, points) line heights at ``at`` (transformed units) of fits on resampled baseline models."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    line = _fit_arrays(x[idx], y[idx], None if vx is None else vx[idx])
    ok = np.isfinite(line.slope) & (line.sxx > 0)  # a resample of one repeated point has no slope; drop it
    return line.slope[ok, None] * at[None, :] + line.intercept[ok, None]


def bootstrap_band(
    baseline_ref: np.ndarray,
    baseline_shift: np.ndarray,
    reference_accuracy: np.ndarray,
    scale: str | Scale = "probit",
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    baseline_ref_n=None,
    baseline_shift_n=None,
    reference_n=None,
) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) predicted shifted accuracy: percentiles of line fits on resampled baseline models."""
    sc = get_scale(scale)
    x, y = sc.to_axis(baseline_ref, baseline_ref_n), sc.to_axis(baseline_shift, baseline_shift_n)
    vx = sc.axis_variance(baseline_ref, baseline_ref_n) if baseline_ref_n is not None else None
    preds = _bootstrap_predictions(x, y, vx, sc.to_axis(reference_accuracy, reference_n), n_boot, seed)
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
    confidence: float = 0.95

    def output_table(self) -> pl.DataFrame:
        """The columns of the CLI contract, in its order, then the guardrails."""
        return self.table.select(CLI_COLUMNS)

    def group(self, name: str) -> dict:
        rows = self.groups.filter(pl.col("group") == name).to_dicts()
        if not rows:
            raise KeyError(f"no group {name!r}; groups: {', '.join(self.groups['group'].to_list())}")
        return rows[0]

    def has_group(self, name: str) -> bool:
        return name in self.groups["group"].to_list()

    def with_example_bootstrap(self, boot: "ExampleBootstrap") -> "ERResult":
        """Adds ``er_lower_example_bootstrap``/``er_upper_example_bootstrap`` to ``table`` and ``groups``."""
        table = self.table.drop([c for c in EXAMPLE_BOOTSTRAP_COLUMNS if c in self.table.columns])
        groups = self.groups.drop([c for c in EXAMPLE_BOOTSTRAP_COLUMNS if c in self.groups.columns])
        self.table = table.join(boot.models, on="model", how="left", maintain_order="left")
        self.groups = groups.join(boot.groups, on="group", how="left", maintain_order="left")
        return self

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
                "confidence": self.confidence,
            },
        }


def _nan_to_none(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _jsonable_rows(df: pl.DataFrame) -> list[dict]:
    return [_nan_to_none(row) for row in df.to_dicts()]


def _n_column(df: pl.DataFrame, col: str) -> np.ndarray | None:
    return df[col].to_numpy().astype(float) if col in df.columns else None


def extrapolated_mask(fit: LineFit, x_axis, margin: float = EXTRAPOLATION_MARGIN) -> np.ndarray:
    """True where x (transformed reference accuracy) lies beyond the fitted baselines' range by > margin * span."""
    x_axis = np.asarray(x_axis, dtype=float)
    lo, hi = fit.axis_min, fit.axis_max
    if lo is None or hi is None:
        sc = fit._scale
        lo, hi = float(sc.to_axis(fit.reference_min)), float(sc.to_axis(fit.reference_max))
    pad = margin * (hi - lo)
    return (x_axis < lo - pad) | (x_axis > hi + pad)


def _row_caution(extrapolated: bool, fit: LineFit) -> str:
    parts = (["extrapolated"] if extrapolated else []) + fit.cautions()
    return "; ".join(parts)


def effective_robustness(
    table: pl.DataFrame,
    baseline_group: str = "baseline",
    scale: str = "probit",
    fit_range: tuple[float, float] | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    binomial: bool = False,
    confidence: float = 0.95,
    extrapolation_margin: float = EXTRAPOLATION_MARGIN,
    min_r: float = MIN_R,
) -> ERResult:
    """ER of every row of ``table`` (model, group, reference_accuracy, shifted_accuracy[, reference_n, shifted_n]).

    The line is fitted on rows whose group is ``baseline_group`` (and, with ``fit_range``, whose reference
    accuracy is in [lo, hi]).  ``bootstrap=B`` replaces the t band by a percentile band of B resampled fits.
    ``binomial=True`` widens each model's interval by the uncertainty of its own accuracies (Wilson).
    Group intervals (``groups``) are the group mean's (module docstring) and do not depend on ``binomial``.
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
            f"models to fit a line (groups present: {', '.join(groups)}; choose one with --baseline-group, form field "
            "baseline_group)"
        )
    ref = df["reference_accuracy"].to_numpy()
    shift = df["shifted_accuracy"].to_numpy()
    ref_n, shift_n = _n_column(df, "reference_n"), _n_column(df, "shifted_n")
    pick = lambda a, mask: None if a is None else a[mask]  # noqa: E731
    fit = fit_line(ref[is_base], shift[is_base], sc, fit_range=fit_range, confidence=confidence,
                   reference_n=pick(ref_n, is_base), shifted_n=pick(shift_n, is_base), min_r=min_r)
    in_fit = is_base.copy()
    if fit.fit_range is not None:
        in_fit &= (ref >= fit.fit_range[0]) & (ref <= fit.fit_range[1])

    x = sc.to_axis(ref, ref_n)
    pred_axis, se_axis, h = (a[0] for a in _band(fit._line, x[None, :], confidence))
    gain = sc.derivative(pred_axis)  # accuracy per transformed unit at each prediction
    pred = sc.to_accuracy(pred_axis)
    line_se = gain * se_axis
    lower, upper = sc.to_accuracy(pred_axis - h), sc.to_accuracy(pred_axis + h)
    band = "t"
    boot_preds = None
    if bootstrap:
        vx = sc.axis_variance(ref[in_fit], pick(ref_n, in_fit)) if ref_n is not None else None
        boot_preds = _bootstrap_predictions(x[in_fit], sc.to_axis(shift[in_fit], pick(shift_n, in_fit)), vx, x,
                                            bootstrap, seed)
        alpha = 1 - confidence
        lo_ax, hi_ax = np.percentile(boot_preds, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
        lower, upper = sc.to_accuracy(lo_ax), sc.to_accuracy(hi_ax)
        band = "bootstrap"
    er = shift - pred
    extrapolated = extrapolated_mask(fit, x, extrapolation_margin)
    columns = {
        "model": df["model"],
        "group": df["group"],
        "reference_accuracy": ref,
        "shifted_accuracy": shift,
        "predicted_shifted_accuracy": pred,
        "effective_robustness": er,
        "er_lower": shift - upper,
        "er_upper": shift - lower,
        "extrapolated": extrapolated,
        "weak_line": np.full(len(df), fit.weak_line),
        "inverse_line": np.full(len(df), fit.inverse_line),
        "caution": [_row_caution(bool(e), fit) for e in extrapolated],
        "line_lower": lower,
        "line_upper": upper,
        "line_se": line_se,
        "line_gain": gain,
        "line_dx": x - fit.x_mean,
        "er_se": line_se,
        "in_fit": in_fit,
    }
    if binomial:
        if ref_n is None or shift_n is None:
            raise ERInputError("binomial intervals need columns 'reference_n' and 'shifted_n' (numbers of examples)")
        if np.isnan(ref_n).any() or np.isnan(shift_n).any():
            raise ERInputError("binomial intervals need reference_n and shifted_n on every row")
        r_lo, r_hi = wilson_interval(ref, ref_n, confidence)
        s_lo, s_hi = wilson_interval(shift, shift_n, confidence)
        columns["er_lower"], columns["er_upper"] = _widen_with_binomial(
            sc, fit._line, ref_n, shift, pred, lower, upper, r_lo, r_hi, s_lo, s_hi)
        z = float(special.ndtri(0.5 + confidence / 2))
        binomial_var = ((s_hi - s_lo) / (2 * z)) ** 2 + (fit.slope * gain * np.sqrt(sc.axis_variance(ref, ref_n))) ** 2
        columns["er_se"] = np.sqrt(line_se**2 + binomial_var)
        columns.update(reference_lower=r_lo, reference_upper=r_hi, shifted_lower=s_lo, shifted_upper=s_hi)
    for col in ("reference_n", "shifted_n"):
        if col in df.columns:
            columns[col] = df[col]
    out = pl.DataFrame(columns)
    line_variance = None
    if boot_preds is not None:
        acc_boot = sc.to_accuracy(boot_preds)  # (fits, rows)
        line_variance = {}
        for key, idx in _group_indices(df["group"].to_list()).items():
            line_variance[key] = float(acc_boot[:, idx].mean(axis=1).var(ddof=1)) if len(acc_boot) > 1 else float("nan")
    return ERResult(
        table=out,
        fit=fit,
        groups=aggregate_copies(out, by="group", fit=fit, confidence=confidence, line_variance=line_variance),
        baseline_group=baseline_group,
        band=band,
        binomial=binomial,
        confidence=confidence,
    )


def _group_indices(keys: Sequence) -> dict:
    out: dict = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return {k: np.asarray(v) for k, v in out.items()}


def _widen_with_binomial(sc, line, ref_n, shift, pred, lower, upper, r_lo, r_hi, s_lo, s_hi):
    """Combine three independent 95% half-widths in quadrature (each roughly normal), per direction.

    ER = shifted - predicted.  ER is larger when the shifted accuracy is higher (Wilson upper - shifted),
    the line is lower (predicted - band lower) or the true reference accuracy is such that the line
    predicts less (predicted - min over the reference Wilson ends, through the fitted line); and vice versa.
    Measured per-model coverage 95-96% from 150 to 50,000 examples (Clopper-Pearson ends: 96-97%).
    """
    slope, intercept = np.asarray(line.slope), np.asarray(line.intercept)
    if slope.ndim:  # a batch of lines against (batch, models) accuracies
        slope, intercept = slope[..., None], intercept[..., None]
    at = lambda r: sc.to_accuracy(slope * sc.to_axis(r, ref_n) + intercept)  # noqa: E731
    p_at_lo, p_at_hi = at(r_lo), at(r_hi)
    ref_down = np.maximum(pred - np.minimum(p_at_lo, p_at_hi), 0)
    ref_up = np.maximum(np.maximum(p_at_lo, p_at_hi) - pred, 0)
    er = shift - pred
    up = np.sqrt((s_hi - shift) ** 2 + (pred - lower) ** 2 + ref_down**2)
    down = np.sqrt((shift - s_lo) ** 2 + (upper - pred) ** 2 + ref_up**2)
    return er - down, er + up


# --- batches of tables (simulation) ------------------------------------------------------------------


def er_arrays(
    base_ref: np.ndarray,
    base_shift: np.ndarray,
    ref: np.ndarray,
    shift: np.ndarray,
    base_ref_n=None,
    base_shift_n=None,
    ref_n=None,
    shift_n=None,
    scale: str | Scale = "probit",
    binomial: bool = False,
    confidence: float = 0.95,
) -> dict[str, np.ndarray]:
    """:func:`effective_robustness` on a batch of tables at once (leading axes: tables; last: models).

    ``base_*`` are the baselines (batch, n), ``ref``/``shift`` one judged group (batch, m); the ``*_n`` are
    numbers of examples (broadcastable).  Returns per-model ``effective_robustness``, ``er_lower``,
    ``er_upper`` and the group's ``group_er``, ``group_lower``, ``group_upper`` (same formulas and code
    paths as the table version; ``tests/test_er_coverage.py`` checks both agree)."""
    sc = get_scale(scale)
    base_ref, base_shift = np.asarray(base_ref, float), np.asarray(base_shift, float)
    ref, shift = np.asarray(ref, float), np.asarray(shift, float)
    bn = lambda v, like: None if v is None else np.broadcast_to(np.asarray(v, float), like.shape)  # noqa: E731
    b_ref_n, b_shift_n, ref_n, shift_n = bn(base_ref_n, base_ref), bn(base_shift_n, base_shift), bn(ref_n, ref), bn(shift_n, shift)
    vx = sc.axis_variance(base_ref, b_ref_n) if b_ref_n is not None else None
    vy = sc.axis_variance(base_shift, b_shift_n) if b_shift_n is not None else None
    line = _fit_arrays(sc.to_axis(base_ref, b_ref_n), sc.to_axis(base_shift, b_shift_n), vx, vy)
    x = sc.to_axis(ref, ref_n)
    pred_axis, _, h = _band(line, x, confidence)
    gain = sc.derivative(pred_axis)
    pred = sc.to_accuracy(pred_axis)
    lower, upper = sc.to_accuracy(pred_axis - h), sc.to_accuracy(pred_axis + h)
    er = shift - pred
    er_lower, er_upper = shift - upper, shift - lower
    if binomial:
        r_lo, r_hi = wilson_interval(ref, ref_n, confidence)
        s_lo, s_hi = wilson_interval(shift, shift_n, confidence)
        er_lower, er_upper = _widen_with_binomial(sc, line, ref_n, shift, pred, lower, upper, r_lo, r_hi, s_lo, s_hi)
    v_line, df_line = _group_line_variance(line, gain, x - line.x_mean[..., None])
    m = er.shape[-1]
    mean = er.mean(-1)
    half = combined_half_width([(v_line, df_line), (er.var(-1, ddof=1) / m, m - 1)], confidence)
    return {"effective_robustness": er, "er_lower": er_lower, "er_upper": er_upper,
            "group_er": mean, "group_lower": mean - half, "group_upper": mean + half}


# --- aggregation --------------------------------------------------------------------------------


def aggregate_copies(
    table: pl.DataFrame,
    by: str | Sequence[str] = "group",
    fit: LineFit | None = None,
    confidence: float = 0.95,
    line_variance: dict | None = None,
) -> pl.DataFrame:
    """Mean ER per key with the interval of that mean (module docstring): the shared line's variance at the
    key's models plus the spread between them, with t quantiles for small counts.

    Use ``by="group"`` for a per-group summary, or a column naming the copies of one model (seeds) to
    aggregate copies.  The line's part needs ``fit`` and the table's ``line_gain``/``line_dx`` columns (as
    :func:`effective_robustness` writes them); a table without them gets the spread-only interval
    mean ± t(m-1)·SE, and says so in ``caution``.  A key with a single row keeps that row's own interval.
    ``line_variance`` (key -> variance) replaces the analytic line part (bootstrap fits).
    """
    keys = [by] if isinstance(by, str) else list(by)
    missing = [k for k in keys + ["effective_robustness", "er_lower", "er_upper"] if k not in table.columns]
    if missing:
        raise ERInputError(f"cannot aggregate: missing column(s) {', '.join(missing)}")
    has_line = fit is not None and {"line_gain", "line_dx"} <= set(table.columns)
    extra = [c for c in ("reference_accuracy", "shifted_accuracy", "predicted_shifted_accuracy") if c in table.columns]
    rows = []
    for part in table.partition_by(keys, maintain_order=True):
        key_values = {k: part[k][0] for k in keys}
        er = part["effective_robustness"].to_numpy().astype(float)
        m = len(er)
        row = {**key_values, "n_models": m, "effective_robustness": float(er.mean())}
        caution = []
        if m == 1:
            lo, hi = float(part["er_lower"][0]), float(part["er_upper"][0])
            se = float(part["er_se"][0]) if "er_se" in part.columns else float("nan")
            line_se = float(part["line_se"][0]) if "line_se" in part.columns else float("nan")
            spread_se = float("nan")
        else:
            v_spread = float(er.var(ddof=1)) / m
            lkey = key_values[keys[0]] if len(keys) == 1 else tuple(key_values.values())
            if has_line:
                gain = part["line_gain"].to_numpy().astype(float)[None, :]
                dx = part["line_dx"].to_numpy().astype(float)[None, :]
                v_line, df_line = (float(v[0]) for v in _group_line_variance(fit._line, gain, dx))
                if line_variance is not None and math.isfinite(line_variance.get(lkey, float("nan"))):
                    v_line, df_line = float(line_variance[lkey]), fit.n - 2  # bootstrap fits
                half = float(combined_half_width([(v_line, df_line), (v_spread, m - 1)], confidence))
            else:
                v_line = float("nan")
                half = float(_t(m - 1, confidence)) * math.sqrt(v_spread)
                caution.append("spread between models only (no line uncertainty)")
            lo, hi = row["effective_robustness"] - half, row["effective_robustness"] + half
            line_se = math.sqrt(v_line) if math.isfinite(v_line) else float("nan")
            spread_se = math.sqrt(v_spread)
            se = math.sqrt((v_line if math.isfinite(v_line) else 0.0) + v_spread)
        row.update(er_lower=lo, er_upper=hi, er_lower_total=lo, er_upper_total=hi, er_se=se, line_se=line_se,
                   spread_se=spread_se)
        if "extrapolated" in part.columns:
            k = int(part["extrapolated"].sum())
            row.update(n_extrapolated=k, extrapolated=k > 0)
            if k:
                caution.insert(0, "extrapolated" if m == 1 else f"extrapolated ({k} of {m} models)")
        else:
            row.update(n_extrapolated=0, extrapolated=False)
        weak = bool(part["weak_line"].any()) if "weak_line" in part.columns else False
        inverse = bool(part["inverse_line"].any()) if "inverse_line" in part.columns else False
        row.update(weak_line=weak, inverse_line=inverse)
        if fit is not None:
            caution += fit.cautions()
        else:
            caution += [w for w, flag in (("inverse line", inverse), ("weak line", weak)) if flag]
        row["caution"] = "; ".join(caution)
        for c in extra:
            row[c] = float(part[c].mean())
        rows.append(row)
    schema = {**{k: table.schema[k] for k in keys}, "n_models": pl.Int64, "effective_robustness": pl.Float64,
              "er_lower": pl.Float64, "er_upper": pl.Float64, "er_lower_total": pl.Float64,
              "er_upper_total": pl.Float64, "er_se": pl.Float64, "line_se": pl.Float64, "spread_se": pl.Float64,
              "n_extrapolated": pl.Int64, "extrapolated": pl.Boolean, "weak_line": pl.Boolean,
              "inverse_line": pl.Boolean, "caution": pl.String, **{c: pl.Float64 for c in extra}}
    return pl.DataFrame(rows, schema=schema).sort(keys)


# --- the example-level bootstrap ------------------------------------------------------------------

EXAMPLE_BOOTSTRAP_COLUMNS = ("er_lower_example_bootstrap", "er_upper_example_bootstrap")


@dataclass(frozen=True)
class ExampleBootstrap:
    """Percentile intervals from resampled examples and baseline models (``example_bootstrap``)."""

    models: pl.DataFrame  # model, er_lower_example_bootstrap, er_upper_example_bootstrap
    groups: pl.DataFrame  # group, er_lower_example_bootstrap, er_upper_example_bootstrap
    n_boot: int  # resamples that gave a line


def _resampled_accuracy(correct: np.ndarray, present: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(resamples, models) accuracy and number of examples from example counts (resamples, examples)."""
    seen = counts @ present.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return (counts @ correct.T) / seen, seen


def example_bootstrap(
    models: Sequence[str],
    groups: Sequence[str],
    reference_correct: np.ndarray,
    shifted_correct: np.ndarray,
    in_fit: np.ndarray,
    scale: str | Scale = "probit",
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    chunk: int = 25,
) -> ExampleBootstrap:
    """Example-level bootstrap of ER: per resample, draw the reference and the shifted examples with
    replacement (the same examples for every model: their errors on an example are correlated), draw the
    baseline models of the fit with replacement, refit the line (clip 1/(2n), slope corrected as in
    :func:`fit_line`), and compute every model's ER; each group's mean is over its models drawn with
    replacement.  Intervals are the percentiles.

    ``reference_correct``/``shifted_correct``: (models, examples) with 1 = correct, 0 = wrong, NaN = no
    prediction for that example; ``in_fit``: which models the line is fitted on.
    """
    sc = get_scale(scale)
    models, groups = list(models), list(groups)
    in_fit = np.asarray(in_fit, bool)
    fit_idx = np.flatnonzero(in_fit)
    if len(fit_idx) < 3:
        raise ERInputError(f"the example bootstrap needs at least 3 baseline models in the fit, got {len(fit_idx)}")
    if n_boot < 1:
        raise ERInputError(f"bootstrap-examples must be a number of resamples >= 1, got {n_boot}")
    prepared = []
    for correct in (reference_correct, shifted_correct):
        correct = np.asarray(correct, dtype=float)
        if correct.shape[0] != len(models):
            raise ERInputError("one row of per-example correctness per model is needed")
        present = np.isfinite(correct)
        prepared.append((np.where(present, correct, 0.0).astype(np.float32), present.astype(np.float32)))
    (rc, rp), (scor, sp) = prepared
    rng = np.random.default_rng(seed)
    member_idx = _group_indices(groups)
    draws = {g: [] for g in member_idx}
    er_draws = []
    nb = len(fit_idx)
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        done += b
        accs = []
        for correct, present in ((rc, rp), (scor, sp)):
            e = correct.shape[1]
            counts = rng.multinomial(e, np.full(e, 1.0 / e), size=b).astype(np.float32)
            accs.append(_resampled_accuracy(correct, present, counts))
        (ref, ref_n), (shift, shift_n) = accs
        pick = fit_idx[rng.integers(0, nb, size=(b, nb))]
        take = lambda a: np.take_along_axis(a, pick, axis=1)  # noqa: E731
        vx = sc.axis_variance(take(ref), take(ref_n))
        line = _fit_arrays(sc.to_axis(take(ref), take(ref_n)), sc.to_axis(take(shift), take(shift_n)), vx)
        pred = sc.to_accuracy(line.slope[:, None] * sc.to_axis(ref, ref_n) + line.intercept[:, None])
        er = shift - pred  # (b, models)
        ok = np.isfinite(line.slope) & (line.sxx > 0)
        er = er[ok]
        er_draws.append(er)
        for g, idx in member_idx.items():
            members = idx[rng.integers(0, len(idx), size=(len(er), len(idx)))]
            draws[g].append(np.take_along_axis(er, members, axis=1).mean(axis=1))
    er_all = np.concatenate(er_draws)
    alpha = 1 - confidence
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    with np.errstate(invalid="ignore"):
        lo, hi = np.nanpercentile(er_all, q, axis=0) if len(er_all) else (np.full(len(models), np.nan),) * 2
    model_table = pl.DataFrame({"model": models, EXAMPLE_BOOTSTRAP_COLUMNS[0]: lo, EXAMPLE_BOOTSTRAP_COLUMNS[1]: hi},
                               schema={"model": pl.String, EXAMPLE_BOOTSTRAP_COLUMNS[0]: pl.Float64,
                                       EXAMPLE_BOOTSTRAP_COLUMNS[1]: pl.Float64})
    group_rows = []
    for g, parts in draws.items():
        values = np.concatenate(parts)
        glo, ghi = np.nanpercentile(values, q) if len(values) else (float("nan"), float("nan"))
        group_rows.append({"group": g, EXAMPLE_BOOTSTRAP_COLUMNS[0]: float(glo), EXAMPLE_BOOTSTRAP_COLUMNS[1]: float(ghi)})
    group_table = pl.DataFrame(group_rows, schema={"group": pl.String, EXAMPLE_BOOTSTRAP_COLUMNS[0]: pl.Float64,
                                                   EXAMPLE_BOOTSTRAP_COLUMNS[1]: pl.Float64})
    return ExampleBootstrap(model_table, group_table, int(len(er_all)))


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
    """Verdict of a group-summary row, on the group mean's interval."""
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
    """``+9.20% [+7.28%, +11.12%]``, with the row's cautions in brackets (``(extrapolated; weak line ...)``)."""
    lo, hi = row.get("er_lower_total", row["er_lower"]), row.get("er_upper_total", row["er_upper"])
    text = f"{_pct(row['effective_robustness'])} [{_pct(lo)}, {_pct(hi)}]"
    return f"{text} ({row['caution']})" if row.get("caution") else text


@dataclass
class ComparableView:
    """One judged group against the baselines whose reference accuracy is near its own."""

    group: str
    fit_range: tuple[float, float]
    n_baselines: int
    result: ERResult | None
    note: str = ""  # words: why there is no fit, or what to be careful about

    @property
    def row(self) -> dict | None:
        return self.result.group(self.group) if self.result is not None and self.result.has_group(self.group) else None


@dataclass
class FitComparison:
    """ER from the full-range baseline fit and, per judged group, from baselines of comparable reference accuracy."""

    full: ERResult
    views: dict[str, ComparableView]
    judged_groups: list[str]
    disagree: bool
    message: str
    weak_fit: bool
    fixed_range: tuple[float, float] | None = None

    def comparable(self, group: str) -> ERResult | None:
        """The comparable-baseline fit of ``group`` (None: not judged, or too few baselines in its window)."""
        view = self.views.get(group)
        return view.result if view is not None else None

    def comparable_row(self, group: str) -> dict | None:
        view = self.views.get(group)
        return view.row if view is not None else None

    @property
    def window(self) -> ERResult | None:
        """The comparable fit of the first judged group (all judged groups share it when ``fit_range`` was given)."""
        return self.views[self.judged_groups[0]].result if self.judged_groups else None

    @property
    def fit_range(self) -> tuple[float, float]:
        """The window of the first judged group (or the given ``fit_range``)."""
        if self.fixed_range is not None:
            return self.fixed_range
        if self.judged_groups:
            return self.views[self.judged_groups[0]].fit_range
        return (self.full.fit.reference_min, self.full.fit.reference_max)

    @property
    def n_window_baselines(self) -> int:
        return self.views[self.judged_groups[0]].n_baselines if self.judged_groups else self.full.fit.n

    def windows(self) -> dict[str, ERResult]:
        """Judged group -> its comparable fit, for the groups that have one."""
        return {g: v.result for g, v in self.views.items() if v.result is not None}

    def verdicts(self) -> dict[str, tuple[str, str | None]]:
        """group -> (verdict with the full-range fit, verdict with comparable baselines or None)."""
        out = {}
        for g in self.judged_groups:
            w = self.comparable_row(g)
            out[g] = (group_verdict(self.full.group(g)), group_verdict(w) if w else None)
        return out

    def summary(self) -> pl.DataFrame:
        """One row per (view, group): view ("full" / "comparable"), group, n_models, ER, interval, verdict,
        cautions and fit diagnostics.  The comparable view has one row per judged group, from its own window."""
        frames = []
        extra = [c for c in EXAMPLE_BOOTSTRAP_COLUMNS if c in self.full.groups.columns]
        for row in self.full.groups.select(*GROUP_COLUMNS, *extra).to_dicts():
            frames.append({"view": "full", **row, "verdict": group_verdict(row), "window_note": "",
                           **fit_columns(self.full.fit)})
        for g in self.judged_groups:
            view = self.views[g]
            row = view.row
            if row is None:
                continue
            cols = [c for c in (*GROUP_COLUMNS, *EXAMPLE_BOOTSTRAP_COLUMNS) if c in row]
            frames.append({"view": "comparable", **{c: row[c] for c in cols}, "verdict": group_verdict(row),
                           "window_note": view.note, **fit_columns(view.result.fit)})
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
        "fit_reliability": d["reliability"],
        "fit_weak_line": d["weak_line"],
        "fit_inverse_line": d["inverse_line"],
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
    min_r: float = MIN_R,
    min_window_baselines: int = MIN_WINDOW_BASELINES,
) -> FitComparison:
    """Full-range fit vs, per judged group, a fit on baselines of comparable reference accuracy, and words.

    Each judged group's window is ``fit_range`` when given, else that group's own reference-accuracy range
    ± ``margin`` (so a from-scratch control at 0.70 is not judged in the window of fine-tuned models at
    0.95).  A window with fewer than ``min_window_baselines`` baselines gets no fit, and says so.  The views
    disagree when, for some judged group, their verdicts (helped / hurt / no clear effect) differ.  A fit
    with r < ``min_r`` is called weak (the trend may not be a line).
    """
    kwargs = dict(baseline_group=baseline_group, scale=scale, bootstrap=bootstrap, seed=seed, binomial=binomial,
                  min_r=min_r)
    full = effective_robustness(table, **kwargs)
    all_groups = full.groups["group"].to_list()
    judged = list(judged_groups) if judged_groups is not None else [g for g in all_groups if g != baseline_group]
    unknown = [g for g in judged if g not in all_groups]
    if unknown:
        raise ERInputError(f"unknown group(s) {', '.join(unknown)}; groups present: {', '.join(all_groups)}")
    fixed = _check_fit_range(fit_range) if fit_range is not None else None
    base_ref = full.table.filter(pl.col("group") == baseline_group)["reference_accuracy"]
    fits: dict[tuple[float, float], ERResult | str] = {}
    views = {}
    for g in judged:
        window = fixed if fixed is not None else comparable_fit_range(full.table, [g], margin)
        n_window = int(((base_ref >= window[0]) & (base_ref <= window[1])).sum())
        result, note = None, ""
        if n_window < min_window_baselines:
            note = (f"only {n_window} baseline model{'s have' if n_window != 1 else ' has'} reference accuracy in "
                    f"[{window[0]:.3f}, {window[1]:.3f}]: too few for a comparable-baseline fit "
                    f"(need {min_window_baselines})")
        else:
            if window not in fits:
                try:
                    fits[window] = effective_robustness(table, fit_range=window, **kwargs)
                except ERInputError as exc:  # e.g. all comparable baselines share one reference accuracy
                    fits[window] = str(exc)
            found = fits[window]
            if isinstance(found, str):
                note = f"no comparable-baseline fit in [{window[0]:.3f}, {window[1]:.3f}]: {found}"
            else:
                result = found
                note = _window_note(result, g, window)
        views[g] = ComparableView(g, window, n_window, result, note)
    weak = full.fit.weak_line
    message, disagree = _comparison_message(full, views, judged, weak, min_r)
    return FitComparison(full, views, judged, disagree, message, weak, fixed_range=fixed)


def _window_note(result: ERResult, group: str, window: tuple[float, float]) -> str:
    """What to be careful about in a comparable window: its line extrapolates, or it is weak/inverse."""
    parts = []
    row = result.group(group)
    if row["n_extrapolated"]:
        parts.append(f"the window's line is extrapolated to {row['n_extrapolated']} of {row['n_models']} {group} "
                     f"models (its {result.fit.n} baselines span reference accuracy "
                     f"{result.fit.reference_min:.3f}-{result.fit.reference_max:.3f})")
    parts += [f"the window's line is {c}" for c in result.fit.cautions()]
    return "; ".join(parts)


def _comparison_message(full, views, judged, weak, min_r) -> tuple[str, bool]:
    parts = []
    disagree = False
    if not judged:
        parts.append("Only baseline models are present: there is no other group to judge.")
    for g in judged:
        f = full.group(g)
        fv = group_verdict(f)
        text = f"{g}: ER {describe_interval(f)} against all {full.fit.n} baselines ({fv})"
        view = views[g]
        w = view.row
        lo, hi = view.fit_range
        if w is not None:
            wv = group_verdict(w)
            text += (f", {describe_interval(w)} against the {view.result.fit.n} baselines with reference accuracy "
                     f"in [{lo:.3f}, {hi:.3f}] ({wv})")
            if wv != fv:
                disagree = True
                text += " - the views disagree"
            elif w["er_lower"] > f["er_upper"] or f["er_lower"] > w["er_upper"]:
                text += " - same verdict, but the sizes differ (the intervals do not overlap)"
            if view.note:
                text += f"; careful: {view.note}"
        else:
            text += f"; {view.note}, so only the full-range line is shown"
        parts.append(text + ".")
    if weak:
        parts.append(
            f"The baseline fit is weak (r = {full.fit.r:.3f} < {min_r:g}): accuracy may not lie on a line here, "
            f"so prefer the comparable-baseline view."
        )
    if full.fit.inverse_line:
        parts.append(f"The baseline line is inverse (slope {full.fit.slope:.3f} <= 0): its ER numbers do not "
                     f"measure robustness beyond the trend.")
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


__all__ = ["ERSettings", 
    "CLI_COLUMNS",
    "ComparableView",
    "ERInputError",
    "ERResult",
    "EXAMPLE_BOOTSTRAP_COLUMNS",
    "ExampleBootstrap",
    "FitComparison",
    "GROUP_COLUMNS",
    "LineFit",
    "SCALES",
    "accuracy_pairs",
    "aggregate_copies",
    "bootstrap_band",
    "clip_epsilon",
    "clopper_pearson",
    "combined_half_width",
    "compare_fits",
    "comparable_fit_range",
    "describe_interval",
    "effective_robustness",
    "er_arrays",
    "example_bootstrap",
    "extrapolated_mask",
    "fit_columns",
    "fit_line",
    "group_verdict",
    "parse_fit_range",
    "validate_table",
    "verdict",
    "wilson_interval",
]
