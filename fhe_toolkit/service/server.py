"""``serve()``: the fund's service on uvicorn, until it is stopped (Ctrl-C or SIGTERM)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import uvicorn

from fhe_toolkit.service.app import Service, create_app
from fhe_toolkit.service.config import ServiceConfig


def serve(
    config: ServiceConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    announce: Callable[[str], None] = print,
) -> None:
    """Serve the fund of ``config`` on ``host:port`` (port 0: any free port).

    Refused at once if another server serves the same fund. ``announce(url)`` is called once
    the service is ready, with the address it listens on (the real port when 0 was asked).
    Stopping lets the decryption worker finish the upload it is on (see
    :attr:`ServiceConfig.shutdown_grace`); an upload cut off is taken again next time.
    """
    service = Service(config)
    service.acquire()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError:
        service.stop()
        listener.close()
        raise
    bound = listener.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    url = f"http://{shown}:{bound}"
    app = create_app(service, on_started=lambda: announce(url))
    logging.basicConfig(format="%(levelname)s:     %(name)s: %(message)s")
    logging.getLogger("fhe_toolkit").setLevel(log_level.upper())
    server = uvicorn.Server(
        uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_keep_alive=30)
    )
    try:
        server.run(sockets=[listener])
    finally:
        service.stop()
        listener.close()
