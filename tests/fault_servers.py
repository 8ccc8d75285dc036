"""Loopback HTTP servers that fail on purpose: serve local files by byte range, or proxy another
server (the moto S3 server), injecting scripted faults and recording every request.

Faults (:meth:`FaultServer.add`), each for the next ``times`` matching requests (``None``: forever):

- ``"503"`` / ``"500"``: that status, with an S3-style XML error body;
- ``"429"``: Too Many Requests with ``Retry-After: <retry_after>`` (seconds);
- ``"reset"``: the response's headers and half its body, then a TCP reset (SO_LINGER 0);
- ``"truncate"``: the full ``Content-Length`` promised, half the body sent, then the connection closed;
- ``"norange"``: (file server) the whole file with status 200, as a server that ignores ``Range``.

The log (:attr:`FaultServer.log`) holds ``(t_arrived, t_answered, method, path, outcome)`` per
request (seconds of ``time.monotonic``; outcome ``"ok"`` or the fault), written just before the
answer is sent; :attr:`FaultServer.peak` is the most
requests in flight at once whose path contains ``counted``. ``delay_s`` holds each request that
long (so overlaps can be seen).
"""
from __future__ import annotations

import http.client
import http.server
import os
import socket
import struct
import threading
import time
import urllib.parse

HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "content-length", "proxy-connection"}


class Fault:
    def __init__(self, kind: str, match: str, method: str | None, times: int | None, retry_after: int):
        self.kind, self.match, self.method, self.times, self.retry_after = kind, match, method, times, retry_after


class FaultServer:
    """A threaded loopback server: ``files`` maps URL paths to local files, else ``upstream``."""

    def __init__(self, files: dict[str, str] | None = None, upstream: str | None = None, delay_s: float = 0.0,
                 counted: str = ""):
        self.files, self.delay_s, self.counted = dict(files or {}), delay_s, counted
        self.upstream = urllib.parse.urlsplit(upstream) if upstream else None
        self.faults: list[Fault] = []
        self.log: list[tuple[float, float, str, str, str]] = []
        self.inflight = self.peak = 0
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"owner": self})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "FaultServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def add(self, kind: str, match: str = "", method: str | None = "GET", times: int | None = 1,
            retry_after: int = 1) -> None:
        """Fail the next ``times`` requests whose path contains ``match`` (and of ``method``)."""
        with self._lock:
            self.faults.append(Fault(kind, match, method, times, retry_after))

    def reset(self) -> None:
        """Forget the faults, the log and the peak."""
        with self._lock:
            self.faults, self.log, self.peak = [], [], 0

    def outcomes(self, outcome: str, method: str | None = None, match: str = "") -> list[tuple]:
        """The logged requests with that outcome (and method, and path part)."""
        return [r for r in self.log if r[4] == outcome and (method is None or r[2] == method) and match in r[3]]

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if (f.method is None or f.method == method) and f.match in path and f.times != 0:
                    if f.times is not None:
                        f.times -= 1
                    return f
        return None

    def _enter(self, path: str) -> bool:
        if self.counted not in path:
            return False
        with self._lock:
            self.inflight += 1
            self.peak = max(self.peak, self.inflight)
        return True

    def _record(self, record: tuple) -> None:
        with self._lock:
            self.log.append(record)

    def _leave(self, counted: bool) -> None:
        with self._lock:
            self.inflight -= counted


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultServer

    def log_message(self, *args) -> None:
        pass

    def do_GET(self):
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)[:size]
                if not size:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return out
                out += chunk
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        """Answer one request; it counts as in flight from its arrival until just before the answer
        is written (so a client that holds a slot per request never shows an overlap it did not make)."""
        owner, t0 = self.owner, time.monotonic()
        path = urllib.parse.urlsplit(self.path).path
        body = self._body()
        counted = owner._enter(path)
        try:
            time.sleep(owner.delay_s)
            fault = owner._take(self.command, path)
            status, headers, data = self._serve(path, body)
            owner._record((t0, time.monotonic(), self.command, path, "ok" if fault is None else fault.kind))
        finally:
            owner._leave(counted)
        if fault is None:
            self._send(status, headers, data)
        elif fault.kind == "norange":
            self._send(200, [], open(owner.files[path], "rb").read())
        else:
            self._fail(fault, status, headers, data)

    def _serve(self, path: str, body: bytes) -> tuple[int, list, bytes]:
        owner = self.owner
        if owner.upstream is None:
            return self._file(owner.files.get(path))
        conn = http.client.HTTPConnection(owner.upstream.hostname, owner.upstream.port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body,
                         headers={k: v for k, v in self.headers.items() if k.lower() not in HOP})
            resp = conn.getresponse()
            data = resp.read()
            headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP]
            if self.command == "HEAD":
                headers.append(("Content-Length", resp.getheader("Content-Length", "0")))
            return resp.status, headers, data
        finally:
            conn.close()

    def _file(self, local: str | None) -> tuple[int, list, bytes]:
        if local is None or not os.path.isfile(local):
            return 404, [], b"not found"
        size = os.path.getsize(local)
        rng = self.headers.get("Range")
        if self.command == "HEAD":
            return 200, [("Content-Length", str(size))], b""
        with open(local, "rb") as f:
            if not rng:
                return 200, [], f.read()
            a, b = (int(v) for v in rng.removeprefix("bytes=").split("-"))
            f.seek(a)
            return 206, [("Content-Range", f"bytes {a}-{b}/{size}")], f.read(b - a + 1)

    def _send(self, status: int, headers: list, data: bytes, length: int | None = None) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if self.command != "HEAD" or not any(k.lower() == "content-length" for k, _ in headers):
            self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _fail(self, fault: Fault, status: int, headers: list, data: bytes) -> None:
        self.close_connection = True
        if fault.kind in ("500", "503", "429"):
            xml = (f"<?xml version='1.0'?><Error><Code>{'SlowDown' if fault.kind != '500' else 'InternalError'}"
                   f"</Code><Message>injected {fault.kind}</Message></Error>").encode()
            extra = [("Retry-After", str(fault.retry_after))] if fault.kind == "429" else []
            self._send(int(fault.kind), [("Content-Type", "application/xml"), ("Connection", "close"), *extra], xml)
            return
        half = data[:len(data) // 2]
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if not any(k.lower() == "content-length" for k, _ in headers):
            self.send_header("Content-Length", str(len(data) if data else 16))
        self.end_headers()
        self.wfile.write(half)
        if fault.kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
