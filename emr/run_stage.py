"""spark-submit entry point for one stage: ``run_stage.py --code-version SHA MODULE [ARGS...]``.

spark-submit runs a script, not ``-m module``; this script (uploaded beside the code zip, which
``--py-files`` puts on ``sys.path``) sets ``LENSINJ_CODE_VERSION`` for the driver (executors get it
from ``spark.executorEnv``; :func:`udfs.config.provenance.code_version` reads it) and calls the job's
``main(argv)``, exiting with its status. Standard library only: it runs before anything else.
"""
from __future__ import annotations

import importlib
import os
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[0] != "--code-version":
        print("usage: run_stage.py --code-version SHA MODULE [ARGS...]", file=sys.stderr)
        return 2
    version, module_name, job_args = argv[1], argv[2], argv[3:]
    if not module_name.startswith("jobs."):
        print(f"run_stage.py: {module_name!r} is not a jobs.* module", file=sys.stderr)
        return 2
    os.environ["LENSINJ_CODE_VERSION"] = version
    module = importlib.import_module(module_name)
    print(f"run_stage: {module_name} code_version={version} args={job_args}", file=sys.stderr, flush=True)
    status = module.main(job_args)
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
