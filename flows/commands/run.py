"""``askshift run FLOW ...``: run one flow with a chosen execution backend (local, dask, slurm)."""
from __future__ import annotations

import argparse
import importlib
import pkgutil

import flows.commands as commands_pkg


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["local", "dask", "slurm"], default="local",
                        help="where tasks run: local (default, in this process), dask (a local Dask cluster), "
                             "slurm (Dask workers in SLURM jobs via dask-jobqueue; needs --profile)")
    parser.add_argument("--profile", metavar="FILE", default=None,
                        help="cluster profile YAML (see deployments/slurm-gpu.yaml, deployments/slurm-local.yaml)")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("run", help="run a flow (baseline, finetune, split, ...)",
                            description="Run one askshift flow. Every flow accepts --backend and --profile.")
    flows_sub = parser.add_subparsers(dest="flow", metavar="FLOW")
    flows_sub.required = True
    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        if not info.name.startswith("run_"):
            continue
        module = importlib.import_module(f"flows.commands.{info.name}")
        flow_parser = flows_sub.add_parser(module.FLOW_NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(flow_parser)
        add_backend_arguments(flow_parser)
        flow_parser.set_defaults(func=_runner(module))


def _runner(module):
    def run(args: argparse.Namespace) -> int:
        from flows.backends import task_runner_from_args

        # Lines a command wants printed after everything else, the temporary server's goodbye included.
        args.closing_lines = []
        # Bad input is one line before anything starts: the config is built (and checked) before the server.
        build = getattr(module, "build_config", None)
        args.prepared = build(args) if build is not None else None
        with task_runner_from_args(args) as task_runner:
            status = module.execute(args, task_runner)
        if args.closing_lines:
            from flows.backends import stop_temporary_prefect_server

            stop_temporary_prefect_server()  # its goodbye line on stderr must not follow the closing lines
            for line in args.closing_lines:
                print(line, flush=True)
        return status

    return run
