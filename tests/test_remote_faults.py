"""Remote faults with real servers on loopback (README "Reliability"): stage 4 reading the real
sample coadd bricks over HTTP range GETs from a server that fails on purpose, and writing to the
moto S3 server through a proxy that fails on purpose (:mod:`tests.fault_servers`).

Transient faults (503, 429 with Retry-After, a reset mid-response, a truncated body) are retried and
the dataset is byte-identical to a fault-free run; faults that never recover flag the rows of the
affected brick ``read_error:<file>`` (reads) or stop the job with one line naming the file (S3
writes); a machine-wide limit bounds the requests in flight across Spark's worker processes.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from pyspark.sql import functions as F

from jobs import make_cutouts
from jobs.spark import bucket_of
from tests.fault_servers import FaultServer
from udfs.config.provenance import REPO_ROOT
from udfs.io import storage
from udfs.io.datasets import dataset_files
from udfs.io.http_range import HTTPRangeFile
from udfs.io.parquet_files import parquet_bytes
from udfs.io.retry import PermanentError, RetryPolicy, TransientError

# the two real bricks with z-band image and invvar: (folder, target pixels (x, y) in the file)
# (0959p805 has no z coverage: its rows are low_coverage:z, after reading their tiles like any other)
BRICKS = {"0959p805": ("dr6_coadd_0959p805", [(400.3, 480.8), (600.7, 1200.2), (1500.2, 900.6)]),
          "1102p240": ("coadd_1102p240_z", [(49.6, 50.2), (52.3, 47.9)])}
FLAGS = ["--bands", "z", "--psf-model", "moffat", "--allow-missing-maskbits"]
A, B = "0959p805", "1102p240"


def _path(brick: str, kind: str) -> str:
    return f"/coadd/{brick[:3]}/{brick}/legacysurvey-{brick}-{kind}-z.fits.fz"


@pytest.fixture(scope="module")
def coadds(data_root):
    """A loopback file server holding the real z coadds of both bricks (20 ms per request); its peak
    counts the coadd requests only (the PSF maker's probes for a ccds table are not limited)."""
    files = {_path(b, k): str(data_root / "legacysurvey" / d / f"legacysurvey-{b}-{k}-z.fits.fz")
             for b, (d, _) in BRICKS.items() for k in ("image", "invvar")}
    with FaultServer(files, delay_s=0.02, counted=".fits.fz") as server:
        yield server


@pytest.fixture(scope="module")
def targets(spark, data_root, tmp_path_factory):
    """Stage-1 style targets on both bricks, and a bucket count that puts the bricks in different
    output files (two Spark tasks, so two worker processes read at once)."""
    rows = []
    for brick, (folder, pix) in BRICKS.items():
        wcs = WCS(fits.getheader(data_root / "legacysurvey" / folder / f"legacysurvey-{brick}-image-z.fits.fz", 1))
        for i, (x, y) in enumerate(pix):
            ra, dec = wcs.all_pix2world([[x, y]], 0)[0]
            rows.append({"target_id": f"{brick}-{i}", "ra": ra, "dec": dec, "brickname": brick, "split": "train",
                         "psf_fwhm_g": 1.5, "psf_fwhm_r": 1.4, "psf_fwhm_z": 1.3})
    uri = str(tmp_path_factory.mktemp("targets") / "targets")
    storage.write_bytes(storage.join(uri, "part-00000.parquet"),
                        parquet_bytes(pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)))
    bricks = spark.createDataFrame([(b,) for b in BRICKS], "brickname string")

    def tasks(n):  # as jobs.spark.write_parquet spreads them: hash buckets, repartitioned by bucket
        parts = bricks.withColumn("_b", bucket_of(["brickname"], n)).repartition(n, "_b")
        return {r[0] for r in parts.select(F.spark_partition_id()).collect()}

    n = next(n for n in range(2, 17) if len(tasks(n)) == 2)
    return uri, n


def _run(targets, base, out, *extra) -> int:
    uri, n = targets
    return make_cutouts.main(["--targets", uri, "--coadd-base", base, "--output", out, "--n-buckets", str(n),
                              *FLAGS, *extra])


def _files(uri: str) -> dict[str, bytes]:
    return {f.rsplit("/", 1)[1]: storage.read_bytes(f) for f in dataset_files(uri)}


@pytest.fixture(scope="module")
def reference(coadds, targets, tmp_path_factory):
    """The fault-free run (limit 2, 100 ms per request so the two tasks' reads overlap), its files,
    and the server's peak coadd requests in flight."""
    coadds.reset()
    out = str(tmp_path_factory.mktemp("ref") / "cutouts")
    coadds.delay_s = 0.1
    assert _run(targets, coadds.url, out, "--max-remote-requests", "2") == 0
    coadds.delay_s = 0.02
    assert not coadds.outcomes("503") and coadds.outcomes("ok", "GET")
    return _files(out), coadds.peak, _summary(out)


def _summary(out: str) -> dict:
    """The job's summary less what names the output."""
    summary = json.loads(storage.read_bytes(storage.join(out, "_summary.json")))
    return {k: v for k, v in summary.items() if k not in ("output", "files")}


def test_limit_of_two_requests_is_reached_across_worker_processes(reference):
    assert reference[1] == 2  # two tasks read at once, never more than the limit


def test_transient_http_faults_are_retried_to_the_same_dataset(coadds, targets, reference, tmp_path):
    coadds.reset()
    coadds.add("503", _path(A, "image"), times=2)
    coadds.add("429", _path(B, "invvar"), retry_after=1)
    coadds.add("reset", _path(B, "image"))
    coadds.add("truncate", _path(A, "invvar"))
    coadds.add("503", _path(B, "image"), method="HEAD")
    out = str(tmp_path / "cutouts")
    coadds.delay_s = 0.1  # as in the reference run, where the two tasks' reads overlapped
    try:
        assert _run(targets, coadds.url, out, "--max-remote-requests", "1") == 0
    finally:
        coadds.delay_s = 0.02
    assert _files(out) == reference[0]  # byte-identical to the fault-free run
    seen = {kind: len(coadds.outcomes(kind)) for kind in ("503", "429", "reset", "truncate")}
    assert seen == {"503": 3, "429": 1, "reset": 1, "truncate": 1}
    assert coadds.peak == 1  # limit 1: one request at a time over both worker processes
    (_, answered, _, path, _), = coadds.outcomes("429")
    retry = min(r[0] for r in coadds.log if r[3] == path and r[0] > answered)
    assert retry - answered >= 1.0  # Retry-After: 1 honoured, measured at the server


def test_faults_that_never_recover_flag_the_rows_of_their_file(coadds, targets, reference, tmp_path):
    coadds.reset()
    coadds.add("503", _path(A, "image"), times=None)
    out = str(tmp_path / "cutouts")
    assert _run(targets, coadds.url, out, "--retries", "2") == 0
    df = pd.concat([pq_read(f) for f in dataset_files(out)]).set_index("target_id").sort_index()
    assert df.loc[df.brickname == A, "fail_reason"].tolist() == ["read_error:image-z"] * 3
    assert df.loc[df.brickname == B, "ok"].all()  # the other brick's rows are untouched
    assert len(coadds.outcomes("503", "GET")) == 3  # the first read, tried 1 + --retries times
    ref = pd.concat([pq_read_bytes(b) for b in reference[0].values()]).set_index("target_id").sort_index()
    pd.testing.assert_series_equal(df.loc[df.brickname == B, "image"].map(list),
                                   ref.loc[ref.brickname == B, "image"].map(list))


def pq_read(uri: str) -> pd.DataFrame:
    return pq_read_bytes(storage.read_bytes(uri))


def pq_read_bytes(data: bytes) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data)).to_pandas()


def test_ignored_range_and_missing_files_are_not_retried(coadds):
    coadds.reset()
    coadds.add("norange", _path(A, "image"), times=None)
    policy = RetryPolicy(retries=3, base_s=0.01)
    f = HTTPRangeFile(coadds.url + _path(A, "image"), size=100)
    with pytest.raises(PermanentError, match="ignored Range"):
        policy.call(lambda: f._read_at(0, 10))
    with pytest.raises(FileNotFoundError):
        policy.call(lambda: HTTPRangeFile(coadds.url + "/no/such.fits"))
    assert [r[4] for r in coadds.log] == ["norange", "ok"]  # one request each


def test_backoff_is_jittered_bounded_and_honours_retry_after():
    policy = RetryPolicy(retries=6, base_s=0.25, cap_s=2.0)
    rng = random.Random(7)
    for attempt in range(6):
        waits = [policy.delay(attempt, rng=rng) for _ in range(50)]
        assert all(0.0 <= w <= min(2.0, 0.25 * 2 ** attempt) for w in waits)
        assert len(set(waits)) == 50 and max(waits) > 0.5 * min(2.0, 0.25 * 2 ** attempt)  # spread, not fixed
    assert all(policy.delay(0, retry_after=1.0, rng=rng) >= 1.0 for _ in range(20))
    assert policy.delay(0, retry_after=1e6, rng=rng) <= policy.retry_after_cap_s + policy.base_s
    slept, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("HTTP 503", retry_after=2.0 if len(calls) == 2 else None)
        return "done"

    assert policy.call(flaky, rng=rng, sleep=slept.append) == "done"
    assert len(calls) == 3 and slept[0] <= 0.25 and slept[1] >= 2.0
    with pytest.raises(TransientError) as err:
        RetryPolicy(retries=2, base_s=0.0).call(lambda: (_ for _ in ()).throw(TransientError("x")), sleep=slept.append)
    assert err.value.attempts == 3


def _s3_job(targets, base, out, endpoint) -> subprocess.Popen:
    """Start ``python -m jobs.make_cutouts`` as users run it, its S3 endpoint the fault proxy."""
    uri, n = targets
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, "-m", "jobs.make_cutouts", "--targets", uri, "--coadd-base", base,
                             "--output", out, "--n-buckets", str(n), *FLAGS], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_s3_put_faults_are_retried_and_a_lasting_one_stops_the_job(s3_server, s3_bucket, targets, coadds, reference):
    """Two jobs at once through one proxy: transient PUT faults on one output, a PUT that always fails on
    the other (the writes happen in Spark tasks, hence jobs of their own with the proxy as endpoint)."""
    coadds.reset()
    with FaultServer(upstream=s3_server) as proxy:
        for kind in ("503", "429", "reset", "truncate"):
            proxy.add(kind, "/faulty/part-", method="PUT")
        proxy.add("503", "/faulty/_summary.json", method="PUT")
        proxy.add("503", "/broken/part-", method="PUT", times=None)
        jobs = [_s3_job(targets, coadds.url, f"{s3_bucket}/{name}", proxy.url) for name in ("faulty", "broken")]
        (_, err_ok), (_, err) = [job.communicate(timeout=300) for job in jobs]
    assert jobs[0].returncode == 0, err_ok[-3000:]
    assert {k: len(proxy.outcomes(k, "PUT", "/faulty/")) for k in ("503", "429", "reset", "truncate")} == \
        {"503": 2, "429": 1, "reset": 1, "truncate": 1}
    assert _files(f"{s3_bucket}/faulty") == reference[0]  # byte-identical to the fault-free run
    assert _summary(f"{s3_bucket}/faulty") == reference[2]

    assert jobs[1].returncode == 2
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and f"{s3_bucket}/broken/part-" in lines[0] and "cannot write to S3" in lines[0], err
    assert "Traceback" not in err
    assert len(proxy.outcomes("503", "PUT", "/broken/part-")) >= storage.S3_MAX_ATTEMPTS


def test_s3_get_faults_on_coadds_are_retried_to_the_same_dataset(s3_server, s3_bucket, targets, data_root, tmp_path):
    """Stage 4 reading its coadds from S3 through the proxy, which fails reads of the image files
    (503, 429, reset, truncated body), gives the files of a run reading the same objects directly."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server)
    bucket = s3_bucket[len("s3://"):]
    for brick, (folder, _) in BRICKS.items():
        for kind in ("image", "invvar"):
            client.upload_file(str(data_root / "legacysurvey" / folder / f"legacysurvey-{brick}-{kind}-z.fits.fz"),
                               bucket, "coadds" + _path(brick, kind))
    base = f"{s3_bucket}/coadds"
    with FaultServer(upstream=s3_server) as proxy:
        for kind in ("503", "429", "reset", "truncate"):
            proxy.add(kind, "/coadds/coadd/", method="GET")
        jobs = [_s3_job(targets, base, str(tmp_path / name), endpoint)
                for name, endpoint in (("faulty", proxy.url), ("direct", s3_server))]
        errs = [job.communicate(timeout=300)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], errs[0][-3000:] + errs[1][-3000:]
    assert {k: len(proxy.outcomes(k, "GET", "/coadds/coadd/")) for k in ("503", "429", "reset", "truncate")} == \
        {"503": 1, "429": 1, "reset": 1, "truncate": 1}
    faulty, direct = _files(str(tmp_path / "faulty")), _files(str(tmp_path / "direct"))
    assert faulty == direct and len(faulty) == 2
    assert _summary(str(tmp_path / "faulty"))["n_ok"] == _summary(str(tmp_path / "direct"))["n_ok"] > 0
