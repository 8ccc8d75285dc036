"""One ``spark-submit`` EMR step per pipeline stage, from conf/pipeline.yaml.

A step runs ``command-runner.jar spark-submit ... <run>/code/run_stage.py --code-version SHA
jobs.<stage> <args>``: the code zip on ``--py-files``, the code version in the executors' environment,
the stage's arguments with ``{run}``, ``{conf}``, ``{bank}`` and ``{inputs.NAME}`` filled in.
Step names are ``lensinj:<run_id>:<i>/<n>:<module>`` so a later ``--follow`` finds a run's steps.

Stages pass each other the roots they write (``{run}/targets``, ``{run}/manifest``, ...). Stage 3
writes its manifest to ``<root>/<manifest_hash>/`` with ``_manifest.json``; stage 5 gets the root
and resolves the one manifest under it (:func:`udfs.stamps.manifest.resolve_manifest`): a root
holding several manifests is refused, never merged.
"""
from __future__ import annotations

import re

from emr.config import PipelineConfig
from udfs.config.checker import ConfigError
from udfs.io import storage

PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_.]*)\}")
STEP_NAME = re.compile(r"^lensinj:(?P<run_id>[^:]+):(?P<index>\d+)/(?P<total>\d+):(?P<module>[\w.]+)$")


def run_paths(prefix: str, sha: str) -> dict[str, str]:
    """Where a run's uploads live under its prefix."""
    code = storage.join(prefix, "code")
    return {"run": prefix, "conf": storage.join(prefix, "conf"), "bank": storage.join(prefix, "bank", "bank.h5"),
            "code_zip": storage.join(code, f"lensinj-{sha}.zip"), "entry": storage.join(code, "run_stage.py"),
            "bootstrap": storage.join(prefix, "bootstrap"), "logs": storage.join(prefix, "logs")}


def input_location(prefix: str, name: str, value: str) -> str:
    """Where stage args find input ``name``: in place for s3:// and https://, else its upload."""
    if value.startswith(("s3://", "https://", "http://")):
        return value.rstrip("/")
    return storage.join(prefix, "inputs", name)


def fill(template: str, values: dict[str, str], where: str) -> str:
    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key not in values:
            raise ConfigError(f"{where}: unknown placeholder {{{key}}} (known: "
                              f"{', '.join('{' + k + '}' for k in sorted(values))})")
        return values[key]

    return PLACEHOLDER.sub(sub, template)


def stage_args(pipeline: PipelineConfig, prefix: str, inputs: dict[str, str]) -> list[tuple[str, list[str], dict]]:
    """``(module, args, spark_conf)`` per stage with every placeholder resolved."""
    values = {"run": prefix, "conf": storage.join(prefix, "conf"),
              "bank": storage.join(prefix, "bank", "bank.h5")}
    values.update({f"inputs.{name}": input_location(prefix, name, value) for name, value in inputs.items()})
    out = []
    for i, stage in enumerate(pipeline.stages):
        where = f"conf/pipeline.yaml stages[{i}] ({stage.module})"
        args = [fill(a, values, where) for a in stage.args]
        out.append((stage.module, args, dict(stage.spark_conf)))
    return out


def spark_submit_args(module: str, args: list[str], spark_conf: dict, *, run_id: str, sha: str,
                      paths: dict[str, str]) -> list[str]:
    """The spark-submit command line of one stage (``args[0] == "spark-submit"``)."""
    conf = {"spark.executorEnv.LENSINJ_CODE_VERSION": sha,
            "spark.yarn.appMasterEnv.LENSINJ_CODE_VERSION": sha, **spark_conf}
    cmd = ["spark-submit", "--name", f"lensinj-{run_id}-{module.split('.')[-1]}"]
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    cmd += ["--py-files", paths["code_zip"], paths["entry"], "--code-version", sha, module, *args]
    return cmd


def build_steps(stages: list[tuple[str, list[str], dict]], *, run_id: str, sha: str, paths: dict[str, str],
                action_on_failure: str) -> list[dict]:
    """EMR step definitions, in stage order; a failed step ends the run (``action_on_failure``)."""
    total = len(stages)
    return [{
        "Name": f"lensinj:{run_id}:{i}/{total}:{module}",
        "ActionOnFailure": action_on_failure,
        "HadoopJarStep": {"Jar": "command-runner.jar",
                          "Args": spark_submit_args(module, args, conf, run_id=run_id, sha=sha, paths=paths)},
    } for i, (module, args, conf) in enumerate(stages, start=1)]


def output_of(step: dict) -> str | None:
    """The ``--output`` argument of a step (where its stage writes)."""
    args = step["HadoopJarStep"]["Args"]
    return args[args.index("--output") + 1] if "--output" in args else None
