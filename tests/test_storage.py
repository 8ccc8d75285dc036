"""Dataset I/O through pyarrow on local disk and on an S3-API server: the path every job uses."""
import pytest

from jobs.spark import dataset_files, read_parquet, write_parquet
from udfs.io import storage


@pytest.mark.parametrize("where", ["local", "s3"])
def test_write_read_roundtrip_is_deterministic_and_idempotent(spark, tmp_path, where, request):
    base = request.getfixturevalue("s3_bucket") if where == "s3" else str(tmp_path)
    uri = storage.join(base, "ds")
    df = spark.range(200).selectExpr("id", "id * 0.5 as x",
                                     "case when id % 3 = 0 then 'test' else 'train' end as split")
    first = write_parquet(df, uri, key=["id"], n_buckets=4, partition_by=["split"])
    assert sum(r["rows"] for r in first) == 200
    blobs = {p: storage.read_bytes(p) for p in dataset_files(uri)}
    again = write_parquet(df, uri, key=["id"], n_buckets=4, partition_by=["split"])
    assert {r["path"] for r in again} == set(blobs)
    assert {p: storage.read_bytes(p) for p in dataset_files(uri)} == blobs  # byte-identical rerun

    back = read_parquet(spark, uri).toPandas().sort_values("id")
    assert list(back["id"]) == list(range(200))  # no duplicates, nothing lost
    assert (back["x"] == back["id"] * 0.5).all()
    assert set(back.loc[back["id"] % 3 == 0, "split"]) == {"test"}

    resumed = write_parquet(df, uri, key=["id"], n_buckets=4, partition_by=["split"], skip_existing=True)
    assert {r["status"] for r in resumed} == {"skipped"}


def test_missing_file_message_names_the_path(tmp_path):
    missing = str(tmp_path / "nope.fits")
    with pytest.raises(FileNotFoundError, match="nope.fits"):
        storage.open_input(missing)


def test_glob_on_s3(s3_bucket):
    for name in ("a-1.fits", "a-2.fits", "b-1.fits"):
        storage.write_bytes(f"{s3_bucket}/in/{name}", b"x")
    assert storage.glob(f"{s3_bucket}/in/a-*.fits") == [f"{s3_bucket}/in/a-1.fits", f"{s3_bucket}/in/a-2.fits"]
