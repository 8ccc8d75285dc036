"""A seekable, read-only file over HTTP(S) byte ranges (one ``Range: bytes=a-b`` GET per read).

Lets astropy read only the FITS tiles a cutout needs from a web server (e.g. the Legacy Survey
portal) exactly as from local disk or S3. The size comes from a HEAD request; a server that ignores
``Range`` (answers 200 instead of 206) is an error, never a silent whole-file download.
"""
from __future__ import annotations

import urllib.error
import urllib.request

from udfs.io.range_reader import RangeReader

TIMEOUT_S = 60


def _request(url: str, method: str = "GET", headers: dict | None = None):
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        return urllib.request.urlopen(req, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code in (403, 404, 410):
            raise FileNotFoundError(f"{url}: HTTP {exc.code}") from exc
        raise OSError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise OSError(f"{url}: {exc.reason}") from exc


def http_size(url: str) -> int:
    """Size in bytes from a HEAD request; FileNotFoundError for 403/404/410, OSError otherwise."""
    with _request(url, "HEAD") as r:
        length = r.headers.get("Content-Length")
    if length is None:
        raise OSError(f"{url}: server sent no Content-Length")
    return int(length)


def get_bytes(url: str) -> bytes:
    """The whole body of a GET; FileNotFoundError for 403/404/410, OSError otherwise."""
    with _request(url) as r:
        return r.read()


class HTTPRangeFile(RangeReader):
    """Random-access binary file over HTTP; wrap in ``io.BufferedReader`` only if many tiny reads."""

    def __init__(self, url: str, size: int | None = None):
        super().__init__(http_size(url) if size is None else size)
        self.url = url

    def _read_at(self, pos: int, n: int) -> bytes:
        rng = f"bytes={pos}-{pos + n - 1}"
        with _request(self.url, headers={"Range": rng}) as r:
            if r.status != 206:
                raise OSError(f"{self.url}: server ignored Range {rng} (HTTP {r.status})")
            data = r.read()
        if len(data) != n:
            raise OSError(f"{self.url}: asked for {n} bytes at {pos}, got {len(data)}")
        return data
