"""Load and validate ``conf/emr.yaml`` (the cluster) and ``conf/pipeline.yaml`` (the stages).

Every problem raises :class:`ConfigError` naming the file and the key path (``fleets.core.spot``);
no key is silently defaulted.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

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
MEMORY = re.compile(r"^\d+[mg]$")


class ConfigError(ValueError):
    """A config file is missing a key, has a wrong type or an inconsistent value."""


def _get(d: dict, key: str, kind, where: str, *, nullable: bool = False):
    path = f"{where}.{key}" if where else key
    if not isinstance(d, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping, got {type(d).__name__}")
    if key not in d:
        raise ConfigError(f"missing key '{path}'")
    value = d[key]
    if value is None and nullable:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(f"'{path}' must be {names}, got {value!r}")
    return value


def _choice(value: str, allowed: tuple, path: str) -> str:
    if value not in allowed:
        raise ConfigError(f"'{path}' is {value!r}; allowed: {', '.join(allowed)}")
    return value


def pinned_pyspark(requirements: Path = REQUIREMENTS) -> str:
    """The ``pyspark==X`` pin of requirements.txt."""
    for line in requirements.read_text().splitlines():
        m = re.match(r"^\s*pyspark\s*==\s*([\w.]+)", line)
        if m:
            return m.group(1)
    raise ConfigError(f"{requirements}: no 'pyspark==<version>' pin")


def _check(fn, source: Path):
    try:
        return fn()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_emr_config(path: Path = EMR_CONFIG, requirements: Path = REQUIREMENTS) -> dict:
    """Return the validated cluster config (the parsed YAML, unchanged)."""
    path = Path(path)
    cfg = yaml.safe_load(path.read_text())
    _check(lambda: validate_emr_config(cfg, pinned_pyspark(requirements)), path)
    return cfg


def validate_emr_config(cfg: dict, pyspark_version: str) -> None:
    for key in ("name", "region"):
        _get(cfg, key, str, "")
    s3_root = _get(cfg, "s3_root", str, "")
    if not re.match(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[^/].*)?$", s3_root) or s3_root.endswith("/"):
        raise ConfigError(f"'s3_root' must look like s3://bucket[/prefix] without a trailing '/', got {s3_root!r}")
    release = _get(cfg, "release_label", str, "")
    spark = _get(cfg, "spark_version", str, "")
    if release not in EMR_SPARK_VERSIONS:
        raise ConfigError(f"'release_label' {release!r} is not in emr/config.py EMR_SPARK_VERSIONS "
                          f"(known: {', '.join(EMR_SPARK_VERSIONS)}); its Spark version cannot be checked")
    if EMR_SPARK_VERSIONS[release] != spark:
        raise ConfigError(f"'spark_version' {spark} does not match {release}, which ships Spark "
                          f"{EMR_SPARK_VERSIONS[release]}")
    if spark != pyspark_version:
        raise ConfigError(f"'release_label' {release} ships Spark {spark} but requirements.txt pins "
                          f"pyspark=={pyspark_version}; they must match")
    apps = _get(cfg, "applications", list, "")
    if "Spark" not in apps:
        raise ConfigError("'applications' must include Spark")
    roles = _get(cfg, "roles", dict, "")
    for key in ("service", "job_flow"):
        _get(roles, key, str, "roles")
    net = _get(cfg, "network", dict, "")
    subnets = _get(net, "subnet_ids", list, "network")
    if not all(isinstance(s, str) for s in subnets):
        raise ConfigError("'network.subnet_ids' must be a list of strings")
    _get(net, "ec2_key_name", str, "network", nullable=True)

    fleets = _get(cfg, "fleets", dict, "")
    pricing = _get(cfg, "pricing", dict, "")
    for role in ("primary", "core", "task"):
        fleet = _get(fleets, role, dict, "fleets")
        od = _get(fleet, "on_demand", int, f"fleets.{role}")
        spot = _get(fleet, "spot", int, f"fleets.{role}")
        types = _get(fleet, "instance_types", list, f"fleets.{role}")
        if od < 0 or spot < 0:
            raise ConfigError(f"'fleets.{role}' capacities must be >= 0")
        if not types or not all(isinstance(t, str) for t in types):
            raise ConfigError(f"'fleets.{role}.instance_types' must be a non-empty list of instance types")
        for t in types:
            if t not in pricing:
                raise ConfigError(f"'fleets.{role}.instance_types' has {t!r} but 'pricing.{t}' is missing "
                                  "(needed for the cost estimate)")
    if (fleets["primary"]["on_demand"], fleets["primary"]["spot"]) != (1, 0):
        raise ConfigError("'fleets.primary' must be exactly one on-demand instance (on_demand: 1, spot: 0)")
    if fleets["core"]["on_demand"] + fleets["core"]["spot"] < 1:
        raise ConfigError("'fleets.core' needs at least one instance")
    spot = _get(cfg, "spot", dict, "")
    minutes = _get(spot, "timeout_minutes", int, "spot")
    if not 5 <= minutes <= 1440:
        raise ConfigError(f"'spot.timeout_minutes' must be 5..1440 (EMR limit), got {minutes}")
    _choice(_get(spot, "timeout_action", str, "spot"), SPOT_TIMEOUT_ACTIONS, "spot.timeout_action")
    _choice(_get(spot, "allocation_strategy", str, "spot"), SPOT_ALLOCATION, "spot.allocation_strategy")
    for key in ("ebs_root_gb", "ebs_data_gb"):
        if _get(cfg, key, int, "") < 15:
            raise ConfigError(f"'{key}' must be >= 15 GiB")

    sp = _get(cfg, "spark", dict, "")
    for key in ("executor_memory", "executor_memory_overhead", "driver_memory"):
        if not MEMORY.match(_get(sp, key, str, "spark")):
            raise ConfigError(f"'spark.{key}' must look like 6g or 512m, got {sp[key]!r}")
    for key in ("executor_cores", "shuffle_partitions"):
        if _get(sp, key, int, "spark") < 1:
            raise ConfigError(f"'spark.{key}' must be >= 1")
    py = _get(cfg, "python", dict, "")
    for key in ("interpreter", "venv"):
        if not _get(py, key, str, "python").startswith("/"):
            raise ConfigError(f"'python.{key}' must be an absolute path on the nodes")
    if not _get(cfg, "numba_cache_dir", str, "").startswith("/mnt/"):
        raise ConfigError("'numba_cache_dir' must be on node-local disk under /mnt/")

    _get(cfg, "keep_alive_after_steps", bool, "")
    idle = _get(cfg, "auto_termination_idle_seconds", int, "")
    if not 60 <= idle <= 604800:
        raise ConfigError(f"'auto_termination_idle_seconds' must be 60..604800 (EMR limit), got {idle}")
    _choice(_get(cfg, "action_on_failure", str, ""), ACTIONS_ON_FAILURE, "action_on_failure")
    _choice(_get(cfg, "action_on_failure_existing_cluster", str, ""), ACTIONS_ON_FAILURE,
            "action_on_failure_existing_cluster")
    if _get(cfg, "poll_seconds", int, "") < 1:
        raise ConfigError("'poll_seconds' must be >= 1")
    tags = _get(cfg, "tags", dict, "")
    for k, v in tags.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ConfigError(f"'tags.{k}' must map a string to a string")
    for itype, price in pricing.items():
        for key in ("ec2_on_demand", "ec2_spot", "emr"):
            if _get(price, key, float, f"pricing.{itype}") < 0:
                raise ConfigError(f"'pricing.{itype}.{key}' must be >= 0")


def load_pipeline_config(path: Path = PIPELINE_CONFIG) -> dict:
    """Return the validated pipeline config (the parsed YAML, unchanged)."""
    path = Path(path)
    cfg = yaml.safe_load(path.read_text())
    _check(lambda: validate_pipeline_config(cfg), path)
    return cfg


def validate_pipeline_config(cfg: dict) -> None:
    inputs = _get(cfg, "inputs", dict, "")
    for name, value in inputs.items():
        if not re.match(r"^[a-z][a-z0-9_]*$", str(name)):
            raise ConfigError(f"'inputs.{name}': names must be lower-case identifiers")
        if not isinstance(value, str) or not value:
            raise ConfigError(f"'inputs.{name}' must be a path or URI string")
    stages = _get(cfg, "stages", list, "")
    modules = []
    for i, stage in enumerate(stages):
        where = f"stages[{i}]"
        modules.append(_get(stage, "module", str, where))
        args = _get(stage, "args", list, where)
        if not all(isinstance(a, str) for a in args):
            raise ConfigError(f"'{where}.args' must be a list of strings")
        if "--output" not in args:
            raise ConfigError(f"'{where}.args' ({stage['module']}) has no --output")
        conf = stage.get("spark_conf", {})
        if not isinstance(conf, dict) or not all(str(k).startswith("spark.") for k in conf):
            raise ConfigError(f"'{where}.spark_conf' must map spark.* keys to values")
        unknown = set(stage) - {"module", "args", "spark_conf"}
        if unknown:
            raise ConfigError(f"'{where}' has unknown keys {sorted(unknown)}")
    if tuple(modules) != STAGE_MODULES:
        raise ConfigError(f"'stages' must be the six stages in order {list(STAGE_MODULES)}, got {modules}")
