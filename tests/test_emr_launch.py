"""The EMR launcher end to end against moto's in-process EMR and S3 (``moto.mock_aws``), through
``emr.launch.main`` as users run it. moto accepts the EMR control-plane calls but runs nothing, so
the tests move the steps along by editing moto's backend between polls (the ``sleep`` hook)."""
from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from datetime import datetime, timedelta, timezone

import pytest

from emr import launch
from emr.config import Fleet, Price
from emr.follow import capacity_cost, instance_cost
from emr.package import DirtyTreeError, build_zip, check_clean, head_sha
from udfs.config.provenance import REPO_ROOT

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")

BUCKET = "lensinj-emr-test"
ROOT = f"s3://{BUCKET}/runs"
MODULES = ["jobs.select_lrgs", "jobs.cosmos_source_loader", "jobs.build_manifest", "jobs.make_cutouts",
           "jobs.inject_stamps", "jobs.validate_cosmos_injection"]
SECRET = "not-a-real-secret-7f3a9c"


@pytest.fixture
def aws(monkeypatch):
    """moto's in-process AWS with fake credentials from the environment (the standard chain)."""
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield


def _session(captured: dict):
    session = boto3.session.Session(region_name="us-east-1")

    def grab(params, model, **_):
        captured[model.name] = copy.deepcopy(params)

    session.events.register("provide-client-params.emr.*", grab)
    return session


def _backend_cluster(cluster_id: str):
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.emr.models import emr_backends

    return emr_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].clusters[cluster_id]


class Driver:
    """Plays EMR between polls: completes the running step and starts the next one, or fails
    the step of stage ``fail_at`` (cancelling the rest, as ActionOnFailure does)."""

    def __init__(self, fail_at: int | None = None, interrupt_after: int | None = None):
        self.fail_at, self.interrupt_after, self.calls = fail_at, interrupt_after, 0

    def __call__(self, _seconds):
        self.calls += 1
        if self.interrupt_after is not None and self.calls > self.interrupt_after:
            raise KeyboardInterrupt
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.emr.models import emr_backends

        for cluster in emr_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].clusters.values():
            steps = [s for s in cluster.steps if s.name.startswith("lensinj:")]
            for i, step in enumerate(steps, start=1):
                if step.state in ("PENDING", "RUNNING"):
                    if i == self.fail_at:
                        step.state = "FAILED"
                        for later in steps[i:]:
                            later.state = "CANCELLED"
                    elif step.state == "RUNNING":
                        step.state = "COMPLETED"
                        step.end_datetime = datetime.now(timezone.utc)
                        if i < len(steps):
                            steps[i].state = "RUNNING"
                            steps[i].start()
                    else:
                        step.state = "RUNNING"
                        step.start()
                    break


def _run(argv, **kw):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = launch.main(argv, **kw)
    return rc, out.getvalue(), err.getvalue()


def _keys(prefix: str) -> list[str]:
    s3 = boto3.client("s3", region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _committed(paths: tuple[str, ...]) -> list[str]:
    out = subprocess.run(["git", "ls-tree", "-r", "--name-only", "HEAD", *paths], cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True).stdout
    return sorted(out.split())


def _check_uploads(sha: str, data_root) -> dict:
    """Code zip = the committed tree at HEAD, entry script, bootstrap, configs, local inputs; the run record."""
    keys = _keys("runs/t1/")
    zip_key = f"runs/t1/code/lensinj-{sha}.zip"
    for key in (zip_key, "runs/t1/code/run_stage.py", "runs/t1/bootstrap/install_deps.sh",
                "runs/t1/bootstrap/requirements-emr.txt", "runs/t1/bootstrap/requirements-emr-build.txt",
                "runs/t1/conf/emr.yaml", "runs/t1/conf/pipeline.yaml", "runs/t1/run.json"):
        assert key in keys
    sweeps = sorted(p.name for p in (data_root / "legacysurvey" / "dr8_sweeps").iterdir())
    assert [k.rsplit("/", 1)[1] for k in keys if k.startswith("runs/t1/inputs/sweeps/")] == sweeps
    assert any(k.startswith("runs/t1/inputs/cosmos/") for k in keys)
    s3 = boto3.client("s3", region_name="us-east-1")
    zipped = zipfile.ZipFile(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=zip_key)["Body"].read()))
    assert sorted(n for n in zipped.namelist() if not n.endswith("/")) == _committed(("jobs", "udfs", "conf"))
    record = json.loads(s3.get_object(Bucket=BUCKET, Key="runs/t1/run.json")["Body"].read())
    assert record["code_version"] == sha and len(record["config_hash"]) == 16
    assert record["cluster_id"].startswith("j-")
    assert record["emr_config"]["fleets"]["core"]["spot"] == 2 and record["emr_config"]["s3_root"] == ROOT
    assert [s["module"] for s in record["pipeline_config"]["stages"]] == MODULES
    assert SECRET not in json.dumps(record)
    return record


def _check_request(req: dict, sha: str, record: dict) -> None:
    """The request sent: release, fleets, configurations, bootstrap, logs, tags, auto-termination."""
    assert req["ReleaseLabel"] == "emr-7.5.0"
    assert req["LogUri"] == f"{ROOT}/t1/logs/"
    assert req["AutoTerminationPolicy"] == {"IdleTimeout": 3600}
    fleets = {f["InstanceFleetType"]: f for f in req["Instances"]["InstanceFleets"]}
    assert (fleets["MASTER"]["TargetOnDemandCapacity"], fleets["MASTER"]["TargetSpotCapacity"]) == (1, 0)
    assert "LaunchSpecifications" not in fleets["MASTER"]
    for role in ("CORE", "TASK"):
        assert fleets[role]["TargetSpotCapacity"] > 0
        spec = fleets[role]["LaunchSpecifications"]["SpotSpecification"]
        assert spec["TimeoutAction"] == "SWITCH_TO_ON_DEMAND"
    conf = {c["Classification"]: c for c in req["Configurations"]}
    defaults = conf["spark-defaults"]["Properties"]
    assert defaults["spark.executor.memory"] == "6g" and defaults["spark.executor.cores"] == "2"
    assert defaults["spark.pyspark.python"] == "/opt/lensinj/venv/bin/python"
    export = conf["spark-env"]["Configurations"][0]["Properties"]
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        assert export[var] == "1" and defaults[f"spark.executorEnv.{var}"] == "1"
    assert export["PYSPARK_PYTHON"] == "/opt/lensinj/venv/bin/python"
    assert export["NUMBA_CACHE_DIR"].startswith("/mnt/")
    boot = req["BootstrapActions"][0]["ScriptBootstrapAction"]
    assert boot["Path"] == f"{ROOT}/t1/bootstrap/install_deps.sh"
    assert boot["Args"][0] == f"{ROOT}/t1/bootstrap"
    tags = {t["Key"]: t["Value"] for t in req["Tags"]}
    assert tags["lensinj:code-version"] == sha and tags["lensinj:run-id"] == "t1"
    assert tags["lensinj:config-hash"] == record["config_hash"] and tags["project"] == "lensinj"


def _check_cluster_and_steps(cid: str, sha: str) -> None:
    """What moto recorded: the cluster and the steps, in stage order, each ending the run on failure."""
    emr = boto3.client("emr", region_name="us-east-1")
    desc = emr.describe_cluster(ClusterId=cid)["Cluster"]
    assert desc["ReleaseLabel"] == "emr-7.5.0" and desc["LogUri"] == f"{ROOT}/t1/logs/"
    assert {t["Key"]: t["Value"] for t in desc["Tags"]}["lensinj:code-version"] == sha
    steps = sorted(emr.list_steps(ClusterId=cid)["Steps"], key=lambda s: s["Name"])
    assert [s["Name"].rsplit(":", 1)[1] for s in steps] == MODULES
    assert all(s["ActionOnFailure"] == "TERMINATE_CLUSTER" for s in steps)
    assert all(s["Status"]["State"] == "COMPLETED" for s in steps)
    first = steps[0]["Config"]["Args"]
    assert first[0] == "spark-submit" and first[first.index("--py-files") + 1] == f"{ROOT}/t1/code/lensinj-{sha}.zip"
    assert f"spark.executorEnv.LENSINJ_CODE_VERSION={sha}" in first
    assert first[first.index("--code-version") + 1] == sha and "jobs.select_lrgs" in first
    assert first[first.index("--input") + 1] == f"{ROOT}/t1/inputs/sweeps/*.fits"


def test_launch_end_to_end(aws, data_root):
    captured: dict = {}
    base = ["--force", "--run-id", "t1", "--s3-root", ROOT, "--poll-seconds", "0"]
    rc, out, err = _run(base, session=_session(captured), sleep=Driver())
    assert rc == 0, err
    sha = head_sha(REPO_ROOT)
    record = _check_uploads(sha, data_root)
    _check_request(captured["RunJobFlow"], sha, record)
    _check_cluster_and_steps(record["cluster_id"], sha)

    # Progress, outputs, wall time, cost.
    for i, module in enumerate(MODULES, start=1):
        assert f"stage {i}/6 {module}: RUNNING -> COMPLETED" in out
    assert "progress: 6/6 stages done" in out and "run t1 done: 6/6 stages in" in out
    assert f"output: {ROOT}/t1/stamps" in out and f"output: {ROOT}/t1/targets" in out
    assert "estimated cost $" in out and "requested fleet capacity" in out
    assert SECRET not in out + err

    # --dry-run prints exactly the request that was sent, as one JSON object, without AWS calls.
    before = boto3.client("emr", region_name="us-east-1").list_clusters()["Clusters"]
    rc, dry, _ = _run(["--dry-run", *base])
    assert rc == 0
    assert json.loads(dry) == captured["RunJobFlow"]
    assert boto3.client("emr", region_name="us-east-1").list_clusters()["Clusters"] == before


def test_failed_step_stops_the_run_naming_the_stage(aws):
    rc, out, err = _run(["--force", "--run-id", "t2", "--s3-root", ROOT, "--poll-seconds", "0"],
                        session=_session({}), sleep=Driver(fail_at=3))
    assert rc == 1
    assert "run t2 FAILED on cluster j-" in err
    assert "stage 3/6 jobs.build_manifest (step s-" in err and ") FAILED:" in err
    assert "stage 3/6 jobs.build_manifest: RUNNING -> FAILED" in out
    assert "stage 4/6 jobs.make_cutouts: PENDING -> CANCELLED" in out
    assert "run t2 done" not in out


def test_ctrl_c_leaves_cluster_running_and_follow_resumes(aws):
    rc, out, _ = _run(["--force", "--run-id", "t3", "--s3-root", ROOT, "--poll-seconds", "0"],
                      session=_session({}), sleep=Driver(interrupt_after=2))
    assert rc == 130
    cid = next(w.rstrip(":") for w in out.split() if w.startswith("j-"))
    assert f"--follow {cid} --run-id t3" in out and f"terminate-clusters --region us-east-1 --cluster-ids {cid}" in out
    assert _backend_cluster(cid).state not in ("TERMINATING", "TERMINATED")

    rc, out, err = _run(["--follow", cid, "--poll-seconds", "0"], session=_session({}), sleep=Driver())
    assert rc == 0, err
    assert f"following run t3 on cluster {cid}" in out and "run t3 done: 6/6 stages" in out
    assert f"output: {ROOT}/t3/report/report.json" in out


def test_cluster_id_adds_steps_to_running_cluster(aws):
    emr = boto3.client("emr", region_name="us-east-1")
    tags = None
    rc, out, _ = _run(["--force", "--run-id", "t4a", "--s3-root", ROOT, "--no-follow"], session=_session({}))
    assert rc == 0
    cid = next(w.rstrip(":") for w in out.split() if w.startswith("j-"))
    tags = {t["Key"]: t["Value"] for t in emr.describe_cluster(ClusterId=cid)["Cluster"]["Tags"]}
    captured: dict = {}
    argv = ["--force", "--run-id", "t4b", "--s3-root", ROOT, "--cluster-id", cid, "--no-follow"]
    rc, out, err = _run(argv, session=_session(captured))
    assert rc == 0, err
    sent = captured["AddJobFlowSteps"]
    assert sent["JobFlowId"] == cid and "RunJobFlow" not in captured
    assert [s["Name"] for s in sent["Steps"]] == [f"lensinj:t4b:{i}/6:{m}" for i, m in enumerate(MODULES, 1)]
    assert all(s["ActionOnFailure"] == "CANCEL_AND_WAIT" for s in sent["Steps"])
    names = [s["Name"] for s in emr.list_steps(ClusterId=cid)["Steps"]]
    assert sum(n.startswith("lensinj:t4b:") for n in names) == 6
    assert tags["lensinj:requirements-hash"]
    rc, dry, _ = _run(["--dry-run", *argv])
    assert rc == 0 and json.loads(dry) == sent


def test_dry_run_through_make_calls_no_aws():
    """`make emr-run DRY_RUN=1` with no credentials and an unreachable endpoint: any AWS call would
    fail, so success proves none is made. stdout is exactly one JSON object."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_CONFIG_FILE=os.devnull,
               AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    proc = subprocess.run(["make", "-s", "-o", ".venv/.installed", "emr-run", "DRY_RUN=1",
                           "EMR_ARGS=--run-id dry1"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    request = json.loads(proc.stdout)
    assert request["ReleaseLabel"] == "emr-7.5.0" and len(request["Steps"]) == 6
    assert request["Name"] == "lensinj-dry1"


def test_bad_input_override_is_a_usage_error(aws):
    rc, _, err = _run(["--dry-run", "--input", "nosuch=s3://x/y"])
    assert rc == 2 and "--input 'nosuch=s3://x/y'" in err and "sweeps" in err


def test_dirty_tree_refused_unless_forced(tmp_path):
    repo = tmp_path / "repo"
    for d in ("jobs", "udfs", "conf"):
        (repo / d).mkdir(parents=True)
        (repo / d / "x.py").write_text(f"# {d} v1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(git + ["add", "."], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "v1"], cwd=repo, check=True)
    assert check_clean(repo, force=False) == []
    (repo / "udfs" / "x.py").write_text("# udfs v2 (uncommitted)\n")
    with pytest.raises(DirtyTreeError, match=r"uncommitted changes \(udfs/x.py\).*--force"):
        check_clean(repo, force=False)
    assert check_clean(repo, force=True) == ["udfs/x.py"]
    sha = head_sha(repo)
    z = zipfile.ZipFile(build_zip(repo, sha, tmp_path / "a.zip"))
    assert z.read("udfs/x.py") == b"# udfs v1\n"      # HEAD is shipped, never the working tree
    assert (tmp_path / "a.zip").read_bytes() == build_zip(repo, sha, tmp_path / "b.zip").read_bytes()


def test_cost_estimates():
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    pricing = {"m5.xlarge": Price(ec2_on_demand=0.192, ec2_spot=0.08, emr=0.048),
               "m5.2xlarge": Price(ec2_on_demand=0.384, ec2_spot=0.16, emr=0.096)}
    instances = [
        {"InstanceType": "m5.xlarge", "Market": "ON_DEMAND",
         "Status": {"Timeline": {"CreationDateTime": t0, "EndDateTime": t0 + timedelta(hours=2)}}},
        {"InstanceType": "m5.2xlarge", "Market": "SPOT",
         "Status": {"Timeline": {"CreationDateTime": t0 + timedelta(minutes=30)}}},
    ]
    usd, hours = instance_cost(instances, pricing, now=t0 + timedelta(hours=2))
    assert hours == pytest.approx(3.5)
    assert usd == pytest.approx(2 * (0.192 + 0.048) + 1.5 * (0.16 + 0.096))
    fleets = {"primary": Fleet(on_demand=1, spot=0, instance_types=("m5.xlarge",)),
              "core": Fleet(on_demand=1, spot=2, instance_types=("m5.xlarge", "m5.2xlarge"))}
    usd, hours = capacity_cost(fleets, pricing, seconds=1800)
    assert hours == pytest.approx(2.0)
    assert usd == pytest.approx(0.5 * ((0.192 + 0.048) + (0.384 + 0.096) + 2 * (0.16 + 0.096)))


def test_no_credentials_in_code_or_config():
    texts = [p.read_text() for p in sorted((REPO_ROOT / "emr").glob("*.py"))]
    texts += [(REPO_ROOT / "conf" / n).read_text() for n in ("emr.yaml", "pipeline.yaml")]
    texts.append((REPO_ROOT / "bootstrap" / "install_deps.sh").read_text())
    import re

    for text in texts:
        assert not re.search(r"aws_(access_key_id|secret_access_key|session_token)\s*=", text, re.I)
        assert not re.search(r"\bAKIA[0-9A-Z]{16}\b", text)
