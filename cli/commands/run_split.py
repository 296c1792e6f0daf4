"""``askshift run split``: split a shifted set into in-support and out-of-support parts (and ER on each part)."""
from __future__ import annotations

import argparse
from typing import Any

from askshift.cli.main import CliError, fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data: either two data sets, or a synthetic shift preset")
    data.add_argument("--reference", metavar="NAME", help="reference dataset (see `askshift datasets`)")
    data.add_argument("--reference-root", metavar="PATH", help="folder (or file) of the reference dataset")
    data.add_argument("--reference-split", default="train", help="dataset split of the reference sample (default train)")
    data.add_argument("--reference-val-split", default="val",
                      help="dataset split used as source_val, the reference of the ER line (default val)")
    data.add_argument("--shifted", metavar="NAME", help="shifted dataset")
    data.add_argument("--shifted-root", metavar="PATH", help="folder (or file) of the shifted dataset")
    data.add_argument("--shifted-split", default="val", help="dataset split of the shifted set (default val)")
    data.add_argument("--shift", metavar="PRESET", help="instead: split the targets of a synthetic shift preset "
                                                        "(e.g. out_of_support, tint_p=0.5) of --dataset")
    data.add_argument("--dataset", default="digits", help="dataset of --shift (default digits)")
    data.add_argument("--root", help="dataset folder of --shift for datasets that are not bundled")
    parser.add_argument("--store", default="store", help="results store root (default ./store)")
    parser.add_argument("--experiment", help="experiment folder (default: derived from the data sets)")
    parser.add_argument("--folds", type=int, default=10, help="cross-fitting folds (default 10)")
    parser.add_argument("--epsilon", type=float, default=None,
                        help="epsilon of the stored split: out-of-support when ratio >= 1/epsilon "
                             "(default 0.2, the paper's text; the released notebook used 0.1)")
    parser.add_argument("--epsilons", type=float, nargs="+", default=None, metavar="E",
                        help="epsilon sweep for the sizes table (default 1e-4 ... 0.5)")
    parser.add_argument("--classifier", metavar="MODEL",
                        help="domain classifier (askshift.lib.models.families name); default cnn:small on CPU, "
                             "clip:ViT-L-14:laion2b_s32b_b82k (LP then FT) on CUDA")
    parser.add_argument("--pretrained", metavar="PATH", help="pre-trained weights of the classifier (local file)")
    parser.add_argument("--lrs", type=float, nargs="+", metavar="LR", help="learning-rate grid (picked by held-out AUROC)")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs of each fold's classifier")
    parser.add_argument("--reference-size", type=int, help="reference examples sampled (default 100000)")
    parser.add_argument("--bootstrap-examples", type=int, default=0, metavar="N",
                        help="per-part ER: also an example-level bootstrap with N resamples (default 0: off)")
    parser.add_argument("--resolution", type=int, metavar="N",
                        help="image side the domain classifier reads (default: its model's own for photos, e.g. 64 px "
                             "for cnn:small; the reference's stored size for same-size arrays)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--cache-dir", help="where .beton files are cached (default STORE/_cache)")
    parser.add_argument("--seed", type=int, default=0)


def _spec(args: argparse.Namespace):
    from askshift.lib.data.specs import DistributionSpec, ExperimentSpec, get_spec

    if args.shift:
        if args.reference or args.shifted:
            raise CliError("give either --shift PRESET or --reference/--shifted data sets, not both")
        return get_spec(args.shift, dataset=args.dataset, root=args.root)
    if not (args.reference and args.shifted):
        raise CliError("name the data: --reference NAME --shifted NAME (with --reference-root/--shifted-root), "
                       "or --shift PRESET")
    reference = DistributionSpec(dataset=args.reference, root=args.reference_root, train_split=args.reference_split,
                                 split=args.reference_val_split)
    shifted = DistributionSpec(dataset=args.shifted, root=args.shifted_root, split=args.shifted_split)
    name = f"split-{args.reference}-vs-{args.shifted}".replace(":", "_")
    return ExperimentSpec(name=name, description=f"{args.shifted} split against {args.reference}",
                          reference=reference, targets={"shifted": shifted})


def _check_classifier(name: str) -> None:
    """Unknown families, sizes and architectures fail here, not inside a task after the server started."""
    from askshift.lib.models.families import ModelName, build_model

    parsed = ModelName.parse(name)
    if parsed.family == "cnn":
        build_model(name, 2)
    elif parsed.family == "timm":
        import timm

        arch = parsed.spec.partition(".")[0]
        if not timm.is_model(arch):
            raise ValueError(f"unknown timm architecture {arch!r} (`timm.list_models()` lists them)")
    elif parsed.family == "clip":
        import open_clip

        arch = parsed.spec.partition(":")[0]
        if arch not in open_clip.list_models():
            raise ValueError(f"unknown open_clip architecture {arch!r} (`open_clip.list_models()` lists them)")


def classifier_from_args(args: argparse.Namespace):
    """The device's default domain classifier with the flags' overrides (--classifier, --pretrained, --lrs, ...)."""
    from askshift.lib.support.ratios import default_classifier

    classifier = default_classifier(args.device)
    updates: dict[str, Any] = {"seed": args.seed}
    if args.classifier:
        _check_classifier(args.classifier)
        updates.update(model=args.classifier, linear_probe_epochs=classifier.linear_probe_epochs if args.pretrained else 0)
    for field in ("pretrained", "lrs", "epochs", "reference_size", "resolution"):
        value = getattr(args, field)
        if value is not None:
            updates[field] = tuple(value) if field == "lrs" else value
    return classifier.model_validate({**classifier.model_dump(), **updates})


def check_split_inputs(config) -> None:
    """What a SplitConfig's run would fail on, before any server or training: the run's settings, every split's
    files, and for every target the classes, sizes, folds and a decoding both sides share."""
    from askshift.cli.main import check_run
    from askshift.lib.data.specs import check_spec_data
    from askshift.lib.support.classifier import domain_decoding, load_domain_data

    check_run(config)
    check_spec_data(config.spec, str(config.store.resolved_cache_dir()))
    for target in config.target_names():
        load_domain_data(config.setup(target))  # classes, sizes and folds are checked here
        domain_decoding(config.setup(target))  # both sides decodable alike at these settings


def build_config(args: argparse.Namespace):
    """SplitConfig from the flags; every user error becomes one CliError line before any training."""
    from pydantic import ValidationError

    from askshift.flows.split import SplitConfig
    from askshift.lib.registry import UnknownNameError
    from askshift.lib.store import StoreOptions
    from askshift.lib.support.ratios import EPSILONS, SupportInputError, check_epsilons

    try:
        epsilon = check_epsilons([args.epsilon])[0] if args.epsilon is not None else None
        epsilons = check_epsilons(args.epsilons) if args.epsilons else EPSILONS
        spec = _spec(args)
        classifier = classifier_from_args(args)
        fields: dict[str, Any] = dict(spec=spec, classifier=classifier, folds=args.folds, epsilons=epsilons,
                                      store=StoreOptions(root=args.store, cache_dir=args.cache_dir),
                                      experiment=args.experiment, device=args.device, seed=args.seed,
                                      bootstrap_examples=args.bootstrap_examples)
        if epsilon is not None:
            fields["epsilon"] = epsilon
        config = SplitConfig(**fields)
        check_split_inputs(config)
    except ValidationError as exc:
        raise fail(exc, "split") from None
    except (SupportInputError, UnknownNameError, OSError, ValueError) as exc:
        raise fail(exc) from None
    return config


def execute(args: argparse.Namespace, task_runner: Any) -> int:
    config = getattr(args, "prepared", None) or build_config(args)  # checked before the server started
    from askshift.flows.split import split_shift

    runner = split_shift if task_runner is None else split_shift.with_options(task_runner=task_runner)
    results = runner(config)
    closing = getattr(args, "closing_lines", None)
    closing = closing if closing is not None else []
    for target, result in results.items():
        state = "" if result["separated"] else "  (domain classifier did not separate the sets: see the report)"
        print(f"{result['split']}: {result['in_support']} in-support, {result['out_of_support']} out-of-support "
              f"at epsilon {config.epsilon:g}; AUROC {result['auroc']:.3f}{state}")
        print(f"  {result['section']}")
        total = result["in_support"] + result["out_of_support"]
        # The last two lines (per target), after the temporary server has stopped: what scripts read.
        closing += [f"auroc: {result['auroc']:.3f}",
                    f"out_of_support: {result['out_of_support']} of {total} (epsilon={config.epsilon:g})"]
    if getattr(args, "closing_lines", None) is None:
        print("\n".join(closing))
    return 0


__all__ = ["add_arguments", "execute", "build_config"]
