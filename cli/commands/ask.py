"""``askshift ask``: the question the package is named for, as a top-level command (the same as ``askshift run ask``)."""
from __future__ import annotations

import argparse

from askshift.flows.registry import FLOWS


def register(sub: argparse._SubParsersAction) -> None:
    from askshift.cli.commands import run_ask
    from askshift.cli.commands.run import _runner, add_backend_arguments

    parser = sub.add_parser("ask", help=FLOWS.get("ask").help, description=FLOWS.get("ask").help)
    run_ask.add_arguments(parser)
    add_backend_arguments(parser)
    parser.set_defaults(func=_runner(run_ask))
