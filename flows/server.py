"""A Prefect server (API + UI) in a subprocess on host:port: started, health-checked, stopped by PID, and never
outliving the process that started it."""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from askshift.env import SAFE_DEFAULTS

DEFAULT_PORT = 4200
LOOPBACK = "127.0.0.1"


def port_is_free(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    """A port the OS says is free now (bind to 0)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def choose_port(host: str, requested: int | None) -> int:
    """``requested`` if given; else Prefect's usual 4200 when free, else any free port."""
    if requested is not None:
        return requested
    return DEFAULT_PORT if port_is_free(host, DEFAULT_PORT) else free_port(host)


def server_env(host: str, port: int) -> dict[str, str]:
    """Environment of the server process: no telemetry, bound where asked, UI pointed at its own API."""
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in SAFE_DEFAULTS.items()}}
    env.update({
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
    })
    env.pop("PREFECT_API_URL", None)  # the server is the API; a client URL would make it talk to another one
    return env


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM the server when its parent dies, so a killed ``askshift serve`` never
    leaves an orphaned server holding the port (no-op where prctl is unavailable)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# The watchdog: a tiny interpreter (stdlib only) that polls whether its parent is still the process that started
# it.  Once that process is gone -- even by SIGKILL, where no atexit or finally runs -- it SIGTERMs the server
# (SIGKILL after 10 s), and it exits by itself when the server stops first.  It holds a pidfd of the server opened
# by the parent before anyone could reap it, so a recycled pid is never signalled.
_WATCHDOG = """
import os, select, signal, sys
parent, server = int(sys.argv[1]), int(sys.argv[2])
while os.getppid() == parent:
    if select.select([server], [], [], 0.5)[0]:
        sys.exit(0)
try:
    signal.pidfd_send_signal(server, signal.SIGTERM)
    if not select.select([server], [], [], 10)[0]:
        signal.pidfd_send_signal(server, signal.SIGKILL)
except ProcessLookupError:
    pass
"""


def stop_with_this_process(process: subprocess.Popen) -> subprocess.Popen | None:
    """Start a watchdog that stops ``process`` when this process dies, however it dies; None where Linux pidfds are
    unavailable.  Unlike PR_SET_PDEATHSIG it follows the process, not the thread that started the child (Prefect
    starts its temporary server from whichever thread first needs a client)."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        return None
    try:
        # Its own session: a Ctrl-C for the command must not kill the watchdog before the command stops the server.
        return subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHDOG, str(os.getpid()), str(pidfd)],
                                pass_fds=[pidfd], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    finally:
        os.close(pidfd)


def _watch_temporary_servers(module) -> None:
    """Patch Prefect's ``SubprocessASGIServer`` (the temporary server of a run without PREFECT_API_URL) so every
    server process it starts gets a watchdog."""
    cls = getattr(module, "SubprocessASGIServer", None)
    start = getattr(cls, "_run_uvicorn_command", None)
    if start is None or getattr(start, "_askshift_watched", False):
        return

    def run_watched(self):
        process = start(self)
        process._askshift_watchdog = stop_with_this_process(process)  # kept so it is reaped with the server
        return process

    run_watched._askshift_watched = True
    cls._run_uvicorn_command = run_watched


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``then(module)`` right after ``name`` is first imported, without importing it now."""

    def __init__(self, name: str, then) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                self.then(module)

            spec.loader.exec_module = exec_module
        return spec


def temporary_servers_stop_with_this_process() -> None:
    """From now on, every temporary Prefect server this process starts is stopped when this process dies (even by
    SIGKILL).  Cheap: Prefect's server module (seconds to import) is patched when something first imports it."""
    name = "prefect.server.api.server"
    if name in sys.modules:
        _watch_temporary_servers(sys.modules[name])
    elif not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, _watch_temporary_servers))


@dataclass
class PrefectServer:
    """A running ``prefect server start`` process."""

    host: str
    port: int
    process: subprocess.Popen
    log_path: Path | None = None
    _log: IO | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        shown = LOOPBACK if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{shown}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.api_url}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Prefect server exited with status {self.process.returncode} "
                                   f"before answering{self._log_hint()}")
            if self.healthy():
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Prefect server did not answer {self.api_url}/health within {timeout:.0f} s"
                           f"{self._log_hint()}")

    def _log_hint(self) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return f" (log {self.log_path}: {' | '.join(tail)})"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the server (its PID), then SIGKILL after ``timeout`` seconds."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def start_server(host: str = LOOPBACK, port: int | None = None, log_path: str | os.PathLike | None = None,
                 timeout: float = 180.0) -> PrefectServer:
    """Start ``prefect server start`` on host:port (UI included) and wait until /api/health answers."""
    port = choose_port(host, port)
    if not port_is_free(host, port):
        raise RuntimeError(f"port {port} on {host} is taken: choose another with --port")
    log = None
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")
    exe = Path(sys.executable).with_name("prefect")
    cmd = [str(exe) if exe.exists() else "prefect", "server", "start", "--host", host, "--port", str(port)]
    process = subprocess.Popen(cmd, env=server_env(host, port), stdout=log or subprocess.DEVNULL,
                               stderr=subprocess.STDOUT if log else subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                               preexec_fn=_die_with_parent)
    server = PrefectServer(host, port, process, Path(log_path) if log_path else None, log)
    try:
        server.wait_healthy(timeout)
    except BaseException:
        server.stop()
        raise
    return server

