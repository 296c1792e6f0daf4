"""Average thresholded confidence (Garg et al., ICLR 2022): accuracy on an unlabeled set, and the label-free ER.

ATC learns one threshold t on a labelled set from the reference distribution (a validation split): the
fraction of its examples whose confidence score exceeds t equals the model's accuracy there.  On an
unlabeled shifted set, the accuracy estimate is the fraction of scores above that same t.

When it holds: the estimate is close when the shift changes how many examples are hard while the model stays
calibrated on each kind (``tests/test_robustness_atc.py``: within 2 points when 10% -> 40% of examples become
near-chance, a drop of about 20 points).  When every example's confidence changes together (one temperature over all
logits) it missed by 10-20 points in simulation, high or low depending on the scores' distribution: its
numbers are estimates, never measurements.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np
import polars as pl
from scipy import special

from askshift.lib.robustness.er import ERResult, effective_robustness

SCORES = ("max_softmax", "negative_entropy")
Score = Literal["max_softmax", "negative_entropy"]
ESTIMATE_SCHEMA = {"model": pl.String, "group": pl.String, "reference_accuracy": pl.Float64,
                   "shifted_accuracy": pl.Float64, "reference_n": pl.Int64, "shifted_n": pl.Int64,
                   "threshold": pl.Float64, "estimated": pl.Boolean}


def _check_logits(logits: np.ndarray, what: str) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] < 2 or logits.shape[0] == 0:
        raise ValueError(f"{what}: need logits of shape (examples, classes >= 2), got {logits.shape}")
    if not np.isfinite(logits).all():
        raise ValueError(f"{what}: logits contain NaN or infinity")
    return logits


def confidence_scores(logits: np.ndarray, score: Score = "max_softmax") -> np.ndarray:
    """One confidence per example: the largest softmax probability, or the negative entropy of the softmax."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
    # scipy's softmax subtracts the row maximum, so large logits do not overflow.
    p = special.softmax(_check_logits(logits, "confidence_scores"), axis=1)
    if score == "max_softmax":
        return p.max(axis=1)
    # xlogy(0, 0) = 0: a class whose probability underflows adds nothing (p log p would give NaN).
    return special.xlogy(p, p).sum(axis=1)


def fit_threshold(scores: np.ndarray, correct: np.ndarray) -> float:
    """The t for which the share of ``scores`` strictly above t equals the accuracy of ``correct``.

    With k correct of n, t is the (k+1)-th largest score, so exactly the k largest lie above it.  When that
    score is tied with the k-th, no t gives exactly k: t then puts the whole tied block above or below,
    whichever share is closer to k/n (below on a tie), so the answer depends only on the values given.
    """
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    if s.ndim != 1 or s.shape != c.shape or s.size == 0:
        raise ValueError(f"scores {s.shape} and correct {c.shape} must be matching non-empty 1-D arrays")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    descending = np.sort(s)[::-1]
    k = int(c.sum())
    if k == s.size:
        return float(np.nextafter(descending[-1], -np.inf))
    value = descending[k]
    above = int((descending > value).sum())
    at_or_above = int((descending >= value).sum())
    if at_or_above - k < k - above:
        return float(np.nextafter(value, -np.inf))
    return float(value)


def estimate_accuracy(scores: np.ndarray, threshold: float) -> float:
    """ATC's accuracy estimate: the share of scores strictly above the threshold."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no scores to estimate an accuracy from")
    return float((s > threshold).mean())


@dataclass(frozen=True)
class ATCModel:
    """One model's ATC threshold, its labelled reference accuracy and its estimated shifted accuracy."""

    model: str
    group: str
    threshold: float
    reference_accuracy: float
    estimated_accuracy: float
    reference_n: int
    shifted_n: int


def fit_atc_model(model: str, group: str, reference_logits: np.ndarray, reference_labels: np.ndarray,
                  shifted_logits: np.ndarray, score: Score = "max_softmax") -> ATCModel:
    """Fit the threshold on the labelled reference set and estimate the accuracy on the shifted logits."""
    reference_logits = _check_logits(reference_logits, f"model {model!r} (reference)")
    shifted_logits = _check_logits(shifted_logits, f"model {model!r} (shifted)")
    labels = np.asarray(reference_labels)
    if labels.shape != (reference_logits.shape[0],):
        raise ValueError(f"model {model!r}: {labels.size} labels for {reference_logits.shape[0]} reference examples")
    if shifted_logits.shape[1] != reference_logits.shape[1]:
        raise ValueError(f"model {model!r}: {shifted_logits.shape[1]} classes on the shifted set, "
                         f"{reference_logits.shape[1]} on the reference set")
    correct = reference_logits.argmax(axis=1) == labels
    threshold = fit_threshold(confidence_scores(reference_logits, score), correct)
    return ATCModel(model=model, group=group, threshold=threshold, reference_accuracy=float(correct.mean()),
                    estimated_accuracy=estimate_accuracy(confidence_scores(shifted_logits, score), threshold),
                    reference_n=int(labels.size), shifted_n=int(shifted_logits.shape[0]))


def _check_names(reference: Mapping, shifted: Mapping, groups: Mapping) -> None:
    for what, names in (("shifted logits", shifted), ("a group", groups)):
        missing = [m for m in reference if m not in names]
        if missing:
            raise ValueError(f"model(s) without {what}: {', '.join(map(str, missing))}")
    extra = [m for m in shifted if m not in reference]
    if extra:
        raise ValueError(f"model(s) with shifted logits but no labelled reference set: {', '.join(map(str, extra))}")


def atc_estimates(reference: Mapping[str, tuple[np.ndarray, np.ndarray]], shifted: Mapping[str, np.ndarray],
                  groups: Mapping[str, str], score: Score = "max_softmax") -> pl.DataFrame:
    """Per model: model, group, reference_accuracy, shifted_accuracy (the ATC estimate), reference_n, shifted_n,
    threshold, estimated (always True) - the table ``effective_robustness`` takes.

    ``reference``: model -> (logits, labels) of a labelled reference validation set; ``shifted``: model ->
    logits of the unlabeled shifted set; ``groups``: model -> group.
    """
    _check_names(reference, shifted, groups)
    fits = [fit_atc_model(m, groups[m], logits, labels, shifted[m], score) for m, (logits, labels) in reference.items()]
    return pl.DataFrame({
        "model": [f.model for f in fits],
        "group": [f.group for f in fits],
        "reference_accuracy": [f.reference_accuracy for f in fits],
        "shifted_accuracy": [f.estimated_accuracy for f in fits],
        "reference_n": [f.reference_n for f in fits],
        "shifted_n": [f.shifted_n for f in fits],
        "threshold": [f.threshold for f in fits],
        "estimated": [True] * len(fits),
    }, schema=ESTIMATE_SCHEMA)


def class_prior_bound(logits: np.ndarray, prior: np.ndarray) -> float:
    """The most accuracy a model's predictions allow when the shifted set keeps the reference's class proportions:
    at most min(predicted share, true share) of the examples can be correct for each class, so the accuracy is at
    most the sum over classes of min(p̂_c, prior_c) = 1 - TV(p̂, prior).  A model that sends most shifted images to
    one class (confidently wrong, as on colours it never saw) is bounded near that class's share, whatever its
    confidence says; a model whose predictions keep the proportions is not bounded at all.  Under label shift
    (other class proportions) the bound is wrong, which is why it leads on out-of-support images only."""
    logits = _check_logits(logits, "class_prior_bound")
    prior = np.asarray(prior, dtype=np.float64)
    if prior.shape != (logits.shape[1],) or (prior < 0).any() or not np.isclose(prior.sum(), 1.0):
        raise ValueError(f"prior must be {logits.shape[1]} non-negative class shares summing to 1, got {prior}")
    predicted = np.bincount(logits.argmax(axis=1), minlength=prior.size) / logits.shape[0]
    return float(np.minimum(predicted, prior).sum())


def bounded_atc_estimates(reference: Mapping[str, tuple[np.ndarray, np.ndarray]], shifted: Mapping[str, np.ndarray],
                          groups: Mapping[str, str], score: Score = "max_softmax") -> pl.DataFrame:
    """ATC's estimates, each capped by :func:`class_prior_bound` with the class shares of the model's labelled
    reference set (the same table as :func:`atc_estimates`)."""
    return cap_by_class_bound(atc_estimates(reference, shifted, groups, score), reference, shifted)


def cap_by_class_bound(table: pl.DataFrame, reference: Mapping[str, tuple[np.ndarray, np.ndarray]],
                       shifted: Mapping[str, np.ndarray]) -> pl.DataFrame:
    """An :func:`atc_estimates` table with each model's estimate capped by its :func:`class_prior_bound`."""
    bounds = []
    for model in table["model"]:
        logits, labels = reference[model]
        prior = np.bincount(np.asarray(labels), minlength=np.asarray(logits).shape[1]) / len(labels)
        bounds.append(class_prior_bound(shifted[model], prior))
    return table.with_columns(pl.min_horizontal("shifted_accuracy", pl.Series(bounds)).alias("shifted_accuracy"))


def label_free_er(estimates: pl.DataFrame, baseline_group: str = "baseline", scale: str = "probit",
                  **options) -> ERResult:
    """Effective robustness with every shifted accuracy an ATC estimate, the baselines' included.

    The line is fitted on the baselines' estimated shifted accuracies, so no shifted label is used anywhere.
    ``table`` and ``groups`` of the result carry ``estimated = True``.  Its intervals hold the line's error
    (and, with ``binomial=True``, each estimate's sampling noise over ``shifted_n`` examples), not ATC's own
    bias.  ``options`` go to :func:`effective_robustness` (fit_range, bootstrap, seed, binomial, confidence).
    """
    if "estimated" in estimates.columns and not estimates["estimated"].fill_null(False).all():
        raise ValueError("the table mixes measured and estimated shifted accuracies; a label-free fit needs "
                         "ATC estimates for every model (use atc_estimates)")
    result = effective_robustness(estimates, baseline_group=baseline_group, scale=scale, **options)
    flag = pl.lit(True).alias("estimated")
    return dataclasses.replace(result, table=result.table.with_columns(flag),
                               groups=result.groups.with_columns(flag))


__all__ = [
    "SCORES", "ESTIMATE_SCHEMA", "ATCModel", "confidence_scores", "fit_threshold", "estimate_accuracy", "fit_atc_model",
    "atc_estimates", "bounded_atc_estimates", "cap_by_class_bound", "class_prior_bound", "label_free_er",
]
