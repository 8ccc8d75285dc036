"""Load and validate ``conf/emr.yaml`` (the cluster) and ``conf/pipeline.yaml`` (the stages).

Both go through the project's one config checker (:mod:`udfs.config.checker`): every problem raises
its :class:`~udfs.config.checker.ConfigError` naming the file and the dotted key
(``conf/emr.yaml: fleets.core.spot: missing required key``); no key is silently defaulted and
unknown keys are refused. The result is a typed, frozen :class:`EmrConfig` / :class:`PipelineConfig`;
``raw`` keeps the parsed YAML (hashed into the run's config hash and recorded in ``run.json``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from udfs.config.checker import Checker, ConfigError, load_yaml
from udfs.config.provenance import REPO_ROOT

EMR_CONFIG = REPO_ROOT / "conf" / "emr.yaml"
PIPELINE_CONFIG = REPO_ROOT / "conf" / "pipeline.yaml"
REQUIREMENTS = REPO_ROOT / "requirements.txt"

# Spark shipped by each EMR release (AWS "Spark release history" table). Only releases listed here
# can be checked against the pinned pyspark; add a row when moving to another release.
EMR_SPARK_VERSIONS = {
    "emr-7.4.0": "3.5.2",
    "emr-7.5.0": "3.5.2",
    "emr-7.7.0": "3.5.3",
    "emr-7.8.0": "3.5.4",
    "emr-7.9.0": "3.5.5",
}
ACTIONS_ON_FAILURE = ("TERMINATE_CLUSTER", "CANCEL_AND_WAIT")
SPOT_TIMEOUT_ACTIONS = ("SWITCH_TO_ON_DEMAND", "TERMINATE_CLUSTER")
SPOT_ALLOCATION = ("capacity-optimized", "price-capacity-optimized", "lowest-price", "diversified")
STAGE_MODULES = ("jobs.select_lrgs", "jobs.cosmos_source_loader", "jobs.build_manifest",
                 "jobs.make_cutouts", "jobs.inject_stamps", "jobs.validate_cosmos_injection")
FLEET_ROLES = ("primary", "core", "task")
MEMORY = re.compile(r"^\d+[mg]$")
S3_ROOT = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[^/].*)?$")
INPUT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
TOP_KEYS = {"name", "region", "s3_root", "release_label", "spark_version", "applications", "roles", "network",
            "fleets", "spot", "ebs_root_gb", "ebs_data_gb", "spark", "python", "numba_cache_dir",
            "keep_alive_after_steps", "auto_termination_idle_seconds", "action_on_failure",
            "action_on_failure_existing_cluster", "poll_seconds", "tags", "pricing"}


@dataclass(frozen=True)
class Fleet:
    on_demand: int
    spot: int
    instance_types: tuple[str, ...]


@dataclass(frozen=True)
class Price:
    """USD per instance-hour."""
    ec2_on_demand: float
    ec2_spot: float
    emr: float


@dataclass(frozen=True)
class SparkDefaults:
    executor_memory: str            # e.g. 6g
    executor_memory_overhead: str
    executor_cores: int
    driver_memory: str
    shuffle_partitions: int


@dataclass(frozen=True)
class EmrConfig:
    name: str
    region: str
    s3_root: str                    # s3://bucket[/prefix], no trailing '/'
    release_label: str
    spark_version: str
    applications: tuple[str, ...]
    roles: dict[str, str]           # service, job_flow
    subnet_ids: tuple[str, ...]
    ec2_key_name: str | None
    fleets: dict[str, Fleet]        # primary, core, task
    spot: dict[str, object]         # timeout_minutes, timeout_action, allocation_strategy
    ebs_root_gb: int
    ebs_data_gb: int
    spark: SparkDefaults
    python_interpreter: str         # absolute paths on the nodes
    python_venv: str
    numba_cache_dir: str
    keep_alive_after_steps: bool
    auto_termination_idle_seconds: int
    action_on_failure: str
    action_on_failure_existing_cluster: str
    poll_seconds: int
    tags: dict[str, str]
    pricing: dict[str, Price]       # instance type -> prices
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class Stage:
    module: str
    args: tuple[str, ...]
    spark_conf: dict[str, object]


@dataclass(frozen=True)
class PipelineConfig:
    inputs: dict[str, str]          # name -> local path (repo-relative), s3:// or https:// URI
    stages: tuple[Stage, ...]

    def as_dict(self) -> dict:
        """The config as YAML-shaped plain data (what the run's config hash covers)."""
        return {"inputs": dict(self.inputs),
                "stages": [{"module": s.module, "args": list(s.args), **({"spark_conf": dict(s.spark_conf)}
                                                                          if s.spark_conf else {})}
                           for s in self.stages]}


def pinned_pyspark(requirements: Path = REQUIREMENTS) -> str:
    """The ``pyspark==X`` pin of requirements.txt."""
    for line in requirements.read_text().splitlines():
        m = re.match(r"^\s*pyspark\s*==\s*([\w.]+)", line)
        if m:
            return m.group(1)
    raise ConfigError(f"{requirements}: no 'pyspark==<version>' pin")


def _strings(c: Checker, parent: dict, name: str, key: str, *, non_empty: bool = False) -> tuple[str, ...]:
    values = c.get(parent, name, key)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values) or (non_empty and not values):
        raise c.fail(key, f"expected a {'non-empty ' if non_empty else ''}list of strings, got {values!r}")
    return tuple(values)


def _release(c: Checker, d: dict, pyspark_version: str) -> tuple[str, str]:
    """``(release_label, spark_version)``: a known release whose Spark is the pinned pyspark."""
    release, spark = c.string(d, "release_label", "release_label"), c.string(d, "spark_version", "spark_version")
    if release not in EMR_SPARK_VERSIONS:
        raise c.fail("release_label", f"{release!r} is not in emr/config.py EMR_SPARK_VERSIONS "
                     f"(known: {', '.join(EMR_SPARK_VERSIONS)}); its Spark version cannot be checked")
    if EMR_SPARK_VERSIONS[release] != spark:
        raise c.fail("spark_version", f"{spark} does not match {release}, which ships Spark "
                     f"{EMR_SPARK_VERSIONS[release]}")
    if spark != pyspark_version:
        raise c.fail("release_label", f"{release} ships Spark {spark} but requirements.txt pins "
                     f"pyspark=={pyspark_version}; they must match")
    return release, spark


def _pricing(c: Checker, d: dict) -> dict[str, Price]:
    out = {}
    for itype, price in c.mapping(d, "pricing", "pricing").items():
        where = f"pricing.{itype}"
        p = c.mapping({itype: price}, itype, where)
        c.unknown(p, {"ec2_on_demand", "ec2_spot", "emr"}, where)
        out[itype] = Price(*(c.number(p, k, f"{where}.{k}", lo=0) for k in ("ec2_on_demand", "ec2_spot", "emr")))
    return out


def _fleets(c: Checker, d: dict, pricing: dict[str, Price]) -> dict[str, Fleet]:
    raw = c.mapping(d, "fleets", "fleets")
    c.unknown(raw, set(FLEET_ROLES), "fleets")
    fleets = {}
    for role in FLEET_ROLES:
        where = f"fleets.{role}"
        f = c.mapping(raw, role, where)
        c.unknown(f, {"on_demand", "spot", "instance_types"}, where)
        fleet = Fleet(c.integer(f, "on_demand", f"{where}.on_demand", lo=0), c.integer(f, "spot", f"{where}.spot", lo=0),
                      _strings(c, f, "instance_types", f"{where}.instance_types", non_empty=True))
        for t in fleet.instance_types:
            if t not in pricing:
                raise c.fail(f"{where}.instance_types", f"has {t!r} but 'pricing.{t}' is missing "
                             "(needed for the cost estimate)")
        fleets[role] = fleet
    if (fleets["primary"].on_demand, fleets["primary"].spot) != (1, 0):
        raise c.fail("fleets.primary", "must be exactly one on-demand instance (on_demand: 1, spot: 0)")
    if fleets["core"].on_demand + fleets["core"].spot < 1:
        raise c.fail("fleets.core", "needs at least one instance")
    return fleets


def _spark(c: Checker, d: dict) -> SparkDefaults:
    sp = c.mapping(d, "spark", "spark")
    c.unknown(sp, {"executor_memory", "executor_memory_overhead", "executor_cores", "driver_memory",
                   "shuffle_partitions"}, "spark")
    for key in ("executor_memory", "executor_memory_overhead", "driver_memory"):
        if not MEMORY.match(c.string(sp, key, f"spark.{key}")):
            raise c.fail(f"spark.{key}", f"must look like 6g or 512m, got {sp[key]!r}")
    return SparkDefaults(sp["executor_memory"], sp["executor_memory_overhead"],
                         c.integer(sp, "executor_cores", "spark.executor_cores", lo=1), sp["driver_memory"],
                         c.integer(sp, "shuffle_partitions", "spark.shuffle_partitions", lo=1))


def _nodes(c: Checker, d: dict) -> dict:
    """Roles, network, spot, disks, python and numba paths: the node-level settings."""
    roles = c.mapping(d, "roles", "roles")
    c.unknown(roles, {"service", "job_flow"}, "roles")
    net = c.mapping(d, "network", "network")
    c.unknown(net, {"subnet_ids", "ec2_key_name"}, "network")
    key_name = c.get(net, "ec2_key_name", "network.ec2_key_name")
    spot = c.mapping(d, "spot", "spot")
    c.unknown(spot, {"timeout_minutes", "timeout_action", "allocation_strategy"}, "spot")
    py = c.mapping(d, "python", "python")
    c.unknown(py, {"interpreter", "venv"}, "python")
    for key in ("interpreter", "venv"):
        if not c.string(py, key, f"python.{key}").startswith("/"):
            raise c.fail(f"python.{key}", "must be an absolute path on the nodes")
    if not c.string(d, "numba_cache_dir", "numba_cache_dir").startswith("/mnt/"):
        raise c.fail("numba_cache_dir", "must be on node-local disk under /mnt/")
    return {
        "roles": {k: c.string(roles, k, f"roles.{k}") for k in ("service", "job_flow")},
        "subnet_ids": _strings(c, net, "subnet_ids", "network.subnet_ids"),
        "ec2_key_name": None if key_name is None else c.string(net, "ec2_key_name", "network.ec2_key_name"),
        "spot": {"timeout_minutes": c.integer(spot, "timeout_minutes", "spot.timeout_minutes", lo=5, hi=1440),
                 "timeout_action": c.string(spot, "timeout_action", "spot.timeout_action",
                                            choices=SPOT_TIMEOUT_ACTIONS),
                 "allocation_strategy": c.string(spot, "allocation_strategy", "spot.allocation_strategy",
                                                 choices=SPOT_ALLOCATION)},
        "ebs_root_gb": c.integer(d, "ebs_root_gb", "ebs_root_gb", lo=15),
        "ebs_data_gb": c.integer(d, "ebs_data_gb", "ebs_data_gb", lo=15),
        "python_interpreter": py["interpreter"], "python_venv": py["venv"],
        "numba_cache_dir": d["numba_cache_dir"],
    }


def parse_emr_config(d: dict, source: str, pyspark_version: str) -> EmrConfig:
    """Check the parsed ``conf/emr.yaml`` mapping ``d`` (``source`` names it in errors)."""
    c = Checker(str(source))
    c.unknown(d, TOP_KEYS, "")
    s3_root = c.string(d, "s3_root", "s3_root")
    if not S3_ROOT.match(s3_root) or s3_root.endswith("/"):
        raise c.fail("s3_root", f"must look like s3://bucket[/prefix] without a trailing '/', got {s3_root!r}")
    release, spark_version = _release(c, d, pyspark_version)
    apps = _strings(c, d, "applications", "applications")
    if "Spark" not in apps:
        raise c.fail("applications", "must include Spark")
    pricing = _pricing(c, d)
    tags = c.mapping(d, "tags", "tags")
    for k, v in tags.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise c.fail(f"tags.{k}", "must map a string to a string")
    return EmrConfig(
        name=c.string(d, "name", "name"), region=c.string(d, "region", "region"), s3_root=s3_root,
        release_label=release, spark_version=spark_version, applications=apps, fleets=_fleets(c, d, pricing),
        spark=_spark(c, d), **_nodes(c, d),
        keep_alive_after_steps=c.boolean(d, "keep_alive_after_steps", "keep_alive_after_steps"),
        auto_termination_idle_seconds=c.integer(d, "auto_termination_idle_seconds",
                                                "auto_termination_idle_seconds", lo=60, hi=604800),
        action_on_failure=c.string(d, "action_on_failure", "action_on_failure", choices=ACTIONS_ON_FAILURE),
        action_on_failure_existing_cluster=c.string(d, "action_on_failure_existing_cluster",
                                                    "action_on_failure_existing_cluster", choices=ACTIONS_ON_FAILURE),
        poll_seconds=c.integer(d, "poll_seconds", "poll_seconds", lo=1), tags=tags, pricing=pricing, raw=d)


def load_emr_config(path: Path = EMR_CONFIG, requirements: Path = REQUIREMENTS) -> EmrConfig:
    """The checked cluster config of ``path``."""
    return parse_emr_config(load_yaml(str(path)), str(path), pinned_pyspark(requirements))


def with_s3_root(cfg: EmrConfig, s3_root: str) -> EmrConfig:
    """``cfg`` with another ``s3_root`` (``--s3-root``), checked like the file's."""
    return parse_emr_config({**cfg.raw, "s3_root": s3_root}, "--s3-root", cfg.spark_version)


def _stage(c: Checker, stage: object, i: int) -> Stage:
    where = f"stages[{i}]"
    s = c.mapping({where: stage}, where, where)
    c.unknown(s, {"module", "args", "spark_conf"}, where)
    module = c.string(s, "module", f"{where}.module")
    args = _strings(c, s, "args", f"{where}.args")
    if "--output" not in args:
        raise c.fail(f"{where}.args", f"({module}) has no --output")
    conf = s.get("spark_conf", {})
    if not isinstance(conf, dict) or not all(str(k).startswith("spark.") for k in conf):
        raise c.fail(f"{where}.spark_conf", "must map spark.* keys to values")
    return Stage(module, args, dict(conf))


def parse_pipeline_config(d: dict, source: str) -> PipelineConfig:
    """Check the parsed ``conf/pipeline.yaml`` mapping ``d`` (``source`` names it in errors)."""
    c = Checker(str(source))
    c.unknown(d, {"inputs", "stages"}, "")
    inputs = c.mapping(d, "inputs", "inputs")
    for name, value in inputs.items():
        if not INPUT_NAME.match(str(name)):
            raise c.fail(f"inputs.{name}", "names must be lower-case identifiers")
        c.string(inputs, name, f"inputs.{name}")
    stages = c.get(d, "stages", "stages")
    if not isinstance(stages, list):
        raise c.fail("stages", f"expected a list of stages, got {stages!r}")
    parsed = tuple(_stage(c, s, i) for i, s in enumerate(stages))
    modules = [s.module for s in parsed]
    if tuple(modules) != STAGE_MODULES:
        raise c.fail("stages", f"must be the six stages in order {list(STAGE_MODULES)}, got {modules}")
    _check_buckets(c, parsed)
    return PipelineConfig(inputs=dict(inputs), stages=parsed)


def _flag(args: tuple[str, ...], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args[:-1] else None


def _check_buckets(c: Checker, stages: tuple[Stage, ...]) -> None:
    """Stage 5 merges bucket b of the manifest with bucket b of the cutouts, so stage 4's
    ``--n-buckets`` must equal ``n_buckets`` of stage 3's priors (read from this checkout's conf/,
    which the launcher uploads as ``{conf}``): refused at launch, not after stage 4 on the cluster."""
    from udfs.stamps.priors import load_config

    i3, i4 = STAGE_MODULES.index("jobs.build_manifest"), STAGE_MODULES.index("jobs.make_cutouts")
    cutouts = _flag(stages[i4].args, "--n-buckets")
    if cutouts is None:
        raise c.fail(f"stages[{i4}].args", "(jobs.make_cutouts) has no --n-buckets; give the priors' n_buckets")
    priors = _flag(stages[i3].args, "--config") or ""
    if not priors.startswith("{conf}/"):
        return  # priors outside this checkout: stage 5 checks the two datasets itself
    n = load_config(str(REPO_ROOT / "conf" / priors.removeprefix("{conf}/"))).n_buckets
    if cutouts != str(n):
        raise c.fail(f"stages[{i4}].args", f"(jobs.make_cutouts) --n-buckets {cutouts} differs from n_buckets "
                                           f"{n} of {priors}: stage 5 merges the two bucket by bucket")


def load_pipeline_config(path: Path = PIPELINE_CONFIG) -> PipelineConfig:
    """The checked pipeline config of ``path``."""
    return parse_pipeline_config(load_yaml(str(path)), str(path))
