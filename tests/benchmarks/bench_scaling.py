"""Scaling benchmark: stages 3 and 5 at 10^3, 10^4 and 10^5 tasks; time per stamp and driver memory.

Inputs are built once as in ``make run`` (``jobs.run_demo``): the 3 demo LRGs plus the ~50 Stein et
al. lens hosts (``conf/lens_hosts.yaml``), so ~53 distinct backgrounds; a 16-galaxy bank; the
stand-in sky (``conf/demo_sky.yaml``) and cutouts of every host. Then, per size N, stage 3
(``jobs.build_manifest``, ``conf/demo_injection_priors.yaml`` with ``replicates`` chosen so that
targets x configs x replicates x 2 (paired controls) ~ N) and stage 5 (``jobs.inject_stamps``,
``conf/injection.yaml``) each run as a fresh ``python -m`` subprocess in local[2] Spark, so every
run has its own driver. Cutouts (stage 4) depend on the targets only, not on N: built once, timed once.

Timed: wall of each subprocess (Spark start-up included), stages 3 and 5 apart and together.
Memory: the driver's peak RSS, polled from /proc every 0.2 s over the subprocess tree: VmHWM (the
kernel's own per-process peak) of the Python driver plus that of its JVM (in local mode the JVM is
the driver *and* the executor; Python workers are not in it, their largest peak is reported apart as
``worker_peak_mb``). Baseline of the scaling ratio: time per stamp at the smallest size, same run;
the marginal ratio (top interval's extra seconds per extra stamp / bottom interval's) cancels the
fixed start-up. A warm-up stage 5 (1 replicate, not reported as a size) fills the numba cache first,
so the smallest size does not pay the JIT compilation.

Projection: per-core rate = stamps / (stage 3 + stage 5 wall) / 2 cores at the largest size; EMR
executor cores from ``conf/emr.yaml`` (core + task fleets x executors per node x executor cores);
wall = start-up + N / (rate x cores); cost from :func:`emr.follow.capacity_cost` (the launcher's
estimate before instances are listed: requested capacities at each fleet's dearest type).

``LENSINJ_SCALING_SIZES=200,2000`` overrides the sizes for a quick try.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

SIZES = (1_000, 10_000, 100_000)
SIZES_ENV = "LENSINJ_SCALING_SIZES"
LOCAL_CORES = 2  # local[2]
PROJECT_STAMPS = (1_000_000, 10_000_000)
EMR_STARTUP_S = 15 * 60  # assumed: fleet provisioning + bootstrap/install_deps.sh + first spark-submit
# vCPUs and YARN memory (yarn.nodemanager.resource.memory-mb, EMR's default for the type) of the
# core/task instance types in conf/emr.yaml: 8 vCPU / 32 GiB nodes, 24 GiB for YARN containers.
NODE_SHAPE = {"m5.2xlarge": (8, 24576), "m5a.2xlarge": (8, 24576), "m6i.2xlarge": (8, 24576)}
POLL_S = 0.2


def sizes_from_env(default=SIZES) -> tuple[int, ...]:
    """``$LENSINJ_SCALING_SIZES`` ("200,2000") as sorted ints, else ``default``."""
    raw = os.environ.get(SIZES_ENV, "").strip()
    if not raw:
        return tuple(sorted(default))
    sizes = sorted(int(float(s)) for s in raw.split(",") if s.strip())
    if not sizes or sizes[0] < 1:
        raise ValueError(f"{SIZES_ENV}={raw!r}: need positive task counts")
    return tuple(sizes)


def replicates_for(n_tasks: int, rows_per_replicate: int) -> int:
    """Replicates whose manifest has the row count nearest ``n_tasks`` (at least 1)."""
    return max(1, round(n_tasks / rows_per_replicate))


def memory_mb(text: str) -> int:
    """``"6g"`` / ``"512m"`` (conf/emr.yaml's spark memory strings) in MiB."""
    return int(text[:-1]) * (1024 if text[-1] == "g" else 1)


def executor_cores_per_node(instance_types, spark) -> int:
    """Executor cores YARN fits on the smallest listed node: executors limited by vCPUs and memory."""
    per = []
    for t in instance_types:
        vcpu, yarn_mb = NODE_SHAPE[t]
        executors = min(vcpu // spark.executor_cores,
                        yarn_mb // (memory_mb(spark.executor_memory) + memory_mb(spark.executor_memory_overhead)))
        per.append(executors * spark.executor_cores)
    return min(per)


def emr_projection(rate_per_core: float, cfg, n_stamps=PROJECT_STAMPS, startup_s: float = EMR_STARTUP_S) -> dict:
    """Projected EMR wall hours and USD for each of ``n_stamps`` at ``rate_per_core`` stamps/s/core."""
    from emr.follow import capacity_cost

    cores = sum((cfg.fleets[r].on_demand + cfg.fleets[r].spot) * executor_cores_per_node(cfg.fleets[r].instance_types,
                                                                                           cfg.spark)
                for r in ("core", "task"))
    out = {"emr_executor_cores": cores, "emr_startup_s_assumed": startup_s,
           "emr_cluster_usd_per_hour": round(capacity_cost(cfg.fleets, cfg.pricing, 3600.0)[0], 3)}
    for n in n_stamps:
        wall = startup_s + n / (rate_per_core * cores)
        usd, _ = capacity_cost(cfg.fleets, cfg.pricing, wall)
        out[f"emr_projection_1e{len(str(n)) - 1}_hours"] = round(wall / 3600.0, 2)
        out[f"emr_projection_1e{len(str(n)) - 1}_usd"] = round(usd, 2)
    return out


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out = []
    for tid in tasks:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            pass
    return out


def _hwm_kb(pid: int) -> tuple[str, int] | None:
    """(``"jvm"``/``"other"``, VmHWM in kB) of a live process, else None."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return None
    kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    return ("jvm" if exe == "java" else "other"), kb


class TreePeak(threading.Thread):
    """Polls the tree under ``root`` and keeps each process's peak (VmHWM): the root (the Python
    driver), the JVMs in its tree and, apart, the largest other process (a Python worker)."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.stop, self.python_kb, self.jvm_kb, self.worker_kb = root, threading.Event(), 0, {}, 0

    def run(self):
        while not self.stop.is_set():
            todo, seen = [self.root], set()
            while todo:
                pid = todo.pop()
                if pid in seen:
                    continue
                seen.add(pid)
                got = _hwm_kb(pid)
                if got is not None:
                    if pid == self.root:
                        self.python_kb = max(self.python_kb, got[1])
                    elif got[0] == "jvm":
                        self.jvm_kb[pid] = max(self.jvm_kb.get(pid, 0), got[1])
                    else:
                        self.worker_kb = max(self.worker_kb, got[1])
                todo += _children(pid)
            self.stop.wait(POLL_S)

    def result(self) -> dict:
        jvm = max(self.jvm_kb.values(), default=0)
        return {"driver_python_mb": round(self.python_kb / 1024), "driver_jvm_mb": round(jvm / 1024),
                "driver_rss_mb": round((self.python_kb + jvm) / 1024), "worker_peak_mb": round(self.worker_kb / 1024)}


def _stage(module: str, argv: list[str], log: Path) -> dict:
    """Run ``python -m module argv`` as a fresh process; its wall time and driver peak RSS."""
    from udfs.config.provenance import REPO_ROOT

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1")}
    env.setdefault("NUMBA_CACHE_DIR", str(REPO_ROOT / ".cache" / "numba"))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env.setdefault(var, "1")
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", module, *argv], cwd=REPO_ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        peak = TreePeak(proc.pid)
        peak.start()
        rc = proc.wait()
        wall = time.perf_counter() - t0
    peak.stop.set()
    peak.join()
    if rc != 0:
        tail = "".join(log.read_text().splitlines(True)[-30:])
        raise RuntimeError(f"{module} exited {rc}; last lines of {log}:\n{tail}")
    return {"wall_s": wall, **peak.result()}


def _inputs(d: Path) -> dict:
    """Targets + lens hosts, bank, sky and cutouts under ``d`` as ``jobs.run_demo`` builds them."""
    from udfs.config.provenance import REPO_ROOT
    from udfs.config.sample_data import data_root
    from udfs.survey.sky_config import load_sky_config

    conf, data = REPO_ROOT / "conf", data_root()
    ls = data / "legacysurvey"
    cats = [str(ls / "dr8_sweeps"), str(ls / "dr8_tractor"), str(ls / "dr9_tractor")]
    hosts = str(d / "hosts")
    sky = load_sky_config(str(conf / "demo_sky.yaml"))
    steps = [
        ("jobs.select_lrgs", ["--input", *cats, "--output", str(d / "targets"),
                              "--config", str(conf / "demo_lrg_selection.yaml")]),
        ("jobs.build_lens_hosts", ["--with-targets", str(d / "targets"), "--output", hosts, "--catalog",
                                   str(d / "hosts.fits"), "--config", str(conf / "lens_hosts.yaml")]),
        ("jobs.cosmos_source_loader", ["--cosmos-dir", str(data / "cosmos" / "btk_ext26"), "--output",
                                       str(d / "bank.h5"), "--max-galaxies", "16", "--seed", "1"]),
        ("jobs.make_sample_sky", ["--targets", hosts, "--catalogs", *cats[1:], cats[0], str(d / "hosts.fits"),
                                  "--output", str(d / "sky"), *sky.argv()]),
        ("jobs.make_cutouts", ["--targets", hosts, "--coadd-base", str(d / "sky"), "--output", str(d / "cutouts")]),
    ]
    walls = {m: _stage(m, argv, d / f"{m}.log")["wall_s"] for m, argv in steps}
    return {"hosts": hosts, "cutouts_s": walls["jobs.make_cutouts"], "inputs_s": sum(walls.values())}


def _priors(d: Path, replicates: int) -> Path:
    from udfs.config.provenance import REPO_ROOT

    priors = yaml.safe_load((REPO_ROOT / "conf" / "demo_injection_priors.yaml").read_text())
    priors["replicates"] = replicates
    path = d / f"priors-{replicates}.yaml"
    path.write_text(yaml.safe_dump(priors))
    return path


def _rows_per_replicate(d: Path, hosts: str) -> tuple[int, int]:
    """(manifest rows per replicate, targets) for the demo priors over ``hosts``."""
    import pyarrow.parquet as pq

    from udfs.io.datasets import dataset_files
    from udfs.stamps.manifest import expected_rows
    from udfs.stamps.priors import load_config

    n_targets = sum(pq.ParquetFile(f).metadata.num_rows for f in dataset_files(hosts))
    return expected_rows(load_config(str(_priors(d, 1))), n_targets), n_targets


def _one_size(d: Path, hosts: str, replicates: int) -> dict:
    """Stages 3 and 5 at ``replicates``; their walls, driver peaks and stamp counts. Outputs removed."""
    from udfs.config.provenance import REPO_ROOT
    from udfs.stamps.manifest import resolve_manifest

    run = d / f"rep{replicates}"
    s3 = _stage("jobs.build_manifest", ["--targets", hosts, "--config", str(_priors(d, replicates)),
                                        "--output", str(run / "manifest"), "--bank", str(d / "bank.h5")],
                run.with_suffix(".manifest.log"))
    s5 = _stage("jobs.inject_stamps", ["--manifest", resolve_manifest(str(run / "manifest")), "--cutouts",
                                       str(d / "cutouts"), "--bank", str(d / "bank.h5"), "--output",
                                       str(run / "stamps"), "--config", str(REPO_ROOT / "conf" / "injection.yaml")],
                run.with_suffix(".inject.log"))
    summary = json.loads((run / "stamps" / "_summary.json").read_text())
    shutil.rmtree(run)
    return {"stage3": s3, "stage5": s5, "stamps": summary["n_stamps"], "ok": summary["n_ok"]}


def scaling_figures(per_size: dict[int, dict]) -> dict:
    """Per-size keys and the ratios (largest / smallest size; marginal top / bottom interval)."""
    out = {}
    for n, r in per_size.items():
        both = r["stage3"]["wall_s"] + r["stage5"]["wall_s"]
        out.update({f"scaling_stamps_{n}": r["stamps"], f"scaling_stamps_ok_{n}": r["ok"],
                    f"scaling_stage3_wall_s_{n}": round(r["stage3"]["wall_s"], 1),
                    f"scaling_stage5_wall_s_{n}": round(r["stage5"]["wall_s"], 1),
                    f"scaling_wall_s_{n}": round(both, 1),
                    f"scaling_ms_per_stamp_{n}": round(1e3 * both / r["stamps"], 2),
                    f"scaling_stage5_ms_per_stamp_{n}": round(1e3 * r["stage5"]["wall_s"] / r["stamps"], 2),
                    f"scaling_driver_rss_mb_{n}": max(r["stage3"]["driver_rss_mb"], r["stage5"]["driver_rss_mb"]),
                    f"scaling_stage5_driver_python_mb_{n}": r["stage5"]["driver_python_mb"],
                    f"scaling_stage5_driver_jvm_mb_{n}": r["stage5"]["driver_jvm_mb"],
                    f"scaling_stage5_worker_peak_mb_{n}": r["stage5"]["worker_peak_mb"]})
    sizes = sorted(per_size)
    lo, hi = sizes[0], sizes[-1]
    rss = [out[f"scaling_driver_rss_mb_{n}"] for n in sizes]
    out.update({
        "scaling_sizes": sizes,
        "scaling_time_per_stamp_ratio": round(out[f"scaling_ms_per_stamp_{hi}"] / out[f"scaling_ms_per_stamp_{lo}"], 3),
        "scaling_time_per_stamp_ratio_baseline": f"time per stamp (stages 3+5 wall) at {lo} tasks, same run",
        "scaling_stage5_time_per_stamp_ratio": round(out[f"scaling_stage5_ms_per_stamp_{hi}"]
                                                     / out[f"scaling_stage5_ms_per_stamp_{lo}"], 3),
        "scaling_driver_rss_ratio": round(rss[-1] / rss[0], 3),
        "scaling_driver_rss_ratio_baseline": f"driver peak RSS (Python + JVM) at {lo} tasks, same run",
    })
    if len(sizes) >= 3:  # marginal cost per stamp: top interval / bottom interval (start-up cancels)
        def marginal(a, b):
            return ((per_size[b]["stage3"]["wall_s"] + per_size[b]["stage5"]["wall_s"]
                     - per_size[a]["stage3"]["wall_s"] - per_size[a]["stage5"]["wall_s"])
                    / (per_size[b]["stamps"] - per_size[a]["stamps"]))
        out.update({"scaling_marginal_ms_per_stamp_low": round(1e3 * marginal(lo, sizes[1]), 2),
                    "scaling_marginal_ms_per_stamp_high": round(1e3 * marginal(sizes[-2], hi), 2),
                    "scaling_marginal_time_per_stamp_ratio": round(marginal(sizes[-2], hi) / marginal(lo, sizes[1]), 3),
                    "scaling_marginal_time_per_stamp_ratio_baseline":
                        f"(wall({sizes[1]}) - wall({lo})) / (stamps({sizes[1]}) - stamps({lo})), same run"})
    return out


def run(sizes=None) -> dict:
    from emr.config import load_emr_config

    sizes = sizes_from_env() if sizes is None else tuple(sorted(sizes))
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        d = Path(tmp)
        inputs = _inputs(d)
        per_rep, n_targets = _rows_per_replicate(d, inputs["hosts"])
        warm = _one_size(d, inputs["hosts"], 1)  # numba cache and page cache; not a size
        per_size = {n: _one_size(d, inputs["hosts"], replicates_for(n, per_rep)) for n in sizes}
    out = {"scaling_targets": n_targets, "scaling_rows_per_replicate": per_rep,
           "scaling_inputs_wall_s": round(inputs["inputs_s"], 1),
           "scaling_stage4_cutouts_wall_s": round(inputs["cutouts_s"], 1),
           "scaling_warmup_wall_s": round(warm["stage3"]["wall_s"] + warm["stage5"]["wall_s"], 1),
           **scaling_figures(per_size)}
    hi = per_size[max(sizes)]
    rate = hi["stamps"] / (hi["stage3"]["wall_s"] + hi["stage5"]["wall_s"]) / LOCAL_CORES
    out["scaling_stamps_per_s_per_core"] = round(rate, 2)
    out["scaling_note"] = (f"local[{LOCAL_CORES}], each stage a fresh python -m subprocess (Spark start-up "
                           "included); driver RSS = VmHWM of the Python driver + its JVM (local mode: driver "
                           "and executor); rate from the largest size")
    out.update(emr_projection(rate, load_emr_config()))
    return out


if __name__ == "__main__":
    print(json.dumps(run()))
