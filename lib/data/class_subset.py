"""Shifted sets that cover only some of the classes (ImageNet-R, -A: 200 of ImageNet's 1000): how both sets are scored.

One convention for every path, timm's (its published ``results-imagenet-r.csv`` and the reference it is compared
with, ``results-imagenet-r-clean.csv``, which ``askshift zoo`` reads) and the paper's: on BOTH the shifted set and
its reference a model predicts among the shifted set's classes only (the logits of every other class are masked),
and the reference accuracy is measured on the reference examples of those classes only.  An ImageNet-R line thus
compares a 200-way accuracy on the ImageNet val images of R's 200 classes with a 200-way accuracy on ImageNet-R.
Masking the shifted set alone would set a 1000-way task against a 200-way one and flatter the shifted accuracy;
masking without restricting the reference would count 800 classes the shifted set never asks about.

``among_classes`` is the convention on one set's predictions (``askshift.tasks.zoo.predict_zoo_model`` applies it to every
split of ``zoo_evaluate``), ``restrict_reference`` restricts the reference distribution before anything is predicted,
and ``timm_reference_file`` names timm's published reference of the same convention (``askshift.lib.robustness.zoo``).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from askshift.lib.data.specs import ExperimentSpec

# Logit given to every class outside the subset: finite (softmax and parquet stay well defined), below any real logit.
MASKED_LOGIT = -1e9


def covered_classes(class_mask: Sequence[bool] | np.ndarray | None) -> tuple[int, ...] | None:
    """The class ids a shifted set covers (its ``class_mask``), or None when it covers every class."""
    if class_mask is None:
        return None
    mask = np.asarray(class_mask, dtype=bool)
    if mask.all():
        return None
    if not mask.any():
        raise ValueError("the class mask covers no class at all")
    return tuple(int(k) for k in np.flatnonzero(mask))


def among_classes(logits: np.ndarray, labels: np.ndarray,
                  classes: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """The convention on one set's predictions: ``(logits, keep)``.

    ``logits`` (N x C) come back with every class outside ``classes`` set to ``MASKED_LOGIT`` (the argmax is then
    one of ``classes``); ``keep`` marks the examples whose label is one of ``classes`` (the reference examples the
    accuracy counts; every shifted example).  ``classes=None``: the set covers every class, nothing changes.
    Apply it to the shifted set AND to its reference.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if classes is None:
        return logits, np.ones(len(labels), dtype=bool)
    allowed = np.zeros(logits.shape[1], dtype=bool)
    chosen = np.asarray(list(classes), dtype=np.int64)
    if chosen.size and (chosen.min() < 0 or chosen.max() >= logits.shape[1]):
        raise ValueError(f"class ids {chosen.min()}..{chosen.max()} do not fit logits of {logits.shape[1]} classes")
    allowed[chosen] = True
    masked = logits.copy()
    masked[:, ~allowed] = MASKED_LOGIT
    keep = np.zeros(len(labels), dtype=bool)
    known = (labels >= 0) & (labels < logits.shape[1])
    keep[known] = allowed[labels[known]]
    return masked, keep


def subset_accuracy(logits: np.ndarray, labels: np.ndarray, classes: Sequence[int] | None) -> float:
    """Top-1 accuracy under the convention: among ``classes``, on the examples of ``classes``."""
    masked, keep = among_classes(logits, labels, classes)
    if not keep.any():
        raise ValueError("no example has one of the chosen classes")
    return float((masked[keep].argmax(1) == np.asarray(labels)[keep]).mean())


def restrict_reference(spec: "ExperimentSpec", classes: Sequence[int] | None) -> "ExperimentSpec":
    """``spec`` with its reference distribution (``source_train``, ``source_val``) restricted to ``classes``
    (intersected with a restriction it already has); None leaves it as it is."""
    if classes is None:
        return spec
    keep = {int(k) for k in classes}
    if spec.reference.classes is not None:
        keep &= {int(k) for k in spec.reference.classes}
    reference = spec.reference.model_copy(update={"classes": sorted(keep)})
    return spec.model_copy(update={"reference": reference})


def spec_class_subset(spec: "ExperimentSpec", cache_dir: str | os.PathLike,
                      targets: Sequence[str] | None = None) -> tuple[int, ...] | None:
    """The classes the spec's targets cover, when they cover only some (one subset shared by every target).

    Reads each target's class mask (ImageNet-R keeps one in its .beton).  Targets covering different subsets cannot
    share one reference: evaluate them in separate runs.
    """
    from askshift.lib.data.loaders import split_info

    subsets = {}
    for target in targets or tuple(spec.targets):
        split = f"{target}_val"
        subsets[split] = covered_classes(split_info(spec, split, cache_dir).class_mask)
    distinct = set(subsets.values())
    if len(distinct) > 1:
        described = ", ".join(f"{s}: {'all classes' if c is None else f'{len(c)} classes'}" for s, c in subsets.items())
        raise ValueError(f"the shifted sets cover different classes ({described}) and so need different reference "
                         f"sets: evaluate them in separate runs")
    return distinct.pop() if distinct else None


# timm's published results follow the same convention: a set covering some classes is compared with the clean run
# on ImageNet val restricted (and its predictions masked) to those classes.
TIMM_FULL_REFERENCE = "results-imagenet.csv"


def timm_reference_file(shift: str, covers_some_classes: bool) -> str:
    """timm's reference results for shifted set ``shift`` (``r``, ``a``, ``v2``, ...): ImageNet val
    (``results-imagenet.csv``), or for a set covering some classes ``results-imagenet-<shift>-clean.csv``."""
    return f"results-imagenet-{shift}-clean.csv" if covers_some_classes else TIMM_FULL_REFERENCE


__all__ = ["MASKED_LOGIT", "among_classes", "covered_classes", "restrict_reference", "spec_class_subset",
           "subset_accuracy", "timm_reference_file"]
