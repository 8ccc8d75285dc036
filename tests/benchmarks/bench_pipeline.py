"""End-to-end benchmark: stamps per second per core through the Spark injection job (local mode).

Inputs are built once from the real samples as in ``make run`` (3 sample LRGs, a 16-row bank,
rendered stand-in coadds, cutouts), with a manifest of many replicates so the job renders a few
hundred stamps. Timed: ``jobs.inject_stamps`` from cutouts + manifest to Parquet, in local[2]
Spark, per core. Baseline in the same run: the same rows rendered by the pure transform
``udfs.stamps.inject.inject_tasks`` in one process, no Spark (``spark_efficiency`` = ours per
core / baseline). Cutout bytes vs whole files: from the cutout job's summary.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import yaml

REPLICATES = 300


def _inputs(d: Path) -> str:
    """Build targets, bank, manifest (``REPLICATES`` per target), sky and cutouts under ``d`` as in
    ``make run``; return the manifest folder stage 3 wrote."""
    from jobs import build_manifest, cosmos_source_loader, make_cutouts, make_sample_sky, select_lrgs
    from udfs.config.provenance import REPO_ROOT
    from udfs.config.sample_data import data_root
    from udfs.stamps.manifest import resolve_manifest

    conf = REPO_ROOT / "conf"
    ls = data_root() / "legacysurvey"
    cats = [str(ls / "dr8_sweeps"), str(ls / "dr8_tractor"), str(ls / "dr9_tractor")]
    assert select_lrgs.main(["--input", *cats, "--output", str(d / "targets"),
                             "--config", str(conf / "demo_lrg_selection.yaml")]) == 0
    assert cosmos_source_loader.main(["--cosmos-dir", str(data_root() / "cosmos" / "btk_ext26"),
                                      "--output", str(d / "bank.h5"), "--max-galaxies", "16",
                                      "--seed", "1"]) == 0
    priors = yaml.safe_load((conf / "demo_injection_priors.yaml").read_text())
    priors["replicates"] = REPLICATES
    (d / "priors.yaml").write_text(yaml.safe_dump(priors))
    assert build_manifest.main(["--targets", str(d / "targets"), "--config", str(d / "priors.yaml"),
                                "--output", str(d / "manifest"), "--bank", str(d / "bank.h5")]) == 0
    assert make_sample_sky.main(["--targets", str(d / "targets"), "--catalogs", *cats[1:], cats[0],
                                 "--output", str(d / "sky")]) == 0
    assert make_cutouts.main(["--targets", str(d / "targets"), "--coadd-base", str(d / "sky"),
                              "--output", str(d / "cutouts")]) == 0
    return resolve_manifest(str(d / "manifest"))


def _baseline(d: Path, manifest: str) -> float:
    """Stamps per second of :func:`udfs.stamps.inject.inject_tasks` on the same rows, one process."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from udfs.config.provenance import REPO_ROOT
    from udfs.io.datasets import dataset_files
    from udfs.sources.bank import read_bank
    from udfs.stamps.inject import inject_tasks, load_settings

    tasks = pa.concat_tables([pq.read_table(f) for f in dataset_files(manifest)]).to_pandas()
    cuts = pa.concat_tables([pq.read_table(f) for f in dataset_files(str(d / "cutouts"))]).to_pandas()
    cuts = cuts[["target_id", "ok", "fail_reason", "dx_pix", "dy_pix", "image", "invvar", "maskbits"]]
    joined = tasks.merge(cuts.rename(columns={"ok": "cutout_ok", "fail_reason": "cutout_fail_reason"}),
                         on="target_id", how="left")
    bank = read_bank(str(d / "bank.h5"))
    settings = load_settings(str(REPO_ROOT / "conf" / "injection.yaml"))
    inject_tasks(joined.head(4), bank, settings, 64)  # JIT warm-up
    t0 = time.perf_counter()
    inject_tasks(joined, bank, settings, 64)
    return len(joined) / (time.perf_counter() - t0)


def run() -> dict:
    from jobs import inject_stamps
    from jobs.spark import get_spark

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        get_spark("bench-pipeline")
        manifest = _inputs(d)
        t0 = time.perf_counter()
        assert inject_stamps.main(["--manifest", manifest, "--cutouts", str(d / "cutouts"),
                                   "--bank", str(d / "bank.h5"), "--output", str(d / "stamps")]) == 0
        wall = time.perf_counter() - t0
        n = json.loads((d / "stamps" / "_summary.json").read_text())["n_stamps"]
        cut = json.loads((d / "cutouts" / "_summary.json").read_text())
        direct = _baseline(d, manifest)
    cores = 2  # local[2]
    per_core = n / wall / cores
    return {
        "e2e_stamps": n,
        "e2e_wall_s": round(wall, 1),
        "e2e_stamps_per_s_per_core": round(per_core, 1),
        "e2e_baseline_inject_tasks_stamps_per_s": round(direct, 1),
        "e2e_spark_efficiency": round(per_core / direct, 3),
        "e2e_note": "3-band 64x64 stamps incl. controls; Spark local[2] job start-up included",
        "cutout_bytes_per_stamp_demo": cut.get("bytes_read_per_stamp_mean"),
        "cutout_whole_file_bytes_per_stamp_demo": cut.get("whole_files_bytes_per_stamp_mean"),
    }


if __name__ == "__main__":
    print(json.dumps(run()))
