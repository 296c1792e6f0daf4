"""Density ratios between a reference and a shifted set: domain-classifier data, cross-fitting, calibration, ε sweep.

The method (paper Section 5.2): train a classifier to tell reference examples (label 0) from
shifted ones (label 1), score every example with a model that never trained on it (k-fold
cross-fitting), calibrate the scores with one temperature, and turn the calibrated probability
p of "shifted" into a density ratio r = p/(1-p) · n_ref/n_shift.  A shifted example is
*out-of-support* when r ≥ 1/ε (the reference distribution hardly ever produces it) and
*in-support* otherwise.  Everything here is numpy/scipy/sklearn; the training of the classifier
itself lives in ``askshift.lib.support.classifier``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

# The paper's sweep (the released code's EPSILONS); the split is kept for every ε.
EPSILONS: tuple[float, ...] = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1, 2e-1, 5e-1)
# ε = 0.2 is the paper's text; the released notebook used 0.1 (both are in the sweep).
DEFAULT_EPSILON = 0.2
DEFAULT_FOLDS = 10
# Below this held-out AUROC the domain classifier has not told the two sets apart, and a split
# built from its scores would be noise: the report says so instead of presenting the split.
MIN_SEPARATION_AUROC = 0.6

# Domain classifiers by device: the paper's CLIP ViT-L/14 (LAION-2B), LP then FT, on a GPU;
# a small CNN trained from scratch on CPU.  Names go through askshift.lib.models.families, so any family works.
GPU_CLASSIFIER_MODEL = "clip:ViT-L-14:laion2b_s32b_b82k"
CPU_CLASSIFIER_MODEL = "cnn:small"
PAPER_LR_GRID: tuple[float, ...] = (2e-4, 1e-4, 5e-5, 2e-5, 1e-5, 5e-6, 2e-6, 1e-6)
CPU_LR_GRID: tuple[float, ...] = (3e-3, 1e-3)


class SupportInputError(ValueError):
    """Input that cannot give a meaningful split; the message is one line saying what to change."""


class DomainClassifierConfig(BaseModel):
    """How the domain classifier (reference = 0, shifted = 1) is built and trained."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(CPU_CLASSIFIER_MODEL, description="model family name for askshift.lib.models.families.build_model")
    pretrained: str | None = Field(None, description="pre-trained weights for the model family: a local file, or "
                                   "'hub' (a clip: name with a tag, e.g. the GPU default, loads that tag)")
    linear_probe_epochs: int = Field(0, ge=0, description="epochs training only the head first (LP before FT)")
    linear_probe_warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up of the LP stage")
    linear_probe_lr: float = Field(1e-3, gt=0, description="learning rate of the linear-probe stage")
    lrs: tuple[float, ...] = Field(CPU_LR_GRID, min_length=1, description="grid searched by held-out AUROC")
    epochs: int = Field(3, ge=1, description="training epochs per fold")
    min_steps: int = Field(100, ge=0, description="train at least this many steps per stage (more epochs on small sets: "
                           "a few hundred images give a handful of batches per epoch)")
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up, in epochs")
    batch_size: int = Field(128, ge=2, description="training batch size")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="optimiser")
    reference_size: int | None = Field(100_000, ge=1, description="reference examples sampled (paper: 100k)")
    in_memory: bool | None = Field(None, description="hold the images in memory (None: when they are few)")
    resolution: int | None = Field(None, ge=8, description="image side the classifier reads; default: its model's own "
                                   "(photos) or the reference's stored size (same-size arrays)")
    flip: bool = Field(True, description="random horizontal flips in training (as the original)")
    seed: int = Field(0, ge=0, description="seed of the classifier's initialisation and batches; 0 or more")

    @field_validator("lrs")
    @classmethod
    def _positive_lrs(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(lr <= 0 for lr in value):
            raise ValueError("learning rates must be positive")
        return tuple(value)


def default_classifier(device: str = "cpu") -> DomainClassifierConfig:
    """The paper's CLIP ViT-L/14 LP-FT classifier on a GPU, a small CNN on CPU."""
    if str(device).startswith("cuda"):
        return DomainClassifierConfig(
            model=GPU_CLASSIFIER_MODEL, linear_probe_epochs=8, linear_probe_warmup_epochs=1.0,
            linear_probe_lr=1e-3, lrs=PAPER_LR_GRID, epochs=8, warmup_epochs=1, batch_size=64, weight_decay=0.1,
        )
    return DomainClassifierConfig()


# --- input checks (each one clear line, before any compute) ---------------------------------------

def check_epsilons(epsilons: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(e) for e in epsilons)
    if not values:
        raise SupportInputError("no epsilon given: pass at least one value in (0, 1), e.g. --epsilon 0.2")
    bad = [e for e in values if not (0.0 < e < 1.0) or math.isnan(e)]
    if bad:
        raise SupportInputError(f"epsilon {bad[0]:g} is outside (0, 1): out-of-support means ratio >= 1/epsilon, "
                                f"so choose epsilon in (0, 1), e.g. 0.2 (paper) or 0.1 (released notebook)")
    return tuple(sorted(set(values)))


def check_classes(reference_labels: np.ndarray, shifted_labels: np.ndarray) -> np.ndarray:
    """The classes the shifted set covers; raises when it has classes the reference lacks."""
    reference_classes = np.unique(np.asarray(reference_labels))
    shifted_classes = np.unique(np.asarray(shifted_labels))
    extra = np.setdiff1d(shifted_classes, reference_classes)
    if extra.size:
        shown = ", ".join(str(c) for c in extra[:5]) + (" ..." if extra.size > 5 else "")
        raise SupportInputError(
            f"the shifted set has {extra.size} class(es) the reference set lacks ({shown}): "
            f"map both sets to the same label space, or drop those classes from the shifted set")
    return shifted_classes


def check_folds(n_reference: int, n_shifted: int, folds: int, n_shifted_groups: int | None = None) -> None:
    if folds < 2:
        raise SupportInputError(f"folds={folds}: cross-fitting needs at least 2 folds (default {DEFAULT_FOLDS})")
    smallest = min(n_reference, n_shifted)
    if smallest < folds:
        which = "shifted" if n_shifted <= n_reference else "reference"
        raise SupportInputError(
            f"the {which} set has {smallest} example(s), fewer than the {folds} folds: "
            f"use --folds {max(2, smallest)} or fewer, or a larger set")
    if n_shifted_groups is not None and n_shifted_groups < folds:
        raise SupportInputError(
            f"the shifted set has {n_shifted_groups} group(s), fewer than the {folds} folds "
            f"(groups are kept together): use --folds {max(2, n_shifted_groups)} or fewer")


# --- the domain-classifier data -------------------------------------------------------------------

def reference_class_mask(reference_labels: np.ndarray, shifted_labels: np.ndarray) -> np.ndarray:
    """Reference examples whose class occurs in the shifted set (ImageNet-R covers 200 of 1000 classes)."""
    classes = check_classes(reference_labels, shifted_labels)
    return np.isin(np.asarray(reference_labels), classes)


def sample_reference(reference_labels: np.ndarray, shifted_labels: np.ndarray | None, size: int | None,
                     seed: int = 0) -> np.ndarray:
    """Indices of the reference examples the domain classifier sees: restricted to the shifted set's classes, or
    every reference example when the shifted set has no labels (``shifted_labels`` None)."""
    if shifted_labels is None:
        candidates = np.arange(len(reference_labels))
    else:
        candidates = np.flatnonzero(reference_class_mask(reference_labels, shifted_labels))
    if size is None or size >= candidates.size:
        return candidates
    return np.sort(np.random.default_rng(seed).choice(candidates, size=size, replace=False))


@dataclass(frozen=True)
class DomainData:
    """The union of both sets, one row ("position") per example.

    ``domain`` is 0 for reference and 1 for shifted; ``index`` is the example's index in its own
    split; ``group`` keeps examples together under GroupKFold (each reference example is its own
    group, numbered below zero so it never collides with a shifted group).
    """

    domain: np.ndarray
    index: np.ndarray
    group: np.ndarray
    grouped: bool = False

    @property
    def n_reference(self) -> int:
        return int((self.domain == 0).sum())

    @property
    def n_shifted(self) -> int:
        return int((self.domain == 1).sum())

    def __len__(self) -> int:
        return int(self.domain.size)


def build_domain_data(reference_indices: np.ndarray, shifted_indices: np.ndarray,
                      shifted_groups: np.ndarray | None = None) -> DomainData:
    reference_indices = np.asarray(reference_indices, dtype=np.int64)
    shifted_indices = np.asarray(shifted_indices, dtype=np.int64)
    n_ref, n_shift = reference_indices.size, shifted_indices.size
    if n_ref == 0 or n_shift == 0:
        raise SupportInputError(f"need examples on both sides (reference {n_ref}, shifted {n_shift})")
    grouped = shifted_groups is not None
    if grouped:
        shifted_groups = np.asarray(shifted_groups, dtype=np.int64)
        if shifted_groups.shape != shifted_indices.shape:
            raise SupportInputError(f"{shifted_groups.size} groups for {n_shift} shifted examples")
        # A negative group means "no group" (the store's convention): each such example stands alone.
        singles = shifted_groups < 0
        shifted_groups = shifted_groups.copy()
        shifted_groups[singles] = shifted_groups.max(initial=0) + 1 + np.arange(int(singles.sum()))
        # Shifted groups become >= 0 so they never meet the negative reference groups.
        _, shifted_groups = np.unique(shifted_groups, return_inverse=True)
    else:
        shifted_groups = np.arange(n_shift)
    return DomainData(
        domain=np.concatenate([np.zeros(n_ref, np.int64), np.ones(n_shift, np.int64)]),
        index=np.concatenate([reference_indices, shifted_indices]),
        group=np.concatenate([-(np.arange(n_ref, dtype=np.int64) + 1), shifted_groups.astype(np.int64)]),
        grouped=grouped,
    )


# --- folds ------------------------------------------------------------------------------------------

def fold_assignments(data: DomainData, folds: int, seed: int = 0) -> np.ndarray:
    """Fold number per position: GroupKFold when the shifted set has groups, else StratifiedKFold by domain."""
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    n_groups = int(np.unique(data.group[data.domain == 1]).size) if data.grouped else None
    check_folds(data.n_reference, data.n_shifted, folds, n_groups)
    positions = np.arange(len(data))
    if data.grouped:
        splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = splitter.split(positions, data.domain, groups=data.group)
    else:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = splitter.split(positions, data.domain)
    assignment = np.full(len(data), -1, np.int64)
    for fold, (_, heldout) in enumerate(splits):
        assignment[heldout] = fold
    return assignment


@dataclass(frozen=True)
class Fold:
    """One cross-fitting fold: a model trains on ``train`` and scores ``heldout`` (positions in DomainData)."""

    fold: int
    train: np.ndarray
    heldout: np.ndarray


def fold_plan(data: DomainData, folds: int, seed: int = 0) -> list[Fold]:
    assignment = fold_assignments(data, folds, seed)
    return [Fold(k, np.flatnonzero(assignment != k), np.flatnonzero(assignment == k)) for k in range(folds)]


def tuning_fold(data: DomainData, folds: int, seed: int = 0) -> Fold:
    """The held-out split used to pick the learning rate: 1/folds of the data, as in one cross-fitting fold.

    It uses another seed than the cross-fitting folds, so the tuning split is not one of them.
    """
    return fold_plan(data, folds, seed + 1)[0]


def assemble_cross_fit(n: int, plan: Sequence[Fold], scores: Sequence[np.ndarray]) -> np.ndarray:
    """Put each fold's held-out scores in place; every position must be scored exactly once, by a
    model that did not train on it."""
    if len(plan) != len(scores):
        raise ValueError(f"{len(scores)} score arrays for {len(plan)} folds")
    out = np.full(n, np.nan)
    seen = np.zeros(n, np.int64)
    for fold, score in zip(plan, scores):
        score = np.asarray(score, dtype=np.float64)
        if score.shape != fold.heldout.shape:
            raise ValueError(f"fold {fold.fold}: {score.size} scores for {fold.heldout.size} held-out examples")
        if np.intersect1d(fold.train, fold.heldout).size:
            raise ValueError(f"fold {fold.fold} scores examples its model trained on")
        out[fold.heldout] = score
        seen[fold.heldout] += 1
    if (seen != 1).any():
        missing, twice = int((seen == 0).sum()), int((seen > 1).sum())
        raise ValueError(f"cross-fitting covers positions unevenly: {missing} never scored, {twice} scored twice")
    return out


def cross_fit(data: DomainData, folds: int, fit_and_score: Callable[[np.ndarray, np.ndarray], np.ndarray],
              seed: int = 0) -> np.ndarray:
    """Sequential cross-fitting (the flow runs the folds as parallel tasks instead):
    ``fit_and_score(train_positions, heldout_positions) -> logits of the held-out positions``."""
    plan = fold_plan(data, folds, seed)
    return assemble_cross_fit(len(data), plan, [fit_and_score(f.train, f.heldout) for f in plan])


# --- learning-rate choice ---------------------------------------------------------------------------

def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (0.5 = chance); NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if np.unique(labels).size < 2:
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def choose_lr(results: Sequence[tuple[float, float]]) -> float:
    """The learning rate with the highest held-out AUROC (ties: the first in grid order)."""
    if not results:
        raise ValueError("no learning-rate results to choose from")
    aurocs = np.array([a if a == a else -np.inf for _, a in results])  # NaN never wins
    return float(results[int(np.argmax(aurocs))][0])


# --- temperature calibration ------------------------------------------------------------------------

@dataclass(frozen=True)
class Calibration:
    """One temperature: p = sigmoid(alpha · logit).  ``loss`` is the mean BCE at alpha (and at alpha = 1)."""

    alpha: float
    loss: float
    loss_uncalibrated: float
    at_bound: bool = False


def _bce(alpha: float, logits: np.ndarray, labels: np.ndarray) -> float:
    z = alpha * logits
    # log(1 + e^z) - y z, computed stably
    return float(np.mean(np.logaddexp(0.0, z) - labels * z))


def calibrate_temperature(logits: np.ndarray, labels: np.ndarray, bound: float = 1e3) -> Calibration:
    """The scalar alpha minimising the binary cross-entropy of alpha · logit.

    The loss is convex in alpha, so a bounded scalar search finds the exact minimum (the
    original ran 1,000 SGD steps on a GPU).  ``bound`` caps |alpha| in units of 1/std(logits):
    perfectly separated scores would send alpha to infinity (``at_bound`` says so).
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if logits.shape != labels.shape or logits.ndim != 1:
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} must be matching 1-D arrays")
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or infinity; were all examples scored?")
    scale = float(np.std(logits)) or 1.0
    limit = bound / scale
    result = minimize_scalar(_bce, bounds=(-limit, limit), args=(logits, labels), method="bounded",
                             options={"xatol": 1e-9 * max(1.0, 1.0 / scale)})
    alpha = float(result.x)
    return Calibration(alpha=alpha, loss=_bce(alpha, logits, labels), loss_uncalibrated=_bce(1.0, logits, labels),
                       at_bound=abs(alpha) > 0.999 * limit)


def calibrated_probabilities(logits: np.ndarray, alpha: float) -> np.ndarray:
    from scipy.special import expit

    return expit(alpha * np.asarray(logits, dtype=np.float64))


# --- density ratios and the split ------------------------------------------------------------------

def density_ratios(probabilities: np.ndarray, n_reference: int, n_shifted: int) -> np.ndarray:
    """r = p/(1-p) · n_ref/n_shift: the odds of "shifted", corrected for the two sets' sizes."""
    p = np.asarray(probabilities, dtype=np.float64)
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    with np.errstate(divide="ignore"):
        return p / (1.0 - p) * (n_reference / n_shifted)


def log_density_ratios(logits: np.ndarray, alpha: float, n_reference: int, n_shifted: int) -> np.ndarray:
    """log r computed from logits (no overflow when the classifier is very sure)."""
    return alpha * np.asarray(logits, dtype=np.float64) + math.log(n_reference / n_shifted)


def out_of_support(ratios: np.ndarray, epsilon: float) -> np.ndarray:
    """True where r ≥ 1/ε: the reference distribution produces such inputs at under ε times the shifted rate."""
    (epsilon,) = check_epsilons([epsilon])
    return np.asarray(ratios, dtype=np.float64) >= 1.0 / epsilon


def support_labels(ratios: np.ndarray, epsilon: float) -> np.ndarray:
    return np.where(out_of_support(ratios, epsilon), "out", "in")


def epsilon_sweep(ratios: np.ndarray, epsilons: Sequence[float] = EPSILONS):
    """Split sizes per ε (Polars): epsilon, threshold 1/ε, in_support, out_of_support, out_fraction."""
    import polars as pl

    ratios = np.asarray(ratios, dtype=np.float64)
    rows = []
    for eps in check_epsilons(epsilons):
        n_out = int(out_of_support(ratios, eps).sum())
        rows.append({"epsilon": eps, "threshold": 1.0 / eps, "in_support": ratios.size - n_out,
                     "out_of_support": n_out, "out_fraction": n_out / max(1, ratios.size)})
    return pl.DataFrame(rows, schema={"epsilon": pl.Float64, "threshold": pl.Float64, "in_support": pl.Int64,
                                      "out_of_support": pl.Int64, "out_fraction": pl.Float64})


@dataclass(frozen=True)
class SupportEstimate:
    """Cross-fitted, calibrated scores of every position of a DomainData, and what follows from them."""

    data: DomainData
    logits: np.ndarray
    fold: np.ndarray
    calibration: Calibration
    auroc: float
    epsilons: tuple[float, ...] = EPSILONS
    epsilon: float = DEFAULT_EPSILON
    extra: dict = field(default_factory=dict)

    @property
    def probabilities(self) -> np.ndarray:
        return calibrated_probabilities(self.logits, self.calibration.alpha)

    @property
    def log_ratios(self) -> np.ndarray:
        return log_density_ratios(self.logits, self.calibration.alpha, self.data.n_reference, self.data.n_shifted)

    @property
    def ratios(self) -> np.ndarray:
        with np.errstate(over="ignore"):
            return np.exp(self.log_ratios)

    @property
    def separated(self) -> bool:
        return separation_failure(self.auroc) is None

    def shifted_ratios(self) -> np.ndarray:
        return self.ratios[self.data.domain == 1]

    def sweep(self):
        return epsilon_sweep(self.shifted_ratios(), self.epsilons)

    def scores_table(self):
        """All positions (both sets): domain, index, fold, logit, probability, ratio, log_ratio."""
        import polars as pl

        return pl.DataFrame({
            "domain": np.where(self.data.domain == 1, "shifted", "reference"),
            "index": self.data.index,
            "fold": self.fold,
            "logit": self.logits,
            "probability": self.probabilities,
            "ratio": self.ratios,
            "log_ratio": self.log_ratios,
        })

    def subsplit_table(self, epsilon: float | None = None):
        """The shifted set's membership (what ``ExperimentStore.write_subsplit`` stores): index, support, ...

        One boolean column per swept ε (``out_eps=<ε>``) keeps the whole sweep beside the chosen split.
        """
        import polars as pl

        eps = self.epsilon if epsilon is None else epsilon
        mask = self.data.domain == 1
        ratios = self.ratios[mask]
        columns = {
            "index": self.data.index[mask],
            "support": support_labels(ratios, eps),
            "probability": self.probabilities[mask],
            "ratio": ratios,
            "log_ratio": self.log_ratios[mask],
            "fold": self.fold[mask],
        }
        for e in self.epsilons:
            columns[f"out_eps={e:g}"] = out_of_support(ratios, e)
        return pl.DataFrame(columns).sort("index")


def separation_failure(auroc_value: float, threshold: float = MIN_SEPARATION_AUROC) -> str | None:
    """None when the classifier told the sets apart; otherwise one line saying the split is meaningless."""
    if auroc_value != auroc_value:
        return "the domain classifier's AUROC is undefined (one set is empty after cross-fitting)"
    if auroc_value < threshold:
        return (f"the domain classifier failed to separate the reference and shifted sets (cross-fitted AUROC "
                f"{auroc_value:.3f}, chance is 0.5): no example looks out-of-support to it, so the in/out split "
                f"is not meaningful; the shift is in-support as far as this classifier can tell, or the "
                f"classifier is too weak (try a stronger --classifier or more epochs)")
    return None


def estimate_support(data: DomainData, logits: np.ndarray, fold: np.ndarray, epsilons: Sequence[float] = EPSILONS,
                     epsilon: float = DEFAULT_EPSILON) -> SupportEstimate:
    """Calibrate cross-fitted logits and wrap everything the split needs."""
    eps_all = check_epsilons(tuple(epsilons) + (epsilon,))
    labels = data.domain.astype(np.float64)
    return SupportEstimate(data=data, logits=np.asarray(logits, np.float64), fold=np.asarray(fold, np.int64),
                           calibration=calibrate_temperature(logits, labels), auroc=auroc(labels, logits),
                           epsilons=eps_all, epsilon=float(epsilon))


__all__ = [
    "EPSILONS", "DEFAULT_EPSILON", "DEFAULT_FOLDS", "MIN_SEPARATION_AUROC", "SupportInputError",
    "DomainClassifierConfig", "default_classifier", "check_epsilons", "check_classes", "check_folds",
    "reference_class_mask", "sample_reference", "DomainData", "build_domain_data", "fold_assignments", "Fold",
    "fold_plan", "tuning_fold", "assemble_cross_fit", "cross_fit", "auroc", "choose_lr", "Calibration",
    "calibrate_temperature", "calibrated_probabilities", "density_ratios", "log_density_ratios", "out_of_support",
    "support_labels", "epsilon_sweep", "SupportEstimate", "separation_failure", "estimate_support",
]
