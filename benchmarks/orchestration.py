"""Prefect orchestration cost per backend: tasks per second and per-task overhead next to a realistic task.

For each backend (local thread pool, a Dask LocalCluster, SLURM workers through dask-jobqueue when a cluster
answers) a flow first warms the backend up (cluster start, worker imports: reported separately as start-up), then
runs N no-op tasks two ways: all submitted at once (throughput, tasks/s) and one after another (round trip of one
task = the overhead every task pays). The overhead is set against one training epoch of ``cnn:small`` on
digits-sized data (1,438 images, 3x32x32, batch 64) timed in this process, the smallest real task askshift
submits.  Usage::

    python benchmarks/orchestration.py [--tasks 40] [--backends local dask slurm] [--profile deployments/slurm-local.yaml]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from prefect import flow, task  # noqa: E402

import askshift.flows  # noqa: E402,F401  (safe environment defaults before Prefect is imported)

REPO = Path(__file__).resolve().parents[1]


@task
def noop(i: int) -> int:
    return i


@flow
def orchestration_probe(n: int) -> dict[str, float]:
    """Warm-up, then n tasks at once, then n/4 tasks one by one; returns seconds of each phase."""
    t0 = time.perf_counter()
    noop.submit(-1).result()  # cluster start, worker imports, first connection to the API
    t1 = time.perf_counter()
    for f in [noop.submit(i) for i in range(n)]:
        f.result()
    t2 = time.perf_counter()
    sequential = max(1, n // 4)
    for i in range(sequential):
        noop.submit(i).result()
    t3 = time.perf_counter()
    return {"startup_s": t1 - t0, "batch_s": t2 - t1, "sequential_s": t3 - t2, "sequential_n": sequential}


def epoch_seconds(examples: int = 1438, batch_size: int = 64) -> float:
    """One training epoch of cnn:small on digits-sized tensors (the work of the smallest real task)."""
    import torch

    from askshift.lib.models.families import build_model

    torch.manual_seed(0)
    model = build_model("cnn:small", 10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, labels = torch.rand(examples, 3, 32, 32), torch.randint(0, 10, (examples,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def one_epoch() -> None:
        for start in range(0, examples, batch_size):
            optimizer.zero_grad()
            loss = loss_fn(model(images[start:start + batch_size]), labels[start:start + batch_size])
            loss.backward()
            optimizer.step()

    one_epoch()  # warm-up (allocator, kernels)
    start = time.perf_counter()
    one_epoch()
    return time.perf_counter() - start


def slurm_available() -> str | None:
    """None when sbatch and a responding controller exist, else why not."""
    if shutil.which("sbatch") is None:
        return "sbatch not found"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return "no SLURM controller answers (deployments/slurm/local-cluster.sh up)"
    return None


def run_backend(backend: str, n: int, profile: str | None) -> dict[str, float]:
    from askshift.flows.backends import make_task_runner

    runner = make_task_runner(backend, profile if backend == "slurm" else None)
    return orchestration_probe.with_options(task_runner=runner)(n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=40, help="no-op tasks per backend (default 40)")
    parser.add_argument("--backends", nargs="+", default=["local", "dask", "slurm"], choices=["local", "dask", "slurm"])
    parser.add_argument("--profile", default=str(REPO / "deployments" / "slurm-local.yaml"),
                        help="cluster profile for the slurm backend")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)

    from askshift.flows.backends import shared_prefect_api

    epoch = epoch_seconds()
    print(f"reference task: one cnn:small epoch on 1,438 digits-sized images = {epoch:.2f} s "
          f"({os.cpu_count()} CPUs)", flush=True)
    rows = []
    with shared_prefect_api():
        for backend in args.backends:
            if backend == "slurm" and (reason := slurm_available()):
                print(f"skipping slurm: {reason}", flush=True)
                continue
            print(f"running {backend} ...", flush=True)
            phases = run_backend(backend, args.tasks, args.profile)
            per_task = phases["sequential_s"] / phases["sequential_n"]
            rows.append({"backend": backend, "tasks": args.tasks, "startup_s": phases["startup_s"],
                         "tasks_per_s": args.tasks / phases["batch_s"], "overhead_ms": 1000 * per_task,
                         "overhead_fraction": per_task / epoch})
    header = f"{'backend':8} {'tasks':>5} {'start-up s':>10} {'tasks/s':>8} {'ms/task':>8} {'of an epoch':>11}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['backend']:8} {r['tasks']:>5} {r['startup_s']:>10.1f} {r['tasks_per_s']:>8.1f} "
              f"{r['overhead_ms']:>8.0f} {100 * r['overhead_fraction']:>10.1f}%")
    print(f"\nms/task: round trip of one task submitted alone (what every task pays); 'of an epoch': that overhead "
          f"over one {epoch:.2f} s training epoch, the smallest real askshift task.")
    if args.json:
        Path(args.json).write_text(json.dumps({"epoch_s": epoch, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
