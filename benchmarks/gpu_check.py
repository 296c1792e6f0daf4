"""GPU check: the photo fixture through a baseline run, a timm fine-tuning run and a domain-classifier fold on CUDA.

bf16 autocast and channels-last throughout; each stage prints images/s.  Run it on a machine with a GPU
(`python benchmarks/gpu_check.py [--images 2000] [--device cuda]`); `--device cpu` runs the same code
on CPU at a small size, to check the script itself.  Weights are random (saved to a local file first, as
everywhere here: no hub).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rate(label: str, images: int, seconds: float) -> None:
    print(f"{label:<34} {images:>7} images  {seconds:7.2f} s  {images / max(seconds, 1e-9):9.1f} images/s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="photos per split side (train; val gets half)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    import os

    import torch

    workers = min(8, os.cpu_count() or 1)  # FFCV decoding threads (numba refuses more than the cores)

    from askshift.lib.data.loaders import LoaderPool
    from askshift.lib.models.finetune import finetune_run, plan_run
    from askshift.lib.models.strategies import FinetuneHparams
    from askshift.lib.models.training import RunConfig, TrainConfig, train_run
    from askshift.lib.store import Store
    from tests.photo_fixtures import make_imagefolder

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu to check the script", file=sys.stderr)
        return 2
    work = Path(args.workdir or tempfile.mkdtemp(prefix="askshift-gpu-"))
    per_class = (max(2, args.images // 4), max(1, args.images // 8))
    t0 = time.perf_counter()
    make_imagefolder(work / "photos", classes=4, per_class=per_class, seed=0)
    print(f"device {args.device}; {4 * per_class[0]} train / {4 * per_class[1]} val photos in "
          f"{time.perf_counter() - t0:.1f} s (not measured)")
    store = Store(work / "store")
    exp = store.experiment("gpu-check")
    cache = work / "cache"
    n_train = 4 * per_class[0]
    amp = "bf16" if args.device.startswith("cuda") else "none"
    pool = LoaderPool()  # as the tasks share theirs: a compiled loader is reused where a pipeline repeats

    train = TrainConfig(epochs=args.epochs, lr=1e-3, batch_size=128, amp=amp, warmup_epochs=0.5)
    run = RunConfig(dataset="imagefolder", shift="out_of_support", root=str(work / "photos"), architecture="cnn:small",
                    train=train)
    t = time.perf_counter()
    train_run(exp, run, cache, device=args.device, num_workers=workers, log=lambda _m: None, pool=pool)
    _rate("baseline cnn:small (64 px, RRC+flip)", n_train * args.epochs, time.perf_counter() - t)

    import timm

    weights = work / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), weights)
    hp = FinetuneHparams(epochs=args.epochs, batch_size=128, lr_grid=(1e-4,), copies=1, amp=amp)
    ft = plan_run("ft", "timm:resnet18", hp, 1e-4, 0, dataset="imagefolder", shift="out_of_support",
                  root=str(work / "photos"), pretrained=str(weights))
    t = time.perf_counter()
    outcome = finetune_run(exp, ft, cache, device=args.device, num_workers=workers, log=lambda _m: None, pool=pool)
    _rate("fine-tune timm:resnet18 (224 px)", n_train * args.epochs, time.perf_counter() - t)
    print(f"  reference val accuracy {outcome.val_accuracy:.3f}")

    from askshift.lib.data.specs import get_spec
    from askshift.lib.support.classifier import DomainSetup, domain_images, fit_and_score, load_domain_data
    from askshift.lib.support.ratios import DomainClassifierConfig, fold_plan

    spec = get_spec("out_of_support", dataset="imagefolder", root=str(work / "photos"))
    setup = DomainSetup(spec=spec, shifted_split="vflip_val", cache_dir=str(cache), folds=2,
                        classifier=DomainClassifierConfig(model="timm:resnet18", pretrained=str(weights), epochs=1,
                                                          min_steps=0, batch_size=128))
    data = load_domain_data(setup)
    images = domain_images(setup, data, num_workers=workers, pool=pool)
    fold = fold_plan(data, 2, 0)[0]
    t = time.perf_counter()
    fit_and_score(setup, data, images, fold.train, fold.heldout, 1e-4, work / "fold", device=args.device,
                  log=lambda _m: None)
    _rate("domain classifier fold (resnet18)", len(fold.train) + len(fold.heldout), time.perf_counter() - t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
