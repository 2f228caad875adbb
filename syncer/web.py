"""The HTTP side of `syncer run`: /healthz, /readyz and /metrics.

A plain threaded WSGI server from the standard library, the same one
prometheus_client uses for its own exporter: three read-only endpoints need no
framework.
"""

from __future__ import annotations

import logging
import socket
import threading
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

_TEXT_TYPE = ("Content-Type", "text/plain; charset=utf-8")


def make_app(
    *,
    alive: Callable[[], str | None],
    ready: Callable[[], str | None],
    registry: CollectorRegistry,
) -> WSGIApplication:
    """The WSGI app. `alive` and `ready` return None when fine, else the reason."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body: Iterable[bytes] = metrics_app(environ, start_response)
            return body
        if path in ("/healthz", "/readyz"):
            problem = (alive if path == "/healthz" else ready)()
            status = "200 OK" if problem is None else "503 Service Unavailable"
            # A fresh header list each time: wsgiref adds Content-Length to it in place.
            start_response(status, [_TEXT_TYPE])
            return [f"{problem or 'ok'}\n".encode()]
        start_response("404 Not Found", [_TEXT_TYPE])
        return [b"not found: try /healthz, /readyz or /metrics\n"]

    return app


class HttpServer:
    """Serves a WSGI app on a background thread until `close()`."""

    def __init__(self, host: str, port: int, app: WSGIApplication) -> None:
        server_class = _IPv6Server if ":" in host else _Server
        self._server = make_server(
            host, port, app, server_class=server_class, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="syncer-http", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper must not delay shutdown


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        # One line per probe and scrape would drown syncer's own logs.
        log.debug(format, *args)
