"""The deployments' `execution` parameter: checked before any compute, and the flow's tasks run where it says."""
from __future__ import annotations

import json
import os

import pytest
from conftest import PROBE, REPO
from prefect.exceptions import ParameterTypeError

from askshift.flows.deployed import run_report
from askshift.flows.execution import Execution


def _execution_error(tmp_path, execution: dict) -> str:
    """The one line a deployment run of the report flow fails with, given this `execution` parameter."""
    with pytest.raises(ParameterTypeError) as raised:
        run_report.validate_parameters({"config": {"store": str(tmp_path), "experiment": "tiny"}, "execution": execution})
    (line,) = [line for line in str(raised.value).splitlines() if line.startswith(" - execution")]
    return line


@pytest.mark.parametrize("execution, fix", [
    ({"backend": "slurm"}, "needs a cluster profile (--profile FILE, or execution.profile"),
    ({"backend": "local", "profile": "deployments/slurm-local.yaml"}, "choose backend slurm or leave the profile out"),
    ({"backend": "dask", "profile": "deployments/slurm-local.yaml"}, "choose backend slurm or leave the profile out"),
    ({"backend": "local", "dask_workers": 2}, "choose backend dask or leave dask_workers empty"),
    ({"backend": "slurm", "profile": "no-such-profile.yaml"}, f"{REPO / 'no-such-profile.yaml'}' does not exist"),
])
def test_unusable_execution_fails_the_run_before_compute_with_one_line_naming_the_fix(tmp_path, execution, fix):
    assert fix in _execution_error(tmp_path, execution)


def test_a_profile_that_does_not_load_is_rejected_naming_the_field(tmp_path):
    profile = tmp_path / "broken.yaml"
    profile.write_text("partition: debug\ngpus: -1\n")
    line = _execution_error(tmp_path, {"backend": "slurm", "profile": str(profile)})
    assert str(profile) in line and "gpus" in line


def test_relative_profile_resolves_against_the_repository_root_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    execution = Execution(backend="slurm", profile="deployments/slurm-local.yaml")
    assert execution.profile == str(REPO / "deployments" / "slurm-local.yaml")
    # A cleared text field of the UI form means no profile.
    assert Execution(backend="local", profile=" ").profile is None


def test_report_deployment_with_execution_dask_runs_the_report_task_in_a_dask_worker(prefect_api, tmp_path,
                                                                                      monkeypatch):
    import dask
    import distributed  # noqa: F401  -- loads distributed's config, else dask.config.set below drops it on exit
    from report_data import make_experiment

    make_experiment(tmp_path / "store" / "tiny")
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    monkeypatch.setenv("ASKSHIFT_PROBE_DIR", str(probe_dir))  # the workers inherit it
    monkeypatch.setenv("ASKSHIFT_WORKER_WARM_IMPORTS", "")  # the report task needs no torch
    # A site's Dask worker preloads (here the probe) are kept next to askshift's own.
    with dask.config.set({"distributed.worker.preload": [str(PROBE)]}):
        state = run_report(config={"store": str(tmp_path / "store"), "experiment": "tiny", "publish": False},
                           execution={"backend": "dask", "dask_workers": 1}, return_state=True)
    assert state.is_completed(), state
    assert (tmp_path / "store" / "tiny" / "report.md").exists()

    records = [json.loads(line) for line in (probe_dir / "tasks.jsonl").read_text().splitlines()]
    ran = [r for r in records if "build_report_task" in r["key"] and r["state"] == "memory"]
    assert ran, f"the report task never finished on a Dask worker: {records}"
    assert all(r["pid"] != os.getpid() for r in ran), "the report task ran in the flow's own process"
    assert {r["api"] for r in ran} == {prefect_api}
