"""Listening on a socket and running the app on it with uvicorn."""

from __future__ import annotations

import errno
import socket

from histoseek.errors import HistoseekError


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: any free one), or one clear error if it cannot be."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )[0]
    except (OSError, UnicodeError) as error:
        raise HistoseekError(f"cannot listen on {host}: {error}") from None
    sock = socket.socket(family, kind, protocol)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        reason = (
            "the port is in use"
            if error.errno == errno.EADDRINUSE
            else error.strerror or str(error)
        )
        raise HistoseekError(f"cannot listen on {host} port {port}: {reason}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    """The http:// address a bound socket answers on."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def run_server(app, sock: socket.socket) -> None:
    """Serve `app` on `sock` until interrupted (Ctrl+C), then shut it down cleanly."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
