"""A seekable, read-only file over HTTP(S) byte ranges (one ``Range: bytes=a-b`` GET per read).

Lets astropy read only the FITS tiles a cutout needs from a web server (e.g. the Legacy Survey
portal) exactly as from local disk or S3. The size comes from a HEAD request; a server that ignores
``Range`` (answers 200 instead of 206) is an error, never a silent whole-file download.

Failures are classified for :mod:`udfs.io.retry` (one request per call, no retry here): HTTP
403/404/410 raise ``FileNotFoundError``; 429 and 5xx, connection errors, timeouts and a body shorter
than asked (or cut off) raise :class:`~udfs.io.retry.TransientError` (with the server's
``Retry-After`` in seconds); other HTTP errors and an ignored ``Range`` raise
:class:`~udfs.io.retry.PermanentError`.
"""
from __future__ import annotations

import http.client
import urllib.error
import urllib.request

from udfs.io.range_reader import RangeReader
from udfs.io.retry import PermanentError, TransientError, parse_retry_after

TIMEOUT_S = 60


def _http_error(url: str, exc: urllib.error.HTTPError) -> OSError:
    if exc.code in (403, 404, 410):
        return FileNotFoundError(f"{url}: HTTP {exc.code}")
    if exc.code == 429 or exc.code >= 500:
        return TransientError(f"{url}: HTTP {exc.code} {exc.reason}",
                              parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None))
    return PermanentError(f"{url}: HTTP {exc.code} {exc.reason}")


def _request(url: str, method: str = "GET", headers: dict | None = None, check=None) -> tuple[object, bytes]:
    """One request: ``(response, body)``; ``check(response)`` runs before the body is read."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
            if check is not None:
                check(r)
            return r, (r.read() if method != "HEAD" else b"")
    except urllib.error.HTTPError as exc:
        raise _http_error(url, exc) from exc
    except urllib.error.URLError as exc:
        raise TransientError(f"{url}: {exc.reason}") from exc
    except http.client.IncompleteRead as exc:
        raise TransientError(f"{url}: truncated body ({len(exc.partial)} bytes, "
                             f"{exc.expected} more expected)") from exc
    except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        raise TransientError(f"{url}: {type(exc).__name__} {exc}") from exc


def http_size(url: str) -> int:
    """Size in bytes from a HEAD request."""
    r, _ = _request(url, "HEAD")
    length = r.headers.get("Content-Length")
    if length is None:
        raise PermanentError(f"{url}: server sent no Content-Length")
    return int(length)


def get_bytes(url: str) -> bytes:
    """The whole body of a GET."""
    r, data = _request(url)
    length = r.headers.get("Content-Length")
    if length is not None and len(data) != int(length):
        raise TransientError(f"{url}: truncated body ({len(data)} of {length} bytes)")
    return data


class HTTPRangeFile(RangeReader):
    """Random-access binary file over HTTP; wrap in ``io.BufferedReader`` only if many tiny reads."""

    def __init__(self, url: str, size: int | None = None):
        super().__init__(http_size(url) if size is None else size)
        self.url = url

    def _read_at(self, pos: int, n: int) -> bytes:
        rng = f"bytes={pos}-{pos + n - 1}"

        def check(r):
            if r.status != 206:
                raise PermanentError(f"{self.url}: server ignored Range {rng} (HTTP {r.status})")

        _, data = _request(self.url, headers={"Range": rng}, check=check)
        if len(data) != n:
            raise TransientError(f"{self.url}: truncated body: asked for {n} bytes at {pos}, got {len(data)}")
        return data
