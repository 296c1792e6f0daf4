"""`askshift serve`: a real Prefect server + UI, a deployment run through the UI's Run-button REST call (locally and
on SLURM workers chosen by the `execution` parameter), artifacts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import LOCAL_PROFILE, PROBE, slurm_dir

from askshift.flows.server import free_port

pytestmark = pytest.mark.slow


def _wait_for_line(path: Path, text: str, process: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        if process.poll() is not None:
            pytest.fail(f"askshift serve exited with {process.returncode}:\n{content[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"askshift serve did not print {text!r} within {timeout:.0f} s:\n{content[-3000:]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`askshift serve --only report` on a random free port, with its own Prefect home (fresh database).

    Its flow runs find the single-node SLURM cluster (SLURM_CONF; the cluster itself starts only for the tests that
    ask for it) and export ASKSHIFT_PROBE_DIR to worker jobs, where tests/slurm_probe.py records each task.
    """
    from conftest import askshift_exe

    askshift = askshift_exe()
    base = tmp_path_factory.mktemp("serve")
    (base / "probe").mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update({"PREFECT_HOME": str(base / "prefect-home"), "PREFECT_RUNNER_POLL_FREQUENCY": "1",
                "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "DO_NOT_TRACK": "1", "SLURM_CONF": f"{slurm_dir()}/slurm.conf",
                "ASKSHIFT_PROBE_DIR": str(base / "probe")})
    output = base / "serve.log"
    with open(output, "wb") as log:
        process = subprocess.Popen([askshift, "serve", "--port", str(port), "--only", "report"], cwd=base, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        text = _wait_for_line(output, "serving (", process, timeout=300)
        yield {"port": port, "url": f"http://127.0.0.1:{port}", "base": base, "output": text, "process": process,
               "log": output}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_serve_prints_the_ui_address_on_loopback(served):
    assert f"Prefect UI: {served['url']}" in served["output"]
    assert "run-report/report" in served["output"]


def test_ui_index_page_and_health_endpoint_answer(served):
    health = httpx.get(f"{served['url']}/api/health", timeout=10)
    assert health.status_code == 200 and health.json() is True
    index = httpx.get(f"{served['url']}/", timeout=10, headers={"Accept": "text/html"}, follow_redirects=True)
    assert index.status_code == 200 and "<html" in index.text.lower()


def _run_report_deployment(served, parameters: dict, timeout: float) -> str:
    """Trigger the report deployment exactly as the UI's Run button does; the id of its run once it ended COMPLETED."""
    api = f"{served['url']}/api"
    deadline = time.monotonic() + 120  # the runner registers its deployments just after start-up
    while True:
        deployment = httpx.get(f"{api}/deployments/name/run-report/report", timeout=10)
        if deployment.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert deployment.status_code == 200, deployment.text
    for attempt in range(10):
        created = httpx.post(f"{api}/deployments/{deployment.json()['id']}/create_flow_run", timeout=10,
                             json={"parameters": parameters, "state": {"type": "SCHEDULED"}})
        if created.status_code != 503:  # SQLite busy (the runner writes too): retry, as Prefect's clients do
            break
        time.sleep(1 + attempt)
    assert created.status_code == 201, created.text
    flow_run_id = created.json()["id"]

    deadline, state = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        flow_run = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10)
        state = flow_run.json()["state"]["type"] if flow_run.status_code == 200 else state
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(1)
    assert state == "COMPLETED", f"flow run ended {state}:\n{served['log'].read_text(errors='replace')[-3000:]}"
    return flow_run_id


def _assert_report_subflow_published_artifacts(served, flow_run_id: str) -> None:
    """The report flow's own run is a subflow of the deployment's run and holds the tables and the report; the
    deployment's run (the one the user opened) holds the result note, its link and a copy of the report."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: f"{served['url']}/api"}):
        with get_client(sync_client=True) as client:
            (subflow,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
            assert client.read_flow(subflow.flow_id).name == "report" and subflow.state.is_completed()
            artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[subflow.id])))
            opened = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    keys = {a.key for a in opened}
    assert any(k.endswith("-result") for k in keys) and any(k.endswith("-report") for k in keys), keys
    kinds = {a.type for a in artifacts}
    assert {"table", "markdown"} <= kinds, kinds
    # The report (plots inline) is one of the subflow's markdown artifacts, beside its one-line note.
    markdown = [a.data for a in artifacts if a.type == "markdown"]
    assert any("data:image/png;base64," in text for text in markdown), [text[:80] for text in markdown]


def test_deployment_triggered_like_the_ui_run_button_completes_and_publishes_artifacts(served):
    from report_data import make_experiment

    store = served["base"] / "store"
    make_experiment(store / "tiny")
    # No `execution` parameter: the default, local backend.
    flow_run_id = _run_report_deployment(served, {"config": {"store": {"root": str(store)}, "experiment": "tiny"}}, timeout=240)
    _assert_report_subflow_published_artifacts(served, flow_run_id)
    assert (store / "tiny" / "report.md").exists()


@pytest.mark.slurm
def test_ui_run_with_execution_slurm_runs_the_report_task_in_a_slurm_job_on_the_served_api(served, slurm_cluster,
                                                                                           tmp_path):
    from report_data import make_experiment

    store = served["base"] / "store"
    make_experiment(store / "tiny-slurm")
    # The test cluster's profile plus the probe; workers skip the torch warm-up the report does not need.
    profile = tmp_path / "slurm-local-probe.yaml"
    profile.write_text(LOCAL_PROFILE.read_text()
                       + f"\npreload: [{str(PROBE)!r}]\nenv: {{ASKSHIFT_WORKER_WARM_IMPORTS: ''}}\n")
    flow_run_id = _run_report_deployment(served, {
        "config": {"store": {"root": str(store)}, "experiment": "tiny-slurm"},
        "execution": {"backend": "slurm", "profile": str(profile)}}, timeout=300)
    _assert_report_subflow_published_artifacts(served, flow_run_id)
    assert (store / "tiny-slurm" / "report.md").exists()

    records = [json.loads(line) for line in (served["base"] / "probe" / "tasks.jsonl").read_text().splitlines()]
    ran = [r for r in records if "build_report_task" in r["key"] and r["state"] == "memory"]
    assert ran, f"the report task never finished on a SLURM worker: {records}"
    assert all(r["job"] for r in ran), "the report task ran outside a SLURM job"
    # The worker reported to the served API, not to a temporary server of its own.
    assert {r["api"] for r in ran} == {f"{served['url']}/api"}


def test_serve_stops_its_server_on_sigterm(served):
    process = served["process"]
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _listening(served["port"]):
        time.sleep(0.5)
    assert not _listening(served["port"]), "the Prefect server outlived askshift serve"


def _listening(port: int) -> bool:
    # A bind test would fail on TIME_WAIT connections; what matters is that nobody accepts any more.
    import socket

    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0
