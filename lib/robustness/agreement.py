"""Agreement-on-the-line (Baek et al., NeurIPS 2022): accuracy on an unlabeled set from how often models agree (ALine-D).

Two models agree on an example when they predict the same class; agreement needs no label, so it can be measured on
the unlabeled shifted images as well as on the reference validation split.  Baek et al. observed that whenever the
accuracies of a family of networks lie on a line between reference and shifted data (probit axes), the agreements of
their pairs lie on a line too, with nearly the same slope and intercept.  Fitting the agreement line over the pairs
(probit(agreement shifted) = a * probit(agreement reference) + b) therefore tells the accuracy line without any
shifted label.  ALine-D then uses each pair's distance from that line: for every pair (i, j)

    (z_i + z_j) / 2 = a * (p_i + p_j) / 2 + b + [probit(agr_shift_ij) - a * probit(agr_ref_ij) - b]

with p = probit(reference accuracy) (measured: the reference split is labelled) and z = probit(shifted accuracy)
unknown; b cancels, and least squares over all pairs gives one z per model.  A model that is more (or less) accurate
on the shifted images than the line predicts agrees more (less) with the others there than the line predicts, so
ALine-D can place a model off the line, which is what a label-free effective robustness needs.

What it assumes.  (1) The agreement line has the accuracy line's slope (the intercept cancels): true in their
benchmarks when accuracy-on-the-line holds, and the reason for looking at ``AgreementLine.r`` before trusting a
number.  (2) A pair's agreement residual is the mean of the two models' accuracy residuals.  (3) Models err on
*different* classes when they err: two models that are wrong alike agree without being right.

When it fails.  A weak agreement line (``r`` below :data:`MIN_AGREEMENT_R`: few models, models too alike, or a shift
that sends most models to the same wrong class) leaves the slope undetermined; models trained alike (copies of one
fine-tuning recipe that make the same mistakes) agree more than their accuracy says, which ALine-D reads as a higher
accuracy; models near chance that predict one class agree with each other without being right.  Confident errors alone
do not mislead it, unlike average thresholded confidence (ATC, :mod:`askshift.lib.robustness.atc`).  On the digits
demo's unseen tint (``benchmarks/label_free_er.py``, three quick-demo seeds) most models collapse onto one class, the
agreement line is weak (r 0.36 to 0.66) and its sizes miss by 9 to 51 points, yet it had the sign of the FT and LP-FT
ER in 4 of 6 cases where ATC had none; on the in-support spurious tint (r >= 0.9) it had 1 of 6 and ATC 5.  In a
simulation where agreement-on-the-line holds (linear models on Gaussian classes, ``tests/test_robustness_agreement.py``)
its accuracies run a few points low for every model alike, and the ER of a robust group comes out within 1.5 points.

Which estimate the ask report leads with is decided in :mod:`askshift.lib.report.ask` (:func:`headline_method`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import polars as pl
from scipy import special

from askshift.lib.robustness.atc import ESTIMATE_SCHEMA
from askshift.lib.robustness.lines import MIN_R, get_scale

MIN_MODELS = 3  # a pair per equation, one unknown per model: 3 models (a triangle of pairs) is the least that solves
MIN_AGREEMENT_R = MIN_R  # below: the agreement line is weak (the same bar as a weak accuracy line)
PAIR_SCHEMA = {"model_a": pl.String, "model_b": pl.String, "reference_agreement": pl.Float64,
               "shifted_agreement": pl.Float64, "reference_n": pl.Int64, "shifted_n": pl.Int64,
               "used": pl.Boolean}


def probit(rate, n) -> np.ndarray:
    """Φ⁻¹ of a rate over ``n`` examples, clipped first to [1/(2n), 1 - 1/(2n)] (a rate of 0 or 1 has no probit):
    the accuracy line's own probit axis."""
    return get_scale("probit").to_axis(rate, n)


def predicted_classes(values, what: str) -> np.ndarray:
    """The predicted class per example: the argmax of 2-D logits, or 1-D integer predictions as given."""
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] >= 2 and values.shape[0] > 0:
        if not np.isfinite(values).all():
            raise ValueError(f"{what}: logits contain NaN or infinity")
        return values.argmax(axis=1)
    if values.ndim == 1 and values.size > 0 and np.issubdtype(values.dtype, np.integer):
        return values
    raise ValueError(f"{what}: need logits of shape (examples, classes >= 2) or integer predictions of shape "
                     f"(examples,), got {values.dtype} {values.shape}")


def agreement_matrix(predictions: np.ndarray) -> np.ndarray:
    """Share of examples on which models i and j predict the same class; ``predictions`` is (models, examples)."""
    k = predictions.shape[0]
    agree = np.eye(k)
    for i in range(k - 1):
        agree[i, i + 1:] = agree[i + 1:, i] = (predictions[i + 1:] == predictions[i]).mean(axis=1)
    return agree


@dataclass(frozen=True)
class AgreementLine:
    """probit(shifted agreement) = slope * probit(reference agreement) + intercept, fitted over ``n_pairs`` pairs."""

    slope: float
    intercept: float
    r: float
    n_pairs: int
    n_models: int
    min_r: float = MIN_AGREEMENT_R

    @property
    def weak(self) -> bool:
        """Too loose a line to read the accuracy line from (r below ``min_r``, or undefined)."""
        return not self.r >= self.min_r

    def describe(self) -> str:
        text = (f"agreement line probit(shifted) = {self.slope:.2f} x probit(reference) {self.intercept:+.2f}, "
                f"r = {self.r:.3f} over {self.n_pairs} pairs of {self.n_models} models")
        return text + (f" (weak: r < {self.min_r:g})" if self.weak else "")

    def as_dict(self) -> dict:
        return {"slope": self.slope, "intercept": self.intercept, "r": self.r, "n_pairs": self.n_pairs,
                "n_models": self.n_models, "weak": self.weak}


def fit_agreement_line(reference_agreement, shifted_agreement, reference_n, shifted_n,
                       min_r: float = MIN_AGREEMENT_R, n_models: int = 0) -> AgreementLine:
    """Least-squares line of probit(shifted agreement) on probit(reference agreement), one point per pair."""
    x = probit(reference_agreement, reference_n)
    y = probit(shifted_agreement, shifted_n)
    if x.ndim != 1 or x.shape != y.shape or x.size < 2:
        raise ValueError(f"the agreement line needs 2 or more pairs with a reference and a shifted agreement each, "
                         f"got {x.shape} and {y.shape}")
    dx = x - x.mean()
    sxx = float(dx @ dx)
    if sxx <= 1e-12 * x.size:
        raise ValueError("every pair agrees equally often on the reference set, so the agreement line has no slope: "
                         "ALine-D needs models of different accuracies (epochs, widths, training fractions)")
    dy = y - y.mean()
    slope = float(dx @ dy) / sxx
    syy = float(dy @ dy)
    r = float(dx @ dy) / float(np.sqrt(sxx * syy)) if syy > 0 else float("nan")
    return AgreementLine(slope=slope, intercept=float(y.mean() - slope * x.mean()), r=r, n_pairs=int(x.size),
                         n_models=n_models, min_r=min_r)


def solve_aline_d(reference_accuracy, i, j, reference_agreement, shifted_agreement, slope: float, reference_n,
                  shifted_n) -> tuple[np.ndarray, float]:
    """ALine-D's least squares: each model's shifted accuracy from the pairs (i[k], j[k]) and their agreements.

    One equation per pair, (z_i + z_j) / 2 = slope * ((p_i + p_j) / 2 - probit(reference agreement)) +
    probit(shifted agreement), with p = probit(reference accuracy) and z = probit(shifted accuracy) unknown.
    Returns (shifted accuracies, root-mean-square misfit of the equations on the probit axis).
    """
    acc = np.asarray(reference_accuracy, dtype=np.float64)
    i, j = np.asarray(i), np.asarray(j)
    k = acc.size
    p = probit(acc, reference_n)
    design = np.zeros((i.size, k))
    design[np.arange(i.size), i] = 0.5
    design[np.arange(i.size), j] += 0.5
    target = slope * ((p[i] + p[j]) / 2 - probit(reference_agreement, reference_n)) + probit(shifted_agreement,
                                                                                             shifted_n)
    z, _, rank, _ = np.linalg.lstsq(design, target, rcond=None)
    if rank < k:  # e.g. 2 models, or pairs that never link some models into an odd cycle
        raise ValueError(f"the {i.size} pair equations do not determine the {k} models' accuracies (rank {rank}): "
                         f"ALine-D needs {MIN_MODELS} or more models and every pair")
    return special.ndtr(z), float(np.sqrt(np.mean((design @ z - target) ** 2)))


@dataclass(frozen=True)
class ALineResult:
    """ALine-D's estimates (``atc.ESTIMATE_SCHEMA``, threshold null), the agreement line and every pair's agreements
    (``used`` False: identical predictions on both sets, left out).

    ``rms_residual``: root-mean-square misfit of the pair equations on the probit axis (0: every pair's residual is
    exactly the mean of its two models'; large: assumption (2) of the module docstring is off).
    """

    estimates: pl.DataFrame
    line: AgreementLine
    pairs: pl.DataFrame
    rms_residual: float


def _inputs(reference, shifted, groups) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    missing = [m for m in reference if m not in shifted or m not in groups]
    extra = [m for m in shifted if m not in reference]
    if missing or extra:
        raise ValueError("every model needs reference predictions with labels, shifted predictions and a group; "
                         + "; ".join(f"{what}: {', '.join(map(str, names))}" for what, names in
                                     (("incomplete", missing), ("shifted only", extra)) if names))
    models = list(reference)
    if len(models) < MIN_MODELS:
        raise ValueError(f"ALine-D needs {MIN_MODELS} or more models (one equation per pair, one unknown per "
                         f"model), got {len(models)}")
    ref = [predicted_classes(reference[m][0], f"model {m!r} (reference)") for m in models]
    labels = [np.asarray(reference[m][1]) for m in models]
    shift = [predicted_classes(shifted[m], f"model {m!r} (shifted)") for m in models]
    for what, arrays in (("reference", ref), ("shifted", shift)):
        sizes = {a.shape[0] for a in arrays}
        if len(sizes) != 1:
            raise ValueError(f"agreement needs every model's predictions on the same {what} examples, in the same "
                             f"order; got {sorted(sizes)} examples")
    for m, a, y in zip(models, ref, labels):
        if y.shape != a.shape:
            raise ValueError(f"model {m!r}: {y.size} labels for {a.shape[0]} reference examples")
    correct = np.stack([a == y for a, y in zip(ref, labels)])
    return models, np.stack(ref), np.stack(shift), correct


def aline_fit(reference: Mapping[str, tuple[np.ndarray, np.ndarray]], shifted: Mapping[str, np.ndarray],
              groups: Mapping[str, str], min_r: float = MIN_AGREEMENT_R) -> ALineResult:
    """ALine-D on every model: the agreement line over all pairs, then the shifted accuracies by least squares.

    ``reference``: model -> (logits or predicted classes, labels) on the labelled reference validation set;
    ``shifted``: model -> logits or predicted classes on the unlabeled shifted set (every model on the same examples
    in the same order, for both sets); ``groups``: model -> group.  Pairs with identical predictions on both sets
    are left out.  Raises ValueError on fewer than 3 models, mismatched examples, reference agreements that are all
    equal (no slope), or pairs that leave some accuracy undetermined.
    """
    models, ref, shift, correct = _inputs(reference, shifted, groups)
    k, n_ref, n_shift = len(models), ref.shape[1], shift.shape[1]
    i, j = np.triu_indices(k, 1)
    ref_agree, shift_agree = agreement_matrix(ref)[i, j], agreement_matrix(shift)[i, j]
    # A pair that agrees on every example of both sets is one classifier twice: its equation would only say "as
    # accurate as on the reference" (both agreements clipped alike), so it is left out of the line and the solve.
    used = (ref_agree < 1) | (shift_agree < 1)
    line = fit_agreement_line(ref_agree[used], shift_agree[used], n_ref, n_shift, min_r=min_r, n_models=k)

    ref_accuracy = correct.mean(axis=1)
    shifted_accuracy, rms = solve_aline_d(ref_accuracy, i[used], j[used], ref_agree[used], shift_agree[used],
                                          line.slope, n_ref, n_shift)
    estimates = pl.DataFrame({
        "model": models,
        "group": [groups[m] for m in models],
        "reference_accuracy": ref_accuracy,
        "shifted_accuracy": shifted_accuracy,
        "reference_n": [n_ref] * k,
        "shifted_n": [n_shift] * k,
        "threshold": [None] * k,
        "estimated": [True] * k,
    }, schema=ESTIMATE_SCHEMA)
    pairs = pl.DataFrame({
        "model_a": [models[a] for a in i], "model_b": [models[b] for b in j],
        "reference_agreement": ref_agree, "shifted_agreement": shift_agree,
        "reference_n": [n_ref] * i.size, "shifted_n": [n_shift] * i.size, "used": used,
    }, schema=PAIR_SCHEMA)
    return ALineResult(estimates=estimates, line=line, pairs=pairs, rms_residual=rms)


def aline_estimates(reference: Mapping[str, tuple[np.ndarray, np.ndarray]], shifted: Mapping[str, np.ndarray],
                    groups: Mapping[str, str]) -> pl.DataFrame:
    """Per model, the table ``atc.label_free_er`` takes: model, group, reference_accuracy, shifted_accuracy (the
    ALine-D estimate), reference_n, shifted_n, threshold (null: ALine-D has none), estimated (True).

    Same arguments as :func:`aline_fit`, whose ``.line`` holds the agreement line the report shows.
    """
    return aline_fit(reference, shifted, groups).estimates


__all__ = [
    "MIN_MODELS", "MIN_AGREEMENT_R", "PAIR_SCHEMA", "AgreementLine", "ALineResult", "probit", "predicted_classes",
    "agreement_matrix", "fit_agreement_line", "solve_aline_d", "aline_fit", "aline_estimates",
]
