"""How writing a photo .beton and one cnn:small epoch at 224 px scale with the number of photos N.

For each N of ``--scale`` this generates N photo-like JPEGs of mixed sizes (150-500 px a side, 10 classes,
``tests/photo_fixtures.py``; in parallel, timed but not part of the measurement), then measures in a fresh
subprocess, so that its peak memory is its own:

* write: ``askshift.lib.data.beton.ensure_beton("imagefolder", "train", ...)`` with the defaults (JPEG, longest side 256);
* epoch: one training epoch of ``cnn:small`` through ``askshift.lib.models.training.train_model`` fed by the random-resized-crop
  (scale 0.08-1, 224 px) + flip pipeline of ``askshift.lib.data.loaders``, timed as ``train_model`` times its epochs.  The FFCV
  pipeline is compiled beforehand on one batch (reported separately): a run's later epochs, and every run that
  gets a compiled loader from the loader pool, do not pay it.  ``--resolution`` and ``--model`` change the
  crop side and the model (``cnn:small`` reads any size, so at 224 px the epoch is mostly convolution);
* peak RSS: ``ru_maxrss`` of the measuring process plus that of its largest child (the .beton writer's
  processes), from ``resource.getrusage``; a sampled sum over the whole process tree is printed too.

Ends with a markdown table: N, write s, write img/s, epoch s, epoch img/s, peak RSS MB.  Usage::

    python benchmarks/photo_scale.py [--scale 1000,5000,20000] [--resolution 224] [--model cnn:small]
                                     [--workers N] [--batch-size 128] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing (lib, tests)

CLASSES = 10
_RESULT = "RESULT "


def generate(root: Path, n: int, workers: int) -> float:
    """Seconds to write ``n`` photos (rounded down to a multiple of CLASSES) into ``root/train``."""
    from tests.photo_fixtures import make_imagefolder

    start = time.perf_counter()
    make_imagefolder(root, classes=CLASSES, per_class=max(1, n // CLASSES), splits=("train",), workers=workers)
    return time.perf_counter() - start


def peak_rss_mb() -> tuple[float, float]:
    """(this process, its largest finished child) peak resident memory in MiB (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return own / 1024, child / 1024


class TreeRSS:
    """Peak of the summed RSS of this process and all its descendants, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self._me, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        total = 0
        for proc in [self._me, *self._me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:  # a child that exited between listing and reading
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> "TreeRSS":
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def measure(root: Path, cache: Path, workers: int, batch_size: int, resolution: int, model_name: str) -> dict:
    """Write the .beton, compile the pipeline on one batch, train one epoch; seconds and peak memory of each."""
    import numpy as np

    from askshift.lib.data.beton import ensure_beton
    from askshift.lib.data.loaders import LoaderConfig, LoaderPool, split_loader
    from askshift.lib.data.specs import get_spec
    from askshift.lib.models.families import build_model
    from askshift.lib.models.training import TrainConfig, epoch_loader_factory, train_model

    with TreeRSS() as tree:
        start = time.perf_counter()
        beton = ensure_beton("imagefolder", "train", cache, root, log=None)
        write_s = time.perf_counter() - start
        own_write, child = peak_rss_mb()
        tree_write = tree.peak_mb

        spec = get_spec("out_of_support", dataset="imagefolder", root=str(root))
        config = LoaderConfig(batch_size=batch_size, num_workers=workers, decoder="imagenet_random_crop",
                              resolution=resolution, flip=True)
        start = time.perf_counter()
        # One batch compiles the pipeline; closing hands the loader to the pool, where the epoch below finds it.
        pool = LoaderPool()
        with split_loader(spec, "source_train", cache, config, train=True,
                          indices=np.arange(min(batch_size, beton.num_records)), pool=pool) as warm:
            for _ in warm:
                pass
        compile_s = time.perf_counter() - start

        model = build_model(model_name, beton.num_classes)
        train = TrainConfig(epochs=1, batch_size=batch_size)
        make_loader = epoch_loader_factory(spec, "source_train", cache, config, seed=train.seed, pool=pool)
        with tempfile.TemporaryDirectory() as checkpoints:
            result = train_model(model, make_loader, train, checkpoints, device="cpu", log=lambda _: None)
        epoch = result.history[0]
        own, child = peak_rss_mb()
    return {
        "n": beton.num_records, "write_s": write_s, "compile_s": compile_s, "epoch_s": epoch.seconds,
        "epoch_examples": epoch.examples, "accuracy": epoch.accuracy, "loader_reused": pool.stats.reused,
        "beton_mb": beton.path.stat().st_size / 2**20, "own_write_mb": own_write, "own_mb": own, "child_mb": child,
        "tree_write_mb": tree_write, "tree_mb": tree.peak_mb,
    }


def measure_in_subprocess(root: Path, cache: Path, args: argparse.Namespace) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", str(root), "--cache", str(cache),
                          "--workers", str(args.workers), "--batch-size", str(args.batch_size),
                          "--resolution", str(args.resolution), "--model", args.model],
                         capture_output=True, text=True, cwd=REPO)
    results = [line[len(_RESULT):] for line in out.stdout.splitlines() if line.startswith(_RESULT)]
    if out.returncode != 0 or not results:
        raise RuntimeError(f"measuring {root} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(results[-1])


def table(rows: list[dict]) -> str:
    lines = ["| N | write s | write img/s | epoch s | epoch img/s | peak RSS MB |", "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['write_s']:.1f} | {r['n'] / r['write_s']:.0f} | {r['epoch_s']:.1f} | "
                     f"{r['epoch_examples'] / r['epoch_s']:.0f} | {r['own_mb'] + r['child_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="1000,5000,20000", help="comma-separated photo counts")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="generation processes and FFCV threads")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--resolution", type=int, default=224, help="side of the random resized crop")
    parser.add_argument("--model", default="cnn:small", help="askshift.lib.models.families name trained for the epoch")
    parser.add_argument("--workdir", default=None, help="keep photos and .beton files here (default: a temp folder, emptied per N)")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # the subprocess side
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        result = measure(Path(args.measure), Path(args.cache), args.workers, args.batch_size, args.resolution, args.model)
        print(_RESULT + json.dumps(result), flush=True)
        return 0

    sizes = [int(s) for s in args.scale.split(",") if s.strip()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        for n in sizes:
            root, cache = work / f"photos-{n}", work / f"cache-{n}"
            if not (root / "train").is_dir():
                print(f"N={n}: generated photos in {generate(root, n, args.workers):.1f}s (not part of the measurement)", flush=True)
            r = measure_in_subprocess(root, cache, args)
            print(f"N={r['n']}: .beton {r['beton_mb']:.0f} MiB written in {r['write_s']:.1f}s; pipeline compiled in "
                  f"{r['compile_s']:.1f}s (not in the epoch; loader reused {r['loader_reused']}x); epoch {r['epoch_s']:.1f}s "
                  f"over {r['epoch_examples']} images, train accuracy {r['accuracy']:.2f}; peak RSS: process "
                  f"{r['own_write_mb']:.0f} MB after the write, {r['own_mb']:.0f} MB after the epoch, largest writer "
                  f"child {r['child_mb']:.0f} MB; sampled process-tree sum {r['tree_write_mb']:.0f} MB during the write, "
                  f"{r['tree_mb']:.0f} MB overall", flush=True)
            rows.append(r)
            if args.workdir is None:  # 20k photos are a gigabyte: keep one N on disk at a time
                shutil.rmtree(root, ignore_errors=True)
                shutil.rmtree(cache, ignore_errors=True)
    print(f"\n{args.workers} workers, batch {args.batch_size}, {args.model}, random resized crop {args.resolution} + flip, CPU; "
          f"peak RSS = measuring process + its largest child (resource.getrusage ru_maxrss)")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
