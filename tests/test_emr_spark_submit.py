"""The generated EMR step command is what runs: launch against moto, take the select_lrgs step's
spark-submit command, mirror the run prefix (code zip, entry script, configs, uploaded sweeps) from
moto's S3 to a local folder, rewrite ``s3://<bucket>/`` to that folder, and run the command with the
real ``.venv/bin/spark-submit`` in local mode on the real DR8 sample sweeps."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from emr import launch
from udfs.config.provenance import REPO_ROOT

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")
BUCKET = "lensinj-emr-submit"


def _select_lrgs_committed() -> bool:
    return subprocess.run(["git", "cat-file", "-e", "HEAD:jobs/select_lrgs.py"], cwd=REPO_ROOT,
                          capture_output=True).returncode == 0


def test_select_lrgs_step_runs_with_spark_submit(tmp_path, monkeypatch, data_root):
    if not _select_lrgs_committed():
        pytest.skip("jobs.select_lrgs is not committed at HEAD: the code zip (git archive HEAD) cannot contain it")
    spark_submit = Path(sys.executable).parent / "spark-submit"
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mirror = tmp_path / "s3"
    with moto.mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        out = io.StringIO()
        with redirect_stdout(out), redirect_stderr(io.StringIO()):
            rc = launch.main(["--force", "--run-id", "sub1", "--s3-root", f"s3://{BUCKET}/runs", "--no-follow"])
        assert rc == 0
        cid = next(w.rstrip(":") for w in out.getvalue().split() if w.startswith("j-"))
        steps = boto3.client("emr", region_name="us-east-1").list_steps(ClusterId=cid)["Steps"]
        step = next(s for s in steps if s["Name"].endswith(":jobs.select_lrgs"))
        args = step["Config"]["Args"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="runs/sub1/"):
            for obj in page.get("Contents", []):
                if obj["Key"].startswith(("runs/sub1/code/", "runs/sub1/conf/", "runs/sub1/inputs/sweeps/")):
                    dest = mirror / BUCKET / obj["Key"]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    s3.download_file(BUCKET, obj["Key"], str(dest))

    assert args[0] == "spark-submit"
    local = [a.replace("s3://", f"{mirror}/") for a in args[1:]]
    assert not any("s3://" in a for a in local)
    sha = args[args.index("--code-version") + 1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYSPARK_", "LENSINJ_"))}
    env.update(PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1", LENSINJ_SHUFFLE_PARTITIONS="2")
    proc = subprocess.run([str(spark_submit), "--master", "local[2]", *local], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # spark-submit relays the Python driver's stderr on its stdout
    assert f"run_stage: jobs.select_lrgs code_version={sha}" in proc.stdout + proc.stderr

    import pyarrow.dataset as ds

    output = Path(local[local.index("--output") + 1])
    assert output == mirror / BUCKET / "runs" / "sub1" / "targets"
    table = ds.dataset(str(output), format="parquet", exclude_invalid_files=True,
                       ignore_prefixes=["_", "."]).to_table()
    # The sample sweeps hold 36 rows of which 3 pass the DESI main-survey LRG cut (data README);
    # the quality cuts can only remove rows from those.
    assert 1 <= table.num_rows <= 3
    assert set(table.column("code_version").to_pylist()) == {sha}
