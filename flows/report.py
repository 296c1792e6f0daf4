"""Flow ``report``: metrics from stored predictions -> effective robustness -> tables, plots, report.md, artifacts."""
from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from lib.report import ReportResult, build_report
from lib.store import Store
from tasks.reporting import artifact_key, publish_markdown, publish_table


@task(name="build ER report", cache_policy=NO_CACHE, task_run_name="ER report of {experiment}")
def build_report_task(store: str, experiment: str, fit_range: tuple[float, float] | None, scale: str, metric: str,
                      baseline_group: str, bootstrap: int, binomial: bool, bootstrap_examples: int = 0,
                      seed: int = 0) -> ReportResult:
    exp = Store(store).experiment(experiment)
    if not exp.root.is_dir():
        raise FileNotFoundError(f"experiment {experiment!r} not found in store {store} (expected folder {exp.root})")
    return build_report(exp, fit_range=fit_range, scale=scale, metric=metric, baseline_group=baseline_group,
                        bootstrap=bootstrap, binomial=binomial, bootstrap_examples=bootstrap_examples, seed=seed)


@flow(name="report", log_prints=True)
def report(
    store: str,
    experiment: str,
    fit_range: tuple[float, float] | None = None,
    scale: str = "probit",
    metric: str = "accuracy",
    baseline_group: str = "baseline",
    bootstrap: int = 0,
    binomial: bool = False,
    publish: bool = True,
    bootstrap_examples: int = 0,
    seed: int = 0,
) -> ReportResult:
    """Effective-robustness report of one experiment folder of the store.

    Builds ``tables/metrics.parquet`` from stored predictions (when missing or stale), computes ER of every
    shifted split ``<target>_val`` against ``source_val`` (also on in/out-of-support parts when the split
    flow wrote them), writes ``tables/er.parquet``, ``tables/er_summary.parquet``, ``plots/*.png`` and
    ``report.md``, and publishes artifacts ``<experiment>-er`` and ``<experiment>-er-summary`` (tables) and ``<experiment>-report`` (markdown
    with the plots inlined).  ``fit_range=(lo, hi)`` fixes the comparable-baseline window (default: each
    judged group's own reference-accuracy range +- 0.05).  ``bootstrap_examples=N`` adds percentile intervals
    from N resamples of the stored predictions' examples (jointly for all models) and of the baselines
    (columns ``er_lower_example_bootstrap``/``er_upper_example_bootstrap``, seeded by ``seed``).
    """
    # Submitted, not called: the task runner (--backend, a deployment's `execution`) decides where it runs.
    result = build_report_task.submit(store, experiment, tuple(fit_range) if fit_range else None, scale, metric,
                                      baseline_group, bootstrap, binomial, bootstrap_examples, seed).result()
    if publish:
        key = artifact_key(experiment)
        if result.summary.height:
            publish_table(f"{key}-er-summary", result.summary,
                          description=f"Effective robustness per group and fit view, experiment {experiment}")
            publish_table(f"{key}-er", result.er_table,
                          description=f"Effective robustness per model with fit diagnostics, experiment {experiment}")
        publish_markdown(f"{key}-report", result.markdown, base_dir=str(result.report_path.parent),
                         description=f"Effective robustness report, experiment {experiment}")
    for where, line in result.readings.items():
        print(f"{where}: {line}")
    print(f"report: {result.report_path}")
    return result


__all__ = ["report"]
