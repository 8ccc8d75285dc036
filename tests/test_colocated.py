"""Stages 3-5 co-located by brick: bucket b of the manifest, of the cutouts and of the stamps hold the
same bricks, stage 5 merges them file by file, and no pixel array crosses a Spark shuffle (shuffle
bytes read from Spark's own monitoring API, per job group)."""
import json
import time
import urllib.request

import pyarrow.parquet as pq
import pytest
import yaml

from jobs import build_manifest, inject_stamps, make_cutouts
from jobs.spark import dataset_files
from udfs.io import parquet_files
from udfs.io.datasets import DatasetError
from udfs.stamps.inject_bucket import colocated_buckets
from udfs.stamps.manifest import resolve_manifest


def _by_bucket(uri: str, column: str) -> dict[int, set]:
    out = {}
    for f in dataset_files(uri):
        out.setdefault(parquet_files.bucket_number(f), set()).update(pq.read_table(f, columns=[column])
                                                                     .column(column).to_pylist())
    return out


def _shuffle_bytes(spark, group: str, run) -> int:
    """Shuffle bytes written by the Spark jobs ``run()`` starts, from the UI's REST API."""
    sc = spark.sparkContext
    sc.setJobGroup(group, group)
    try:
        run()
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    api = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}"
    deadline = time.time() + 20
    while True:  # the listener bus is asynchronous: wait until the group's stages are all complete
        jobs = [j for j in json.load(urllib.request.urlopen(f"{api}/jobs")) if j.get("jobGroup") == group]
        ids = {s for j in jobs for s in j["stageIds"]}
        stages = [s for s in json.load(urllib.request.urlopen(f"{api}/stages")) if s["stageId"] in ids]
        if jobs and all(j["status"] != "RUNNING" for j in jobs) or time.time() > deadline:
            return sum(s["shuffleWriteBytes"] for s in stages)
        time.sleep(0.5)


def _dataset_bytes(uri) -> int:
    return sum(len(open(f, "rb").read()) for f in dataset_files(str(uri)))


def test_every_dataset_records_its_bucketing_and_bricks_share_a_bucket(pipeline_inputs, tmp_path):
    inputs = pipeline_inputs
    out = tmp_path / "stamps"
    assert inject_stamps.main(["--manifest", inputs["manifest"], "--cutouts", inputs["cutouts"],
                               "--bank", inputs["bank"], "--output", str(out)]) == 0
    for uri in (inputs["manifest"], inputs["cutouts"], str(out)):
        for f in dataset_files(uri):
            assert parquet_files.bucketing(pq.read_schema(f)) == (("brickname",), 8), f
    cut_bricks, man_bricks = _by_bucket(inputs["cutouts"], "brickname"), _by_bucket(inputs["manifest"], "brickname")
    all_bricks = [b for bricks in cut_bricks.values() for b in bricks]
    assert len(all_bricks) == len(set(all_bricks))  # a brick lives in one bucket
    for b, bricks in man_bricks.items():
        assert bricks <= cut_bricks[b]
    cut_targets, stamp_targets = _by_bucket(inputs["cutouts"], "target_id"), _by_bucket(str(out), "target_id")
    assert stamp_targets and all(t <= cut_targets[b] for b, t in stamp_targets.items())
    for f in dataset_files(str(out)):  # rows in manifest order: brick, target, task
        keys = pq.read_table(f, columns=["brickname", "target_id", "task_id"]).to_pylist()
        order = [(r["brickname"], r["target_id"], r["task_id"]) for r in keys]
        assert order == sorted(order)


def test_no_pixel_array_crosses_a_shuffle_in_stages_4_and_5(pipeline_inputs, spark, tmp_path):
    inputs = pipeline_inputs
    targets, sky = str(inputs["dir"] / "targets"), str(inputs["dir"] / "sky")
    cut_shuffle = _shuffle_bytes(spark, "colocated-stage4", lambda: make_cutouts.main(
        ["--targets", targets, "--coadd-base", sky, "--output", str(tmp_path / "cutouts")]))
    out = tmp_path / "stamps"
    stamp_shuffle = _shuffle_bytes(spark, "colocated-stage5", lambda: inject_stamps.main(
        ["--manifest", inputs["manifest"], "--cutouts", inputs["cutouts"], "--bank", inputs["bank"],
         "--output", str(out)]))
    cut_bytes, stamp_bytes = _dataset_bytes(tmp_path / "cutouts"), _dataset_bytes(out)
    # a shuffle of the cutouts' (or the stamps') rows moves at least their compressed bytes; the
    # targets, the bucket list and Spark's count aggregates are a few kB
    assert 0 < cut_shuffle < 0.02 * cut_bytes, (cut_shuffle, cut_bytes)
    assert stamp_shuffle < 0.002 * stamp_bytes, (stamp_shuffle, stamp_bytes)


def test_mismatched_buckets_are_refused_in_one_line(pipeline_inputs, tmp_path, capsys):
    inputs = pipeline_inputs
    priors = yaml.safe_load((inputs["dir"] / "priors.yaml").read_text())
    priors["n_buckets"] = 4
    (tmp_path / "priors.yaml").write_text(yaml.safe_dump(priors))
    assert build_manifest.main(["--targets", str(inputs["dir"] / "targets"), "--config", str(tmp_path / "priors.yaml"),
                                "--output", str(tmp_path / "manifest"), "--bank", inputs["bank"]]) == 0
    manifest = resolve_manifest(str(tmp_path / "manifest"))
    capsys.readouterr()
    assert inject_stamps.main(["--manifest", manifest, "--cutouts", inputs["cutouts"], "--bank", inputs["bank"],
                               "--output", str(tmp_path / "stamps")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "4 buckets" in err and "8" in err and "--n-buckets" in err, err
    assert manifest in err and inputs["cutouts"] in err
    assert not (tmp_path / "stamps").exists()


def test_a_dataset_without_bucket_metadata_is_refused(pipeline_inputs, tmp_path):
    old = tmp_path / "old_manifest"
    old.mkdir()
    for f in dataset_files(pipeline_inputs["manifest"]):
        t = pq.read_table(f)
        meta = {k: v for k, v in t.schema.metadata.items() if not k.startswith(b"lensinj.")}
        pq.write_table(t.replace_schema_metadata(meta), old / f.rsplit("/", 1)[-1])
    with pytest.raises(DatasetError, match="no bucket metadata.*rebuild"):
        colocated_buckets(str(old), pipeline_inputs["cutouts"])


def test_python_workers_use_the_jobs_arrow_memory_pool(spark):
    """Stage 5's Parquet writes run in the executors' Python workers with Arrow's mimalloc pool
    (jobs/__init__.py, passed on by get_spark), not pyarrow's default jemalloc: the pool is read once
    when pyarrow loads, so it must be in the workers' environment before they start."""
    import os

    import pandas as pd

    def pools(batches):
        import pyarrow as pa

        for _ in batches:
            yield pd.DataFrame({"pool": [pa.default_memory_pool().backend_name],
                                "env": [os.environ.get("ARROW_DEFAULT_MEMORY_POOL")]})

    assert os.environ["ARROW_DEFAULT_MEMORY_POOL"] == "mimalloc"
    assert spark.conf.get("spark.executorEnv.ARROW_DEFAULT_MEMORY_POOL") == "mimalloc"
    rows = spark.range(0, 2, 1, 2).mapInPandas(pools, "pool string, env string").collect()
    assert [(r["pool"], r["env"]) for r in rows] == [("mimalloc", "mimalloc")] * 2
