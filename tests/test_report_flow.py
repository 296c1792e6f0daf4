"""The Prefect flow `report` on a real (session) Prefect API: files, and artifacts read back with the client."""
from __future__ import annotations

import json

import pytest
from report_data import make_experiment

pytestmark = pytest.mark.slow


def read_artifacts(keys: list[str]) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    return {a.key: a for a in found}


def test_report_flow_writes_the_report_and_publishes_table_and_markdown_artifacts(prefect_api, tmp_path):
    from askshift.flows.report import ReportConfig, report
    from askshift.tasks.reporting import experiment_key

    store = tmp_path / "store"
    make_experiment(store / "tint-p0-9", subsplit=False)
    result = report(ReportConfig(store=str(store), experiment="tint-p0-9", er={"fit_range": (0.6, 0.95)}))
    assert result.report_path.exists() and result.er_path.exists()
    assert result.summary.filter(result.summary["view"] == "comparable")["fit_range_lo"][0] == 0.6

    # A store other than ./store: its hash follows the experiment's slug in every key.
    stem = experiment_key("tint-p0-9", store)
    assert stem.startswith("tint-p0-9-") and len(stem) == len("tint-p0-9-") + 6
    keys = [f"{stem}-er", f"{stem}-er-summary", f"{stem}-report"]
    artifacts = read_artifacts(keys)
    assert set(artifacts) == set(keys) and result.artifacts == dict(zip(["er", "er_summary", "report"], keys))
    assert artifacts[f"{stem}-er"].type == "table"
    rows = json.loads(artifacts[f"{stem}-er"].data)
    # Short and rounded: per model against all baselines; the Parquet table keeps every column.
    assert list(rows[0]) == ["shift", "model", "group", "reference acc. %", "shifted acc. %", "ER %",
                             "ER 95% interval %", "flags"]
    assert {r["model"] for r in rows} >= {"base0", "ft0"}
    assert all(round(r["ER %"], 2) == r["ER %"] for r in rows)
    assert str(result.er_path) in artifacts[f"{stem}-er"].description and str(store) in artifacts[f"{stem}-er"].description
    summary = json.loads(artifacts[f"{stem}-er-summary"].data)
    # the comparable view judges each non-baseline group against its own window; baselines are not judged
    assert {(r["line from"], r["group"]) for r in summary} == {
        ("all baselines", "baseline"), ("all baselines", "ft"), ("comparable baselines", "ft")}
    assert all(r["ER 95% interval %"].startswith("[") for r in summary)
    markdown = artifacts[f"{stem}-report"]
    assert markdown.type == "markdown"
    assert markdown.data.count("](data:image/png;base64,") == 2
    assert "Pre-training helped" in markdown.data
    assert str(result.er_path) in markdown.data  # absolute paths, not tables/er.parquet
