"""``askshift ask`` (also ``askshift run ask``): will pre-training help on this shift?  Reference data plus a folder of
shifted images (no labels needed) -> the verdict, its evidence and, when trained models exist, a label-free ER."""
from __future__ import annotations

import argparse
from typing import Any

from askshift.cli.main import CliError, fail


def _verdict_rule() -> str:
    from askshift.lib.support.evidence import verdict_rule

    return verdict_rule()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Ask your shift: split the shifted images into the part the reference data covers (in-support) and the part "
        "it does not (out-of-support) with a cross-fitted, calibrated domain classifier, and say whether pre-training "
        "is likely to help (the paper's finding: it raises effective robustness on out-of-support shifts only). "
        f"{_verdict_rule()} The last three lines are 'auroc: X', 'out_of_support: SHARE [LO, HI] (epsilon=E, K of N)' "
        "and 'verdict: ...'; the report (ask.md) has the evidence.")
    data = parser.add_argument_group("data")
    data.add_argument("--reference", metavar="DATASET", required=True,
                      help="reference dataset (see `askshift datasets`), e.g. imagefolder or digits")
    data.add_argument("--reference-root", metavar="PATH", help="folder of the reference dataset")
    data.add_argument("--reference-split", default="train", help="dataset split of the reference sample (default train)")
    data.add_argument("--reference-val-split", default="val",
                      help="dataset split of the reference validation set (label-free ER, default val)")
    data.add_argument("--shifted-root", metavar="PATH", required=True,
                      help="folder of shifted images: any folder of images (no labels), or with --labels yes an "
                           "ImageFolder split (PATH/<class>/*.jpg)")
    data.add_argument("--labels", choices=("yes", "no"), default="no",
                      help="no (default): the shifted images have no labels (dataset `images`); yes: PATH holds "
                           "class folders named like the reference's")
    parser.add_argument("--classifier", metavar="MODEL",
                        help="domain classifier (`askshift models`); default cnn:small on CPU, CLIP ViT-L/14 on CUDA")
    parser.add_argument("--pretrained", metavar="PATH", help="pre-trained weights of the classifier (local file)")
    parser.add_argument("--store", default="store", help="results store root (default ./store)")
    parser.add_argument("--experiment", help="experiment folder (default: ask-REFERENCE-vs-FOLDER)")
    parser.add_argument("--models-from", metavar="EXPERIMENT",
                        help="experiment folder of the store whose trained models give a label-free ER estimate "
                             "(default: the ask experiment's own models, if any)")
    parser.add_argument("--estimate-er", action="store_true",
                        help="without trained models: train them first in the ask experiment (from-scratch "
                             "baselines, then cnn:small fine-tuned from its local glyph pre-training, as `askshift run "
                             "finetune` does with its defaults), then give "
                             "the label-free ER estimate. Minutes on CPU for small images; for CLIP or timm models run "
                             "`askshift run finetune` on the reference data and pass --models-from")
    parser.add_argument("--folds", type=int, default=10, help="cross-fitting folds (default 10)")
    parser.add_argument("--epsilon", type=float, default=None,
                        help="out-of-support when the density ratio >= 1/epsilon (default 0.2, the paper's)")
    parser.add_argument("--epochs", type=int, help="training epochs of each fold's classifier")
    parser.add_argument("--lrs", type=float, nargs="+", metavar="LR",
                        help="learning-rate grid of the classifier, picked by held-out AUROC (one value: no tuning)")
    parser.add_argument("--reference-size", type=int, help="reference examples sampled (default 100000)")
    parser.add_argument("--resolution", type=int, metavar="N", help="image side the classifier reads "
                                                                    "(default: its model's own)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the share (default 2000)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--cache-dir", help="where .beton files are cached (default STORE/_cache)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds and the classifier (default 0)")


def _experiment(args: argparse.Namespace) -> str:
    from pathlib import Path

    from askshift.lib.store import content_hash

    folder = Path(args.shifted_root).expanduser().resolve()
    return f"ask-{args.reference}-vs-{folder.name}-{content_hash(str(folder))[:6]}".replace(":", "_")


def build_config(args: argparse.Namespace):
    """AskConfig from the flags; every user error becomes one CliError line before the server starts."""
    from pydantic import ValidationError

    from askshift.cli.commands.run_split import check_split_inputs, classifier_from_args
    from askshift.flows.ask import TARGET, AskConfig
    from askshift.lib.data.specs import DistributionSpec, ExperimentSpec
    from askshift.lib.registry import UnknownNameError
    from askshift.lib.store import StoreOptions
    from askshift.lib.support.ratios import SupportInputError, check_epsilons

    try:
        epsilon = check_epsilons([args.epsilon])[0] if args.epsilon is not None else None
        reference = DistributionSpec(dataset=args.reference, root=args.reference_root,
                                     train_split=args.reference_split, split=args.reference_val_split)
        labelled = args.labels == "yes"
        shifted = (DistributionSpec(dataset="imagefolder", root=str(_imagefolder_root(args.shifted_root)),
                                    split=_imagefolder_split(args.shifted_root)) if labelled
                   else DistributionSpec(dataset="images", root=args.shifted_root, split="all"))
        spec = ExperimentSpec(name=args.experiment or _experiment(args),
                              description=f"ask: {args.shifted_root} against {args.reference}",
                              reference=reference, targets={TARGET: shifted})
        classifier = classifier_from_args(args)
        split: dict[str, Any] = dict(spec=spec, classifier=classifier, folds=args.folds,
                                     store=StoreOptions(root=args.store, cache_dir=args.cache_dir),
                                     experiment=spec.name, device=args.device, seed=args.seed)
        if epsilon is not None:
            split["epsilon"] = epsilon
        if args.estimate_er and args.models_from:
            raise CliError("--estimate-er trains models in the ask experiment and --models-from reads another "
                           "experiment's: give one of them")
        config = AskConfig(split=split, models_from=args.models_from, resamples=args.resamples,
                           estimate_er=args.estimate_er)
        if args.estimate_er:
            from askshift.flows.ask import check_estimate_inputs

            check_estimate_inputs(config)
        check_split_inputs(config.split)
        if args.models_from:
            source = config.split.store.experiment(args.models_from)
            if not (source.root / "models").is_dir():
                raise CliError(f"--models-from {args.models_from}: no trained models in {source.root} (run "
                               f"`askshift run baseline` / `run finetune` on the reference data first)")
    except ValidationError as exc:
        raise fail(exc, "ask") from None
    except (SupportInputError, UnknownNameError, OSError, ValueError) as exc:
        raise fail(exc) from None
    return config


def _imagefolder_root(path: str):
    """``--labels yes`` takes a split folder (PATH/<class>/...): its parent is the ImageFolder root."""
    from pathlib import Path

    return Path(path).expanduser().resolve().parent


def _imagefolder_split(path: str) -> str:
    from pathlib import Path

    return Path(path).expanduser().resolve().name


def closing_lines(result: dict[str, Any]) -> list[str]:
    """The last three lines scripts read."""
    return [f"auroc: {result['auroc']:.3f}",
            f"out_of_support: {result['share']:.2f} [{result['share_lo']:.2f}, {result['share_hi']:.2f}] "
            f"(epsilon={result['epsilon']:g}, {result['out_of_support']} of {result['n']})",
            f"verdict: {result['verdict']}"]


def execute(args: argparse.Namespace, task_runner: Any) -> int:
    config = getattr(args, "prepared", None) or build_config(args)  # checked before the server started
    from askshift.flows.ask import ask

    runner = ask if task_runner is None else ask.with_options(task_runner=task_runner)
    result = runner(config)
    print(f"{result['split']}: {result['headline']}")
    print(f"  {result['report']}")
    lines = closing_lines(result)
    if getattr(args, "closing_lines", None) is None:
        print("\n".join(lines))
    else:
        args.closing_lines += lines
    return 0


__all__ = ["add_arguments", "build_config", "closing_lines", "execute"]
