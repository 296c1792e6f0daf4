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


@dataclass
class ZooReport:
    """What ``zoo_report`` wrote: paths and the comparison behind them."""

    shift: ZooShift
    table: pl.DataFrame
    comparison: object  # askshift.lib.robustness.er.FitComparison
    experiment_root: Path
    report_path: Path
    er_path: Path
    er_csv_path: Path
    summary_path: Path
    plots: list[Path]
    reading: str


def zoo_report(
    results_dir: str | Path,
    shift: str,
    store: str | Path = "askshift-store",
    pretrained_pattern: str | None = None,
    scale: str = "probit",
    fit_range: tuple[float, float] | None = None,
    margin: float = 0.05,
    experiment: str | None = None,
) -> ZooReport:
    """Compute ER of every timm model on ``shift`` and write tables, plots and report.md to ``store/zoo-<shift>``."""
    from askshift.lib.report.markdown import document, er_rows, reading, shift_section
    from askshift.lib.robustness.er import compare_fits
    from askshift.lib.store import Store, atomic_write_text, write_with

    spec = get_zoo_shift(shift)
    table = zoo_table(results_dir, shift, pretrained_pattern)
    comparison = compare_fits(table, baseline_group="baseline", scale=scale, fit_range=fit_range, margin=margin,
                              judged_groups=["pretrained"])
    exp = Store(store).experiment(experiment or f"zoo-{spec.name}")
    config = {"results_dir": str(Path(results_dir).resolve()), "shift": spec.name, "pretrained_pattern":
              pretrained_pattern or DEFAULT_PRETRAINED_PATTERN, "scale": scale, "fit_range": fit_range, "margin": margin}
    exp.write_config(config)
    exp.write_table("accuracies", table, config=config)
    er = er_rows(comparison, spec.name)
    er_path = exp.write_table("er", er, config=config)
    er_csv = er_path.with_suffix(".csv")
    contract = comparison.full.output_table()
    write_with(er_csv, lambda tmp: contract.write_csv(tmp))
    summary_path = exp.write_table("er_summary", comparison.summary(), config=config)
    section = shift_section(exp, comparison, spec.name, title=spec.title,
                            reference_label=f"{spec.reference_title} top-1", shifted_label=f"{spec.title} top-1")
    counts = dict(table.group_by("group").len().iter_rows())
    intro = [
        f"Does pre-training on more data than ImageNet-1k make timm's models more robust on {spec.title}? "
        f"{table.height} models with published top-1 on both {spec.reference_title} (`{spec.reference_file}`) and "
        f"{spec.title} (`{spec.shifted_file}`): {counts.get('baseline', 0)} `baseline` (ImageNet-1k data only) and "
        f"{counts.get('pretrained', 0)} `pretrained` (extra pre-training data, from the weight tag; rule in `lib/zoo.py`).",
        "",
        f"Effective robustness (ER) = {spec.title} accuracy minus the accuracy predicted from {spec.reference_title} "
        f"accuracy by a {scale} line fitted on the baseline models; 95% intervals.",
    ]
    footer = ["", "Tables: `tables/er.parquet` (both views, with fit diagnostics), `tables/er.csv` (full-range view), "
                  "`tables/er_summary.parquet` (per group), `tables/accuracies.parquet` (inputs)."]
    markdown = document(f"Effective robustness on {spec.title}: timm model zoo", intro, [section], footer)
    atomic_write_text(exp.report_path, markdown)
    return ZooReport(spec, table, comparison, exp.root, exp.report_path, er_path, er_csv, summary_path,
                     section.plots, reading(comparison))


__all__ = ["DEFAULT_PRETRAINED_PATTERN", "ZOO_SHIFTS", "ZooInputError", "ZooReport", "ZooShift", "group_of", "zoo_report", "zoo_table"]
