"""Bind the listening socket and run uvicorn on it.

The socket is bound before uvicorn starts, so a port in use is a one-line error, ``--port 0`` gets a
free port, and the startup line names the real URL (tests read it).
"""

from __future__ import annotations

import ipaddress
import socket

import uvicorn
from fastapi import FastAPI

from ..errors import InputError


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (a name other than localhost counts as not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port"
        ) from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(app: FastAPI, sock: socket.socket, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM: uvicorn finishes open requests, then stops)."""
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=30)
    uvicorn.Server(config).run(sockets=[sock])
