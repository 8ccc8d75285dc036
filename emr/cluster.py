"""Build the boto3 ``run_job_flow`` request from conf/emr.yaml.

Instance fleets: an on-demand primary; spot core and task fleets that switch to on-demand when spot
capacity is not found within the configured timeout. Spark defaults pin executor memory/cores, point
drivers and executors at the bootstrapped virtualenv, set BLAS/OpenMP/numba threads to 1 (one Spark
task per core) and put the numba cache on node-local disk.
"""
from __future__ import annotations

from emr.config import EmrConfig
from udfs.io import storage

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
TAG_PREFIX = "lensinj:"


def node_environment(cfg: EmrConfig) -> dict[str, str]:
    """Environment of every Spark driver and executor on the cluster."""
    python = f"{cfg.python_venv}/bin/python"
    cache = cfg.numba_cache_dir
    env = {"PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python,
           # numba caches functions of modules imported from the --py-files zip under
           # $XDG_CACHE_HOME/numba and other functions under NUMBA_CACHE_DIR: both node-local.
           "NUMBA_CACHE_DIR": cache, "XDG_CACHE_HOME": cache.rsplit("/", 1)[0]}
    env.update({var: "1" for var in THREAD_VARS})
    return env


def configurations(cfg: EmrConfig) -> list[dict]:
    """EMR configuration classifications: spark-defaults and spark-env."""
    sp = cfg.spark
    env = node_environment(cfg)
    defaults = {
        "spark.executor.memory": sp.executor_memory,
        "spark.executor.memoryOverhead": sp.executor_memory_overhead,
        "spark.executor.cores": str(sp.executor_cores),
        "spark.driver.memory": sp.driver_memory,
        "spark.sql.shuffle.partitions": str(sp.shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        "spark.pyspark.python": env["PYSPARK_PYTHON"],
        "spark.pyspark.driver.python": env["PYSPARK_DRIVER_PYTHON"],
    }
    for key, value in env.items():
        defaults[f"spark.executorEnv.{key}"] = value
        defaults[f"spark.yarn.appMasterEnv.{key}"] = value
    return [
        {"Classification": "spark-defaults", "Properties": defaults},
        # Drivers in client mode are children of spark-submit on the primary: they take spark-env.
        {"Classification": "spark-env", "Properties": {},
         "Configurations": [{"Classification": "export", "Properties": dict(env)}]},
    ]


def _fleet(cfg: EmrConfig, role: str) -> dict:
    fleet = cfg.fleets[role]
    ebs = {"EbsBlockDeviceConfigs": [{"VolumeSpecification": {"VolumeType": "gp3",
                                                              "SizeInGB": cfg.ebs_data_gb},
                                      "VolumesPerInstance": 1}]}
    out = {
        "Name": role,
        "InstanceFleetType": {"primary": "MASTER", "core": "CORE", "task": "TASK"}[role],
        "TargetOnDemandCapacity": fleet.on_demand,
        "TargetSpotCapacity": fleet.spot,
        "InstanceTypeConfigs": [{"InstanceType": t, "WeightedCapacity": 1, "EbsConfiguration": ebs}
                                for t in fleet.instance_types],
    }
    if fleet.spot > 0:
        spot = cfg.spot
        out["LaunchSpecifications"] = {"SpotSpecification": {
            "TimeoutDurationMinutes": spot["timeout_minutes"],
            "TimeoutAction": spot["timeout_action"],
            "AllocationStrategy": spot["allocation_strategy"]}}
    return out


def tags(cfg: EmrConfig, run: dict) -> list[dict]:
    """Cluster tags: the config's plus the run id, prefix, code version and config hash."""
    merged = dict(cfg.tags)
    merged.update({f"{TAG_PREFIX}run-id": run["run_id"], f"{TAG_PREFIX}run-prefix": run["prefix"],
                   f"{TAG_PREFIX}code-version": run["code_version"],
                   f"{TAG_PREFIX}config-hash": run["config_hash"],
                   f"{TAG_PREFIX}requirements-hash": run["requirements_hash"]})
    return [{"Key": k, "Value": v} for k, v in merged.items()]


def run_job_flow_request(cfg: EmrConfig, run: dict, steps: list[dict]) -> dict:
    """The complete ``run_job_flow`` keyword arguments for a new cluster running ``steps``.

    ``run``: run_id, prefix (s3:// run prefix), code_version, config_hash, requirements_hash.
    """
    prefix = run["prefix"]
    boot = storage.join(prefix, "bootstrap")
    instances = {
        "InstanceFleets": [_fleet(cfg, r) for r in ("primary", "core", "task")
                           if cfg.fleets[r].on_demand + cfg.fleets[r].spot > 0],
        "KeepJobFlowAliveWhenNoSteps": cfg.keep_alive_after_steps,
        "TerminationProtected": False,
    }
    if cfg.subnet_ids:
        instances["Ec2SubnetIds"] = list(cfg.subnet_ids)
    if cfg.ec2_key_name:
        instances["Ec2KeyName"] = cfg.ec2_key_name
    return {
        "Name": f"{cfg.name}-{run['run_id']}",
        "LogUri": storage.join(prefix, "logs") + "/",
        "ReleaseLabel": cfg.release_label,
        "Applications": [{"Name": a} for a in cfg.applications],
        "Instances": instances,
        "BootstrapActions": [{
            "Name": "install pinned python deps",
            "ScriptBootstrapAction": {
                "Path": storage.join(boot, "install_deps.sh"),
                "Args": [boot, cfg.python_interpreter, cfg.python_venv,
                         cfg.numba_cache_dir],
            },
        }],
        "Configurations": configurations(cfg),
        "Steps": steps,
        "ServiceRole": cfg.roles["service"],
        "JobFlowRole": cfg.roles["job_flow"],
        "VisibleToAllUsers": True,
        "EbsRootVolumeSize": cfg.ebs_root_gb,
        "AutoTerminationPolicy": {"IdleTimeout": cfg.auto_termination_idle_seconds},
        "Tags": tags(cfg, run),
    }
