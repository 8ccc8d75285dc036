"""A kill at any point of stages 1-6, then a rerun, gives the outputs of an uninterrupted run, byte for byte.

Each stage runs as users run it (``python -m jobs.X`` in its own session, Spark local[1,4] so the
kill lands between tasks), and is killed part-way in one of two ways:

- ``driver``: SIGKILL to the whole run (driver, JVM, Python workers) once it is writing (its first
  output file or temporary file exists) or, for the one-file outputs of stages 2 and 6, once its
  Python workers are computing. Readers must then refuse what it left (an unfinished dataset, or no
  file at all), and a rerun (resuming where the stage can) gives the reference bytes.
- ``worker``: SIGKILL to the Python worker processes while the run computes; Spark retries the lost
  tasks (local[N,4]) and the run itself finishes with the reference bytes.

References are the uninterrupted outputs of the same inputs and code version. JSON summaries name
their own output folder, and say which files a resumed run kept: compared with the folder replaced by
``<output>`` and without those counts (``RUN_STATUS``).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs import inject_stamps, validate_cosmos_injection
from tests.conftest import BANK_ARGS
from tests.output_trees import output_tree
from udfs.config.provenance import REPO_ROOT, code_version
from udfs.io import publish
from udfs.io.datasets import DatasetError, dataset_files
from udfs.io.output_lock import LOCK_FILE

CONF = REPO_ROOT / "conf"


RUN_STATUS = ("status", "files_written", "files_kept")  # what a run did (wrote or kept a file), not its data


@pytest.fixture(scope="module")
def stages(pipeline_inputs, bank_path, btk, data_root, tmp_path_factory):
    """Per stage: (argv without --output, whether the output is a folder, the reference output)."""
    d = pipeline_inputs["dir"]
    ls = data_root / "legacysurvey"
    cats = [str(ls / "dr8_sweeps"), str(ls / "dr8_tractor"), str(ls / "dr9_tractor")]
    ref = tmp_path_factory.mktemp("kill_refs")
    stage5 = ["--manifest", pipeline_inputs["manifest"], "--cutouts", pipeline_inputs["cutouts"],
              "--bank", bank_path]
    assert inject_stamps.main([*stage5, "--output", str(ref / "stamps")]) == 0
    stage6 = ["--stamps", str(ref / "stamps")]
    assert validate_cosmos_injection.main([*stage6, "--output", str(ref / "report" / "report.json")]) == 0
    return {
        "1": ("select_lrgs", ["--input", *cats, "--config", str(CONF / "demo_lrg_selection.yaml")], d / "targets"),
        "2": ("cosmos_source_loader", ["--cosmos-dir", btk, *BANK_ARGS], Path(bank_path)),
        "3": ("build_manifest", ["--targets", str(d / "targets"), "--config", str(d / "priors.yaml"),
                                 "--bank", bank_path], d / "manifest"),
        "4": ("make_cutouts", ["--targets", str(d / "targets"), "--coadd-base", str(d / "sky")], d / "cutouts"),
        "5": ("inject_stamps", stage5, ref / "stamps"),
        "6": ("validate_cosmos_injection", stage6, ref / "report" / "report.json"),
    }


def _start(job: str, argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "LENSINJ_CODE_VERSION": code_version(), "LENSINJ_SPARK_MASTER": "local[1,4]",
           "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, "-m", f"jobs.{job}", *argv], cwd=REPO_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of a process, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields[1]), int(fields[3])


def _python_workers(session: int) -> list[int]:
    """The forked Python workers (children of ``pyspark.daemon``) of one run's session."""
    daemons, children = set(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        st = _stat(int(entry.name))
        if st is None or st[1] != session or b"pyspark.daemon" not in cmd:
            continue
        daemons.add(int(entry.name))
        children.append((int(entry.name), st[0]))
    return [pid for pid, parent in children if parent in daemons]


def _writing(out: Path, folder: bool) -> bool:
    if not folder or not out.exists():
        return False
    return any(p.is_file() and (p.suffix == ".parquet" or publish.TEMP_MARK in p.name) for p in out.rglob("*"))


def _wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()}"
        assert time.time() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


def _output_of(tmp_path: Path, ref: Path) -> Path:
    return tmp_path / ("out" if ref.is_dir() else ref.name)


def _dataset_root(stage: str, out: Path) -> Path:
    """The folder a reader opens: stage 3 writes ``<output>/<manifest hash>/``."""
    return next(p.parent for p in out.rglob(LOCK_FILE)) if stage == "3" else out


@pytest.mark.parametrize("stage", ["1", "2", "3", "4", "5", "6"])
def test_a_killed_run_then_a_rerun_gives_the_reference(stages, stage, tmp_path):
    job, argv, ref = stages[stage]
    folder = ref.is_dir()
    out = _output_of(tmp_path, ref)
    proc = _start(job, [*argv, "--output", str(out)])
    if folder:
        _wait_for(proc, lambda: _writing(out, folder), "an output file")
    else:
        _wait_for(proc, lambda: _python_workers(proc.pid), "a Python worker")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # orphaned workers may still finish the file in hand (each publishes it whole)
    if folder:
        assert not (out / publish.SUCCESS_FILE).exists()
        with pytest.raises(DatasetError, match="unfinished dataset: jobs." + job):
            dataset_files(str(_dataset_root(stage, out)))
    else:
        assert not out.exists()  # one file, published whole: nothing of it yet
    resume = ["--skip-existing"] if stage in ("4", "5") else []
    rerun = _start(job, [*argv, "--output", str(out), *resume])
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-3000:]
    assert "taking over from an unfinished run" in stdout
    assert output_tree(out, drop_anywhere=RUN_STATUS) == output_tree(ref, drop_anywhere=RUN_STATUS)


@pytest.mark.parametrize("stage", ["1", "2", "3", "4", "5", "6"])
def test_a_killed_python_worker_costs_its_task_not_the_run(stages, stage, tmp_path):
    job, argv, ref = stages[stage]
    out = _output_of(tmp_path, ref)
    proc = _start(job, [*argv, "--output", str(out)])
    _wait_for(proc, lambda: _python_workers(proc.pid), "a Python worker")
    killed = _python_workers(proc.pid)
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=600)
    assert killed and proc.returncode == 0, stderr[-3000:]
    assert output_tree(out, drop_anywhere=RUN_STATUS) == output_tree(ref, drop_anywhere=RUN_STATUS)
