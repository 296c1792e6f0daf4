"""The baseline line of effective robustness: accuracy scales, the least-squares fit and its band, binomial intervals.

The line (:func:`fit_line`).  Transformed shifted accuracy on transformed reference accuracy (probit by default, or
logit: ``SCALES``), ordinary least squares over the baseline models; when the baselines' numbers of reference
examples are known (``reference_n``), the slope is corrected for the test-set noise in their reference accuracies,
which flattens an OLS line (regression dilution): ``slope = Sxy / (lambda * Sxx)`` with reliability
``lambda = 1 - (1 - 1/n) * sum(v_i) / Sxx`` (``v_i``: binomial variance of baseline i's transformed
reference accuracy, delta method; ``lambda`` is kept >= 0.5).  At 50,000 examples lambda is 1.000; at 150
examples, 80 baselines and judged models at the top of their range, the uncorrected line let the group
interval cover the truth in 75% of simulated tables instead of 95%.

Clipping.  Accuracies of exactly 0 or 1 have no probit/logit: they are clipped to [1/(2n), 1 - 1/(2n)]
when the number of examples n is known (``reference_n``/``shifted_n``), else to [1e-4, 1 - 1e-4].

The line's error (``confidence``, default 95%).  Without numbers of examples: the classic band ``t(n-2) * s *
sqrt(1/n + (x - mean x)^2 / Sxx)`` (METHOD.md).  With them, each baseline's residual variance is ``tau^2 + v_i``
(its own deviation plus its known test-set noise, which on the probit axis doubles from 50% to 90% accuracy), so
the line's error at the accurate end, where pre-trained models sit, is not understated by one pooled variance;
``tau^2`` is estimated from the residuals and the degrees of freedom follow Satterthwaite.  :func:`bootstrap_band`
is the alternative: percentiles of line fits on baseline models resampled with replacement.

The arrays core (:class:`LineArrays`, :func:`fit_arrays`, :func:`line_band`) fits a batch of tables at once (leading
axes); :class:`LineFit` is one fitted line as users see it, with its diagnostics and cautions (``weak_line``:
r < 0.9, ``inverse_line``: slope <= 0; :func:`extrapolated_mask`: reference accuracies beyond the baselines' range).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np
from scipy import special  # not scipy.stats: it triples the start-up time of `askshift er`

from askshift.lib.registry import Registry, UnknownNameError

EPS = 1e-4  # clip of accuracies whose number of examples is unknown
MIN_R = 0.9  # below: "weak line"
EXTRAPOLATION_MARGIN = 0.1  # fraction of the baselines' span (transformed axis) beyond which a model is extrapolated
MIN_RELIABILITY = 0.5  # floor of the errors-in-variables correction of the slope


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


class LineArrays(NamedTuple):
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


def fit_arrays(x: np.ndarray, y: np.ndarray, vx: np.ndarray | None = None, vy: np.ndarray | None = None) -> LineArrays:
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
    return LineArrays(slope, intercept, x_mean, sxx, s, r, lam, slope_ols, noise_mean, noise_level, noise_slope,
                 noise_cov, n)


def _line_variances(line: LineArrays, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def t_quantile(df, confidence: float) -> np.ndarray:
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
        welch = np.where(total > 0, t_quantile(nu, confidence) * np.sqrt(total), 0.0)
        best = np.maximum.reduce([np.broadcast_to(df, np.shape(total)) for _, df in parts])
        weight = 0.5 + 0.3 * np.minimum(1.0, 8.0 / best)
    bound = np.sqrt(sum(t_quantile(df, confidence) ** 2 * v for v, df in parts))
    return weight * welch + (1 - weight) * bound


def line_band(line: LineArrays, x_at: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction, standard error, half-width) of the line at x_at, transformed units."""
    e = lambda f: np.asarray(f)[..., None]  # noqa: E731
    pred = e(line.slope) * x_at + e(line.intercept)
    dx = x_at - e(line.x_mean)
    var, df = _line_variances(line, np.ones_like(dx), dx)
    return pred, np.sqrt(var), combined_half_width([(var, df)], confidence)


def group_line_variance(line: LineArrays, gain: np.ndarray, dx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    # Known test-set noise in the line's error (see LineArrays); 0: the classic homoscedastic band.
    noise_mean: float = 0.0
    noise_level: float = 0.0
    noise_slope: float = 0.0
    noise_cov: float = 0.0

    @property
    def _scale(self) -> Scale:
        return get_scale(self.scale)

    @property
    def arrays(self) -> LineArrays:
        f = np.float64
        return LineArrays(f(self.slope), f(self.intercept), f(self.x_mean), f(self.sxx), f(self.residual_sd), f(self.r),
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
        return line_band(self.arrays, x_axis[None, :], self.confidence)[1][0].reshape(np.shape(x_axis))

    def half_width_axis(self, x_axis) -> np.ndarray:
        """Half-width of the confidence band of the line at x (transformed units): t(n-2) * s * sqrt(1/n +
        (x - mean x)^2 / (lambda^2 Sxx)) when the numbers of examples are unknown (METHOD.md)."""
        shape = np.shape(x_axis)
        x_axis = np.atleast_1d(np.asarray(x_axis, dtype=float))
        return line_band(self.arrays, x_axis[None, :], self.confidence)[2][0].reshape(shape)

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
        lo, hi = check_fit_range(fit_range)
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
    line = fit_arrays(x, y, vx, vy)
    return LineFit(
        scale=sc.name,
        slope=float(line.slope),
        intercept=float(line.intercept),
        n=n,
        x_mean=float(line.x_mean),
        sxx=float(line.sxx),
        residual_sd=float(line.s),
        r=float(line.r),
        t_crit=float(t_quantile(n - 2, confidence)),
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


def check_fit_range(fit_range) -> tuple[float, float]:
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
        return check_fit_range((float(parts[0]), float(parts[1])))
    except ValueError as exc:
        raise ERInputError(str(exc) if isinstance(exc, ERInputError) else f"fit range {text!r} is not two numbers LO:HI") from None


def bootstrap_predictions(x, y, vx, at, n_boot, seed) -> np.ndarray:
    """(fits, points) line heights at ``at`` (transformed units) of fits on resampled baseline models."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    line = fit_arrays(x[idx], y[idx], None if vx is None else vx[idx])
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
    preds = bootstrap_predictions(x, y, vx, sc.to_axis(reference_accuracy, reference_n), n_boot, seed)
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


def extrapolated_mask(fit: LineFit, x_axis, margin: float = EXTRAPOLATION_MARGIN) -> np.ndarray:
    """True where x (transformed reference accuracy) lies beyond the fitted baselines' range by > margin * span."""
    x_axis = np.asarray(x_axis, dtype=float)
    lo, hi = fit.axis_min, fit.axis_max
    if lo is None or hi is None:
        sc = fit._scale
        lo, hi = float(sc.to_axis(fit.reference_min)), float(sc.to_axis(fit.reference_max))
    pad = margin * (hi - lo)
    return (x_axis < lo - pad) | (x_axis > hi + pad)


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


__all__ = [
    "EPS", "EXTRAPOLATION_MARGIN", "MIN_R", "MIN_RELIABILITY", "SCALES", "ERInputError", "LineArrays", "LineFit",
    "Scale", "bootstrap_band", "bootstrap_predictions", "check_fit_range", "clip_epsilon", "clopper_pearson",
    "combined_half_width", "extrapolated_mask", "fit_arrays", "fit_columns", "fit_line", "get_scale",
    "group_line_variance", "line_band", "parse_fit_range", "t_quantile", "wilson_interval",
]
