"""The zoo report: effective robustness of timm's published models on one ImageNet shift, as tables, plots and
report.md in ``store/zoo-<shift>`` (the numbers come from ``askshift.lib.robustness.zoo``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from askshift.lib.report.markdown import document, er_rows, reading, shift_section
from askshift.lib.robustness.comparison import compare_fits
from askshift.lib.robustness.zoo import DEFAULT_PRETRAINED_PATTERN, ZooShift, get_zoo_shift, zoo_table
from askshift.lib.store import Store, atomic_write_text, write_with


@dataclass
class ZooReport:
    """What ``zoo_report`` wrote: paths and the comparison behind them."""

    shift: ZooShift
    table: pl.DataFrame
    comparison: object  # askshift.lib.robustness.comparison.FitComparison
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
        f"{counts.get('pretrained', 0)} `pretrained` (extra pre-training data, from the weight tag; rule in `lib/robustness/zoo.py`).",
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


__all__ = ["ZooReport", "zoo_report"]
