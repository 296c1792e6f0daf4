"""Flow ``report``: metrics from stored predictions -> effective robustness -> tables, plots, report.md, artifacts."""
from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from askshift.flows.naming import report_name, run_name
from askshift.lib.report.markdown import (
    ReportResult,
    build_report,
    er_display_table,
    inline_images,
    result_markdown,
    summary_display_table,
)
from askshift.lib.robustness.er import ERSettings
from askshift.lib.store import Store, StoreOptions, store_options_validator
from askshift.tasks.reporting import (
    artifact_url,
    experiment_key,
    publish_markdown,
    publish_result,
    publish_table,
    result_run_id,
    store_words,
)


class ReportConfig(BaseModel):
    """Parameters of the report flow (validated before any compute; the UI form of the report deployment)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    store: StoreOptions = Field(description="the results store holding the experiment (root: an absolute path; a "
                                            "relative one is read from the runner's working directory)")
    experiment: str = Field(description="experiment folder inside the store, e.g. digits-tint_p=0.5 (what the "
                                        "baseline flow prints)")
    er: ERSettings = Field(default_factory=ERSettings, description="how effective robustness is computed and judged")
    publish: bool = Field(True, description="publish the report, the short ER tables and the result note as "
                                            "Prefect artifacts")

    _store = store_options_validator()


@task(name="build ER report", cache_policy=NO_CACHE, task_run_name="ER report of {experiment}")
def build_report_task(store: str, experiment: str, settings: ERSettings) -> ReportResult:
    exp = Store(store).experiment(experiment)
    if not exp.root.is_dir():
        raise FileNotFoundError(f"experiment {experiment!r} not found in store {store} (expected folder {exp.root})")
    return build_report(exp, settings)


def publish_report(result: ReportResult, store: str, experiment: str) -> dict[str, str]:
    """The report (markdown, plots inlined) and short rounded ER tables as artifacts; returns what -> key."""
    stem, where = experiment_key(experiment, store), f"experiment {experiment}, {store_words(store)}"
    keys = {"report": f"{stem}-report"}
    if result.summary.height:
        keys["er_summary"] = publish_table(
            f"{stem}-er-summary", summary_display_table(result.summary),
            description=f"ER per group in %, rounded (every column: {result.summary_path}); {where}")
        keys["er"] = publish_table(
            f"{stem}-er", er_display_table(result.er_table),
            description=f"ER per model against all baselines in %, rounded (every column and fit diagnostics: "
                        f"{result.er_path}); {where}")
    keys["report"] = publish_markdown(keys["report"], result.markdown, base_dir=str(result.report_path.parent),
                                      description=f"Effective robustness report ({result.report_path}); {where}")
    return keys


def publish_report_result(result: ReportResult, store: str, experiment: str, headline: str) -> None:
    """The result note (one line, a link, absolute paths) on the run the user opened (askshift.tasks.reporting.publish_result),
    and the report itself there too when another run made it: one click from that run's Artifacts tab to the plots.
    Nothing when another askshift flow called this one (that flow publishes its own note)."""
    target = result_run_id()
    if target is None:
        return
    stem = experiment_key(experiment, store)
    report_id = None
    if "report" in result.artifacts:
        report_id = (copy_report_to(target, result, store, experiment) if target != result.report_run
                     else _latest_artifact_id(result.artifacts["report"]))
    url = artifact_url(result.artifacts["report"], report_id) if "report" in result.artifacts else None
    markdown = result_markdown(headline, result, url, store, list(result.artifacts.values()))
    publish_result(f"{stem}-result", markdown, description=f"{headline}: result, experiment {experiment}, "
                   f"{store_words(store)}", link=url, link_text=f"report of {experiment}")


def _latest_artifact_id(key: str):
    from prefect.artifacts import Artifact

    try:
        found = Artifact.get(key, _sync=True)
        return found.id if found is not None else None
    except Exception:  # noqa: BLE001 -- the link then names the key's page
        return None


def copy_report_to(flow_run_id: str, result: ReportResult, store: str, experiment: str):
    """The report artifact (same key, plots inline) on another flow run; its id, None when it could not be made."""
    from prefect.artifacts import MarkdownArtifact

    try:
        return MarkdownArtifact(key=result.artifacts["report"], flow_run_id=flow_run_id,
                                markdown=inline_images(result.markdown, result.report_path.parent),
                                description=f"Effective robustness report ({result.report_path}); experiment "
                                            f"{experiment}, {store_words(store)}").create(_sync=True).id
    except Exception as exc:  # noqa: BLE001 -- the report's own run and the store still have it
        print(f"could not copy the report artifact to the run the user opened: {exc}")
        return None


@flow(name="report", log_prints=True, flow_run_name=run_name(report_name))
def report(config: ReportConfig) -> ReportResult:
    """Effective-robustness report of one experiment folder of the store.

    Builds ``tables/metrics.parquet`` from stored predictions (when missing or stale), computes ER of every
    shifted split ``TARGET_val`` against ``source_val`` (also on in/out-of-support parts when the split
    flow wrote them), writes ``tables/er.parquet``, ``tables/er_summary.parquet``, ``plots/*.png`` and
    ``report.md``, and publishes artifacts ``KEY-report`` (markdown with the plots inlined), ``KEY-er`` and
    ``KEY-er-summary`` (short rounded tables; the Parquet files keep every column) and the result note
    ``KEY-result`` on the run the user opened, where KEY is the experiment's slug (``askshift.tasks.reporting``: the key
    rule).  ``config.er.bootstrap_examples=N`` adds percentile intervals from N resamples of the stored predictions'
    examples (jointly for all models) and of the baselines (columns ``er_lower_example_bootstrap`` and
    ``er_upper_example_bootstrap``, seeded by ``config.er.seed``).

    Args:
        config: the experiment folder (store, experiment), how ER is computed (er) and whether to publish artifacts
    """
    store, experiment = str(config.store.resolved_root()), config.experiment  # absolute: keys and paths name one folder
    # Submitted, not called: the task runner (--backend, a deployment's `execution`) decides where it runs.
    result = build_report_task.submit(store, experiment, config.er).result()
    if config.publish:
        from prefect.context import FlowRunContext

        result.artifacts = publish_report(result, store, experiment)
        result.report_run = str(FlowRunContext.get().flow_run.id)
        publish_report_result(result, store, experiment, f"report {experiment}")
    for where, line in result.readings.items():
        print(f"{where}: {line}")
    print(f"report: {result.report_path}")
    return result


__all__ = ["ReportConfig", "publish_report", "publish_report_result", "report"]
