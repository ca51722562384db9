"""A tiny HTTP server per simulated instance: vLLM's GET /metrics and GET /health, and any
further routes the instance serves (GET /load, a router's /router/metrics).

Runs in a daemon thread on 127.0.0.1 (port 0 picks a free port). ``available`` turning False
makes /metrics answer 503, which is how tests inject a scrape failure.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["MetricsServer"]

_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsServer:
    def __init__(
        self,
        render: Callable[[], str],
        available: Callable[[], bool],
        host: str = "127.0.0.1",
        port: int = 0,
        routes: Mapping[str, Callable[[], tuple[bytes, str]]] | None = None,
    ) -> None:
        self._render = render
        self._available = available
        # Path -> (body, content type) now; these share /metrics' availability.
        self._routes = dict(routes or {})
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes: with Nagle on, a kept-alive
            # client's delayed ACK stalls every reply by ~40 ms (a real server does not).
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    if not server._available():
                        self._send(503, b"metrics unavailable (simulated fault)\n")
                        return
                    self._send(200, server._render().encode("utf-8"), _CONTENT_TYPE)
                elif path == "/health":
                    self._send(200, b"")
                elif path in server._routes:
                    if not server._available():
                        self._send(503, b"unavailable (simulated fault)\n")
                        return
                    body, ctype = server._routes[path]()
                    self._send(200, body, ctype)
                else:
                    self._send(404, b"not found\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # a scrape every second would flood stderr

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def url_of(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=f"sim-metrics-{self.port}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
