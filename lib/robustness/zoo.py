"""timm's published ImageNet results -> effective robustness of pre-trained vs ImageNet-1k-only models.

Input: a copy of the ``results/`` folder of huggingface/pytorch-image-models (top-1 in percent per model
``arch.tag``).  The reference accuracy is ImageNet-1k val (``results-imagenet.csv``) for V2 and Sketch,
and ImageNet val restricted to the same 200 classes (``results-imagenet-{r,a}-clean.csv``) for R and A:
the convention of ``askshift.lib.data.class_subset`` (predictions among the 200 classes on both sets, reference examples
of those classes only), which ``zoo_evaluate`` applies to the predictions it makes itself.

Grouping rule (default; override with ``pretrained_pattern``, a regex searched in the full name):
a model is ``pretrained`` when its weight tag (after the first '.') names data beyond ImageNet-1k,
i.e. contains one of the underscore-separated tokens
``in21k in22k in12k`` (ImageNet-21k/22k and its 12k subset), ``laion*  openai  clip  webli  jft*
ig<N>b  yfcc*  m30m  m38m  lvd*  dfn*  datacomp*  metaclip*`` (web / proprietary image sets),
``swsl  ssl  wsl  seer  swag`` (semi-/weakly-supervised Instagram/YFCC pre-training),
``ssld  6m`` (distillation with extra unlabeled ImageNet-22k images), or starts with ``goog_distilled``
(distilled from an ImageNet-21k teacher).  Everything else is ``baseline``: trained on ImageNet-1k only,
including self-supervised pre-training on ImageNet-1k itself (``mae_in1k_ft_in1k``, ``fcmae_ft_in1k``,
``fb_dino``) and distillation from ImageNet-1k teachers (``fb_dist_in1k``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from askshift.lib.data.class_subset import timm_reference_file
from askshift.lib.registry import Registry

_TOKENS = (
    r"in21k|in22k|in12k|laion\w*|openai|clip|webli|jft\w*|ig\d+b|yfcc\w*|m30m|m38m|lvd\w*|dfn\w*|datacomp\w*"
    r"|metaclip\w*|swsl|ssl|wsl|seer|swag|ssld|6m"
)
DEFAULT_PRETRAINED_PATTERN = rf"\.(?:[^.]*_)?(?:{_TOKENS})(?:_|$)|\.goog_distilled"


@dataclass(frozen=True)
class ZooShift:
    """One shifted test set of timm's results and the reference file it is compared with."""

    name: str
    title: str
    reference_file: str
    shifted_file: str
    reference_n: int  # examples behind each accuracy (for binomial intervals)
    shifted_n: int
    reference_title: str


ZOO_SHIFTS: Registry[ZooShift] = Registry("zoo shift")
for _shift in (
    ZooShift("v2", "ImageNet-V2 (matched frequency)", timm_reference_file("v2", covers_some_classes=False),
             "results-imagenetv2-matched-frequency.csv", 50_000, 10_000, "ImageNet val"),
    ZooShift("sketch", "ImageNet-Sketch", timm_reference_file("sketch", covers_some_classes=False), "results-sketch.csv",
             50_000, 50_889, "ImageNet val"),
    # R and A cover 200 of the 1000 classes (askshift.lib.data.class_subset): 200-way on both sets, reference = val of those classes.
    ZooShift("r", "ImageNet-R", timm_reference_file("r", covers_some_classes=True), "results-imagenet-r.csv", 10_000,
             30_000, "ImageNet val, R's 200 classes"),
    ZooShift("a", "ImageNet-A", timm_reference_file("a", covers_some_classes=True), "results-imagenet-a.csv", 10_000,
             7_500, "ImageNet val, A's 200 classes"),
):
    ZOO_SHIFTS.add(_shift.name, _shift, _shift.title)


class ZooInputError(ValueError):
    """The results folder or the options cannot be used; one line saying what to do."""


def compile_pattern(pattern: str | None) -> re.Pattern:
    try:
        return re.compile(pattern if pattern is not None else DEFAULT_PRETRAINED_PATTERN)
    except re.error as exc:
        raise ZooInputError(f"--pretrained-pattern {pattern!r} is not a valid regular expression: {exc}") from None


def group_of(model: str, pattern: str | None = None) -> str:
    """'pretrained' when the pattern is found in the model name ``arch.tag``, else 'baseline'."""
    return "pretrained" if compile_pattern(pattern).search(model) else "baseline"


def read_top1(path: Path) -> pl.DataFrame:
    """model, img_size, accuracy (fraction) from one timm results CSV (a model may appear at several sizes)."""
    if not path.exists():
        raise ZooInputError(f"{path} not found: --results must point at a copy of timm's results/ folder")
    try:
        df = pl.read_csv(path, columns=["model", "img_size", "top1"],
                         schema_overrides={"top1": pl.Float64, "img_size": pl.Int64})
    except Exception as exc:  # polars raises several types for malformed CSVs
        reason = " ".join(str(exc).split())[:200]
        raise ZooInputError(f"cannot read {path} as a timm results CSV (needs columns model, img_size, top1): {reason}") from None
    return df.select("model", "img_size", (pl.col("top1") / 100).alias("accuracy")).unique(["model", "img_size"], keep="first")


def zoo_table(results_dir: str | Path, shift: str, pretrained_pattern: str | None = None) -> pl.DataFrame:
    """One row per model present in both files: model, group, reference/shifted accuracy and n, img_size.

    timm evaluates some weights at several image sizes; reference and shifted accuracy are paired at the
    same size, and each model keeps the size with its best reference accuracy (one point per model, so the
    same weights are not counted twice in the baseline fit).
    """
    spec = get_zoo_shift(shift)
    root = Path(results_dir)
    if not root.is_dir():
        raise ZooInputError(f"results folder {root} does not exist (e.g. --results ../shared/data/timm-results)")
    ref = read_top1(root / spec.reference_file).rename({"accuracy": "reference_accuracy"})
    shifted = read_top1(root / spec.shifted_file).rename({"accuracy": "shifted_accuracy"})
    pattern = compile_pattern(pretrained_pattern)
    table = (
        ref.join(shifted, on=["model", "img_size"], how="inner")
        .sort(["model", "reference_accuracy", "img_size"], descending=[False, True, False])
        .unique("model", keep="first", maintain_order=True)
    )
    groups = ["pretrained" if pattern.search(m) else "baseline" for m in table["model"].to_list()]
    return table.select(
        "model",
        pl.Series("group", groups, dtype=pl.String),
        "reference_accuracy",
        "shifted_accuracy",
        pl.lit(spec.reference_n, dtype=pl.Int64).alias("reference_n"),
        pl.lit(spec.shifted_n, dtype=pl.Int64).alias("shifted_n"),
        "img_size",
    )


def get_zoo_shift(name: str) -> ZooShift:
    try:
        return ZOO_SHIFTS.get(name)
    except KeyError as exc:
        raise ZooInputError(str(exc)) from None


__all__ = ["DEFAULT_PRETRAINED_PATTERN", "ZOO_SHIFTS", "ZooInputError", "ZooShift", "get_zoo_shift", "group_of", "zoo_table"]
