"""Evidence for a support verdict: calibration, out-of-support share and interval, nearest-neighbour opinion, verdict.

Everything here reads numbers computed elsewhere (``askshift.lib.support.ratios``: calibrated probabilities p of
"shifted", density ratios r = p/(1-p) · n_ref/n_shift; the feature distances of a nearest-neighbour search) and
says how far to trust them: a reliability table of the calibration, the share of shifted examples that are
out-of-support (r ≥ 1/ε) with a bootstrap interval, the same share under a second estimator (distance to the
nearest reference example), how often the two agree, and the one-line verdict the ``ask`` command reports.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from askshift.lib.robustness.lines import wilson_interval
from askshift.lib.store import write_with
from askshift.lib.support.ratios import MIN_SEPARATION_AUROC, check_epsilons

VERDICTS = ("likely to help", "unlikely to help", "no detectable shift")
# The classifier must tell the sets apart before its split means anything (the same bar as the split's report).
NO_SHIFT_AUROC = MIN_SEPARATION_AUROC
HELP_SHARE = 0.25
# A fold with fewer held-out reference positions than this gives a noisy 99% quantile: it borrows the others'.
MIN_FOLD_REFERENCE = 20

RELIABILITY_SCHEMA = {"bin_lo": pl.Float64, "bin_hi": pl.Float64, "n": pl.Int64, "mean_probability": pl.Float64,
                      "observed_share": pl.Float64}
SWEEP_SCHEMA = {"epsilon": pl.Float64, "threshold": pl.Float64, "out_of_support": pl.Int64, "n": pl.Int64,
                "share": pl.Float64, "share_lo": pl.Float64, "share_hi": pl.Float64}


# --- calibration --------------------------------------------------------------------------------------

def reliability_table(probabilities: np.ndarray, domain: np.ndarray, bins: int = 10) -> pl.DataFrame:
    """Equal-width bins of the calibrated probability of "shifted": bin_lo, bin_hi, n, mean_probability and
    observed_share (share of domain == 1 in the bin).  Empty bins are dropped."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(domain)
    if p.ndim != 1 or p.shape != y.shape or p.size == 0:
        raise ValueError(f"probabilities {p.shape} and domain {y.shape} must be matching non-empty 1-D arrays")
    if ((p < 0) | (p > 1) | np.isnan(p)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("domain must be 0 (reference) or 1 (shifted)")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    # p = 1 belongs to the last bin, not to a bin of its own.
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    n = np.bincount(index, minlength=bins)
    sum_p = np.bincount(index, weights=p, minlength=bins)
    sum_y = np.bincount(index, weights=y.astype(np.float64), minlength=bins)
    kept = n > 0
    edges = np.arange(bins + 1) / bins
    return pl.DataFrame({
        "bin_lo": edges[:-1][kept],
        "bin_hi": edges[1:][kept],
        "n": n[kept],
        "mean_probability": sum_p[kept] / n[kept],
        "observed_share": sum_y[kept] / n[kept],
    }, schema=RELIABILITY_SCHEMA)


def expected_calibration_error(table: pl.DataFrame) -> float:
    """Mean |mean_probability - observed_share| over the bins of a reliability table, weighted by n."""
    n = table["n"].to_numpy().astype(np.float64)
    if n.sum() == 0:
        return float("nan")
    gap = np.abs(table["mean_probability"].to_numpy() - table["observed_share"].to_numpy())
    return float((n * gap).sum() / n.sum())


# --- the out-of-support share and its interval ----------------------------------------------------

def _check_resampling(resamples: int, confidence: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def _resampled_band_counts(band_counts: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Bootstrap counts per band, shape (resamples, bands).

    Drawing n examples with replacement and counting how many land in each band (the examples between two
    consecutive thresholds) is one multinomial draw over the bands, so this is the example bootstrap itself,
    joint over every threshold, without an array of resamples × n indices.
    """
    n = int(band_counts.sum())
    return np.random.default_rng(seed).multinomial(n, band_counts / n, size=resamples)


def _union_with_wilson(count: np.ndarray, n: int, resampled_shares: np.ndarray,
                       confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the resampled shares (axis 0), widened to contain the Wilson interval.

    When no example (or every one) is out, every resample agrees and the bootstrap collapses to a point;
    the Wilson interval keeps a width that reflects n.
    """
    alpha = 1 - confidence
    boot_lo, boot_hi = np.quantile(resampled_shares, [alpha / 2, 1 - alpha / 2], axis=0)
    wilson_lo, wilson_hi = wilson_interval(count / n, n, confidence)
    return np.minimum(boot_lo, wilson_lo), np.maximum(boot_hi, wilson_hi)


def share_interval(out: np.ndarray, resamples: int = 2000, confidence: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float]:
    """(share, lo, hi): the share of True in ``out`` and a ``confidence`` interval for it.

    The interval is over examples with the classifier held fixed: a percentile bootstrap that resamples the
    shifted examples with replacement (the union with the Wilson interval, so it never collapses to a point).
    It does not carry the uncertainty of the classifier itself (another training run, another calibration).
    """
    out = np.asarray(out, dtype=bool)
    if out.ndim != 1 or out.size == 0:
        raise ValueError(f"need a non-empty 1-D array of out/in flags, got shape {out.shape}")
    _check_resampling(resamples, confidence)
    n, count = out.size, int(out.sum())
    draws = _resampled_band_counts(np.array([n - count, count]), resamples, seed)
    lo, hi = _union_with_wilson(np.array(count), n, draws[:, 1] / n, confidence)
    return count / n, float(lo), float(hi)


def share_sweep(shifted_ratios: np.ndarray, epsilons: Sequence[float], resamples: int = 2000,
                confidence: float = 0.95, seed: int = 0) -> pl.DataFrame:
    """Out-of-support share per ε with its interval: epsilon, threshold (1/ε), out_of_support, n, share,
    share_lo, share_hi.

    One bootstrap serves every ε (the same resampled examples are judged at every threshold), so the
    bounds fall with ε as the share does; with one ε it gives :func:`share_interval` of that split.
    """
    ratios = np.asarray(shifted_ratios, dtype=np.float64)
    if ratios.ndim != 1 or ratios.size == 0:
        raise ValueError(f"need a non-empty 1-D array of density ratios, got shape {ratios.shape}")
    _check_resampling(resamples, confidence)
    eps = np.array(check_epsilons(epsilons))
    thresholds = 1.0 / eps  # ε ascending, thresholds descending
    # The rule of ratios.out_of_support, for every ε at once.
    out = ratios[:, None] >= thresholds[None, :]
    n, t = ratios.size, eps.size
    # Band b: the examples at or above exactly b thresholds (the b lowest).  ε_j's threshold is the (t - j)-th
    # lowest, so out at ε_j means band >= t - j.
    band_counts = np.bincount(out.sum(axis=1), minlength=t + 1)
    draws = _resampled_band_counts(band_counts, resamples, seed)
    at_least = np.cumsum(draws[:, ::-1], axis=1)[:, ::-1]
    resampled_out = at_least[:, t - np.arange(t)]
    count = out.sum(axis=0)
    lo, hi = _union_with_wilson(count, n, resampled_out / n, confidence)
    return pl.DataFrame({"epsilon": eps, "threshold": thresholds, "out_of_support": count, "n": np.full(t, n),
                         "share": count / n, "share_lo": lo, "share_hi": hi}, schema=SWEEP_SCHEMA)


# --- the nearest-neighbour second opinion ------------------------------------------------------------

@dataclass(frozen=True)
class KnnOpinion:
    """Which shifted examples lie farther from the reference than almost all held-out reference examples do.

    ``far`` follows the order of the shifted positions in the inputs; ``expected_share`` (1 - quantile) is
    what a set drawn from the reference distribution would give; ``thresholds`` maps fold -> distance
    threshold; ``pooled_folds`` lists the folds whose threshold came from every fold's reference distances.
    """

    far: np.ndarray
    share: float
    share_lo: float
    share_hi: float
    expected_share: float
    thresholds: dict[int, float]
    pooled_folds: tuple[int, ...]
    quantile: float

    def words(self) -> str:
        return (f"the nearest-neighbour test finds {100 * self.share:.1f}% "
                f"[{100 * self.share_lo:.1f}%, {100 * self.share_hi:.1f}%] of shifted examples farther from the "
                f"reference than {100 * self.quantile:g}% of held-out reference examples "
                f"(a shift-free set: {100 * self.expected_share:g}%)")


def _knn_inputs(distances, domain, fold) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    distances = np.asarray(distances, dtype=np.float64)
    domain = np.asarray(domain)
    fold = np.asarray(fold, dtype=np.int64)
    if distances.ndim != 1 or distances.shape != domain.shape or distances.shape != fold.shape:
        raise ValueError(f"distances {distances.shape}, domain {domain.shape} and fold {fold.shape} must be "
                         f"matching 1-D arrays (one entry per position)")
    if np.isnan(distances).any():
        raise ValueError("distances contain NaN; was every position measured?")
    if not np.isin(domain, (0, 1)).all():
        raise ValueError("domain must be 0 (reference) or 1 (shifted)")
    if not (domain == 0).any() or not (domain == 1).any():
        raise ValueError("need reference (domain 0) and shifted (domain 1) positions")
    return distances, domain, fold


def _fold_thresholds(reference_distances: np.ndarray, reference_folds: np.ndarray, folds: np.ndarray,
                     quantile: float) -> tuple[dict[int, float], tuple[int, ...]]:
    """Per fold, the ``quantile`` of its held-out reference distances; small folds take the pooled quantile."""
    pooled_threshold = float(np.quantile(reference_distances, quantile))
    thresholds, pooled = {}, []
    for k in folds.tolist():
        own = reference_distances[reference_folds == k]
        if own.size < MIN_FOLD_REFERENCE:
            thresholds[k] = pooled_threshold
            pooled.append(k)
        else:
            thresholds[k] = float(np.quantile(own, quantile))
    return thresholds, tuple(pooled)


def knn_second_opinion(distances: np.ndarray, domain: np.ndarray, fold: np.ndarray, quantile: float = 0.99, *,
                       resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> KnnOpinion:
    """A shifted example is "far" when its distance to the nearest reference example exceeds its fold's
    ``quantile`` of held-out reference distances.

    Inputs are per position (both sets): ``distances`` in the feature space of the fold model that did not
    train on the position (reference positions measured against a pool without themselves), ``domain`` 0/1,
    ``fold``.  Each fold is judged by its own model's reference distances, since feature spaces differ between
    folds; a fold with fewer than ``MIN_FOLD_REFERENCE`` reference positions uses the quantile of all folds'
    reference distances together (listed in ``pooled_folds``).
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    distances, domain, fold = _knn_inputs(distances, domain, fold)
    reference = domain == 0
    thresholds, pooled = _fold_thresholds(distances[reference], fold[reference], np.unique(fold), quantile)
    shifted = ~reference
    folds = np.array(sorted(thresholds))
    limit = np.array([thresholds[k] for k in folds.tolist()])[np.searchsorted(folds, fold[shifted])]
    far = distances[shifted] > limit
    share, lo, hi = share_interval(far, resamples, confidence, seed)
    return KnnOpinion(far=far, share=share, share_lo=lo, share_hi=hi, expected_share=1 - quantile,
                      thresholds=thresholds, pooled_folds=pooled, quantile=quantile)


# --- agreement of the two estimators -------------------------------------------------------------

def _examples(count: int) -> str:
    return f"{count} example{' is' if count == 1 else 's are'}"


@dataclass(frozen=True)
class Agreement:
    """How the classifier's out-of-support flags and the nearest-neighbour "far" flags agree on shifted examples."""

    both: int
    only_classifier: int
    only_knn: int
    neither: int
    cohen_kappa: float  # NaN when both flag every example alike (kappa is undefined)

    @property
    def n(self) -> int:
        return self.both + self.only_classifier + self.only_knn + self.neither

    @property
    def agreed_share(self) -> float:
        return (self.both + self.neither) / self.n

    def words(self) -> str:
        kappa = "kappa undefined: neither estimator varies" if math.isnan(self.cohen_kappa) \
            else f"kappa {self.cohen_kappa:.2f}"
        return (f"the two estimators agree on {100 * self.agreed_share:.0f}% of shifted examples ({kappa}); "
                f"{_examples(self.only_classifier)} out-of-support only by the classifier, "
                f"{self.only_knn} only by the nearest-neighbour test")


def agreement(out_of_support: np.ndarray, far: np.ndarray) -> Agreement:
    """Counts of the four combinations and Cohen's kappa of two flags over the same shifted examples."""
    from sklearn.metrics import cohen_kappa_score

    a = np.asarray(out_of_support, dtype=bool)
    b = np.asarray(far, dtype=bool)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"out_of_support {a.shape} and far {b.shape} must be matching non-empty 1-D arrays")
    # Both constant and equal: chance agreement is 1 and kappa is 0/0.
    undefined = (a == b).all() and (a.all() or not a.any())
    kappa = float("nan") if undefined else float(cohen_kappa_score(a, b, labels=[False, True]))
    return Agreement(both=int((a & b).sum()), only_classifier=int((a & ~b).sum()), only_knn=int((~a & b).sum()),
                     neither=int((~a & ~b).sum()), cohen_kappa=kappa)


# --- the verdict ----------------------------------------------------------------------------------

def verdict(auroc: float, share: float) -> str:
    """One of ``VERDICTS`` from the classifier's cross-fitted AUROC and the out-of-support share.

    Pre-training helps with extrapolation (shifted examples the reference never produces), not with
    re-weighting within the reference's support, so a large out-of-support share points to pre-training.
    Boundaries: AUROC exactly ``NO_SHIFT_AUROC`` counts as a detected shift, share exactly ``HELP_SHARE``
    as likely to help.
    """
    if math.isnan(auroc) or auroc < NO_SHIFT_AUROC:
        return VERDICTS[2]
    if math.isnan(share):
        raise ValueError("the out-of-support share is NaN: no shifted example was judged")
    return VERDICTS[0] if share >= HELP_SHARE else VERDICTS[1]


def verdict_rule() -> str:
    """The rule of :func:`verdict` in one sentence, from its constants."""
    return (f'"{VERDICTS[2]}" when the domain classifier\'s cross-fitted AUROC is below {NO_SHIFT_AUROC:g} '
            f'(or undefined); otherwise "{VERDICTS[0]}" when the out-of-support share of the shifted examples is at '
            f'least {HELP_SHARE:g} ({100 * HELP_SHARE:g}%), and "{VERDICTS[1]}" below that.')


# --- figures ----------------------------------------------------------------------------------------

def _figure(width: float, height: float):
    """A figure on an Agg canvas (no pyplot state: safe in worker threads and on headless machines)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _save_png(fig, path: str | os.PathLike) -> Path:
    return write_with(path, lambda tmp: fig.savefig(tmp, format="png"))


def reliability_plot(table: pl.DataFrame, path: str | os.PathLike, title: str) -> Path:
    """Reliability diagram of a :func:`reliability_table`: observed share vs mean probability, points sized by
    n, and the diagonal a calibrated classifier follows."""
    fig, ax = _figure(4.8, 4.4)
    n = table["n"].to_numpy().astype(np.float64)
    x, y = table["mean_probability"].to_numpy(), table["observed_share"].to_numpy()
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls=":", label="calibrated", zorder=0)
    ax.plot(x, y, color="tab:blue", lw=1, alpha=0.6, zorder=1)
    sizes = 15 + 250 * n / max(n.max(initial=0), 1)
    ax.scatter(x, y, s=sizes, color="tab:blue", alpha=0.8, edgecolor="none", zorder=2,
               label=f"bins (ECE {expected_calibration_error(table):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel('calibrated probability of "shifted"')
    ax.set_ylabel("share of shifted examples")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)
    return _save_png(fig, path)


def share_sweep_plot(table: pl.DataFrame, path: str | os.PathLike, epsilon: float, title: str) -> Path:
    """Out-of-support share vs ε (log axis) from a :func:`share_sweep`, its interval as a band, and the chosen ε."""
    from matplotlib.ticker import PercentFormatter

    fig, ax = _figure(5.6, 4.0)
    eps = table["epsilon"].to_numpy()
    ax.fill_between(eps, table["share_lo"].to_numpy(), table["share_hi"].to_numpy(), color="tab:blue", alpha=0.2,
                    lw=0, label="interval over examples")
    ax.plot(eps, table["share"].to_numpy(), color="tab:blue", marker="o", ms=4, lw=1.5, label="out-of-support share")
    ax.axvline(epsilon, color="black", lw=1, ls="--", label=f"chosen ε = {epsilon:g}")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))
    ax.set_xlabel("ε (out-of-support: density ratio ≥ 1/ε)")
    ax.set_ylabel("shifted examples out-of-support")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)
    return _save_png(fig, path)


__all__ = [
    "VERDICTS", "NO_SHIFT_AUROC", "HELP_SHARE", "MIN_FOLD_REFERENCE", "RELIABILITY_SCHEMA", "SWEEP_SCHEMA",
    "reliability_table", "expected_calibration_error", "reliability_plot", "share_interval", "share_sweep",
    "share_sweep_plot", "KnnOpinion", "knn_second_opinion", "Agreement", "agreement", "verdict", "verdict_rule",
]
