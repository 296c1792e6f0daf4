"""Seconds per training run's loader: a fresh FFCV loader per run vs the pooled, already compiled one.

A miniature experiment trains dozens of small models on the same .beton file, each on its own subset and seed.
Building an FFCV loader generates its pipeline code, which numba compiles on the first pass; a ``LoaderPool``
keeps freed loaders and re-points them at the next run's examples instead.  For each of ``--runs`` runs this
measures what a run pays before and during its first epoch: build the loader, then one pass over its subset.
The last line is ``ratio: X.XX`` (fresh over pooled).  Usage::

    python benchmarks/loader_pool.py [--runs 8] [--fraction 0.4] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from askshift.lib.data.loaders import LoaderConfig, LoaderPool, split_info, split_loader  # noqa: E402
from askshift.lib.data.specs import get_spec  # noqa: E402
from askshift.lib.models.training import subset_indices  # noqa: E402


def first_epochs(spec, cache: str, config: LoaderConfig, runs: int, fraction: float,
                 pool: LoaderPool | None) -> list[float]:
    """Seconds of (loader construction + one epoch) for ``runs`` runs with different subsets and seeds, their
    loaders from ``pool`` (None: each built afresh)."""
    kept = split_info(spec, "source_train", cache).indices
    seconds = []
    for seed in range(runs):
        start = time.perf_counter()
        loader = split_loader(spec, "source_train", cache, config, train=True,
                              indices=subset_indices(kept, fraction, seed), seed=seed, pool=pool)
        for _ in loader:
            pass
        loader.close()
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=8, help="training runs to simulate per variant (default 8)")
    parser.add_argument("--fraction", type=float, default=0.4, help="training-set fraction of each run (default 0.4)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    spec = get_spec("out_of_support", dataset="digits")
    config = LoaderConfig(batch_size=args.batch_size, num_workers=1, flip=True)
    with tempfile.TemporaryDirectory() as cache:
        split_info(spec, "source_train", cache)  # the .beton is written once, outside the timings
        fresh = first_epochs(spec, cache, config, args.runs, args.fraction, pool=None)
        pool = LoaderPool()
        pooled = first_epochs(spec, cache, config, args.runs, args.fraction, pool=pool)
    # The pool's first run compiles like a fresh one; the median is what every later run pays.
    print(f"fresh loader per run:  median {np.median(fresh):.3f} s  (runs: {', '.join(f'{s:.2f}' for s in fresh)})")
    print(f"pooled loader per run: median {np.median(pooled):.3f} s  (runs: {', '.join(f'{s:.2f}' for s in pooled)}; "
          f"built {pool.stats.built}, reused {pool.stats.reused})")
    print(f"ratio: {np.median(fresh) / np.median(pooled):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
