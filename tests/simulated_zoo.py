"""Simulated models for the label-free accuracy tests: linear classifiers on Gaussian classes, with known truth."""
from __future__ import annotations

import numpy as np

CLASSES, DIMS, SHIFTED_DIMS = 10, 60, 20


def gaussian_set(n: int, shifted_noise: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Class c's examples are N(2 e_c, I); the shift multiplies the noise in dimensions CLASSES..CLASSES+20, which
    hold no signal, by ``shifted_noise`` (1: the reference distribution)."""
    labels = rng.integers(0, CLASSES, n)
    x = rng.normal(size=(n, DIMS))
    x[:, CLASSES:CLASSES + SHIFTED_DIMS] *= shifted_noise
    x[np.arange(n), labels] += 2.0
    return x, labels


def linear_model(alpha: float, rng, shifted_weight: float = 1.0) -> np.ndarray:
    """A linear classifier between a random one (alpha 0) and the Bayes-optimal one (alpha 1), the family in which
    Baek et al. (2025) prove agreement-on-the-line; ``shifted_weight`` < 1 makes it lean less on the dimensions the
    shift makes noisier, so it loses less accuracy there than its reference accuracy predicts (effective robustness).
    The scale of 3 makes its softmax confident."""
    bayes = np.eye(CLASSES, DIMS)
    noise = rng.normal(size=(CLASSES, DIMS))
    noise[:, CLASSES:CLASSES + SHIFTED_DIMS] *= shifted_weight
    w = alpha * bayes / np.linalg.norm(bayes) + (1 - alpha) * noise / np.linalg.norm(noise)
    return 3.0 * np.sqrt(CLASSES) * w / np.linalg.norm(w)


def simulated_zoo(shifted_noise: float = 2.0, seed: int = 0, n: int = 4000):
    """12 baselines, 4 robust models (above the baselines' line), 4 more models like the baselines (on it).

    Returns reference {model: (logits, labels)}, shifted {model: logits}, groups, and the true shifted accuracies.
    """
    rng = np.random.default_rng(seed)
    ref_x, ref_y = gaussian_set(n, 1.0, rng)
    shift_x, shift_y = gaussian_set(n, shifted_noise, rng)
    reference, shifted, groups, truth = {}, {}, {}, {}
    for group, alphas, weight in (("baseline", np.linspace(0.15, 0.6, 12), 1.0),
                                  ("robust", np.linspace(0.25, 0.45, 4), 0.3),
                                  ("on_line", np.linspace(0.25, 0.45, 4), 1.0)):
        for k, alpha in enumerate(alphas):
            w, model = linear_model(alpha, rng, weight), f"{group}-{k}"
            reference[model], shifted[model], groups[model] = (ref_x @ w.T, ref_y), shift_x @ w.T, group
            truth[model] = float(((shift_x @ w.T).argmax(axis=1) == shift_y).mean())
    return reference, shifted, groups, truth
