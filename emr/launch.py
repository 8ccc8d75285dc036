"""``python -m emr.launch``: run the pipeline on AWS EMR (``make emr-run`` calls it).

Launch: package HEAD (``git archive``; a dirty tree is refused unless ``--force``), upload the code
zip, the stage entry script, the bootstrap files, conf/*.yaml, local inputs and the source bank to
``<s3_root>/<run_id>/``, create the cluster with one spark-submit step per stage (or add the steps
to ``--cluster-id``), then follow the steps until done and print outputs, wall time and cost.

``--dry-run`` prints the exact request (``run_job_flow`` kwargs, or ``{"JobFlowId", "Steps"}`` for
``add_job_flow_steps`` with ``--cluster-id``) as one JSON object on stdout and calls no AWS API.
``--follow CLUSTER_ID`` resumes following a run. Credentials come from the standard AWS chain only.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from emr import cluster as cluster_mod
from emr import package, steps as steps_mod
from emr.config import (EMR_CONFIG, PIPELINE_CONFIG, EmrConfig, PipelineConfig, load_emr_config,
                        load_pipeline_config, with_s3_root)
from emr.follow import RunFailed, follow, latest_run_id
from emr.iam import render_policy
from udfs.config.checker import ConfigError
from udfs.config.provenance import REPO_ROOT, config_hash
from udfs.io.errors import InputError

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
BOOTSTRAP_FILES = ("bootstrap/install_deps.sh", "bootstrap/requirements-emr-build.txt",
                   "bootstrap/requirements-emr.txt")
ENTRY = "emr/run_stage.py"
ACTIVE_STATES = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")


class UsageError(InputError):
    """Bad command-line input (exit status 2)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m emr.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="print the request as JSON; call no AWS API")
    p.add_argument("--force", action="store_true",
                   help="launch although the working tree is dirty (HEAD is shipped, not the changes)")
    p.add_argument("--run-id", help="run id (default: UTC time + short SHA); with --follow: the run to follow")
    p.add_argument("--s3-root", help="override s3_root of conf/emr.yaml (s3://bucket[/prefix])")
    p.add_argument("--emr-config", type=Path, default=EMR_CONFIG)
    p.add_argument("--pipeline-config", type=Path, default=PIPELINE_CONFIG)
    p.add_argument("--input", action="append", default=[], metavar="NAME=URI",
                   help="override inputs.NAME of the pipeline config (repeatable)")
    p.add_argument("--source-bank", type=Path,
                   help="upload this prebuilt bank.h5 to {bank} and skip stage 2 (jobs.cosmos_source_loader)")
    p.add_argument("--cluster-id", help="add the steps to this running cluster instead of creating one")
    p.add_argument("--follow", metavar="CLUSTER_ID", help="only follow a run already on this cluster")
    p.add_argument("--no-follow", action="store_true", help="return after launching")
    p.add_argument("--poll-seconds", type=float, help="override poll_seconds of conf/emr.yaml")
    p.add_argument("--print-iam-policy", action="store_true",
                   help="print the job role's S3 policy for this run (use --run-id '*' for all runs)")
    return p.parse_args(argv)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load_configs(args) -> tuple[EmrConfig, PipelineConfig]:
    cfg = load_emr_config(args.emr_config)
    if args.s3_root:
        cfg = with_s3_root(cfg, args.s3_root)
    pipeline = load_pipeline_config(args.pipeline_config)
    inputs = dict(pipeline.inputs)
    for item in args.input:
        name, sep, uri = item.partition("=")
        if not sep or name not in inputs or not uri:
            raise UsageError(f"--input {item!r}: expected NAME=URI with NAME one of {', '.join(inputs)}")
        inputs[name] = uri
    stages = pipeline.stages
    if args.source_bank:
        if not args.source_bank.is_file():
            raise UsageError(f"--source-bank {args.source_bank}: no such file")
        stages = tuple(s for s in stages if s.module != "jobs.cosmos_source_loader")
    return cfg, replace(pipeline, inputs=inputs, stages=stages)


def _local_input(value: str) -> Path | None:
    if value.startswith(("s3://", "https://", "http://")):
        return None
    path = Path(value)
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def _used_inputs(pipeline: PipelineConfig) -> dict[str, str]:
    """Inputs referenced by the (remaining) stages."""
    text = json.dumps([list(s.args) for s in pipeline.stages])
    return {n: v for n, v in pipeline.inputs.items() if "{inputs." + n + "}" in text}


def _input_locations(inputs: dict[str, str], prefix: str) -> tuple[dict[str, str], list[tuple[Path, str]]]:
    """Where the stages read each input, and the local files to upload (path, s3 URI)."""
    locations, uploads = {}, []
    for name, value in inputs.items():
        local = _local_input(value)
        if local is None:
            locations[name] = steps_mod.input_location(prefix, name, value)
            continue
        if not local.exists():
            raise ConfigError(f"inputs.{name}: local path {local} does not exist")
        base = steps_mod.input_location(prefix, name, str(local))
        if local.is_file():
            locations[name] = f"{base}/{local.name}"
            uploads.append((local, locations[name]))
        else:
            locations[name] = base
            uploads += [(f, f"{base}/{f.relative_to(local).as_posix()}")
                        for f in sorted(local.rglob("*")) if f.is_file()]
    return locations, uploads


def _git_show(sha: str, path: str) -> bytes:
    import subprocess

    try:
        return subprocess.run(["git", "show", f"{sha}:{path}"], cwd=REPO_ROOT, capture_output=True,
                              check=True).stdout
    except subprocess.CalledProcessError as exc:
        raise ConfigError(f"{path} is not committed at {sha[:12]}: {exc.stderr.decode().strip()}") from None


def _committed_confs(sha: str) -> list[str]:
    import subprocess

    out = subprocess.run(["git", "ls-tree", "--name-only", sha, "conf/"], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout
    return [p for p in out.split() if p.endswith(".yaml")]


def plan(args) -> dict:
    """Everything a launch needs, computed locally (no AWS calls)."""
    cfg, pipeline = _load_configs(args)
    sha = package.head_sha(REPO_ROOT)
    dirty = package.dirty_paths(REPO_ROOT)
    if dirty and not (args.force or args.dry_run or args.print_iam_policy):
        package.check_clean(REPO_ROOT, force=False)
    if dirty:
        _log(f"warning: {len(dirty)} uncommitted paths are NOT shipped; the run uses HEAD {sha[:12]}")
    run_id = args.run_id or f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{sha[:8]}"
    if run_id != "*" or not args.print_iam_policy:
        if not RUN_ID.match(run_id):
            raise UsageError(f"--run-id {run_id!r}: use letters, digits, '.', '_' or '-' (max 64)")
    prefix = f"{cfg.s3_root}/{run_id}"
    paths = steps_mod.run_paths(prefix, sha)
    inputs = _used_inputs(pipeline)
    locations, input_uploads = _input_locations(inputs, prefix)
    stages = steps_mod.stage_args(pipeline, prefix, locations)
    committed = set(_committed_confs(sha))
    for module, stage_argv, _ in stages:
        for a in stage_argv:
            if a.startswith(paths["conf"] + "/") and f"conf/{a[len(paths['conf']) + 1:]}" not in committed:
                msg = f"{module} reads {a} but conf/{a[len(paths['conf']) + 1:]} is not committed at HEAD {sha[:12]}"
                if not (args.dry_run or args.print_iam_policy or args.force):
                    raise ConfigError(msg + " (commit it, or --force to launch anyway)")
                _log(f"warning: {msg}; that stage will fail")
    req_hash = hashlib.sha256(b"".join(_git_show(sha, f) for f in BOOTSTRAP_FILES[1:])).hexdigest()[:16]
    chash = config_hash({"emr": cfg.raw, "pipeline": pipeline.as_dict(), "inputs": locations})
    run = {"run_id": run_id, "prefix": prefix, "code_version": sha, "config_hash": chash,
           "requirements_hash": req_hash}
    action = cfg.action_on_failure_existing_cluster if args.cluster_id else cfg.action_on_failure
    step_defs = steps_mod.build_steps(stages, run_id=run_id, sha=sha, paths=paths, action_on_failure=action)
    if args.cluster_id:
        request = {"JobFlowId": args.cluster_id, "Steps": step_defs}
    else:
        request = cluster_mod.run_job_flow_request(cfg, run, step_defs)
    return {"cfg": cfg, "pipeline": pipeline, "sha": sha, "dirty": dirty, "run": run, "paths": paths,
            "inputs": locations, "input_uploads": input_uploads, "steps": step_defs, "request": request}


def _s3_split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def upload(s3, p: dict, source_bank: Path | None) -> list[str]:
    """Upload code, bootstrap files, configs, inputs and the bank; return the uploaded URIs."""
    bucket, _ = _s3_split(p["run"]["prefix"])
    try:
        s3.head_bucket(Bucket=bucket)
    except Exception as exc:  # botocore ClientError / NoSuchBucket: say which bucket
        raise ConfigError(f"s3_root bucket {bucket!r} is not reachable with the current AWS credentials: {exc}") from None
    sha, paths = p["sha"], p["paths"]
    blobs: list[tuple[str, bytes | Path]] = [(paths["entry"], _git_show(sha, ENTRY))]
    blobs += [(f"{paths['bootstrap']}/{Path(f).name}", _git_show(sha, f)) for f in BOOTSTRAP_FILES]
    blobs += [(f"{paths['conf']}/{Path(f).name}", _git_show(sha, f)) for f in _committed_confs(sha)]
    blobs += [(uri, path) for path, uri in p["input_uploads"]]
    if source_bank:
        blobs.append((paths["bank"], source_bank))
    with tempfile.TemporaryDirectory() as tmp:
        blobs.append((paths["code_zip"], package.build_zip(REPO_ROOT, sha, Path(tmp) / "code.zip")))
        done = []
        for uri, data in blobs:
            b, key = _s3_split(uri)
            if isinstance(data, Path):
                s3.upload_file(str(data), b, key)
            else:
                s3.put_object(Bucket=b, Key=key, Body=data)
            done.append(uri)
    return done


def _record(s3, p: dict, cluster_id: str | None, uploaded: list[str]) -> str:
    uri = f"{p['run']['prefix']}/run.json"
    record = {**p["run"], "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "cluster_id": cluster_id, "uncommitted_paths_not_shipped": p["dirty"],
              "emr_config": p["cfg"].raw, "pipeline_config": p["pipeline"].as_dict(), "inputs": p["inputs"],
              "uploaded": uploaded, "request": p["request"]}
    b, key = _s3_split(uri)
    s3.put_object(Bucket=b, Key=key, Body=json.dumps(record, indent=2, sort_keys=True, default=str).encode())
    return uri


def _resume_hint(cluster_id: str, run_id: str, region: str) -> str:
    return (f"cluster {cluster_id} is still running (run {run_id}).\n"
            f"  resume following: .venv/bin/python -m emr.launch --follow {cluster_id} --run-id {run_id}\n"
            f"  terminate:        aws emr terminate-clusters --region {region} --cluster-ids {cluster_id}")


def _follow(emr, cluster_id: str, run_id: str, cfg: EmrConfig, outputs: list, poll: float, sleep) -> int:
    try:
        follow(emr, cluster_id, run_id, cfg, outputs, poll_seconds=poll, sleep=sleep)
    except KeyboardInterrupt:
        print("\ninterrupted: " + _resume_hint(cluster_id, run_id, cfg.region), flush=True)
        return 130
    except RunFailed as exc:
        _log(f"run {run_id} FAILED on cluster {cluster_id}: {exc}")
        return 1
    return 0


def main(argv: list[str] | None = None, *, session=None, sleep=time.sleep) -> int:
    """Command-line entry. ``session`` (a boto3 Session) and ``sleep`` are for tests; by default the
    standard AWS credential chain and real time are used."""
    args = parse_args(argv)
    try:
        if args.follow:
            return _resume(args, session, sleep)
        p = plan(args)
    except InputError as exc:  # config, usage, a dirty tree: one line, exit 2
        _log(f"error: {exc}")
        return 2
    if args.print_iam_policy:
        s3_inputs = [u for u in p["inputs"].values()
                     if u.startswith("s3://") and not u.startswith(p["run"]["prefix"] + "/")]
        print(json.dumps(render_policy(p["run"]["prefix"], s3_inputs), indent=2))
        return 0
    if args.dry_run:
        print(json.dumps(p["request"], indent=2, sort_keys=True))
        return 0

    import boto3

    cfg, run = p["cfg"], p["run"]
    session = session or boto3.session.Session(region_name=cfg.region)
    s3, emr = session.client("s3"), session.client("emr")
    try:
        if args.cluster_id:
            _check_cluster(emr, args.cluster_id, run, args.force)
        uploaded = upload(s3, p, args.source_bank)
    except InputError as exc:
        _log(f"error: {exc}")
        return 2
    _log(f"run {run['run_id']}: code {run['code_version'][:12]}, config {run['config_hash']}, "
         f"{len(uploaded)} files uploaded to {run['prefix']}/")
    if args.cluster_id:
        emr.add_job_flow_steps(**p["request"])
        cluster_id = args.cluster_id
    else:
        cluster_id = emr.run_job_flow(**p["request"])["JobFlowId"]
    record = _record(s3, p, cluster_id, uploaded)
    print(f"cluster {cluster_id}: {len(p['steps'])} steps of run {run['run_id']} submitted; record {record}",
          flush=True)
    print(f"  console: https://{cfg.region}.console.aws.amazon.com/emr/home?region={cfg.region}"
          f"#/clusterDetails/{cluster_id}", flush=True)
    if args.no_follow:
        print(_resume_hint(cluster_id, run["run_id"], cfg.region))
        return 0
    outputs = [steps_mod.output_of(s) for s in p["steps"]]
    return _follow(emr, cluster_id, run["run_id"], cfg, outputs, args.poll_seconds or cfg.poll_seconds, sleep)


def _check_cluster(emr, cluster_id: str, run: dict, force: bool) -> None:
    """The target cluster must be active and bootstrapped with the same pinned requirements."""
    c = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    state = c["Status"]["State"]
    if state not in ACTIVE_STATES:
        raise UsageError(f"--cluster-id {cluster_id} is {state}; it must be one of {', '.join(ACTIVE_STATES)}")
    tags = {t["Key"]: t["Value"] for t in c.get("Tags", [])}
    have = tags.get(f"{cluster_mod.TAG_PREFIX}requirements-hash")
    if have != run["requirements_hash"] and not force:
        raise UsageError(f"--cluster-id {cluster_id} was bootstrapped with requirements {have or 'unknown'}, "
                         f"this checkout pins {run['requirements_hash']}; start a new cluster or pass --force")


def _resume(args, session, sleep) -> int:
    import boto3

    cfg = load_emr_config(args.emr_config)
    session = session or boto3.session.Session(region_name=cfg.region)
    emr = session.client("emr")
    try:
        run_id = args.run_id or latest_run_id(emr, args.follow)
    except RunFailed as exc:
        _log(f"error: {exc}")
        return 2
    from emr.follow import run_steps

    outputs = [steps_mod.output_of({"HadoopJarStep": s["Config"]}) for s in run_steps(emr, args.follow, run_id)]
    print(f"following run {run_id} on cluster {args.follow}", flush=True)
    return _follow(emr, args.follow, run_id, cfg, outputs, args.poll_seconds or cfg.poll_seconds, sleep)


if __name__ == "__main__":
    sys.exit(main())
