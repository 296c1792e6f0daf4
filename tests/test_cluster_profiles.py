"""Cluster profiles: YAML -> validated profile -> the sbatch job script dask-jobqueue submits (no SLURM needed)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from askshift.flows.cluster import (
    ClusterProfile,
    ClusterProfileError,
    explain_sbatch_error,
    job_script,
    load_profile,
)

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "deployments" / "slurm-local.yaml"
GPU = REPO / "deployments" / "slurm-gpu.yaml"


def _directives(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ").strip() for line in script.splitlines() if line.startswith("#SBATCH")]


def _worker_command(script: str) -> str:
    (line,) = [line for line in script.splitlines() if "distributed.cli.dask_worker" in line]
    return line


def test_shipped_profiles_load():
    assert load_profile(LOCAL).gpus == 0
    assert load_profile(GPU).gpus == 1


def test_cpu_profile_job_script_has_no_gpu_request_and_exports_no_telemetry():
    script = job_script(load_profile(LOCAL), extra_env={"PREFECT_API_URL": "http://127.0.0.1:9999/api"})
    directives = _directives(script)
    assert "-p debug" in directives and "-t 00:30:00" in directives and "--cpus-per-task=1" in directives
    assert any(d.startswith("--mem=") for d in directives)
    assert not any("gres" in d or "gpu" in d for d in directives)
    command = _worker_command(script)
    assert "--resources" not in command and "--interface lo" in command
    assert "--preload askshift.flows.worker_setup" in command
    for line in ("export DO_NOT_TRACK=1", "export PREFECT_SERVER_ANALYTICS_ENABLED=false",
                 "export PREFECT_API_URL=http://127.0.0.1:9999/api"):
        assert line in script.splitlines()
    # Exports come before the worker starts, so the worker sees them.
    assert script.index("export PREFECT_API_URL") < script.index("distributed.cli.dask_worker")


def test_gpu_profile_requests_gres_and_declares_one_gpu_resource_per_worker():
    profile = load_profile(GPU)
    script = job_script(profile)
    directives = _directives(script)
    assert "--gres=gpu:1" in directives and "-p gpu" in directives and "-A my-project" in directives
    command = _worker_command(script)
    assert "--resources GPU=1" in command
    assert "--lifetime 220m" in command and "--lifetime-stagger 5m" in command
    assert "source $HOME/askshift/.venv/bin/activate" in script  # the prologue runs before the worker


def test_gpu_type_and_multiple_processes_split_gpus_between_workers():
    profile = ClusterProfile(cores=4, processes=2, gpus=2, gpu_type="a100")
    assert profile.gres_directive() == "--gres=gpu:a100:2"
    assert profile.worker_extra_args()[-2:] == ["--resources", "GPU=1"]


def test_job_directives_skip_replaces_a_default_line():
    profile = ClusterProfile(gpus=1, job_directives_skip=["--mem"], job_extra_directives=["--mem-per-gpu=32G"])
    directives = _directives(job_script(profile))
    assert "--mem-per-gpu=32G" in directives
    assert not any(d.startswith("--mem=") for d in directives)


def test_log_directory_is_expanded_and_not_created_by_printing_the_script(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    script = job_script(ClusterProfile(log_directory="~/logs"))
    assert f"-o {tmp_path}/logs/askshift-worker-%J.out" in _directives(script)
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("fields, field_named", [
    ({"worker_lifetime": "2h", "walltime": "01:00:00"}, "walltime"),
    ({"worker_lifetime": "45m", "walltime": "30:00"}, "walltime"),  # sbatch reads M:S: 30 minutes
    ({"adapt_minimum": 3, "adapt_maximum": 2}, "adapt_minimum"),
    ({"walltime": "90 minutes"}, "walltime"),
    ({"memory": "lots"}, "memory"),
    ({"gpus": 3, "processes": 2, "cores": 2}, "gpus"),
    ({"partiton": "gpu"}, "partiton"),
])
def test_invalid_profiles_are_rejected_naming_the_field(tmp_path, fields, field_named):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(fields))
    with pytest.raises(ClusterProfileError) as info:
        load_profile(path)
    assert field_named in str(info.value) and str(path) in str(info.value)


def test_walltime_is_read_as_sbatch_reads_it():
    from askshift.flows.cluster import walltime_seconds

    assert walltime_seconds("30:00") == 30 * 60
    assert walltime_seconds("04:00:00") == 4 * 3600
    assert walltime_seconds("1-12") == 36 * 3600
    assert ClusterProfile(walltime="1-00:00:00", worker_lifetime="23h").walltime == "1-00:00:00"


def test_sbatch_gres_rejection_is_explained_with_what_to_change():
    message = explain_sbatch_error(ClusterProfile(partition="debug", gpus=1),
                                   "sbatch: error: Invalid generic resource (gres) specification\n")
    assert "--gres=gpu:1" in message and "gpus: 0" in message and "'debug'" in message


def test_cli_prints_the_job_script_and_rejects_a_missing_profile(askshift):
    out = subprocess.run([askshift, "cluster", "job-script", str(GPU)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("#!/usr/bin/env bash") and "#SBATCH --gres=gpu:1" in out.stdout
    missing = subprocess.run([askshift, "cluster", "job-script", "no-such.yaml"], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 2 and "no-such.yaml" in missing.stderr and "does not exist" in missing.stderr


def test_run_slurm_without_profile_is_a_one_line_user_error(askshift, tmp_path):
    out = subprocess.run([askshift, "run", "baseline", "--backend", "slurm", "--store", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--profile" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
