"""``askshift run hparam``: ER of a fine-tuned model as one hyper-parameter at a time moves around the selected config."""
from __future__ import annotations

import argparse
from typing import Any

from askshift.cli.commands import run_finetune
from askshift.cli.main import CliError, fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    run_finetune.add_arguments(parser)
    parser.add_argument("--strategy", help="strategy to ablate (default: zs-ft for clip: models, else ft)")
    parser.add_argument("--epochs-grid", help="comma-separated epochs (default: 1/4, 1/2, 1, 2 x the recipe's)")
    parser.add_argument("--batch-grid", help="comma-separated batch sizes (default: 1/4, 1/2, 1, 2 x the recipe's)")
    parser.add_argument("--wd-grid", help="comma-separated weight decays (default 0, 0.01, 0.1, 0.3)")
    parser.add_argument("--ablation-lrs", help="comma-separated learning rates (default: the LR grid)")


def _grid(text: str | None, kind: type, flag: str, positive: bool) -> tuple | None:
    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CliError(f"{flag} takes comma-separated numbers, got {text!r}") from None
    if not values or any((v <= 0) if positive else (v < 0) for v in values):
        raise CliError(f"{flag} needs {'positive' if positive else 'non-negative'} values, got {text!r}")
    return values


def build_config(args: argparse.Namespace):
    from askshift.flows.finetune import AblationConfig

    base = run_finetune.build_config(args)
    from askshift.lib.models.strategies import default_strategy

    strategy = args.strategy or default_strategy(base.models[0])
    if args.strategy and args.strategy not in base.strategies:
        base = base.model_copy(update={"strategies": (*base.strategies, args.strategy)})
    from askshift.lib.models.finetune import FinetuneInputError, validate_finetune
    from askshift.lib.models.strategies import STRATEGIES
    from askshift.lib.registry import UnknownNameError

    try:
        STRATEGIES.get(strategy)
        validate_finetune(base.models[:1], [strategy], class_names_needed=False)
    except (UnknownNameError, FinetuneInputError) as exc:
        raise fail(exc) from None
    return AblationConfig(
        finetune=base, model=base.models[0], strategy=strategy,
        epochs=_grid(args.epochs_grid, int, "--epochs-grid", True),
        batch_sizes=_grid(args.batch_grid, int, "--batch-grid", True),
        weight_decays=_grid(args.wd_grid, float, "--wd-grid", False),
        lrs=_grid(args.ablation_lrs, float, "--ablation-lrs", True),
    )


def execute(args: argparse.Namespace, task_runner: Any) -> int:
    config = getattr(args, "prepared", None) or build_config(args)  # checked before the server started
    from askshift.flows.finetune import hparam_ablation

    runner = hparam_ablation if task_runner is None else hparam_ablation.with_options(task_runner=task_runner)
    result = runner(config)
    print(result["table"])
    return 0


__all__ = ["add_arguments", "execute", "build_config"]
