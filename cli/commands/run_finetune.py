"""``askshift run finetune``: fine-tune pre-trained models on a shift's reference data and report their ER."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from askshift.cli.main import CliError, fail
from askshift.lib.store import StoreOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="digits", help="dataset name (default digits)")
    parser.add_argument("--shift", default="out_of_support", help="shift preset (default out_of_support)")
    parser.add_argument("--models", help="comma-separated model names, e.g. cnn:small,timm:resnet18 (default cnn:small)")
    parser.add_argument("--strategies", help="comma-separated strategies: ft, lp, lp-ft, zs-ft, scratch (default ft,lp-ft)")
    parser.add_argument("--store", default="store", help="results store root (default ./store)")
    parser.add_argument("--pretrained", action="append", metavar="[MODEL=]PATH",
                        help="weights file for every model, or MODEL=PATH for one (repeatable); 'hub' fetches from the "
                             "model hub. Without it a cnn: model uses the cached local glyph checkpoint (askshift pretrain)")
    parser.add_argument("--preset", help="paper preset: openai_clip or augreg_in21k (see `askshift models`)")
    parser.add_argument("--lr-grid", help="comma-separated learning rates to sweep (default: the recipe's)")
    parser.add_argument("--copies", type=int, help="seeds trained at the selected learning rate")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs")
    parser.add_argument("--batch-size", type=int, help="training batch size")
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    parser.add_argument("--recipe", choices=["paper", "miniature"],
                        help="paper: METHOD.md's (8 epochs, batch 512, lr 3e-4..1e-6, 4 copies); miniature: CPU-sized "
                             "(default for cnn: models)")
    parser.add_argument("--no-control", action="store_true", help="skip the same-architecture from-scratch control")
    parser.add_argument("--dfr-split", help="also refit each copy's last layer by DFR on this split (needs group labels)")
    parser.add_argument("--baseline-epochs", type=int, help="epochs of the baseline if it has to be trained first")
    parser.add_argument("--experiment", help="experiment folder name (default: the spec's name, as the baseline)")
    parser.add_argument("--root", help="dataset folder for datasets that are not bundled")
    parser.add_argument("--cache-dir", help=".beton and checkpoint cache (default STORE/_cache)")
    parser.add_argument("--resolution", type=int, metavar="N",
                        help="image side the models read (default: each model's own -- timm pretrained_cfg, open_clip "
                             "preprocess, 64 px for cnn: -- so photos of mixed sizes need no flag)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")


def _split_list(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    items = _split_list(text)
    if items is None:
        return None
    try:
        return tuple(float(v) for v in items)
    except ValueError:
        raise CliError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def _pretrained(values: list[str] | None, models: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        model, sep, path = value.rpartition("=")
        if sep and model in models:
            out[model] = path
        else:
            out.update({m: value for m in models if m not in out})
    return out


def hparams_from_args(args: argparse.Namespace, models: list[str], preset: str | None):
    """The recipe (preset / miniature / paper) with the flags' overrides; CliError for bad values."""
    from askshift.lib.models.strategies import PRESETS, RECIPES, FinetuneHparams, default_recipe

    if args.recipe:
        base = RECIPES[args.recipe]
    elif preset:
        base = PRESETS.get(preset).hparams
    else:
        base = default_recipe(models)
    update: dict[str, Any] = {}
    grid = _floats(args.lr_grid, "--lr-grid")
    if grid is not None:
        bad = [g for g in grid if not g > 0]
        if bad or not grid:
            raise CliError(f"--lr-grid needs positive learning rates, got {', '.join(f'{b:g}' for b in bad) or 'none'}")
        update["lr_grid"] = grid
    if args.copies is not None:
        if args.copies < 1:
            raise CliError(f"--copies must be at least 1, got {args.copies}")
        update["copies"] = args.copies
    for flag in ("epochs", "batch_size", "weight_decay"):
        if getattr(args, flag) is not None:
            update[flag] = getattr(args, flag)
    return _validated(FinetuneHparams, {**base.model_dump(), **update}, "fine-tuning")


def _validated(cls, data: dict, what: str):
    from pydantic import ValidationError

    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise fail(exc, what) from None


def build_config(args: argparse.Namespace):
    """FinetuneConfig from the flags, fully validated (names, preset, strategies, grid, copies) before training."""
    from askshift.flows.finetune import FinetuneConfig
    from askshift.lib.data.specs import get_spec
    from askshift.lib.models.families import PretrainedUnavailable, check_model_name
    from askshift.lib.models.finetune import FinetuneInputError, validate_finetune
    from askshift.lib.models.strategies import PRESETS
    from askshift.lib.registry import UnknownNameError

    store = StoreOptions(root=args.store, cache_dir=args.cache_dir)
    try:
        preset = PRESETS.get(args.preset).name if args.preset else None
        models = _split_list(args.models) or ([PRESETS.get(preset).model] if preset else ["cnn:small"])
        strategies = _split_list(args.strategies) or (list(PRESETS.get(preset).strategies) if preset else ["ft", "lp-ft"])
        for model in models:
            check_model_name(model)
        hparams = hparams_from_args(args, models, preset)
        validate_finetune(models, strategies, hparams, preset=preset, class_names_needed=False)
        from askshift.lib.data.specs import check_spec_data

        check_spec_data(get_spec(args.shift, dataset=args.dataset, root=args.root),
                        str(store.resolved_cache_dir()))
    except (UnknownNameError, FinetuneInputError, PretrainedUnavailable, ValueError, OSError) as exc:
        raise fail(exc) from None
    data = {
        "dataset": args.dataset, "shift": args.shift, "root": args.root, "store": store,
        "experiment": args.experiment, "preset": preset, "models": tuple(models),
        "strategies": tuple(strategies), "same_arch_control": not args.no_control,
        "pretrained": _pretrained(args.pretrained, models), "hparams": hparams, "seed": args.seed,
        "dfr_split": args.dfr_split, "device": args.device, "resolution": args.resolution,
        "baseline": {"epochs": args.baseline_epochs} if args.baseline_epochs else {},
    }
    config = _validated(FinetuneConfig, data, "fine-tuning")
    from askshift.cli.main import check_run
    from askshift.lib.models.families import check_pretrained_file, model_family
    from askshift.lib.models.finetune import check_weights

    check_run(config)

    for model in config.models:
        path = config.pretrained.get(model)
        if path is not None and path != "hub" and not Path(path).exists():
            raise CliError(f"--pretrained {path}: no such file (build one with `askshift pretrain --out {path}`)")
        family = model_family(model)
        if path is None and not family.local_pretraining and not family.text_tower:
            path = "hub"  # what the flow will ask for
        try:
            check_weights(model, path)
            if path is not None and path != "hub":
                check_pretrained_file(model, path)  # garbage or another architecture: before any baseline trains
        except (PretrainedUnavailable, FileNotFoundError, ValueError) as exc:
            raise CliError(str(exc)) from None
    return config


def execute(args: argparse.Namespace, task_runner: Any) -> int:
    config = getattr(args, "prepared", None) or build_config(args)  # checked before the server started
    from askshift.flows.finetune import pretrained_finetune
    from askshift.lib.models.families import PretrainedUnavailable
    from askshift.lib.models.finetune import FinetuneInputError

    runner = pretrained_finetune if task_runner is None else pretrained_finetune.with_options(task_runner=task_runner)
    try:
        result = runner(config)
    except (FinetuneInputError, PretrainedUnavailable) as exc:
        raise fail(exc) from None
    print(result["experiment"])
    return 0


__all__ = ["add_arguments", "execute", "build_config"]
