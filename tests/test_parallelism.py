"""Determinism across parallelism (stages 1, 3, 4, 5): the same inputs on local[1], on local[2] and
with the input partitioned differently give byte-identical outputs, every file of every dataset
(Parquet parts and JSON summaries) compared as ``{relative path: bytes}``.

Three runs, each stage reading the same inputs (the reference's, never a run's own outputs, so a
difference is pinned to one stage):

* ``reference``: this session's Spark (``local[2]`` unless ``LENSINJ_SPARK_MASTER`` says otherwise,
  8 shuffle partitions): stages 1, 3, 4 are ``pipeline_inputs``' runs, stage 5 runs here;
* ``local1``: ``local[1]`` in a subprocess (a Spark session's master is fixed at creation), the
  reference's arguments unchanged (stage 1's must match ``pipeline_inputs`` in conftest.py);
* ``repartitioned``: this session with 3 shuffle partitions (``LENSINJ_SHUFFLE_PARTITIONS``, which the
  jobs' ``get_spark`` applies to the running session), while the subprocess runs: stage 1 gets its
  catalogue files as one list file in reverse order with ``--partitions 1`` (one task for the file
  list instead of one per file); stages 3 and 4 get the same targets rewritten as a dataset with
  another number of part files (rows in another order, one row group per row).

Each run records its master, ``defaultParallelism``, shuffle partitions and the Spark tasks each
stage ran, so the comparisons cannot pass because the runs silently ran alike. Every run gets the
reference's ``LENSINJ_CODE_VERSION`` (provenance records it; another edit of the tree meanwhile
would otherwise change it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.output_trees import output_tree
from udfs.config.provenance import REPO_ROOT
from udfs.io.datasets import dataset_files

CONF = REPO_ROOT / "conf"

JOBS = {"select_lrgs": "jobs.select_lrgs", "build_manifest": "jobs.build_manifest",
        "make_cutouts": "jobs.make_cutouts", "inject_stamps": "jobs.inject_stamps"}


def run_stages(stages: list) -> dict:
    """Run ``[(job, argv)]`` in this process's Spark session (the jobs' ``get_spark`` returns it):
    its master, ``defaultParallelism``, shuffle partitions, and per stage the Spark tasks it ran."""
    import importlib

    from jobs.spark import get_spark

    spark = get_spark("lensinj-parallelism")
    sc, tracker = spark.sparkContext, spark.sparkContext.statusTracker()
    seen = set(tracker.getJobIdsForGroup())
    tasks = {}
    for name, argv in stages:
        rc = importlib.import_module(JOBS[name]).main(argv)
        assert rc == 0, f"{name} exited {rc}"
        new = set(tracker.getJobIdsForGroup()) - seen
        seen |= new
        stage_ids = {s for j in new if tracker.getJobInfo(j) for s in tracker.getJobInfo(j).stageIds}
        tasks[name] = sum(tracker.getStageInfo(s).numTasks for s in stage_ids if tracker.getStageInfo(s))
    return {"master": sc.master, "default_parallelism": sc.defaultParallelism,
            "shuffle_partitions": int(spark.conf.get("spark.sql.shuffle.partitions")), "tasks": tasks}


# A run in its own process: start Spark (and a Python worker) at once, then wait for the plan file
# (the stages, the code version) and run_stages; the result goes to plan["info"].
RUNNER = """
import json, os, sys, time
from jobs.spark import get_spark
spark = get_spark("lensinj-parallelism")
spark.createDataFrame([(1,)], "a int").mapInPandas(lambda it: it, "a int").collect()
plan_file, deadline = sys.argv[1], time.time() + 900
while not os.path.exists(plan_file):
    if time.time() > deadline:
        sys.exit("no plan")
    time.sleep(0.05)
plan = json.loads(open(plan_file).read())
os.environ["LENSINJ_CODE_VERSION"] = plan["code_version"]
from tests.test_parallelism import run_stages
info = run_stages(plan["stages"])
open(plan["info"], "w").write(json.dumps(info))
"""


def stage_args(inputs: dict, out: Path, *, catalogues: list[str], targets: str, extra1: list[str] = ()) -> list:
    """``[(job, argv)]`` for stages 1, 3, 4, 5 into ``out/<stage>``, reading the reference's inputs
    (``targets`` for stages 3 and 4)."""
    d = inputs["dir"]
    return [
        ("select_lrgs", ["--input", *catalogues, "--output", str(out / "targets"),
                         "--config", str(CONF / "demo_lrg_selection.yaml"), *extra1]),
        ("build_manifest", ["--targets", targets, "--config", str(d / "priors.yaml"),
                            "--output", str(out / "manifest"), "--bank", inputs["bank"]]),
        ("make_cutouts", ["--targets", targets, "--coadd-base", str(d / "sky"), "--output", str(out / "cutouts")]),
        ("inject_stamps", ["--manifest", inputs["manifest"], "--cutouts", inputs["cutouts"],
                           "--bank", inputs["bank"], "--output", str(out / "stamps")]),
    ]


def catalogue_args(data_root) -> list[str]:
    """The reference's (``pipeline_inputs``) stage-1 inputs: three folders."""
    ls = data_root / "legacysurvey"
    return [str(ls / "dr8_sweeps"), str(ls / "dr8_tractor"), str(ls / "dr9_tractor")]


def start_process(out: Path, env_extra: dict) -> dict:
    """Start a run's process (:data:`RUNNER`); :func:`give_plan` gives it its stages."""
    env = {k: v for k, v in os.environ.items() if k not in ("LENSINJ_SPARK_MASTER", "LENSINJ_SHUFFLE_PARTITIONS")}
    env.update(env_extra)
    log = open(out.parent / f"{out.name}.log", "w+")
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(out.parent / f"{out.name}.plan.json")],
                            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    return {"proc": proc, "log": log, "out": out}


def give_plan(started: dict, stages: list, code_version: str) -> None:
    """Hand the process its stages and the code version to record; it starts them at once."""
    out = started["out"]
    out.mkdir(parents=True)
    plan = {"stages": stages, "code_version": code_version, "info": str(out / "spark_info.json")}
    ready = out.parent / f"{out.name}.plan.json"
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(json.dumps(plan))
    tmp.rename(ready)  # whole, at once


def wait_process(started: dict) -> dict:
    """Wait for the process; its info (see :func:`run_stages`)."""
    proc, log, out = started["proc"], started["log"], started["out"]
    try:
        rc = proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.seek(0)
        text = log.read()
    assert rc == 0, text[-6000:]
    return json.loads((out / "spark_info.json").read_text())


def rewrite_targets(src: str, dst: Path) -> int:
    """The targets dataset ``src`` rewritten under ``dst`` with another number of part files (all rows
    in one file if ``src`` has several, else one file per row), rows in reverse order, one row group
    per row; the file's schema (with its metadata) kept. Returns the number of files written."""
    files = dataset_files(src)
    table = pa.concat_tables([pq.read_table(f) for f in files])
    table = table.take(pa.array(range(len(table) - 1, -1, -1)))
    parts = [table] if len(files) > 1 else [table.slice(i, 1) for i in range(len(table))]
    dst.mkdir(parents=True)
    for i, part in enumerate(parts):
        pq.write_table(part, dst / f"part-{i:05d}.parquet", row_group_size=1)
    return len(parts)


STAGE_DIRS = {"select_lrgs": "targets", "build_manifest": "manifest", "make_cutouts": "cutouts",
              "inject_stamps": "stamps"}
# what each stage's summary records about its input, legitimately different when the input is given
# differently (only dropped where the run was given a different input):
# stage 3: ``targets`` is the targets location and ``targets_fingerprint`` hashes its files'
# (relative path, size) list, so another file layout of the same rows has another fingerprint.
INPUT_KEYS = {"build_manifest": {"_manifest.json": ("targets", "targets_fingerprint")}}


@pytest.fixture(scope="module")
def local1_process(tmp_path_factory):
    """The ``local1`` run's process, started first: its Spark starts while ``pipeline_inputs`` runs."""
    base = tmp_path_factory.mktemp("parallelism")
    started = start_process(base / "local1", {"LENSINJ_SPARK_MASTER": "local[1]"})
    yield started
    if started["proc"].poll() is None:
        started["proc"].kill()
        started["proc"].wait()
    started["log"].close()


@pytest.fixture(scope="module")
def runs(local1_process, pipeline_inputs, spark, data_root):
    """``{run: {"dirs": {stage: output root}, "info": spark info, "input_differs": bool}}``."""
    inputs, base = pipeline_inputs, local1_process["out"].parent
    d = inputs["dir"]
    versions = {json.loads((d / "targets" / "_funnel.json").read_text())["code_version"],
                json.loads((Path(inputs["manifest"]) / "_manifest.json").read_text())["code_version"],
                json.loads((Path(inputs["cutouts"]) / "_summary.json").read_text())["code_version"]}
    assert len(versions) == 1, versions  # the reference runs share one code version: pass it on
    version = versions.pop()
    dirs = {name: {s: base / name / sub for s, sub in STAGE_DIRS.items()} for name in ("local1", "repartitioned")}
    runs = {"reference": {"dirs": {"select_lrgs": d / "targets", "build_manifest": d / "manifest",
                                   "make_cutouts": Path(inputs["cutouts"]), "inject_stamps": base / "reference" / "stamps"},
                          "input_differs": False},
            "local1": {"dirs": dirs["local1"], "input_differs": False},
            "repartitioned": {"dirs": dirs["repartitioned"], "input_differs": True}}

    # the local[1] process runs while the rest runs here, in this session (local[2] by default);
    # here code_version() is the session's (cached once per process): the reference's
    give_plan(local1_process, stage_args(inputs, base / "local1", catalogues=catalogue_args(data_root),
                                         targets=str(d / "targets")), version)
    try:
        files = sorted(str(p) for c in catalogue_args(data_root) for p in Path(c).glob("*.fits"))
        listing = base / "catalogues.txt"
        listing.write_text("\n".join(reversed(files)) + "\n")  # absolute paths: the same source_file values
        n_target_files = rewrite_targets(str(d / "targets"), base / "targets_rewritten")
        (base / "reference").mkdir()
        (base / "repartitioned").mkdir()
        runs["reference"]["info"] = run_stages([stage_args(inputs, base / "reference", catalogues=[], targets="")[-1]])
        shuffle = spark.conf.get("spark.sql.shuffle.partitions")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("LENSINJ_SHUFFLE_PARTITIONS", "3")  # get_spark sets it on this session
            try:
                info = run_stages(stage_args(inputs, base / "repartitioned", catalogues=[str(listing)],
                                             targets=str(base / "targets_rewritten"), extra1=["--partitions", "1"]))
            finally:
                spark.conf.set("spark.sql.shuffle.partitions", shuffle)
        runs["repartitioned"]["info"] = {**info, "n_catalogues": len(files), "n_target_files": n_target_files,
                                         "n_reference_target_files": len(dataset_files(str(d / "targets")))}
    except BaseException:
        local1_process["proc"].kill()
        raise
    runs["local1"]["info"] = wait_process(local1_process)
    return runs


def test_the_runs_really_differ(runs):
    """Guard: the runs used other masters / partitionings, so the byte comparisons mean something."""
    ref, one, rep = (runs[k]["info"] for k in ("reference", "local1", "repartitioned"))
    assert one["master"] == "local[1]" and one["default_parallelism"] == 1
    assert ref["master"] != "local[1]" and ref["default_parallelism"] > 1, ref
    assert rep["shuffle_partitions"] == 3 and ref["shuffle_partitions"] == one["shuffle_partitions"] != 3
    assert rep["n_target_files"] != rep["n_reference_target_files"]  # stages 3 and 4: other part files
    assert rep["n_catalogues"] > 1  # stage 1: one task for several catalogues
    # fewer tasks in stage 1 (one for the file list, 3 per shuffle), tasks in every stage
    assert 0 < rep["tasks"]["select_lrgs"] < one["tasks"]["select_lrgs"], (rep["tasks"], one["tasks"])
    assert all(n > 0 for info in (ref, one, rep) for n in info["tasks"].values())


@pytest.mark.parametrize("stage", list(STAGE_DIRS))
@pytest.mark.parametrize("variant", ["local1", "repartitioned"])
def test_outputs_are_byte_identical(runs, stage, variant):
    ref_root, root = runs["reference"]["dirs"][stage], runs[variant]["dirs"][stage]
    drop = INPUT_KEYS.get(stage, {}) if runs[variant]["input_differs"] else {}
    want, got = output_tree(ref_root, drop), output_tree(root, drop)
    assert any(k.endswith(".parquet") for k in want) and any(k.endswith(".json") for k in want), sorted(want)
    assert all(len(v) > 0 for v in want.values())
    assert sorted(got) == sorted(want)
    different = sorted(k for k in want if got[k] != want[k])
    assert not different, different
