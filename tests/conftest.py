"""Shared fixtures: the real sample data, a local-mode Spark session, an S3-API server on loopback."""
from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache", "numba"))


@pytest.fixture(scope="session")
def data_root():
    from udfs.config.sample_data import data_root as root

    return root()


@pytest.fixture(scope="session")
def spark(s3_server):
    """Local-mode Spark. Started after the S3 server so that executors inherit its AWS_* settings."""
    from jobs.spark import get_spark

    session = get_spark("lensinj-tests")
    yield session
    session.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1; AWS_* variables point boto3 and pyarrow at it.

    Spark's local-mode Python workers inherit the environment, so executors reach it too.
    """
    import logging

    from moto.server import ThreadedMotoServer

    # werkzeug would attach a handler to whatever sys.stderr a test's capture had at the first request
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in
             ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield os.environ["AWS_ENDPOINT_URL"]
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket on the loopback S3 server; returns ``s3://<name>``."""
    import boto3

    name = "t-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40]
    name = name.strip("-") + f"-{_free_port()}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


# The documented test bank (README "Source bank (stage 2)"): 16 random rows of btk_ext26, seed 1.
BANK_ARGS = ["--max-galaxies", "16", "--seed", "1", "--workers", "2"]


@pytest.fixture(scope="session")
def btk(data_root):
    return str(data_root / "cosmos" / "btk_ext26")


@pytest.fixture(scope="session")
def bank_path(btk, spark, tmp_path_factory):
    """A real source bank built once per session by jobs.cosmos_source_loader."""
    from jobs import cosmos_source_loader

    out = str(tmp_path_factory.mktemp("bank") / "bank.h5")
    assert cosmos_source_loader.main(["--cosmos-dir", btk, "--output", out, *BANK_ARGS]) == 0
    return out


@pytest.fixture(scope="session")
def pipeline_inputs(tmp_path_factory, spark, bank_path, data_root):
    """Stages 1-4 on the real samples (demo selection, 3 replicates, the demo's stand-in sky):
    ``{dir, manifest, cutouts, bank}``, the inputs of stage 5."""
    import yaml

    from jobs import build_manifest, make_cutouts, make_sample_sky, select_lrgs
    from udfs.config.provenance import REPO_ROOT
    from udfs.stamps.manifest import resolve_manifest
    from udfs.survey.sky_config import load_sky_config

    conf, d = REPO_ROOT / "conf", tmp_path_factory.mktemp("pipe")
    ls = data_root / "legacysurvey"
    cats = [str(ls / "dr8_sweeps"), str(ls / "dr8_tractor"), str(ls / "dr9_tractor")]
    assert select_lrgs.main(["--input", *cats, "--output", str(d / "targets"),
                             "--config", str(conf / "demo_lrg_selection.yaml")]) == 0
    priors = yaml.safe_load((conf / "demo_injection_priors.yaml").read_text())
    priors["replicates"] = 3   # 3 LRGs: several rows per target and label
    (d / "priors.yaml").write_text(yaml.safe_dump(priors))
    assert build_manifest.main(["--targets", str(d / "targets"), "--config", str(d / "priors.yaml"),
                                "--output", str(d / "manifest"), "--bank", bank_path]) == 0
    sky = load_sky_config(str(conf / "demo_sky.yaml"))  # the demo's sky: real PSFEx models and texture
    assert make_sample_sky.main(["--targets", str(d / "targets"), "--catalogs", *cats[1:], cats[0],
                                 "--output", str(d / "sky"), *sky.argv()]) == 0
    assert make_cutouts.main(["--targets", str(d / "targets"), "--coadd-base", str(d / "sky"),
                              "--output", str(d / "cutouts")]) == 0
    manifest = resolve_manifest(str(d / "manifest"))  # the one manifest under the root
    return {"dir": d, "manifest": manifest, "cutouts": str(d / "cutouts"), "bank": bank_path}
