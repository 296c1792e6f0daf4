"""A real single-node SLURM cluster: profile checks, the baseline flow in SLURM jobs, a worker job cancelled mid-training."""
from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import LOCAL_PROFILE, PROBE, SLURM_SCRIPT

pytestmark = pytest.mark.slurm


def test_local_cluster_script_is_idempotent_and_reports_an_idle_node(slurm_cluster):
    again = subprocess.run([str(SLURM_SCRIPT), "up", slurm_cluster], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already up" in again.stdout
    state = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, check=True).stdout
    assert state.split()[0] in ("idle", "mix", "alloc")


def test_local_profile_is_accepted_by_sbatch(slurm_cluster):
    from askshift.flows.cluster import check_submission, load_profile

    assert "to start" in check_submission(load_profile(LOCAL_PROFILE))


def test_gpu_request_on_gpu_less_cluster_is_detected_with_a_clear_message(slurm_cluster, tmp_path, askshift):
    gres = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, check=True).stdout.split()
    assert gres == ["(null)"]
    # What sbatch itself answers to a GPU job here: the rejection explain_sbatch_error recognises.
    raw = subprocess.run(["sbatch", "--test-only", "--gres=gpu:1", "--wrap", "true"], capture_output=True, text=True)
    assert raw.returncode != 0 and "Invalid generic resource (gres) specification" in raw.stderr

    profile = tmp_path / "gpu.yaml"
    profile.write_text(LOCAL_PROFILE.read_text().replace("gpus: 0", "gpus: 1"))
    for argv in (["cluster", "check", str(profile)],
                 ["run", "baseline", "--backend", "slurm", "--profile", str(profile), "--store", str(tmp_path)]):
        out = subprocess.run([askshift, *argv], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stderr
        assert "GPU" in out.stderr and "gpus: 0" in out.stderr and "--gres=gpu:1" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    assert not list(Path(tmp_path).glob("*/runs")), "nothing may run when the profile is rejected"


# --- the baseline flow in SLURM jobs, with one worker job cancelled mid-training ------------------------------------

EPOCHS = 3


def _records(probe_dir: Path) -> list[dict]:
    path = probe_dir / "tasks.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _cancel_training_job_after_first_epoch(probe_dir: Path, store: Path, cancelled: dict, stop: threading.Event):
    """Wait until the training task has written epoch 1's checkpoint, then scancel the SLURM job running it."""
    while not stop.is_set():
        checkpoints = list(store.glob("*/runs/*/checkpoints/epoch_1.pt"))
        running = [r for r in _records(probe_dir) if "train" in r["key"] and r["state"] == "executing"]
        if checkpoints and running:
            job = running[-1]["job"]
            cancelled["job"] = job
            cancelled["epochs_on_disk"] = sorted(p.name for p in checkpoints[0].parent.glob("epoch_*.pt"))
            cancelled["scancel"] = subprocess.run(["scancel", job], capture_output=True, text=True).returncode
            return
        time.sleep(0.2)


@pytest.fixture(scope="module")
def preempted_baseline(slurm_cluster, prefect_api, tmp_path_factory, monkeypatch_module):
    """Run the baseline flow on digits (tiny) with --backend slurm; cancel the training job after one epoch."""
    from askshift.flows.backends import make_task_runner
    from askshift.flows.baseline import BaselineConfig, synthetic_shift_baseline

    base = tmp_path_factory.mktemp("slurm-baseline")
    store, probe_dir = base / "store", base / "probe"
    probe_dir.mkdir()
    # Exported to the worker jobs (sbatch passes the submitter's environment): the probe records, inside each
    # worker, the SLURM job that ran each task.
    monkeypatch_module.setenv("ASKSHIFT_PROBE_DIR", str(probe_dir))
    profile = base / "slurm-local-probe.yaml"
    profile.write_text(LOCAL_PROFILE.read_text() + f"\npreload: [{str(PROBE)!r}]\n")
    config = BaselineConfig(dataset="digits", shift="tint_p=0.5", store=str(store), epochs=EPOCHS,
                            train_fractions=(0.25,), keep_epochs=(EPOCHS,), batch_size=64, device="cpu",
                            report=False)
    cancelled: dict = {}
    stop = threading.Event()
    killer = threading.Thread(target=_cancel_training_job_after_first_epoch,
                              args=(probe_dir, store, cancelled, stop), daemon=True)
    killer.start()
    started = time.time()
    # The .beton files are written here first (as a re-run would find them), so the worker jobs spend their time
    # on the training and prediction tasks this test is about.
    from askshift.lib.data.loaders import split_beton
    from askshift.lib.data.specs import get_spec

    spec = get_spec(config.shift, dataset=config.dataset)
    for split in spec.splits():
        split_beton(spec, split, str(config.store.resolved_cache_dir()))
    try:
        runner = make_task_runner("slurm", str(profile))
        state = synthetic_shift_baseline.with_options(task_runner=runner)(config, return_state=True)
    finally:
        stop.set()
        killer.join(timeout=5)
    return {"state": state, "config": config, "store": store, "records": _records(probe_dir),
            "cancelled": cancelled, "seconds": time.time() - started, "api": prefect_api}


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.mark.slow
def test_baseline_training_and_prediction_tasks_run_inside_slurm_jobs(preempted_baseline):
    result = preempted_baseline
    assert result["state"].is_completed(), result["state"]
    ran = [r for r in result["records"] if r["state"] == "memory"]
    train = [r for r in ran if "train" in r["key"]]
    predict = [r for r in ran if "predict" in r["key"]]
    assert train and predict, f"no training/prediction task finished on a worker: {result['records']}"
    assert all(r["job"] for r in train + predict), "a task ran outside a SLURM job"
    # Every worker talked to the flow's own Prefect API, not a temporary server of its own.
    assert {r["api"] for r in result["records"]} == {result["api"]}
    for job in {r["job"] for r in train + predict}:
        shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
        assert shown.returncode == 0 and "JobName=askshift-worker" in shown.stdout, shown.stdout + shown.stderr


@pytest.mark.slow
def test_cancelled_worker_job_is_replaced_and_training_resumes_from_its_checkpoint(preempted_baseline):
    result = preempted_baseline
    cancelled = result["cancelled"]
    assert cancelled.get("scancel") == 0, f"the training job was never cancelled: {cancelled}"
    assert result["state"].is_completed(), result["state"]

    train_starts = [r for r in result["records"] if "train" in r["key"] and r["state"] == "executing"]
    jobs = [r["job"] for r in train_starts]
    assert len(jobs) >= 2 and jobs[0] == cancelled["job"] and jobs[-1] != cancelled["job"], jobs

    from askshift.lib.store import Store

    exp = Store(result["store"]).experiment(Path(result["state"].result()).name)
    (run,) = result["config"].runs()
    assert exp.is_done(run.run_id())
    # Resumed, not restarted: the retry logged a resume from the epoch on disk when the job was killed.
    logs = _worker_logs({r["job"] for r in result["records"]})
    resumed = [line for line in logs if "resuming from epoch" in line]
    assert resumed, "the retried training task did not resume from a checkpoint"
    assert int(resumed[-1].split("resuming from epoch ")[1].split("/")[0]) >= len(cancelled["epochs_on_disk"])
    trained_epoch_1 = [line for line in logs if re.search(rf"\bepoch 1/{EPOCHS}\s+loss", line)]
    assert len(trained_epoch_1) == 1, f"epoch 1 was trained {len(trained_epoch_1)} times"
    # Nothing corrupted or duplicated: no temporary files left, one prediction file per (kept model, split).
    assert not list(exp.root.rglob("*.tmp"))
    models = exp.models()
    assert sorted(models["model"].to_list()) == sorted(run.model_id(e) for e in run.train.kept_epochs())
    for model in models["model"]:
        for split in ("source_val", "tint_val"):
            assert exp.read_predictions(model, split).height == 359


def _worker_logs(jobs: set[str]) -> list[str]:
    """Log lines the worker jobs wrote (their stdout/stderr files in the profile's log_directory)."""
    from askshift.flows.cluster import load_profile

    folder = Path(load_profile(LOCAL_PROFILE).log_directory)
    lines: list[str] = []
    for job in sorted(jobs):
        for path in folder.glob(f"*-{job}.*"):
            lines += path.read_text(errors="replace").splitlines()
    return lines
