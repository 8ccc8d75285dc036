"""Outputs are published whole and owned by one run (udfs.io.publish, udfs.io.output_lock).

Locks are taken by real processes (a live holder is a child process, a killed run is one SIGKILLed),
on local disk (flock) and on the loopback S3 server (conditional PUT, heartbeat); readers go through
udfs.io.datasets.dataset_files, as every job's reader does.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli import job_main
from udfs.config.provenance import REPO_ROOT
from udfs.io import output_lock, publish, storage
from udfs.io.datasets import DatasetError, dataset_files
from udfs.io.output_lock import LockError, OutputLock
from udfs.stamps.training_reader import StampBatches

HOLD = """
import sys, time
from udfs.io.output_lock import OutputLock
OutputLock(sys.argv[1], folder=True, job="jobs.holder", config_hash="c0ffee").acquire()
print("held", flush=True)
time.sleep(120)
"""


def _holder(uri: str) -> subprocess.Popen:
    """A child process holding ``uri``'s lock until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, uri], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def _part(uri: str, name: str, rows: int) -> str:
    path = storage.join(uri, name)
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"x": list(range(rows))}), buf)
    storage.write_bytes(path, buf.getvalue().to_pybytes())
    return path


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_bucket") + "/out"


def test_a_live_run_refuses_a_second_and_a_killed_one_is_taken_over(root, monkeypatch):
    holder = _holder(root)
    try:
        with pytest.raises(LockError) as err:
            OutputLock(root, folder=True, job="jobs.second", config_hash="c0ffee").acquire()
        message = str(err.value)
        assert message.startswith(f"{root}: another run is writing this output (jobs.holder (config c0ffee) on ")
        assert f"pid {holder.pid}, started 20" in message and "\n" not in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # killed: local disk knows at once (the kernel dropped the flock); S3 by the dead pid on this host
    lock = OutputLock(root, folder=True, job="jobs.second", config_hash="c0ffee").acquire()
    assert lock.previous["pid"] == holder.pid and lock.previous["job"] == "jobs.holder"
    assert output_lock.read_record(lock.uri)["token"] == lock.record["token"]
    lock.release()
    assert not storage.exists(lock.uri)


def test_an_s3_lock_goes_stale_by_heartbeat(s3_bucket, monkeypatch):
    uri = s3_bucket + "/beat"
    other_host = {"job": "jobs.x", "config_hash": "c", "host": "elsewhere", "pid": 1, "token": "t",
                  "started": "2026-01-01T00:00:00+00:00", "heartbeat": time.strftime("%Y-%m-%dT%H:%M:%S+00:00",
                                                                                     time.gmtime()),
                  "state": "running"}
    storage.write_bytes(output_lock.lock_uri(uri, folder=True), json.dumps(other_host).encode())
    with pytest.raises(LockError, match="jobs.x .config c. on elsewhere pid 1"):
        OutputLock(uri, folder=True, job="jobs.y", config_hash="c").acquire()
    monkeypatch.setenv("LENSINJ_LOCK_STALE_S", "0")  # its heartbeat is now too old
    time.sleep(1.1)
    lock = OutputLock(uri, folder=True, job="jobs.y", config_hash="c").acquire()
    assert lock.previous["host"] == "elsewhere"
    lock.release()


def test_readers_see_a_dataset_whole_or_not_at_all(root):
    a = _part(root, "part-00000.parquet", 3)
    assert dataset_files(root) == [a]  # written elsewhere (no lock, no _SUCCESS): every part
    with publish.publishing(root, job="jobs.t", config_hash="h1") as out:
        b = _part(root, "split=train/part-00001.parquet", 2)
        storage.write_bytes(storage.join(root, "part-00002.parquet.tmp-deadbeef"), b"half a file")
        assert dataset_files(root) == [a, b]  # the writing process may read back what it wrote
        other = subprocess.run([sys.executable, "-c", "import sys; from udfs.io.datasets import dataset_files;"
                                " dataset_files(sys.argv[1])", root], cwd=REPO_ROOT, capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        assert "udfs.io.datasets.DatasetError: " + f"{root}: unfinished dataset: jobs.t (config h1)" in other.stderr
        out.commit([b])
    assert dataset_files(root) == [b]  # only the published part; the killed writer's temp file is gone
    assert json.loads(storage.read_bytes(storage.join(root, "_SUCCESS.json"))) == {
        "job": "jobs.t", "config_hash": "h1", "parts": ["split=train/part-00001.parquet"]}
    assert not storage.exists(storage.join(root, "part-00002.parquet.tmp-deadbeef"))
    storage.delete(b)
    with pytest.raises(DatasetError, match=r"1 published part\(s\) are missing, e.g. split=train/part-00001.parquet"):
        dataset_files(root)


def test_an_error_leaves_the_output_unfinished_and_another_config_is_refused(root):
    with pytest.raises(RuntimeError, match="boom"):
        with publish.publishing(root, job="jobs.t", config_hash="h1"):
            _part(root, "part-00000.parquet", 1)
            raise RuntimeError("boom")
    record = output_lock.read_record(output_lock.lock_uri(root, folder=True))
    assert record["state"] == "failed"
    with pytest.raises(DatasetError, match="unfinished dataset: jobs.t .config h1."):
        dataset_files(root)
    with pytest.raises(DatasetError, match="unfinished dataset"):  # the training loop's reader too
        StampBatches(root, "train")
    # another config may not finish it, and the record of the unfinished run is kept as it was
    with pytest.raises(LockError, match=f"{root}: holds an unfinished output of jobs.t with config h1, "
                                        "not of jobs.t with config h2; choose another --output or delete it"):
        with publish.publishing(root, job="jobs.t", config_hash="h2"):
            pass
    assert output_lock.read_record(output_lock.lock_uri(root, folder=True)) == record
    with publish.publishing(root, job="jobs.t", config_hash="h1") as out:  # the same config takes over
        out.commit([storage.join(root, "part-00000.parquet")])
    with pytest.raises(LockError, match="holds the output of jobs.t with config h1, not of jobs.u with config h1"):
        with publish.publishing(root, job="jobs.u", config_hash="h1"):
            pass
    assert len(dataset_files(root)) == 1


def test_a_job_that_ends_without_publishing_is_a_bug(tmp_path):
    with pytest.raises(RuntimeError, match="ended without publishing"):
        with publish.publishing(str(tmp_path / "o"), job="jobs.t", config_hash="h"):
            pass


def test_bad_input_raised_in_a_spark_task_is_one_line(spark, capsys):
    def raising(error):
        def task(batches):
            for b in batches:
                raise error
                yield b
        return task

    @job_main
    def main(argv):
        spark.range(4).repartition(2).mapInPandas(raising(argv[0]), "id long").collect()

    assert main([DatasetError("s3://b/part-00003.parquet: not a readable Parquet file (bad footer)")]) == 2
    assert capsys.readouterr().err == "error: s3://b/part-00003.parquet: not a readable Parquet file (bad footer)\n"
    with pytest.raises(Exception, match="ZeroDivisionError: a bug"):  # a bug keeps its traceback
        main([ZeroDivisionError("a bug")])
