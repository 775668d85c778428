"""A fault-injecting HTTP proxy for tests: put it in front of a real `mlflow server`.

``FaultProxy(upstream)`` forwards every request to ``upstream`` unless a rule matches it
(method and a regular expression searched in the path). Faults:

- ``pre503``: answer 503 without forwarding (the server never saw the call);
- ``post500``: forward, let the server apply it, then answer 500 (the answer is lost);
- ``drop``: close the connection without an answer, not forwarded;
- ``truncate``: forward, then send the headers and half the body, and close;
- ``slow``: wait ``delay_s``, then forward;
- ``refuse``: answer ``status`` (e.g. 507 Insufficient Storage) every time, not forwarded;
  its body ``json`` when given (e.g. MLflow's ``{"error_code": "UNAUTHENTICATED", ...}``),
  else a line of text.

A rule applies ``times`` times (None: always). ``hits`` records (method, path, fault) of each
faulted request, so a test can check that its fault was met.
"""

from __future__ import annotations

import http.client
import json
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class Rule:
    method: str
    path: str  # a regular expression, searched in the request path
    fault: str
    times: int | None = 1
    delay_s: float = 0.0
    status: int = 500
    json: dict | None = None

    def matches(self, method: str, path: str) -> bool:
        return (
            (self.times is None or self.times > 0)
            and method == self.method
            and re.search(self.path, path) is not None
        )


class _QuietServer(ThreadingHTTPServer):
    """A server whose request threads' errors are kept (``FaultProxy`` checks them at its
    exit), not printed: socketserver prints them to ``sys.stderr``, which is the command's
    own output while ``CliRunner`` runs it (a dropped connection's handler failing on its
    closed socket read as the command's traceback)."""

    def __init__(self, address, handler, errors: list[BaseException]):
        super().__init__(address, handler)
        self.errors = errors

    def handle_error(self, request, client_address) -> None:
        self.errors.append(sys.exc_info()[1])


class FaultProxy:
    """See the module's docstring. Use as a context manager; ``url`` is where to point MLflow."""

    def __init__(self, upstream: str, port: int = 0):
        """``port``: where to listen (0: a free one); a fixed port stands for a server that
        was down there and is back."""
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.rules: list[Rule] = []
        self.hits: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self.errors: list[BaseException] = []  # what its request threads raised
        self._server = _QuietServer(("127.0.0.1", port), self._handler(), self.errors)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        # A socket's trouble is the faults' business (a dropped or cut connection, a client
        # that gave up); anything else is a bug of the proxy, which a test must not read as
        # the fault it injected.
        bugs = [e for e in self.errors if not isinstance(e, OSError | ValueError)]
        if bugs and exc[0] is None:
            trace = "".join(traceback.format_exception(bugs[0]))
            raise AssertionError(f"the fault proxy failed {len(bugs)} request(s):\n{trace}")

    def add(self, method: str, path: str, fault: str, **kwargs) -> Rule:
        rule = Rule(method, path, fault, **kwargs)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def _take(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    if rule.times is not None:
                        rule.times -= 1
                    self.hits.append((method, path, rule.fault))
                    return rule
        return None

    def hit(self, fault: str, path: str = "") -> int:
        """How many requests met ``fault`` (on a path containing ``path``)."""
        return sum(1 for _m, p, f in self.hits if f == fault and path in p)

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet: pytest shows failures, not traffic
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self, body: bytes):
                conn = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=120
                )
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                conn.close()
                return response.status, response.getheaders(), data

            def _answer(self, status: int, headers, data: bytes, cut: bool = False) -> None:
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                if cut:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if cut else data)
                if cut:
                    self.wfile.flush()
                    self.close_connection = True

            def _plain(self, status: int, text: str) -> None:
                header = [("Content-Type", "text/plain")]
                self._answer(status, header, text.encode())

            def _handle(self) -> None:
                body = self._body()
                rule = proxy._take(self.command, self.path)
                fault = rule.fault if rule else None
                if fault == "pre503":
                    return self._plain(503, "fault proxy: unavailable")
                if fault == "refuse" and rule.json is not None:
                    header = [("Content-Type", "application/json")]
                    return self._answer(rule.status, header, json.dumps(rule.json).encode())
                if fault == "refuse":
                    return self._plain(rule.status, "fault proxy: refused")
                if fault == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return None
                if fault == "slow":
                    time.sleep(rule.delay_s)
                status, headers, data = self._forward(body)
                if fault == "post500":
                    return self._plain(500, "fault proxy: the answer was lost")
                return self._answer(status, headers, data, cut=fault == "truncate")

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

        return Handler
