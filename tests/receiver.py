"""A real webhook receiver on loopback: the other end of an Apprise `json://` target."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

TOKEN = "tok-9f8e7d6c5b4a39281706"  # stands in for the secret a real webhook URL holds


class Receiver:
    """Records every notification POSTed to it; can refuse them or be switched off.

    `url` is an Apprise URL whose path carries TOKEN, like a real webhook's would.
    """

    def __init__(self, port: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.failing = False  # answer 500 instead of accepting
        self.delay = 0.0  # seconds to wait before answering
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = port
        self.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook/{TOKEN}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.delay:
                    time.sleep(receiver.delay)
                if receiver.failing:
                    self.send_response(500)
                    self.end_headers()
                    return
                with receiver._lock:
                    receiver.received.append({"path": self.path, **json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Close the port: connections are refused until `start()`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def titles(self) -> list[str]:
        with self._lock:
            return [message["title"] for message in self.received]

    def wait_for(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        msg = f"expected {count} notifications, got {len(self.received)}"
        raise AssertionError(msg)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
