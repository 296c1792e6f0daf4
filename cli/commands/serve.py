"""``askshift serve``: a local Prefect server + UI, every askshift flow registered as a deployment, and a runner."""
from __future__ import annotations

import argparse
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve", help="start a Prefect server and UI, register the askshift deployments and run them",
        description="Start a Prefect server (API and UI) on 127.0.0.1, register every flow of "
                    "deployments/prefect.yaml as a deployment and serve them: flow runs triggered from the UI's Run "
                    "button or a schedule run in this process's runner. Stop with Ctrl-C. With PREFECT_API_URL "
                    "already set (a shared server), pass --no-server to only register and run the deployments.")
    parser.add_argument("--port", type=int, default=None,
                        help="server port (default 4200 when free, else a free port; the address is printed)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the server listens on (default 127.0.0.1; anything else exposes an API "
                             "without authentication to the network)")
    parser.add_argument("--deployments", metavar="FILE", default=None,
                        help="prefect.yaml to read (default: deployments/prefect.yaml of this checkout)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="serve only these deployments (e.g. baseline report)")
    parser.add_argument("--no-server", action="store_true",
                        help="do not start a server: use the one PREFECT_API_URL points at (shared server)")
    parser.add_argument("--limit", type=int, default=1,
                        help="flow runs executed at the same time by this runner (default 1)")
    parser.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for the server")
    parser.set_defaults(func=_serve)


def _stop_on_sigterm() -> None:
    """SIGTERM before Prefect's runner installs its own handler would kill us without stopping the server."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _serve(args: argparse.Namespace) -> int:
    from askshift.cli.main import CliError
    from askshift.flows.deployments import PREFECT_YAML

    if args.port is not None and not 1 <= args.port <= 65535:
        raise CliError(f"--port must be between 1 and 65535, got {args.port}")
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be at least 1 (flow runs at a time), got {args.limit}")
    if args.startup_timeout <= 0:
        raise CliError(f"--startup-timeout must be more than 0 seconds, got {args.startup_timeout:g}")
    path = args.deployments or str(PREFECT_YAML)
    if not os.path.isfile(path):
        raise CliError(f"deployments file {path} does not exist (see deployments/prefect.yaml)")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: the Prefect server will listen on {args.host}: anyone who can reach this address can "
              "read results and start flows (Prefect's server has no login). Prefer 127.0.0.1 with an SSH tunnel, "
              "or set PREFECT_SERVER_API_AUTH_STRING; see docs/cluster.md", file=sys.stderr)
    if args.no_server:
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            raise CliError("--no-server needs PREFECT_API_URL pointing at a running Prefect server "
                           "(e.g. export PREFECT_API_URL=http://login-node:4200/api)")
        return _register_and_run(path, args, PREFECT_API_URL.value(), ui=None)

    from prefect.settings import PREFECT_HOME

    from askshift.flows.server import start_server

    log_path = os.path.join(str(PREFECT_HOME.value()), "askshift-server.log")
    _stop_on_sigterm()
    try:
        server = start_server(args.host, args.port, log_path=log_path, timeout=args.startup_timeout)
    except RuntimeError as exc:
        raise CliError(str(exc)) from exc
    try:
        return _register_and_run(path, args, server.api_url, ui=server.url, log_path=log_path)
    finally:
        server.stop()


def _register_and_run(path: str, args: argparse.Namespace, api_url: str, ui: str | None,
                      log_path: str | None = None) -> int:
    from prefect import serve
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from askshift.cli.main import CliError
    from askshift.flows.deployments import runner_deployments

    # Flow runs are subprocesses of the runner: they find the API through the environment.
    os.environ["PREFECT_API_URL"] = api_url
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        deployments, skipped = runner_deployments(path, only=args.only)
        for line in skipped:
            print(f"skipped deployment {line}", file=sys.stderr)
        if not deployments:
            raise CliError(f"no deployment of {path} could be loaded"
                           + (f" (asked for {' '.join(args.only)})" if args.only else ""))
        if ui:
            print(f"Prefect UI: {ui}", flush=True)
        print(f"Prefect API: {api_url}", flush=True)
        if log_path:
            print(f"server log: {log_path}", flush=True)
        print("deployments: " + ", ".join(f"{d.flow_name}/{d.name}" for d in deployments), flush=True)
        print("serving (deployments appear in the UI within seconds); trigger runs from the UI (Deployments -> "
              "Run) or `prefect deployment run FLOW/NAME`; Ctrl-C stops", flush=True)
        serve(*deployments, limit=args.limit, print_starting_message=False)
    return 0
