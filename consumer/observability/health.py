"""One small HTTP server in the process: ``/livez``, ``/readyz`` and ``/metrics``.

``/livez`` answers whether every lane's poll loop is still iterating, never whether Kafka is reachable (a
Kafka outage must not restart every pod). ``/readyz`` answers whether the service has started and no fatal
state holds (e.g. Freshsuccess answered 400). ``/metrics`` is the Prometheus exposition.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from consumer.observability.threads import name_os_thread

log = structlog.get_logger(__name__)

Check = Callable[[], tuple[bool, str]]
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HealthServer:
    """Serves the three endpoints from a daemon thread until :meth:`stop`."""

    def __init__(self, host: str, port: int, *, live: Check, ready: Check, metrics: Callable[[], bytes]) -> None:
        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/livez": lambda: _check(live),
            "/readyz": lambda: _check(ready),
            "/metrics": lambda: (200, PROMETHEUS_CONTENT_TYPE, metrics()),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path.split("?", 1)[0])
                status, content_type, body = route() if route else (404, "text/plain", b"not found\n")
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would drown the logs

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._serve, name="health", daemon=True)

    def _serve(self) -> None:
        name_os_thread()
        self._server.serve_forever()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("health_server_started", port=self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _check(check: Check) -> tuple[int, str, bytes]:
    ok, detail = check()
    return (200 if ok else 503), "text/plain; charset=utf-8", f"{'ok' if ok else 'failing'}: {detail}\n".encode()
