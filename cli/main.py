"""The ``askshift`` command line: every module in ``cli/commands/`` contributes one sub-command."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import askshift.cli.commands as commands_pkg


class CliError(Exception):
    """A user error: printed as one line on stderr, exit status 2."""


def _flag(loc: tuple) -> str:
    """'--jpeg-quality' for loc ('jpeg_quality',); nested fields keep their path ('train.lr')."""
    parts = [str(p) for p in loc if not isinstance(p, int)]
    if not parts:
        return "setting"
    if len(parts) == 1:
        return "--" + parts[0].replace("_", "-")
    return ".".join(parts)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_line(exc: BaseException, what: str | None = None) -> str:
    """One line saying what is wrong: for a pydantic ValidationError every error, each naming the flag or field,
    the value given and the rule; for anything else its message with line breaks folded."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            message = str(err.get("msg", "")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            loc = tuple(err.get("loc", ()))
            # An unknown setting comes from a file, not a flag: name it as it was written there.
            where = ".".join(str(p) for p in loc) if err.get("type") == "extra_forbidden" else _flag(loc)
            given = f" (got {_short(err['input'])})" if "input" in err and not isinstance(err["input"], dict) else ""
            parts.append(f"{where}{given}: {message}")
        prefix = f"invalid {what} setting " if what else "invalid "
        return prefix + "; ".join(parts)
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or type(exc).__name__


def fail(exc: BaseException, what: str | None = None) -> CliError:
    """``raise fail(exc) from None``: the exception as the command's one error line."""
    return CliError(error_line(exc, what))


def check_seeds(seeds, flag: str = "--seed") -> None:
    """Seeds feed numpy and torch generators, which refuse negatives deep inside a task."""
    bad = [s for s in ([seeds] if isinstance(seeds, int) else seeds) if s < 0]
    if bad:
        raise CliError(f"{flag} must be 0 or more, got {' '.join(str(s) for s in bad)}")


def check_device(device: str | None, flag: str = "--device") -> None:
    """A CUDA device asked for on a machine without one fails before the server starts, not in a retried task."""
    if not device or not str(device).startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise CliError(f"{flag} {device}: no CUDA device; use {flag} cpu")
    index = str(device).partition(":")[2]
    if index.isdigit() and int(index) >= torch.cuda.device_count():
        raise CliError(f"{flag} {device}: only {torch.cuda.device_count()} CUDA device(s); use cuda:0 .. "
                       f"cuda:{torch.cuda.device_count() - 1} or {flag} cpu")


def check_store(path: str | None, flag: str = "--store") -> None:
    """The results folder is a folder this user can write to (created later if missing): a store that is a file or
    read-only otherwise fails after the server started and the data were written."""
    if not path:
        return
    import os
    import tempfile
    from pathlib import Path

    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise CliError(f"{flag} {path}: is a file, not a folder; pass a folder (it is created if missing)")
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CliError(f"{flag} {path}: {existing} is a file, so the folder cannot be created there")
    try:  # os.access says yes to root on a read-only mount; a real probe does not
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".askshift-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CliError(f"{flag} {path}: cannot write in {existing} ({exc.strerror or exc}); choose a writable folder") from None


def check_run(config, seeds_flag: str = "--seed") -> None:
    """What every flow's config shares and no schema can check: seeds, the device, the store and cache folders."""
    seeds = getattr(config, "seeds", None)
    if seeds is None:
        seeds = getattr(config, "seed", None)
    if seeds is not None:
        check_seeds(seeds, seeds_flag)
    check_device(getattr(config, "device", None))
    store = getattr(config, "store", None)
    if store is not None:
        check_store(store.root)
        check_store(store.cache_dir, "--cache-dir")


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
        module = importlib.import_module(f"askshift.cli.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    from askshift.flows.server import temporary_servers_stop_with_this_process
    from askshift.lib.registry import UnknownNameError

    temporary_servers_stop_with_this_process()  # a SIGKILLed command must not leave its Prefect server running
    parser = build_parser()
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except CliError as exc:
        print(f"askshift {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValidationError, UnknownNameError) as exc:  # a bad input no command caught: still one line
        if args.debug:
            raise
        print(f"askshift {args.command}: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
