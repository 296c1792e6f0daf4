"""The ``askshift`` command line: every module in ``flows/commands/`` contributes one sub-command."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import flows.commands as commands_pkg


class CliError(Exception):
    """A user error: printed as one line on stderr, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="askshift",
        description=(
            "Ask your distribution shift if pre-training is right for you: measure the effective "
            "robustness (ER) of pre-trained vs from-scratch models on a shift, split natural shifts "
            "into in-support and out-of-support parts, and run it all as Prefect flows."
        ),
        epilog="Start with `askshift demo` (the paper's experiment in miniature, CPU, minutes).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"flows.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except CliError as exc:
        print(f"askshift {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
