"""`fleetlab serve`: a live dashboard and a JSON API over a project's store, a client of the library.

`serve(...)` blocks (the `fleetlab serve` command); `Background(...)` runs the same server in a thread beside a session
(`fleetlab run --serve`). The socket is bound here, before uvicorn starts, so a taken port or a refused address is one
sentence instead of a log line and an exit from inside the server.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable

from fleetlab.errors import ConfigError, FleetlabError

__all__ = ["Background", "Binding", "bind", "serve"]

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Binding:
    host: str
    port: int
    token: str
    token_given: bool
    sock: socket.socket = field(repr=False)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def banner(self) -> str:
        token = "" if self.token_given else f"; token for writes: {self.token}"
        return f"dashboard: {self.url} (API under /api{token})"


def bind(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str | None = None) -> Binding:
    """Check the address and token, and open the listening socket (port 0: any free port)."""
    if not is_loopback(host) and not token:
        raise ConfigError(f"serving on {host}, beyond this machine, needs --token (anyone who reaches the port could "
                          "read the results and submit code)", key="token")
    if token is not None and (len(token) < 8 or any(c.isspace() for c in token)):
        raise ConfigError("--token must be at least 8 characters without spaces", key="token")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port (0-65535)", key="port")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"cannot serve on {host!r}: {e.strerror}", key="host") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise FleetlabError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(False)
    return Binding(host, sock.getsockname()[1], token or secrets.token_urlsafe(18), token is not None, sock)


def _server(directory: str | os.PathLike | None, b: Binding):
    import uvicorn

    from fleetlab.serve.app import build_app

    app = build_app(directory, b.token, loopback=b.loopback)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=2)
    return uvicorn.Server(config)


def serve(directory: str | os.PathLike | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          token: str | None = None, say: Callable[[str], None] = print) -> int:
    """Serve until interrupted (Ctrl-C or SIGTERM). Returns the exit status."""
    from fleetlab.api import open_project

    open_project(directory).close()  # not a project: one sentence before any socket is opened
    b = bind(host, port, token)
    server = _server(directory, b)
    say(b.banner())
    server.run(sockets=[b.sock])
    return 0


class Background:
    """The server in a daemon thread beside a running session; `stop()` ends it."""

    def __init__(self, directory: str | os.PathLike | None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 token: str | None = None):
        self.binding = bind(host, port, token)
        self._server = _server(directory, self.binding)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.binding.sock]},
                                        name="fleetlab-serve", daemon=True)

    def start(self) -> "Background":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
