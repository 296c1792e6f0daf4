"""``askshift run zoo-evaluate``: published timm classifiers on a reference and a shifted set, split, ER per part."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from askshift.cli.main import CliError, fail

MODELS_HELP = ("text file of the models, one per line: `arch.tag group`, group = baseline (ImageNet-1k only, the ER "
               "line is fitted on these) or pretrained (extra pre-training data); separated by spaces or a comma, "
               "'#' starts a comment, a `model,group` header line is skipped (so lib/paper_zoo.csv works as it is). "
               "Default: the paper's 78 baseline and 55 pretrained models")
GROUPS = ("baseline", "pretrained")


def _add_once(group: Any, parser: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
    """Add ``flag`` to ``group`` unless ``run split``'s arguments already define it."""
    if flag not in parser._option_string_actions:  # noqa: SLF001 -- argparse has no public lookup
        group.add_argument(flag, **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # The data, store, device and domain-classifier flags are `run split`'s own (one set of flags for both flows);
    # a zoo flag that `run split` comes to define as well is then shared, not defined twice.
    from askshift.cli.commands import run_split

    run_split.add_arguments(parser)
    parser.epilog = (
        "Example: askshift run zoo-evaluate --models models.txt --weights ~/weights --reference imagefolder "
        "--reference-root ~/imagenet --shifted imagenet-r --shifted-root ~/imagenet-r --store DIR. "
        "Each model reads images with timm's evaluation transform of that model (centre crop with its crop_pct at "
        "its resolution, its mean/std). A shifted set that covers only some classes (ImageNet-R: 200 of 1000): "
        "predictions on both sets are taken among those classes and the reference keeps only examples of those "
        "classes, as timm's published results-imagenet-r-clean.csv (lib/class_subset.py). Prints the AUROC line "
        "of each split, ER per part and group, then the experiment folder (default STORE/zoo-<reference>-vs-<shifted>).")
    zoo = parser.add_argument_group("zoo models")
    _add_once(zoo, parser, "--models", metavar="FILE", help=MODELS_HELP)
    _add_once(zoo, parser, "--weights", metavar="DIR",
              help="folder of weight files named <arch.tag>.safetensors (or .pth, .pt, .bin: a timm state dict) for "
                   "every model; without it weights come from the hub (not with HF_HUB_OFFLINE=1)")
    _add_once(zoo, parser, "--num-classes", type=int, metavar="N",
              help="head size of the weight files when they are not ImageNet-1k classifiers (default 1000)")
    _add_once(zoo, parser, "--resolution", type=int, metavar="N",
              help="image side the models read instead of each model's own (photos: centre crop at N px); models "
                   "with a fixed input size (ViTs) resize to theirs")
    _add_once(zoo, parser, "--batch-size", type=int, metavar="N", help="prediction batch size (default 256)")
    _add_once(zoo, parser, "--no-split", action="store_true",
              help="only predict and report ER on the whole shifted set (a split stored earlier is reused)")


def read_model_list(path: str) -> dict[str, str]:
    """model -> group from a ``--models`` file; every bad line is a CliError naming it."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise CliError(f"--models {path}: no such file (one `arch.tag group` per line)")
    groups: dict[str, str] = {}
    for number, raw in enumerate(file.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].replace(",", " ").split()
        if not line or (number == 1 and [w.lower() for w in line] == ["model", "group"]):
            continue
        if len(line) != 2 or line[1] not in GROUPS:
            raise CliError(f"--models {path} line {number}: expected `arch.tag group` with group "
                           f"{' or '.join(GROUPS)}, got {raw.strip()!r}")
        model, group = line
        if model in groups:
            raise CliError(f"--models {path} line {number}: {model} is listed twice")
        groups[model] = group
    if not groups:
        raise CliError(f"--models {path} lists no model (one `arch.tag group` per line)")
    return groups


def check_timm_name(name: str) -> None:
    """A timm ``arch.tag`` that timm knows, checked without building anything."""
    import timm
    import timm.models

    from askshift.lib.registry import close_matches

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = close_matches(arch, timm.list_models())
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise CliError(f"unknown timm architecture {arch!r} (model {name!r}).{hint} `timm.list_models()` lists them")
    if tag:
        try:
            timm.models.get_pretrained_cfg(name)
        except RuntimeError:
            tags = [m.partition(".")[2] for m in timm.list_pretrained(f"{arch}.*")]
            raise CliError(f"timm has no weights tagged {tag!r} for {arch} (model {name!r}); its tags: "
                           f"{', '.join(tags) or 'none'}") from None


def check_weights(models: list[str], weights_dir: str | None, num_classes: int | None = None) -> None:
    """A weight file per model, each holding a head of ``num_classes`` (default 1000) classes."""
    from askshift.lib.models.families import hub_offline
    from askshift.lib.robustness.paper_zoo import WEIGHT_SUFFIXES, weights_file, weights_head_size

    if weights_dir is None:
        if hub_offline():
            raise CliError(f"HF_HUB_OFFLINE=1 and no --weights DIR: put {models[0]}.safetensors (one file per model) "
                           f"in a folder and pass --weights DIR")
        return
    if not Path(weights_dir).expanduser().is_dir():
        raise CliError(f"--weights {weights_dir}: no such folder (it should hold <arch.tag>.safetensors per model)")
    missing = [m for m in models if weights_file(m, Path(weights_dir).expanduser()) is None]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CliError(f"--weights {weights_dir} has no weight file for {missing[0]}{more} "
                       f"(expected {missing[0]} + one of {', '.join(WEIGHT_SUFFIXES)})")
    for model in models:
        path = weights_file(model, Path(weights_dir).expanduser())
        stored = weights_head_size(model, path)
        if stored is not None and stored != (num_classes or 1000):
            raise CliError(f"{path} holds a head of {stored} classes, not {num_classes or 1000}: "
                           f"pass --num-classes {stored}" if num_classes is None else
                           f"{path} holds a head of {stored} classes but --num-classes is {num_classes}")


def check_data_roots(args: argparse.Namespace) -> None:
    """Each named dataset exists in the registry and, when it is read from disk, its folder exists."""
    from askshift.lib.data.datasets import dataset_info
    from askshift.lib.registry import UnknownNameError

    pairs = [(args.reference, args.reference_root, "--reference-root"), (args.shifted, args.shifted_root, "--shifted-root")]
    if getattr(args, "shift", None):
        pairs = [(args.dataset, args.root, "--root")]
    for name, root, flag in pairs:
        if name is None:
            continue  # run split's own check names the missing data set
        try:
            info = dataset_info(name)
        except UnknownNameError as exc:
            raise fail(exc) from None
        if info.needs_root and not root:
            raise CliError(f"dataset {name!r} is read from a local folder: pass {flag} PATH ({info.layout})")
        if root and not Path(root).expanduser().exists():
            raise CliError(f"{flag} {root} does not exist (dataset {name!r} expects: {info.layout})")


def check_heads(models: list[str], num_classes: int | None, args: argparse.Namespace) -> None:
    """A head smaller than the data's classes would leave labels the model cannot predict."""
    import timm.models

    from askshift.lib.data.datasets import dataset_num_classes

    dataset, root = (args.dataset, args.root) if getattr(args, "shift", None) else (args.reference, args.reference_root)
    if dataset is None:
        return  # run split's own check names the missing data set
    try:
        classes = dataset_num_classes(dataset, root)
    except (FileNotFoundError, ValueError) as exc:
        raise fail(exc) from None
    for model in models:
        head = num_classes or int(getattr(timm.models.get_pretrained_cfg(model), "num_classes", 0) or 1000)
        if head < classes:
            raise CliError(f"model {model} predicts {head} classes but the reference data set has {classes}: "
                           f"pass --num-classes {classes} with weights of that head size")


def build_config(args: argparse.Namespace):
    """ZooConfig from the flags; every user error becomes one CliError line before the Prefect server starts."""
    from pydantic import ValidationError

    from askshift.cli.commands import run_split
    from askshift.flows.zoo import ZooConfig
    from askshift.lib.robustness.paper_zoo import BASELINE_GROUP, PRETRAINED_GROUP, paper_zoo_groups

    groups = read_model_list(args.models) if args.models else paper_zoo_groups()
    if BASELINE_GROUP not in groups.values():
        raise CliError(f"--models {args.models} lists no baseline model: the ER line is fitted on the baseline models")
    for model in groups:
        check_timm_name(model)
    if args.num_classes is not None and args.num_classes < 1:
        raise CliError(f"--num-classes must be at least 1, got {args.num_classes}")
    check_weights(list(groups), args.weights, args.num_classes)
    check_data_roots(args)
    check_heads(list(groups), args.num_classes, args)
    split = run_split.build_config(args)  # the spec, store and split settings, checked as `run split` checks them
    if not args.experiment:
        split = split.model_copy(update={"experiment": "zoo-" + split.spec.name.removeprefix("split-")})
    try:
        config = ZooConfig(split=split, baseline_models=tuple(m for m, g in groups.items() if g == BASELINE_GROUP),
                           pretrained_models=tuple(m for m, g in groups.items() if g == PRETRAINED_GROUP),
                           weights_dir=str(Path(args.weights).expanduser().resolve()) if args.weights else None,
                           num_classes=args.num_classes, resolution=getattr(args, "resolution", None),
                           batch_size=getattr(args, "batch_size", None) or 256, run_split=not args.no_split)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "setting"
        raise CliError(f"invalid zoo setting {where!r}: {err.get('msg', '').removeprefix('Value error, ')}") from None
    return config


def er_lines(rows: list[dict[str, Any]], messages: dict[str, str]) -> list[str]:
    """A small table of ER per (part, group), then why a part has none."""
    def number(value: Any, width: int = 0) -> str:
        return f"{value:>+{width}.3f}" if isinstance(value, (int, float)) and value == value else f"{'n/a':>{width}}"

    lines = [f"  {'part':<15} {'group':<12} {'models':>6} {'ER':>8}  95% interval"] if rows else []
    for row in rows:
        interval = f"[{number(row.get('er_lower'))}, {number(row.get('er_upper'))}]"
        lines.append(f"  {row['sub_split']:<15} {row['group']:<12} {row['n_models']:>6} "
                     f"{number(row.get('effective_robustness'), 8)}  {interval}")
    lines += [f"  no ER on {part}: {' '.join(str(message).split())}" for part, message in messages.items() if message]
    return lines


def execute(args: argparse.Namespace, task_runner: Any) -> int:
    config = getattr(args, "prepared", None) or build_config(args)  # checked before the server started
    from askshift.flows.zoo import zoo_evaluate

    runner = zoo_evaluate if task_runner is None else zoo_evaluate.with_options(task_runner=task_runner)
    results = runner(config)
    split = config.split
    for target in split.target_names():
        result = results[target]
        if "auroc" in result:
            state = "" if result["separated"] else "  (domain classifier did not separate the sets: see the report)"
            print(f"{result['split']}: {result['in_support']} in-support, {result['out_of_support']} out-of-support "
                  f"at epsilon {split.epsilon:g}; AUROC {result['auroc']:.3f}{state}")
        else:
            print(f"{result['split']}:")
        for line in er_lines(result.get("er", []), result.get("messages", {})):
            print(line)
    print(split.store.experiment(split.experiment_name()).root)
    return 0


__all__ = ["add_arguments", "build_config", "execute", "read_model_list"]
