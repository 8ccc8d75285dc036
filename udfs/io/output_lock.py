"""One run per output: a lock object beside the output, naming its owner, held while the run writes.

The lock is ``<dataset>/_RUN.json`` for a folder output (``<file>.run.json`` for a one-file output):
``{"job", "config_hash", "host", "pid", "started", "heartbeat", "token", "state"}``, times in UTC
ISO-8601, ``state`` ``"running"`` or ``"failed"`` (the run stopped on an error). It is removed when the
run finishes; one left behind marks the output unfinished (:mod:`udfs.io.publish`).

Local disk: the run holds an exclusive ``flock`` on the lock file for its whole life, so a live run
is told exactly from a killed one (the kernel drops the lock of a killed process), and a stale lock
is taken over by the next run. S3: the lock is created with a conditional PUT (``If-None-Match: *``);
the owner rewrites ``heartbeat`` every ``heartbeat_s`` from a driver thread, and a lock whose
heartbeat is older than ``stale_after_s`` (default 600 s, ``$LENSINJ_LOCK_STALE_S``), or whose
state is ``failed``, or whose owner is a dead process on this host, is stale and is taken over.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import uuid

from udfs.io import storage
from udfs.io.errors import InputError

LOCK_FILE = "_RUN.json"
HEARTBEAT_S = 30.0
_HELD: set[str] = set()  # lock URIs this process holds


def held_here(uri: str) -> bool:
    """True if this process holds the lock at ``uri`` (it may read the output it is writing)."""
    return str(uri) in _HELD


class LockError(InputError):
    """The output is held by another live run, or was written by another config."""


def lock_uri(output: str, *, folder: bool) -> str:
    return storage.join(output, LOCK_FILE) if folder else f"{str(output).rstrip('/')}.run.json"


def _dump(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True).encode()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def describe(record: dict) -> str:
    """``jobs.X (config <hash>) on <host> pid <pid>, started <time>``."""
    return (f"{record.get('job')} (config {record.get('config_hash')}) on {record.get('host')} "
            f"pid {record.get('pid')}, started {record.get('started')}")


def read_record(uri: str) -> dict | None:
    """The lock record at ``uri``, or None if there is none (or it is empty: being created)."""
    try:
        raw = storage.read_bytes(uri)
    except FileNotFoundError:
        return None
    return json.loads(raw) if raw.strip() else None


def stale_after_s() -> float:
    return float(os.environ.get("LENSINJ_LOCK_STALE_S", "600"))


def is_stale(record: dict) -> bool:
    """A lock record left by a run that is no longer running (S3 rule; local disk uses ``flock``)."""
    if record.get("state") == "failed":
        return True
    if record.get("host") == socket.gethostname():
        try:
            os.kill(int(record["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError):
            pass
    beat = dt.datetime.fromisoformat(str(record.get("heartbeat") or record.get("started")))
    return (dt.datetime.now(dt.timezone.utc) - beat).total_seconds() > stale_after_s()


class OutputLock:
    """The lock of one output, held by this process between :meth:`acquire` and :meth:`release`."""

    def __init__(self, output: str, *, folder: bool, job: str, config_hash: str):
        self.output, self.uri = output, lock_uri(output, folder=folder)
        self.record = {"job": job, "config_hash": config_hash, "host": socket.gethostname(), "pid": os.getpid(),
                       "started": _now(), "heartbeat": _now(), "token": uuid.uuid4().hex, "state": "running"}
        self.previous: dict | None = None  # the stale record taken over, if any
        self._fd: int | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> "OutputLock":
        """Take the lock; :class:`LockError` naming the holder if a live run has it."""
        if storage.is_s3(self.uri):
            self._acquire_s3()
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()
        else:
            self._acquire_local()
        _HELD.add(self.uri)
        return self

    def _refuse(self, held: dict | None) -> LockError:
        who = describe(held) if held else "a run that is starting"
        return LockError(f"{self.output}: another run is writing this output ({who}); "
                         "wait for it to finish or choose another --output")

    def _acquire_local(self) -> None:
        import fcntl

        path = storage.resolve(self.uri)[1]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse(read_record(self.uri)) from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file its owner removed while we waited for it
                break
            os.close(fd)
        raw = os.read(fd, 1 << 16)
        self.previous = json.loads(raw) if raw.strip() else None
        self._fd = fd
        self._write_local()

    def _write_local(self) -> None:
        data = _dump(self.record)
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, data)
        os.fsync(self._fd)

    def _s3_client(self):
        import boto3

        return boto3.client("s3", endpoint_url=storage.s3_endpoint())

    def _s3_key(self) -> tuple[str, str]:
        bucket, _, key = self.uri[len("s3://"):].partition("/")
        return bucket, key

    def _acquire_s3(self) -> None:
        from botocore.exceptions import ClientError

        client, (bucket, key) = self._s3_client(), self._s3_key()
        for _ in range(2):
            try:
                client.put_object(Bucket=bucket, Key=key, Body=_dump(self.record), IfNoneMatch="*")
                return
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise
            held = read_record(self.uri)
            if held is not None and not is_stale(held):
                raise self._refuse(held)
            self.previous = held
            client.delete_object(Bucket=bucket, Key=key)
        raise self._refuse(read_record(self.uri))

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            held = read_record(self.uri)
            if held is None or held.get("token") != self.record["token"]:
                return  # taken over: release() will say so
            self.record["heartbeat"] = _now()
            storage.write_bytes(self.uri, _dump(self.record))

    def check_held(self) -> None:
        """:class:`LockError` if another run has taken the lock over (S3: our heartbeat stopped)."""
        if self._fd is None:
            held = read_record(self.uri)
            if held is None or held.get("token") != self.record["token"]:
                raise LockError(f"{self.output}: this run lost its lock to "
                                f"{describe(held) if held else 'nobody (it was deleted)'}; its output is not published")

    def abandon(self) -> None:
        """Give the lock back as it was found: the record taken over restored, else the lock removed."""
        self._let_go(self.previous)

    def release(self, *, failed: bool = False) -> None:
        """Remove the lock (the run finished), or keep it marked ``failed`` (the output is unfinished)."""
        self._let_go({**self.record, "state": "failed"} if failed else None)

    def _let_go(self, record: dict | None) -> None:
        """Stop holding the lock, leaving ``record`` as its content (None: the lock removed). On S3
        nothing is touched if another run has taken the lock over."""
        self._stop.set()
        _HELD.discard(self.uri)
        if self._fd is not None:
            if record is None:
                os.unlink(storage.resolve(self.uri)[1])
            else:
                self.record = record
                self._write_local()
            os.close(self._fd)  # drops the flock
            self._fd = None
            return
        held = read_record(self.uri)
        if held is not None and held.get("token") == self.record["token"]:
            if record is None:
                storage.delete(self.uri)
            else:
                storage.write_bytes(self.uri, _dump(record))
