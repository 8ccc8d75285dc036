"""Read and write files on local disk or S3 (``s3://bucket/key``) through ``pyarrow.fs``; read
``http(s)://`` files too (:mod:`udfs.io.http_range`: HEAD for the size, byte-range GETs).

One code path for laptops and EMR executors. S3 settings come from the standard AWS chain
(environment, profile, instance role); ``AWS_ENDPOINT_URL`` points at another S3-API server
(the tests use moto on loopback).

S3 requests are retried by the AWS SDK's standard strategy (``S3_MAX_ATTEMPTS`` attempts per
request, jittered exponential backoff): 5xx, 429/SlowDown, connection resets and truncated bodies
(measured in ``tests/test_remote_faults.py``). An S3 write still failing after that raises
:class:`~udfs.io.errors.RemoteError` naming the file (a job stops with that one line, exit 2).
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import shutil
import sys
import uuid

import pyarrow.fs as pafs

from udfs.io.errors import InputError, RemoteError

S3_MAX_ATTEMPTS = 5  # attempts per S3 request (the SDK's default is 3)


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def is_http(uri: str) -> bool:
    return str(uri).startswith(("http://", "https://"))


def s3_endpoint() -> str | None:
    """The S3-API server to use instead of AWS's (``$AWS_ENDPOINT_URL_S3``, else ``$AWS_ENDPOINT_URL``)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _s3() -> pafs.S3FileSystem:
    kw = {}
    endpoint = s3_endpoint()
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kw.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        kw["region"] = region
    return pafs.S3FileSystem(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS), **kw)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` for a local path or an ``s3://`` URI."""
    uri = str(uri)
    if is_s3(uri):
        return _s3(), uri[len("s3://"):]
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(base: str, *parts: str) -> str:
    base = str(base)
    return posixpath.join(base, *parts) if is_s3(base) or is_http(base) else os.path.join(base, *parts)


def parent(uri: str) -> str:
    """The folder holding ``uri`` (a trailing slash ignored)."""
    uri = str(uri).rstrip("/")
    return posixpath.dirname(uri) if is_s3(uri) or is_http(uri) else os.path.dirname(uri)


def exists(uri: str) -> bool:
    if is_http(uri):
        from udfs.io.http_range import http_size
        try:
            http_size(uri)
        except FileNotFoundError:
            return False
        return True
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def size(uri: str) -> int:
    if is_http(uri):
        from udfs.io.http_range import http_size
        return http_size(uri)
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{uri}: no such file")
    return info.size


def open_input(uri: str):
    """A seekable binary file (random access: FITS section reads fetch only the bytes they need)."""
    if is_http(uri):
        from udfs.io.http_range import HTTPRangeFile
        return HTTPRangeFile(uri)
    fs, path = resolve(uri)
    try:
        return fs.open_input_file(path)
    except (FileNotFoundError, OSError) as exc:
        raise FileNotFoundError(f"{uri}: cannot open ({exc})") from exc


def read_bytes(uri: str) -> bytes:
    """The whole file (over HTTP: one plain GET)."""
    if is_http(uri):
        from udfs.io.http_range import get_bytes
        return get_bytes(uri)
    with open_input(uri) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically: a reader never sees a partial file (local: temp file + rename; S3: one PUT)."""
    fs, path = resolve(uri)
    parent = posixpath.dirname(path) if is_s3(uri) else os.path.dirname(path)
    if not is_s3(uri):
        fs.create_dir(parent, recursive=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        os.replace(tmp, path)
        return
    _write_s3(uri, fs, path, lambda f: f.write(data))


def delete(uri: str) -> None:
    """Remove one file (no error if it is already gone)."""
    fs, path = resolve(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def put_file(local_path: str, uri: str) -> None:
    """Publish a finished local file at ``uri`` atomically (local: copy beside it + rename; S3: one
    upload, visible only once complete). ``local_path`` is left in place."""
    fs, path = resolve(uri)
    if is_s3(uri):
        def copy(out):
            with open(local_path, "rb") as src:
                shutil.copyfileobj(src, out, 8 << 20)

        _write_s3(uri, fs, path, copy)
        return
    fs.create_dir(os.path.dirname(path), recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    shutil.copyfile(local_path, tmp)
    os.replace(tmp, path)


def _write_s3(uri: str, fs: pafs.FileSystem, path: str, write) -> None:
    """One S3 object from ``write(stream)``; visible only once complete. A failure the SDK's
    retries did not overcome raises :class:`RemoteError` naming ``uri``, in one line."""
    stream = fs.open_output_stream(path)
    failure = None
    try:
        write(stream)
        stream.close()
    except OSError as exc:
        failure = " ".join(str(exc).split())
    if failure is None:
        return
    with _stderr_silenced():  # arrow logs the same error again when it destroys the failed stream
        del stream
    raise RemoteError(f"{uri}: cannot write to S3 after {S3_MAX_ATTEMPTS} attempts ({failure})")


@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 goes to /dev/null for the block (C++ logging bypasses sys.stderr)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def check_writable(uri: str, *, folder: bool) -> None:
    """Before any work: the output ``uri`` (a dataset folder, or one file when ``folder`` is false)
    can be written. Local: it is not a file where a folder is wanted (or a folder where a file is),
    and its nearest existing parent is a writable folder. S3: the bucket exists and a probe object
    can be written under the output and deleted. Raises :class:`~udfs.io.errors.InputError` naming
    the output and the problem."""
    if is_http(uri):
        raise InputError(f"{uri}: outputs cannot be written over HTTP(S)")
    fs, path = resolve(uri)
    if is_s3(uri):
        bucket = path.split("/", 1)[0]
        try:
            missing = fs.get_file_info(bucket).type == pafs.FileType.NotFound
        except OSError as exc:
            raise InputError(f"{uri}: cannot reach the output bucket {bucket!r} ({exc})") from exc
        if missing:
            raise InputError(f"{uri}: the output bucket {bucket!r} does not exist")
        probe = f"{path.rstrip('/')}{'/' if folder else '.'}_write-probe-{uuid.uuid4().hex}"
        try:
            with fs.open_output_stream(probe) as f:
                f.write(b"")
            fs.delete_file(probe)
        except OSError as exc:
            raise InputError(f"{uri}: cannot write the output ({exc})") from exc
        return
    if folder and os.path.isfile(path):
        raise InputError(f"{uri}: the output is an existing file, expected a folder")
    if not folder and os.path.isdir(path):
        raise InputError(f"{uri}: the output is an existing folder, expected a file")
    parent = path if folder else os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputError(f"{uri}: {parent} is a file, so the output cannot be created")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{uri}: {parent} is not writable")


def glob(pattern: str) -> list[str]:
    """Expand a glob (``*``, ``?``, ``[]`` in the last path component) on local disk or S3, sorted."""
    pattern = str(pattern)
    fs, path = resolve(pattern)
    parent, name = posixpath.split(path) if is_s3(pattern) else os.path.split(path)
    info = fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    hits = sorted(i.path for i in info if i.type == pafs.FileType.File and fnmatch.fnmatch(i.base_name, name))
    return ["s3://" + h for h in hits] if is_s3(pattern) else hits
