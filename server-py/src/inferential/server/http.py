"""/metrics, /healthz, /readyz and /status over HTTP, on threads of their own.

What the handlers need from the event loop they get through
``Server.status_threadsafe()`` and ``Server.loop_alive()``.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from inferential.metrics.prometheus import PrometheusExporter
from inferential.server.status import STATUS_WINDOW_S, full_status, readiness

logger = logging.getLogger("inferential.ops")


class _Handler(BaseHTTPRequestHandler):
    exporter: PrometheusExporter

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        server = self.exporter.server
        path, _, query = self.path.partition("?")
        if path == "/metrics":
            self._send(200, self.exporter.render(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            alive = server.loop_alive()
            self._send(200 if alive else 503, b"ok\n" if alive else b"event loop not responding\n")
        elif path == "/readyz":
            ready, why = readiness(server)
            self._send(200 if ready else 503, why.encode() + b"\n")
        elif path == "/status":
            try:
                window = float(parse_qs(query).get("window", [STATUS_WINDOW_S])[0])
                if not (0 < window <= 3600):
                    raise ValueError
            except ValueError:
                self._send(400, b"window must be a number of seconds in (0, 3600]\n")
                return
            body = json.dumps(full_status(server, window), default=str).encode()
            self._send(200, body, "application/json")
        else:
            self._send(404, b"not found: try /metrics, /healthz, /readyz, /status\n")

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("http: " + format, *args)


class HttpEndpoint:
    """/metrics, /healthz, /readyz and /status on ``host:port`` (port 0: any free port)."""

    def __init__(self, server: Any, host: str, port: int) -> None:
        self.exporter = PrometheusExporter(server)
        handler = type("Handler", (_Handler,), {"exporter": self.exporter})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="inferential-http", daemon=True)
        self.thread.start()
        logger.info("metrics and health on %s/metrics", self.url)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.exporter.close()


def start_http(server: Any) -> Optional[HttpEndpoint]:
    cfg = server.config.metrics
    if cfg.http_port is None:
        return None
    return HttpEndpoint(server, cfg.http_host, cfg.http_port)
