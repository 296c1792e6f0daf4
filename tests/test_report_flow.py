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
    from flows.report import report

    make_experiment(tmp_path / "store" / "tint-p0-9", subsplit=False)
    result = report(store=str(tmp_path / "store"), experiment="tint-p0-9", fit_range=(0.6, 0.95))
    assert result.report_path.exists() and result.er_path.exists()
    assert result.summary.filter(result.summary["view"] == "comparable")["fit_range_lo"][0] == 0.6

    artifacts = read_artifacts(["tint-p0-9-er", "tint-p0-9-er-summary", "tint-p0-9-report"])
    assert set(artifacts) == {"tint-p0-9-er", "tint-p0-9-er-summary", "tint-p0-9-report"}
    assert artifacts["tint-p0-9-er"].type == "table"
    rows = json.loads(artifacts["tint-p0-9-er"].data)
    assert {r["model"] for r in rows} >= {"base0", "ft0"}
    assert all(r["fit_range_lo"] is None for r in rows if r["view"] == "full")  # NaN published as None
    summary = json.loads(artifacts["tint-p0-9-er-summary"].data)
    # the comparable view judges each non-baseline group against its own window; baselines are not judged
    assert {(r["view"], r["group"]) for r in summary} == {("full", "baseline"), ("full", "ft"), ("comparable", "ft")}
    assert all(r["er_lower"] == r["er_lower_total"] for r in summary)  # one interval per group, on every surface
    markdown = artifacts["tint-p0-9-report"]
    assert markdown.type == "markdown"
    assert markdown.data.count("](data:image/png;base64,") == 2
    assert "Pre-training helped" in markdown.data
