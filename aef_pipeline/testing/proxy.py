"""A flaky HTTP proxy for tests: forwards to a STAC API, failing some requests on purpose.

    with flaky_proxy(api_url, faults=("503", "drop", "ok", "500", "slow", "ok")) as url:
        ...  # request n meets faults[n % len(faults)]

Faults: "ok" forwards; "500"/"503" answer that status without forwarding; "drop" closes the
connection without an answer; "slow" waits `slow_s` before forwarding (longer than the client's
timeout makes it a read timeout). Links in the answers point back at the proxy, so paging goes
through it too. The schedule is deterministic: the same faults hit the same request numbers.
"""

from __future__ import annotations

import itertools
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("ok", "500", "503", "drop", "slow")


@contextmanager
def flaky_proxy(upstream: str, faults: Sequence[str], slow_s: float = 2.0) -> Iterator[str]:
    """Serve the proxy on 127.0.0.1; yields its URL. `faults` cycle over the requests."""
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}: choose from {', '.join(FAULTS)}")
    schedule, lock = itertools.cycle(faults), threading.Lock()
    upstream = upstream.rstrip("/")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            with lock:
                fault = next(schedule)
            if fault == "drop":
                self.close_connection = True
                self.connection.close()
                return
            if fault in ("500", "503"):
                self.send_error(int(fault), "injected fault")
                return
            if fault == "slow":
                time.sleep(slow_s)
            self._forward(body)

        def _forward(self, body: bytes) -> None:
            headers = {"Content-Type": self.headers.get("Content-Type", "")}
            request = urllib.request.Request(
                upstream + self.path, data=body or None, method=self.command, headers=headers
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    status, kind, payload = answer.status, answer.headers.get("Content-Type", ""), answer.read()
            except urllib.error.HTTPError as error:
                status, kind, payload = error.code, error.headers.get("Content-Type", ""), error.read()
            payload = payload.replace(upstream.encode(), proxy_url.encode())
            try:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout) before the answer

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: tests read results, not access logs

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    proxy_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy_url
    finally:
        server.shutdown()
        server.server_close()
