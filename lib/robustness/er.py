"""Effective robustness of every model and group against the baseline line, with intervals that hold their 95%.

Definition (METHOD.md): transform accuracies with probit (default) or logit, fit shifted on reference
accuracy by least squares over the baseline models (``askshift.lib.robustness.lines``), and call

    ER(model) = shifted accuracy - inverse(slope * transform(reference accuracy) + intercept).

Intervals (all ``confidence``, default 95%):

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
  conservative (up to 98%); the half-width is a weighted mean of the two (``lines.combined_half_width``),
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
  ``askshift.lib.robustness.comparison.compare_fits`` shows the full-range view beside a comparable-baseline view
  per judged group (its own window around its own reference accuracies) and says in words whether they disagree.

Guardrails, as columns and as words (``caution``, ``askshift.lib.robustness.wording``) next to every number:
``extrapolated`` (the model's reference accuracy is outside the fitted baselines' range by more than
``extrapolation_margin`` of that range on the transformed axis), ``weak_line`` (r < 0.9), ``inverse_line``
(slope <= 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Sequence

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field
from scipy import special  # not scipy.stats: it triples the start-up time of `askshift er`

from askshift.lib.robustness.lines import (
    EXTRAPOLATION_MARGIN,
    MIN_R,
    ERInputError,
    LineFit,
    Scale,
    bootstrap_predictions,
    combined_half_width,
    extrapolated_mask,
    fit_arrays,
    fit_line,
    get_scale,
    group_line_variance,
    line_band,
    t_quantile,
    wilson_interval,
)
from askshift.lib.robustness.wording import group_caution, model_caution

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
EXAMPLE_BOOTSTRAP_COLUMNS = ("er_lower_example_bootstrap", "er_upper_example_bootstrap")


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
    pred_axis, se_axis, h = (a[0] for a in line_band(fit.arrays, x[None, :], confidence))
    gain = sc.derivative(pred_axis)  # accuracy per transformed unit at each prediction
    pred = sc.to_accuracy(pred_axis)
    line_se = gain * se_axis
    lower, upper = sc.to_accuracy(pred_axis - h), sc.to_accuracy(pred_axis + h)
    band = "t"
    boot_preds = None
    if bootstrap:
        vx = sc.axis_variance(ref[in_fit], pick(ref_n, in_fit)) if ref_n is not None else None
        boot_preds = bootstrap_predictions(x[in_fit], sc.to_axis(shift[in_fit], pick(shift_n, in_fit)), vx, x,
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
        "caution": [model_caution(bool(e), fit) for e in extrapolated],
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
            sc, fit.arrays, ref_n, shift, pred, lower, upper, r_lo, r_hi, s_lo, s_hi)
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
    line = fit_arrays(sc.to_axis(base_ref, b_ref_n), sc.to_axis(base_shift, b_shift_n), vx, vy)
    x = sc.to_axis(ref, ref_n)
    pred_axis, _, h = line_band(line, x, confidence)
    gain = sc.derivative(pred_axis)
    pred = sc.to_accuracy(pred_axis)
    lower, upper = sc.to_accuracy(pred_axis - h), sc.to_accuracy(pred_axis + h)
    er = shift - pred
    er_lower, er_upper = shift - upper, shift - lower
    if binomial:
        r_lo, r_hi = wilson_interval(ref, ref_n, confidence)
        s_lo, s_hi = wilson_interval(shift, shift_n, confidence)
        er_lower, er_upper = _widen_with_binomial(sc, line, ref_n, shift, pred, lower, upper, r_lo, r_hi, s_lo, s_hi)
    v_line, df_line = group_line_variance(line, gain, x - line.x_mean[..., None])
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
        spread_only = False
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
                v_line, df_line = (float(v[0]) for v in group_line_variance(fit.arrays, gain, dx))
                if line_variance is not None and math.isfinite(line_variance.get(lkey, float("nan"))):
                    v_line, df_line = float(line_variance[lkey]), fit.n - 2  # bootstrap fits
                half = float(combined_half_width([(v_line, df_line), (v_spread, m - 1)], confidence))
            else:
                v_line = float("nan")
                half = float(t_quantile(m - 1, confidence)) * math.sqrt(v_spread)
                spread_only = True
            lo, hi = row["effective_robustness"] - half, row["effective_robustness"] + half
            line_se = math.sqrt(v_line) if math.isfinite(v_line) else float("nan")
            spread_se = math.sqrt(v_spread)
            se = math.sqrt((v_line if math.isfinite(v_line) else 0.0) + v_spread)
        row.update(er_lower=lo, er_upper=hi, er_lower_total=lo, er_upper_total=hi, er_se=se, line_se=line_se,
                   spread_se=spread_se)
        k = int(part["extrapolated"].sum()) if "extrapolated" in part.columns else 0
        weak = bool(part["weak_line"].any()) if "weak_line" in part.columns else False
        inverse = bool(part["inverse_line"].any()) if "inverse_line" in part.columns else False
        row.update(n_extrapolated=k, extrapolated=k > 0, weak_line=weak, inverse_line=inverse,
                   caution=group_caution(m, k, spread_only, fit, weak, inverse))
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
        line = fit_arrays(sc.to_axis(take(ref), take(ref_n)), sc.to_axis(take(shift), take(shift_n)), vx)
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
    "CLI_COLUMNS", "EXAMPLE_BOOTSTRAP_COLUMNS", "GROUP_COLUMNS", "GUARDRAIL_COLUMNS", "OUTPUT_COLUMNS",
    "REQUIRED_COLUMNS", "ERResult", "ERSettings", "ExampleBootstrap", "accuracy_pairs", "aggregate_copies",
    "effective_robustness", "er_arrays", "example_bootstrap", "validate_table",
]
