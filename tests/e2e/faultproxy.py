"""A reverse proxy on loopback that breaks a share of the requests it passes to an object store:
some get a 503 without reaching the store, some reach it and lose their answer (the connection
closes first), some stall past the client's timeout. Seeded, so a run is repeatable, and no
request fails more than `max_failures_in_a_row` times running, so clients that retry finish."""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class FaultProxy:
    def __init__(self, upstream_port: int, *, seed: int = 7, refuse: float = 0.15, drop: float = 0.1,
                 stall: float = 0.05, stall_s: float = 4.0, max_failures_in_a_row: int = 2):
        self.upstream_port = upstream_port
        self.shares = (refuse, drop, stall)
        self.stall_s = stall_s
        self.max_in_a_row = max_failures_in_a_row
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.in_a_row: Counter = Counter()
        self.faults: Counter = Counter()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_one(self):
                body = self._read_body()
                fate = proxy._fate(self.command, self.path, self.headers.get("Range"))
                if fate == "refuse":
                    payload = b"<Error><Code>SlowDown</Code><Message>injected by the test proxy</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fate == "stall":
                    time.sleep(proxy.stall_s)
                status, headers, payload = proxy._forward(self.command, self.path, self.headers, body)
                if fate in ("drop", "stall"):
                    # The store did the work; its answer never arrives.
                    self.close_connection = True
                    return
                self.send_response(status)
                # A HEAD answer's length is the object's, not that of its (empty) body.
                for k, v in headers:
                    if k.lower() not in HOP_BY_HOP and (k.lower() != "content-length" or self.command == "HEAD"):
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _guarded(self):
                try:
                    self.handle_one()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _guarded

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _fate(self, method: str, path: str, byte_range: str | None) -> str:
        key = (method, path, byte_range)
        with self.lock:
            roll = self.rng.random()
            refuse, drop, stall = self.shares
            fate = "pass"
            if roll < refuse:
                fate = "refuse"
            elif roll < refuse + drop:
                fate = "drop"
            elif roll < refuse + drop + stall:
                fate = "stall"
            if fate != "pass" and self.in_a_row[key] >= self.max_in_a_row:
                fate = "pass"
            self.in_a_row[key] = 0 if fate == "pass" else self.in_a_row[key] + 1
            self.faults[fate] += 1
            return fate

    def _forward(self, method, path, headers, body):
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            out = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
            out["Content-Length"] = str(len(body))
            conn.request(method, path, body=body, headers=out)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()
