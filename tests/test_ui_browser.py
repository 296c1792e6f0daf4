"""The Prefect UI in a real browser (Debian's chromium, headless, driven over its DevTools protocol) on `askshift serve`:
the Custom run form, a run started like the UI's Run button, its result artifacts one click from its page, the report's
plots rendered, and bad form values refused the way Submit refuses them."""
from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import httpx
import pytest

from askshift.flows.server import free_port

pytestmark = pytest.mark.slow


def _chromium() -> str | None:
    """Debian's chromium; installed with apt-get when missing and we are root (as .ci/bootstrap.sh does)."""
    exe = shutil.which("chromium")
    if exe is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
            subprocess.run(install, env=env, capture_output=True, timeout=900)
        exe = shutil.which("chromium")
    return exe


class Browser:
    """One headless chromium page, driven over the DevTools protocol (navigate, evaluate JavaScript, wait)."""

    def __init__(self, exe: str):
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="askshift-chromium-")
        port = free_port()
        self.process = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
             f"--remote-debugging-port={port}", f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline, pages = time.monotonic() + 60, []
        while time.monotonic() < deadline and not pages:
            try:
                pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json", timeout=5).json() if t["type"] == "page"]
            except httpx.HTTPError:
                time.sleep(0.3)
        assert pages, "chromium did not open its DevTools port"
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None)
        self.ids = itertools.count(1)

    def call(self, method: str, **params):
        request = next(self.ids)
        self.ws.send(json.dumps({"id": request, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == request:
                return message.get("result", {})

    def eval(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float = 60):
        """The first truthy value of ``expression``; fails after ``timeout`` seconds with the page's text."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.5)
        page = self.eval("location.href")
        pytest.fail(f"{expression} never held on {page}:\n{self.text()[:3000]}")

    def text(self) -> str:
        return self.eval("document.body.innerText") or ""

    def close(self) -> None:
        self.ws.close()
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed and could not be installed (apt-get install chromium, as root)")
    page = Browser(exe)
    yield page
    page.close()


@pytest.fixture(scope="module")
def served_ui(tmp_path_factory):
    """`askshift serve --only report baseline` started in its own folder (so ./store is that folder's store)."""
    from conftest import askshift_exe

    base = tmp_path_factory.mktemp("ui")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update({"PREFECT_HOME": str(base / "prefect-home"), "PREFECT_RUNNER_POLL_FREQUENCY": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"})
    log = base / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([askshift_exe(), "serve", "--port", str(port), "--only", "report", "baseline"],
                                   cwd=base, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url, api = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 300
        deployments = {}
        while time.monotonic() < deadline and len(deployments) < 2:
            if process.poll() is not None:
                pytest.fail(f"askshift serve exited:\n{log.read_text(errors='replace')[-3000:]}")
            for flow, name in (("run-report", "report"), ("run-baseline", "baseline")):
                try:
                    answer = httpx.get(f"{api}/deployments/name/{flow}/{name}", timeout=5)
                except httpx.HTTPError:
                    continue
                if answer.status_code == 200:
                    deployments[name] = answer.json()
            time.sleep(1)
        assert len(deployments) == 2, log.read_text(errors="replace")[-3000:]
        yield {"url": url, "api": api, "base": base, "log": log, "deployments": deployments}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _start_run(served, deployment: str, parameters: dict, name: str | None = None) -> str:
    """POST create_flow_run as the UI's Run button does (with the name typed in the form, if any); the run's id."""
    body = {"parameters": parameters, "state": {"type": "SCHEDULED"}} | ({"name": name} if name else {})
    for attempt in range(10):
        created = httpx.post(f"{served['api']}/deployments/{served['deployments'][deployment]['id']}/create_flow_run",
                             json=body, timeout=10)
        if created.status_code != 503:  # SQLite busy: retry, as Prefect's clients do
            break
        time.sleep(1 + attempt)
    assert created.status_code == 201, created.text
    return created.json()["id"]


def _finished(served, flow_run_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = httpx.get(f"{served['api']}/flow_runs/{flow_run_id}", timeout=10).json()
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    pytest.fail(f"run {flow_run_id} did not finish:\n{served['log'].read_text(errors='replace')[-3000:]}")


def test_custom_run_form_shows_the_config_fields_with_help_and_the_execution_choice(served_ui, browser):
    deployment = served_ui["deployments"]["baseline"]
    # The form shows the absolute store askshift serve resolved (not a relative "store").
    assert deployment["parameters"]["config"]["store"]["root"] == str(served_ui["base"] / "store")
    browser.open(f"{served_ui['url']}/deployments/deployment/{deployment['id']}/run")
    browser.wait_for("document.body.innerText.includes('Train Fractions') "
                     "&& document.body.innerText.includes('Dask Workers')")
    text = browser.text()
    for words in ("Dataset", "Shift", "Train Fractions", "fractions of source_train, each more than 0 and at most 1",
                  "execution", "Backend", "Profile", "Dask Workers", "Submit",
                  "Root", "Cache Dir", "default STORE/_cache"):  # the store section: StoreOptions
        assert words in text, words
    assert "STORE//" not in text and "STORE/EXPERIMENT/" in text  # no description eaten as HTML


def test_submit_refuses_bad_values_with_the_schema(served_ui):
    """What Submit does: POST /ui/schemas/validate with the deployment's schema, then create_flow_run (enforced)."""
    deployment = served_ui["deployments"]["baseline"]
    schema = deployment["parameter_openapi_schema"]
    for values in ({"config": {"train_fractions": [1.5]}}, {"config": {"shift": "nosuch"}},
                   {"config": {}, "execution": {"backend": "slurm"}}, {"config": {"epochs": -1}}):
        answer = httpx.post(f"{served_ui['api']}/ui/schemas/validate", json={"schema": schema, "values": values},
                            timeout=10).json()
        assert answer["valid"] is False, values
        refused = httpx.post(f"{served_ui['api']}/deployments/{deployment['id']}/create_flow_run", timeout=10,
                             json={"parameters": values, "state": {"type": "SCHEDULED"}})
        assert refused.status_code == 409, (values, refused.text)
    good = httpx.post(f"{served_ui['api']}/ui/schemas/validate", timeout=10,
                      json={"schema": schema, "values": deployment["parameters"]}).json()
    assert good["valid"] is True, good


def test_the_run_page_lists_its_result_and_the_report_renders_its_plots(served_ui, browser):
    from report_data import make_experiment

    store = served_ui["base"] / "store"  # ./store of the serve folder: the default store, so no hash in keys
    make_experiment(store / "tiny")
    typed = _start_run(served_ui, "report", {"config": {"store": {"root": str(store)}, "experiment": "tiny"}}, name="tint study 3")
    plain = _start_run(served_ui, "report", {"config": {"store": {"root": str(store)}, "experiment": "tiny"}})
    typed_run, plain_run = _finished(served_ui, typed), _finished(served_ui, plain)
    assert typed_run["state"]["type"] == plain_run["state"]["type"] == "COMPLETED"
    assert typed_run["name"] == "tint study 3"  # the name typed in the form is kept
    assert plain_run["name"] == "report tiny (local)"  # else a name saying what the run does

    # The run the user opened: its Artifacts tab lists the result note, the link and the report.
    browser.open(f"{served_ui['url']}/runs/flow-run/{typed}")
    browser.wait_for("document.querySelector('#artifacts') !== null")
    browser.eval("document.querySelector('#artifacts').click()")
    browser.wait_for("document.body.innerText.includes('tiny-result-link')")
    text = browser.text()
    assert {"tiny-result", "tiny-result-link", "tiny-report"} <= set(text.split())
    cards = browser.eval("Object.fromEntries(Array.from(document.querySelectorAll('a[href^=\"/artifacts/artifact/\"]'))"
                         ".map(a => [a.innerText.split('\\n')[1], a.getAttribute('href')]))")
    assert {"tiny-result", "tiny-result-link", "tiny-report"} <= set(cards), cards

    # One click on the report card: the report with its plots rendered (data: URIs, decoded by the browser).
    browser.open(f"{served_ui['url']}{cards['tiny-report']}")
    count = browser.wait_for("Array.from(document.querySelectorAll('img')).filter(i => "
                             "(i.getAttribute('src') || '').startsWith('data:image/png') && i.naturalWidth > 0).length")
    assert count >= 2
    assert "Pre-training helped" in browser.text()

    # The result note: one line of result, a link that opens the report, absolute paths of the tables.
    browser.open(f"{served_ui['url']}{cards['tiny-result']}")
    browser.wait_for("document.body.innerText.includes('open the report')")
    text = browser.text()
    assert "report tiny: tint_val: Pre-training helped" in text
    assert str(store / "tiny" / "tables" / "er.parquet") in text
    hrefs = browser.eval("Array.from(document.querySelectorAll('a')).filter(a => a.innerText.includes('open the report'))"
                         ".map(a => a.getAttribute('href'))")
    assert hrefs and hrefs[0].endswith(cards["tiny-report"]), hrefs
