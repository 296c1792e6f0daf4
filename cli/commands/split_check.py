"""``askshift split-check --seed N [--store DIR]``: the split flow on a digits shift whose membership is known."""
from __future__ import annotations

import argparse
import tempfile
import time


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "split-check",
        help="check the in/out-of-support split on a digits shift with known membership (CPU, minutes)",
        description="Build a shifted set from the bundled digits that mixes in-support examples (palette "
                    "colours that occur in the reference data) and out-of-support ones (colours never seen), "
                    "run the split flow on it, and report how well the density ratio recovers the true "
                    "membership. Ends with the line 'auroc: X.XXX' (AUROC of the ratio against the truth).",
    )
    parser.add_argument("--seed", type=int, required=True, help="seed of the mixture and of the domain classifier")
    parser.add_argument("--store", default=None, metavar="DIR",
                        help="results store (default: a temporary folder, deleted afterwards)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from askshift.cli.main import check_seeds

    check_seeds(args.seed)
    if args.store is not None:
        auroc = check(args.seed, args.store)
    else:
        with tempfile.TemporaryDirectory(prefix="askshift-split-check-") as store:
            auroc = check(args.seed, store, keep=False)
    from askshift.flows.backends import stop_temporary_prefect_server

    stop_temporary_prefect_server()
    print(f"auroc: {auroc:.3f}", flush=True)
    return 0


def check(seed: int, store: str, keep: bool = True) -> float:
    """Build the mixture, run the split flow, print the recovery table; returns the AUROC of the ratio
    against the true out-of-support membership."""
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:5.1f}s] {message}", flush=True)

    import torch

    # Tiny convolutions gain nothing from intra-op threads; two folds in parallel use the cores instead.
    torch.set_num_threads(1)
    from askshift.flows.backends import LocalTaskRunner
    from askshift.flows.split import SplitConfig, split_shift
    from askshift.lib.store import StoreOptions
    from askshift.lib.support.known_answer import (
        CHECK_EPSILON,
        CHECK_FOLDS,
        MixtureConfig,
        build_mixture,
        check_classifier,
        membership_recovery,
        mixture_spec,
        read_truth,
        write_mixture,
    )
    from askshift.lib.support.ratios import EPSILONS

    name = f"split-check-seed{seed}"
    options = StoreOptions(root=store)
    exp = options.experiment(name)
    say(f"building the mixture (seed {seed})")
    mixture = build_mixture(MixtureConfig(seed=seed))
    npz = write_mixture(mixture, exp.root / "mixture.npz")
    say(f"reference: {len(mixture.reference_labels)} digits with a spurious palette tint; shifted: "
        f"{len(mixture.shifted_labels)} digits, {int(mixture.out_of_support.sum())} of them out-of-support "
        f"(unseen colours)")
    config = SplitConfig(spec=mixture_spec(npz, name), classifier=check_classifier(seed), folds=CHECK_FOLDS,
                         epsilon=CHECK_EPSILON, store=options, experiment=name, seed=seed, device="cpu",
                         examples_per_row=8)
    say(f"running the split flow: {CHECK_FOLDS}-fold cross-fitting of a {config.classifier.model} domain "
        f"classifier, learning rates {', '.join(f'{lr:g}' for lr in config.classifier.lrs)}")
    flow = split_shift.with_options(task_runner=LocalTaskRunner(max_workers=2))
    result = flow(config)["shifted"]
    say(f"domain classifier AUROC {result['auroc']:.3f} (lr {result['lr']:g}, alpha {result['alpha']:.3g})")

    truth, _ = read_truth(npz)
    sub = exp.read_subsplit("shifted_val")
    recovery = membership_recovery(sub["index"].to_numpy(), sub["ratio"].to_numpy(), truth, EPSILONS)
    print("\nsplit sizes per epsilon and recovery of the true out-of-support examples:")
    print(f"{'epsilon':>8} {'in':>6} {'out':>6} {'precision':>10} {'recall':>8} {'accuracy':>9}")
    for row in recovery.table.iter_rows(named=True):
        precision = "-" if row["precision_out"] is None else f"{row['precision_out']:.3f}"
        recall = "-" if row["recall_out"] is None else f"{row['recall_out']:.3f}"
        print(f"{row['epsilon']:>8g} {row['in_support']:>6} {row['out_of_support']:>6} {precision:>10} "
              f"{recall:>8} {row['accuracy']:>9.3f}")
    print(f"\ntrue membership: {int((~truth).sum())} in-support, {int(truth.sum())} out-of-support")
    kept = "" if keep else "  (temporary store, deleted at exit: pass --store DIR to keep it)"
    print(f"report section: {result['section']}{kept}")
    say("done")
    return recovery.auroc
