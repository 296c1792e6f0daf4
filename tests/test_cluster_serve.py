"""`askshift serve`: a real Prefect server + UI, a deployment run through the UI's Run-button REST call, artifacts."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from flows.server import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


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
    """`askshift serve --only report` on a random free port, with its own Prefect home (fresh database)."""
    from conftest import askshift_exe

    askshift = askshift_exe()
    base = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update({"PREFECT_HOME": str(base / "prefect-home"), "PREFECT_RUNNER_POLL_FREQUENCY": "1",
                "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "DO_NOT_TRACK": "1"})
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
    assert "report/report" in served["output"]


def test_ui_index_page_and_health_endpoint_answer(served):
    health = httpx.get(f"{served['url']}/api/health", timeout=10)
    assert health.status_code == 200 and health.json() is True
    index = httpx.get(f"{served['url']}/", timeout=10, headers={"Accept": "text/html"}, follow_redirects=True)
    assert index.status_code == 200 and "<html" in index.text.lower()


def test_deployment_triggered_like_the_ui_run_button_completes_and_publishes_artifacts(served):
    from report_data import make_experiment

    store = served["base"] / "store"
    make_experiment(store / "tiny")
    api = f"{served['url']}/api"
    deadline = time.monotonic() + 120  # the runner registers its deployments just after start-up
    while True:
        deployment = httpx.get(f"{api}/deployments/name/report/report", timeout=10)
        if deployment.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert deployment.status_code == 200, deployment.text
    # Exactly what the UI's Run button sends.
    created = httpx.post(f"{api}/deployments/{deployment.json()['id']}/create_flow_run", timeout=10,
                         json={"parameters": {"store": str(store), "experiment": "tiny"},
                               "state": {"type": "SCHEDULED"}})
    assert created.status_code == 201, created.text
    flow_run_id = created.json()["id"]

    deadline, state = time.monotonic() + 240, None
    while time.monotonic() < deadline:
        state = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()["state"]["type"]
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(1)
    assert state == "COMPLETED", f"flow run ended {state}:\n{served['log'].read_text(errors='replace')[-3000:]}"

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}):
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    kinds = {a.type for a in artifacts}
    assert {"table", "markdown"} <= kinds, kinds
    markdown = next(a for a in artifacts if a.type == "markdown")
    assert "data:image/png;base64," in markdown.data
    assert (store / "tiny" / "report.md").exists()


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
