"""conf/emr.yaml and conf/pipeline.yaml validation, the EMR Spark / pyspark pin consistency, the
hashed bootstrap requirements and the job-role IAM policy."""
from __future__ import annotations

import re

import pytest
import yaml

from dataclasses import replace

from emr.config import (EMR_CONFIG, EMR_SPARK_VERSIONS, PIPELINE_CONFIG, STAGE_MODULES, load_emr_config,
                        load_pipeline_config, parse_emr_config, parse_pipeline_config, pinned_pyspark)
from emr.iam import render_policy
from emr.lock import BUILD_OUT, EXCLUDED, RUNTIME_OUT, canonical, read_pins
from emr.steps import stage_args
from udfs.config.checker import ConfigError
from udfs.config.provenance import REPO_ROOT


def test_emr_release_spark_matches_pinned_pyspark():
    text = (REPO_ROOT / "requirements.txt").read_text()
    pyspark = re.search(r"^pyspark==(\S+)$", text, re.M).group(1)
    cfg = load_emr_config()
    assert cfg.release_label == "emr-7.5.0"
    assert EMR_SPARK_VERSIONS[cfg.release_label] == cfg.spark_version == pyspark == "3.5.2"
    assert cfg.fleets["core"].spot == 2 and cfg.pricing["m5.xlarge"].emr == 0.048


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(release_label="emr-7.8.0", spark_version="3.5.4"),
     "x.yaml: release_label: emr-7.8.0 ships Spark 3.5.4 but requirements.txt pins pyspark==3.5.2"),
    (lambda c: c.update(spark_version="3.5.1"), "x.yaml: spark_version: 3.5.1 does not match emr-7.5.0"),
    (lambda c: c.update(release_label="emr-6.15.0"), "x.yaml: release_label: 'emr-6.15.0' is not in"),
    (lambda c: c["fleets"]["core"].pop("spot"), "x.yaml: fleets.core.spot: missing required key"),
    (lambda c: c["fleets"]["task"]["instance_types"].append("c7g.large"),
     "x.yaml: fleets.task.instance_types: has 'c7g.large' but 'pricing.c7g.large' is missing"),
    (lambda c: c["fleets"]["primary"].update(spot=1), "x.yaml: fleets.primary: must be exactly one on-demand"),
    (lambda c: c["spark"].update(executor_memory="6 GB"), "x.yaml: spark.executor_memory: must look like"),
    (lambda c: c.update(auto_termination_idle_seconds=10), "x.yaml: auto_termination_idle_seconds: must be >= 60"),
    (lambda c: c.update(action_on_failure="CONTINUE"),
     "x.yaml: action_on_failure: must be one of TERMINATE_CLUSTER, CANCEL_AND_WAIT; got 'CONTINUE'"),
    (lambda c: c.update(s3_root="s3://bucket/"), "x.yaml: s3_root: must look like"),
    (lambda c: c.update(numba_cache_dir="/home/hadoop/numba"), "x.yaml: numba_cache_dir: must be on node-local disk"),
    (lambda c: c["spot"].update(timeout_minute=10), "x.yaml: spot.timeout_minute: unknown key"),
])
def test_emr_config_errors_name_the_key(edit, message):
    cfg = yaml.safe_load(EMR_CONFIG.read_text())
    edit(cfg)
    with pytest.raises(ConfigError) as exc:
        parse_emr_config(cfg, "x.yaml", pinned_pyspark())
    assert message in str(exc.value)


def test_emr_config_load_names_the_file(tmp_path):
    cfg = yaml.safe_load(EMR_CONFIG.read_text())
    del cfg["tags"]
    bad = tmp_path / "emr.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=rf"{bad}: tags: missing required key"):
        load_emr_config(bad)


def test_pipeline_config_stages_and_placeholders():
    pipeline = load_pipeline_config()
    assert tuple(s.module for s in pipeline.stages) == STAGE_MODULES
    stages = stage_args(pipeline, "s3://b/r/RUN", {"sweeps": "s3://b/r/RUN/inputs/sweeps",
                                                   "cosmos": "s3://b/r/RUN/inputs/cosmos",
                                                   "coadds": "https://example.org/dr10/south"})
    args = dict((m, a) for m, a, _ in stages)
    assert args["jobs.select_lrgs"][:4] == ["--input", "s3://b/r/RUN/inputs/sweeps/*.fits", "--output", "s3://b/r/RUN/targets"]
    assert "--bank" in args["jobs.inject_stamps"] and "s3://b/r/RUN/bank/bank.h5" in args["jobs.inject_stamps"]
    assert all("{" not in a for _, argv, _ in stages for a in argv)

    stages = list(pipeline.stages)
    stages[3] = replace(stages[3], args=stages[3].args + ("{inputs.nosuch}",))
    bad = replace(pipeline, stages=tuple(stages))
    with pytest.raises(ConfigError, match=r"stages\[3\] \(jobs.make_cutouts\): unknown placeholder \{inputs.nosuch\}"):
        stage_args(bad, "s3://b/r/RUN", {"sweeps": "x", "cosmos": "y", "coadds": "z"})
    swapped = yaml.safe_load(PIPELINE_CONFIG.read_text())
    swapped["stages"][0], swapped["stages"][1] = swapped["stages"][1], swapped["stages"][0]
    with pytest.raises(ConfigError, match=r"^p.yaml: stages: must be the six stages in order"):
        parse_pipeline_config(swapped, "p.yaml")
    no_output = yaml.safe_load(PIPELINE_CONFIG.read_text())
    no_output["stages"][2]["args"].remove("--output")
    with pytest.raises(ConfigError, match=r"p.yaml: stages\[2\].args: \(jobs.build_manifest\) has no --output"):
        parse_pipeline_config(no_output, "p.yaml")


def test_pipeline_cutouts_buckets_match_the_priors():
    """Stage 5 merges the manifest and the cutouts bucket by bucket: a pipeline whose stage-4
    --n-buckets is not the priors' n_buckets is refused on load, naming both."""
    from udfs.stamps.priors import load_config

    n = load_config(str(REPO_ROOT / "conf" / "injection_priors.yaml")).n_buckets
    args = load_pipeline_config().stages[3].args
    assert args[args.index("--n-buckets") + 1] == str(n) and n >= 1000  # survey scale: thousands of tasks
    raw = yaml.safe_load(PIPELINE_CONFIG.read_text())
    raw["stages"][3]["args"][raw["stages"][3]["args"].index("--n-buckets") + 1] = "8"
    with pytest.raises(ConfigError, match=rf"^p.yaml: stages\[3\].args: \(jobs.make_cutouts\) --n-buckets 8 "
                                          rf"differs from n_buckets {n} of {{conf}}/injection_priors.yaml"):
        parse_pipeline_config(raw, "p.yaml")
    del raw["stages"][3]["args"][-2:]
    with pytest.raises(ConfigError, match=r"stages\[3\].args: \(jobs.make_cutouts\) has no --n-buckets"):
        parse_pipeline_config(raw, "p.yaml")


def test_pipeline_stage_args_match_job_parsers(capsys):
    """Every --flag a stage passes exists in that job's argparse (for jobs that exist already)."""
    import importlib

    checked = 0
    for stage in yaml.safe_load(PIPELINE_CONFIG.read_text())["stages"]:
        if not (REPO_ROOT / (stage["module"].replace(".", "/") + ".py")).exists():
            continue
        module = importlib.import_module(stage["module"])
        with pytest.raises(SystemExit):
            module.main(["--help"])
        helptext = capsys.readouterr().out
        for flag in (a for a in stage["args"] if a.startswith("--")):
            assert re.search(rf"(^|[\s,\[]){re.escape(flag)}([\s,=\]]|$)", helptext, re.M), \
                f"{stage['module']} has no {flag} option"
        checked += 1
    assert checked >= 1


def test_hashed_bootstrap_requirements_match_the_pins():
    constraints = read_pins(REPO_ROOT / "constraints.txt")
    runtime_text = RUNTIME_OUT.read_text()
    entries = re.findall(r"^([A-Za-z0-9._-]+)==(\S+) \\\n    --hash=sha256:([0-9a-f]{64})$", runtime_text, re.M)
    pins = {canonical(n): v for n, v, _ in entries}
    # every requirement line carries a hash
    assert len(entries) == sum(1 for line in runtime_text.splitlines() if "==" in line)
    direct = read_pins(REPO_ROOT / "requirements.txt")
    for name, version in direct.items():
        if name in EXCLUDED:
            assert name not in pins
        else:
            assert pins[name] == version
    for name, version in pins.items():
        if name in constraints:
            assert constraints[name] == version, name
    build = re.findall(r"^([A-Za-z0-9._-]+)==(\S+) \\\n    --hash=sha256:[0-9a-f]{64}$", BUILD_OUT.read_text(), re.M)
    assert {canonical(n) for n, _ in build} >= {"pip", "setuptools", "setuptools-scm"}
    assert dict((canonical(n), v) for n, v in build)["setuptools"] == pins["setuptools"]


def test_job_role_policy_is_least_privilege():
    policy = render_policy("s3://runs-bucket/lensinj/R1", ["s3://survey-mirror/dr10/sweep"])
    writes = {"s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
    resources_with_write = set()
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow"
        assert not any(a in ("*", "s3:*") for a in st["Action"])
        assert "*" not in st["Resource"]
        if writes & set(st["Action"]):
            resources_with_write.update(st["Resource"])
    assert resources_with_write == {"arn:aws:s3:::runs-bucket/lensinj/R1/*"}
    reads = {r for st in policy["Statement"] if st["Action"] == ["s3:GetObject"] for r in st["Resource"]}
    assert reads == {"arn:aws:s3:::survey-mirror/dr10/sweep/*"}
    lists = {st["Resource"][0]: st["Condition"]["StringLike"]["s3:prefix"]
             for st in policy["Statement"] if st["Action"] == ["s3:ListBucket"]}
    assert lists == {"arn:aws:s3:::runs-bucket": ["lensinj/R1", "lensinj/R1/*"],
                     "arn:aws:s3:::survey-mirror": ["dr10/sweep", "dr10/sweep/*"]}
    only_run = render_policy("s3://runs-bucket/lensinj/R1", [])
    assert [st["Sid"] for st in only_run["Statement"]] == ["ReadWriteRunPrefix", "ListRunPrefix", "BucketLocation"]
