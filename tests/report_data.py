"""Synthetic experiment folders for the report tests: predictions whose accuracies follow a known probit line."""
from __future__ import annotations

import numpy as np
import polars as pl
from scipy.stats import norm

from askshift.lib.store import ExperimentStore

N_EXAMPLES = 400
N_CLASSES = 4


def _logits_with_accuracy(accuracy: float, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Logits whose argmax is right on exactly round(accuracy * n) examples (random which ones)."""
    n = len(labels)
    correct = np.zeros(n, bool)
    correct[rng.permutation(n)[: int(round(accuracy * n))]] = True
    wrong = (labels + rng.integers(1, N_CLASSES, n)) % N_CLASSES
    target = np.where(correct, labels, wrong)
    logits = rng.normal(0, 0.1, (n, N_CLASSES)).astype(np.float32)
    logits[np.arange(n), target] += 3.0
    return logits


def make_experiment(root, pretrained_er: float = 0.10, n_baselines: int = 8, n_pretrained: int = 3,
                    subsplit: bool = True, seed: int = 0) -> ExperimentStore:
    """Baselines on the line probit(shift) = probit(ref) - 0.5; group "ft" lies ``pretrained_er`` above it."""
    rng = np.random.default_rng(seed)
    exp = ExperimentStore(root)
    labels = rng.integers(0, N_CLASSES, N_EXAMPLES)
    groups = rng.integers(0, 2, N_EXAMPLES)
    refs = list(np.linspace(0.55, 0.9, n_baselines)) + list(np.linspace(0.75, 0.85, n_pretrained))
    names = [f"base{i}" for i in range(n_baselines)] + [f"ft{i}" for i in range(n_pretrained)]
    for i, (name, ref) in enumerate(zip(names, refs)):
        group = "baseline" if name.startswith("base") else "ft"
        shift = norm.cdf(norm.ppf(ref) - 0.5) + (pretrained_er if group == "ft" else rng.normal(0, 0.01))
        exp.register_model(name, group, seed=i)
        exp.write_predictions(name, "source_val", _logits_with_accuracy(ref, labels, rng), labels, groups=groups)
        exp.write_predictions(name, "tint_val", _logits_with_accuracy(shift, labels, rng), labels, groups=groups)
    if subsplit:
        exp.write_subsplit("tint_val", pl.DataFrame({"index": np.arange(N_EXAMPLES),
                                                     "support": np.where(np.arange(N_EXAMPLES) % 4 == 0, "out", "in")}))
    return exp
