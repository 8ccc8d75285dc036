"""Publishing an output: readers see a dataset whole or not at all, and one config owns each output.

A run writes its parts into the output folder under its lock (:mod:`udfs.io.output_lock`), then
publishes by writing ``_SUCCESS.json`` last::

    {"job": "jobs.select_lrgs", "config_hash": "<16 hex>", "parts": ["part-00000.parquet", ...]}

``parts`` are paths relative to the dataset root, sorted: exactly the files readers take
(:func:`udfs.io.datasets.dataset_files`), so a part left by an earlier or foreign run is never read.
The record holds no time or host, so a rerun publishes the same bytes. While ``_RUN.json`` (the
lock) is present the output is unfinished (being written, or its run was killed or failed) and
readers refuse it with one line, whatever ``_SUCCESS.json`` an earlier run left.

An output published by another job or config, or left unfinished by one, is refused before any
work (:class:`~udfs.io.output_lock.LockError`); a rerun of the same config takes over a stale lock,
and its files replace the old ones (or, resuming, keep them: they are the same by construction).
"""
from __future__ import annotations

import contextlib
import json
import posixpath

import pyarrow.fs as pafs

from udfs.io import storage
from udfs.io.output_lock import LOCK_FILE, LockError, OutputLock, describe

SUCCESS_FILE = "_SUCCESS.json"
TEMP_MARK = ".tmp-"  # storage.write_bytes' temporary files: a killed writer may leave one


def read_success(output: str) -> dict | None:
    uri = storage.join(output, SUCCESS_FILE)
    try:
        return json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        return None


def _owner_error(output: str, job: str, config_hash: str, record: dict, what: str) -> LockError:
    return LockError(f"{output}: holds {what} of {record.get('job')} with config {record.get('config_hash')}, "
                     f"not of {job} with config {config_hash}; choose another --output or delete it")


class Publication:
    """What a job does with its output between taking the lock and releasing it."""

    def __init__(self, output: str, lock: OutputLock, folder: bool):
        self.output, self.lock, self.folder = output, lock, folder
        self.committed = False

    def commit(self, parts: list[str]) -> None:
        """Publish a folder output whose data files are ``parts`` (URIs under the output): clear
        temporary files killed writers left, then write ``_SUCCESS.json``. A one-file output (written
        atomically by :func:`udfs.io.storage.write_bytes`/``put_file``) takes ``parts=[]``."""
        self.lock.check_held()
        if self.folder:
            root = str(self.output).rstrip("/")
            rel = sorted(_relative(root, p) for p in parts)
            _remove_temp_files(root)
            record = {"job": self.lock.record["job"], "config_hash": self.lock.record["config_hash"], "parts": rel}
            storage.write_bytes(storage.join(root, SUCCESS_FILE), (json.dumps(record, indent=1) + "\n").encode())
        self.committed = True


def _relative(root: str, path: str) -> str:
    path = str(path)
    if not path.startswith(root + "/") and not path.startswith(root + "\\"):
        raise ValueError(f"{path} is not under {root}")
    return path[len(root) + 1:].replace("\\", "/")


def _remove_temp_files(root: str) -> None:
    fs, path = storage.resolve(root)
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File and TEMP_MARK in posixpath.basename(info.path.replace("\\", "/")):
            fs.delete_file(info.path)


def _listing(output: str, folder: bool) -> dict[str, tuple[int, int]]:
    """``{path: (size, mtime ns)}`` of a folder output's files, the lock apart (``{}`` for a file)."""
    if not folder:
        return {}
    fs, path = storage.resolve(output)
    return {i.path: (i.size, i.mtime_ns) for i in fs.get_file_info(
        pafs.FileSelector(path, recursive=True, allow_not_found=True))
        if i.type == pafs.FileType.File and not i.path.endswith("/" + LOCK_FILE)}


@contextlib.contextmanager
def publishing(output: str, *, job: str, config_hash: str, folder: bool = True):
    """Hold ``output``'s lock for the body, which must end with :meth:`Publication.commit`.

    Refuses (before any work) an output that a live run holds, or that another job or config
    published or left unfinished. On an error in the body after something was written the lock
    stays, marked ``failed``: the output is unfinished, and the next run of the same config takes it
    over; an error before anything was written leaves the output as it was.
    """
    created = folder and not storage.is_s3(output) and not storage.exists(output)
    lock = OutputLock(output, folder=folder, job=job, config_hash=config_hash).acquire()
    previous = lock.previous
    done = read_success(output) if folder else None
    for record, what in ((previous, "an unfinished output"), (done, "the output")):
        if record is not None and (record.get("job"), record.get("config_hash")) != (job, config_hash):
            lock.abandon()
            raise _owner_error(output, job, config_hash, record, what)
    if previous is not None:
        print(f"{output}: taking over from an unfinished run ({describe(previous)})")
    before = _listing(output, folder)
    publication = Publication(output, lock, folder)
    try:
        yield publication
    except BaseException:
        if _listing(output, folder) == before:  # the output is as it was (a one-file output always is)
            lock.abandon()
            if created:
                fs, path = storage.resolve(output)
                fs.delete_dir(path)
        else:
            lock.release(failed=True)
        raise
    if not publication.committed:
        lock.release(failed=True)
        raise RuntimeError(f"{output}: the job ended without publishing its output")
    lock.release()
