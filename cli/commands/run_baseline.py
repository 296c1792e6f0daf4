"""``askshift run baseline``: train from-scratch baselines on a synthetic shift and report accuracy on the line."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from askshift.cli.main import CliError, fail

# CLI flag -> BaselineConfig field; flags left out keep the config file's (or the default) value.
_LIST_FIELDS = {"widths": float, "train_fractions": float, "seeds": int, "keep_epochs": int}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help="dataset name (see `askshift datasets`; default digits)")
    parser.add_argument("--shift", help="shift preset (see `askshift shifts`; default tint_p=0.5)")
    parser.add_argument("--store", help="results store root (default ./store); prints STORE/<experiment> at the end")
    parser.add_argument("--epochs", type=int, help="training epochs per model (default 6)")
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file of baseline settings; flags override it")
    parser.add_argument("--root", help="dataset folder for datasets that are not bundled")
    parser.add_argument("--experiment", help="experiment folder name (default: the spec's name)")
    parser.add_argument("--model", help="baseline architecture, e.g. cnn:small (default)")
    parser.add_argument("--widths", nargs="+", metavar="W", help="width multipliers, one model family each (cnn)")
    parser.add_argument("--train-fractions", nargs="+", metavar="F", help="fractions of source_train (default 1 0.5 0.25)")
    parser.add_argument("--seeds", nargs="+", metavar="S", help="seeds (default 0)")
    parser.add_argument("--keep-epochs", nargs="+", metavar="E", help="epochs kept as baseline models (default: all)")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--batch-size", type=int, help="training batch size")
    parser.add_argument("--resolution", type=int, metavar="N",
                        help="image side the models read (default: the model's own; photos of mixed sizes need no flag)")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--cache-dir", help="where .beton files are cached (default STORE/_cache)")


def _read_config_file(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise CliError(f"config file {path} does not exist")
    import yaml  # JSON is YAML too

    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CliError(f"config file {path} is not valid YAML/JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CliError(f"config file {path} must hold a mapping of baseline settings, got {type(data).__name__}")
    return data


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    fields = ["dataset", "shift", "epochs", "root", "experiment", "model", "lr", "batch_size", "device", "resolution",
              *_LIST_FIELDS]
    values = {}
    for field in fields:
        value = getattr(args, field, None)
        if value is None:
            continue
        if field in _LIST_FIELDS:
            try:
                value = [_LIST_FIELDS[field](v) for v in value]
            except ValueError:
                raise CliError(f"--{field.replace('_', '-')} takes numbers, got {' '.join(value)}") from None
        values[field] = value
    return values


def _with_store_flags(data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """--store and --cache-dir over the config file's store settings (``store: PATH``, a ``store:`` mapping of root
    and cache_dir, or a top-level ``cache_dir``)."""
    flags = {key: getattr(args, flag, None) for key, flag in (("root", "store"), ("cache_dir", "cache_dir"))}
    flags = {key: value for key, value in flags.items() if value is not None}
    if not flags:
        return data
    from askshift.flows.baseline import BaselineConfig
    from askshift.lib.store import fold_store_input

    data = fold_store_input(BaselineConfig, data)
    given = data.get("store") or {}
    if isinstance(given, dict):  # anything else: the validation error names it
        data["store"] = {**given, **flags}
    return data


def build_config(args: argparse.Namespace):
    """BaselineConfig from --config FILE plus flags; every user error becomes a CliError before any compute."""
    from pydantic import ValidationError

    from askshift.flows.baseline import BaselineConfig

    data = _read_config_file(args.config) if getattr(args, "config", None) else {}
    data.update(_overrides(args))
    data = _with_store_flags(data, args)
    try:
        config = BaselineConfig.model_validate(data)
    except ValidationError as exc:
        raise fail(exc, "baseline") from None
    from askshift.cli.main import check_run

    check_run(config, "--seeds")
    _check_names(config)
    return config


def _check_names(config) -> None:
    from askshift.lib.data.datasets import dataset_info
    from askshift.lib.data.specs import get_spec
    from askshift.lib.models.families import check_model_name
    from askshift.lib.registry import UnknownNameError

    try:
        spec = get_spec(config.shift, dataset=config.dataset, root=config.root)
        check_model_name(config.model)
    except (UnknownNameError, ValueError, FileNotFoundError) as exc:
        raise fail(exc) from None
    for dist in [spec.reference, *spec.targets.values()]:
        info = dataset_info(dist.dataset)
        if info.needs_root and not dist.root:
            raise CliError(f"dataset {dist.dataset!r} is read from a local folder: pass --root PATH ({info.layout})")
        if dist.root and not Path(dist.root).expanduser().exists():
            raise CliError(f"dataset folder {dist.root} does not exist (dataset {dist.dataset!r} expects: {info.layout})")
    from askshift.lib.data.specs import check_spec_data

    try:
        check_spec_data(spec, str(config.store.resolved_cache_dir()))
    except (OSError, ValueError) as exc:  # DatasetLayoutError is an OSError
        raise fail(exc) from None


def execute(args: argparse.Namespace, task_runner: Any) -> int:
    config = getattr(args, "prepared", None) or build_config(args)  # checked before the server started
    from askshift.flows.baseline import synthetic_shift_baseline

    runner = synthetic_shift_baseline if task_runner is None else synthetic_shift_baseline.with_options(task_runner=task_runner)
    path = runner(config)
    print(path)
    return 0


__all__ = ["add_arguments", "execute", "build_config"]
