"""End-to-end benchmark: stamps per second per core through the Spark injection job (local mode).

Inputs are built once from the real samples as in ``make run`` (3 sample LRGs plus the ~50 Stein et
al. lens hosts: 53 backgrounds on as many bricks, so stage 5's brick buckets all have work; a
16-row bank, rendered stand-in coadds, cutouts), with a manifest of ``REPLICATES`` per target:
~40,000 stamps in 8 buckets, ~5,000 per Spark task as the production priors' 2,048 buckets give
at 10^7 stamps (Spark's fixed costs per job, per task and per Python worker are paid as there,
not spread over a toy's few hundred stamps). The sky is the demo's (``conf/demo_sky.yaml``: real PSFEx models and texture), so
stage 4 stores PSFEx stacks as in ``make run``. Timed: ``jobs.inject_stamps`` from cutouts + manifest
to Parquet, in local[2] Spark, per core. Baseline in the same run: the same rows rendered by the
pure transform ``udfs.stamps.inject.inject_tasks`` in one process, no Spark (``spark_efficiency`` =
ours per core / baseline); and stage 5's whole per-bucket work (read, merge, inject, write) over
every bucket in one process (``spark_only_efficiency``: what Spark itself costs, the Parquet I/O
being in both; ``io_share_of_bucket_work``: the share of that work which is not the transform).
Storage: data bytes per stamp on the 53 backgrounds, each in one stamp pair only. Stage-5 realism cost: the pure transform with the default config (the
stored PSF, textured arc noise) against the old default (Gaussian of PSFSIZE, white arc noise), same
rows, same run. Cutout bytes vs whole files: from the cutout job's summary.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import yaml

REPLICATES = 128  # x 53 backgrounds x 3 configs x 2 labels ~ 40,000 stamps


def _inputs(d: Path) -> str:
    """Build targets + lens hosts (53 backgrounds over as many bricks), bank, manifest
    (``REPLICATES`` per target), sky and cutouts under ``d`` as ``make run`` does; return the
    manifest folder stage 3 wrote."""
    from jobs import (build_lens_hosts, build_manifest, cosmos_source_loader, make_cutouts, make_sample_sky,
                      select_lrgs)
    from udfs.config.provenance import REPO_ROOT
    from udfs.config.sample_data import data_root
    from udfs.stamps.manifest import resolve_manifest
    from udfs.survey.sky_config import load_sky_config

    conf = REPO_ROOT / "conf"
    ls = data_root() / "legacysurvey"
    cats = [str(ls / "dr8_sweeps"), str(ls / "dr8_tractor"), str(ls / "dr9_tractor")]
    hosts = str(d / "hosts")
    assert select_lrgs.main(["--input", *cats, "--output", str(d / "targets"),
                             "--config", str(conf / "demo_lrg_selection.yaml")]) == 0
    assert build_lens_hosts.main(["--with-targets", str(d / "targets"), "--output", hosts, "--catalog",
                                  str(d / "hosts.fits"), "--config", str(conf / "lens_hosts.yaml")]) == 0
    assert cosmos_source_loader.main(["--cosmos-dir", str(data_root() / "cosmos" / "btk_ext26"),
                                      "--output", str(d / "bank.h5"), "--max-galaxies", "16",
                                      "--seed", "1"]) == 0
    priors = yaml.safe_load((conf / "demo_injection_priors.yaml").read_text())
    priors["replicates"] = REPLICATES
    (d / "priors.yaml").write_text(yaml.safe_dump(priors))
    assert build_manifest.main(["--targets", hosts, "--config", str(d / "priors.yaml"),
                                "--output", str(d / "manifest"), "--bank", str(d / "bank.h5")]) == 0
    sky = load_sky_config(str(conf / "demo_sky.yaml"))
    assert make_sample_sky.main(["--targets", hosts, "--catalogs", *cats[1:], cats[0], str(d / "hosts.fits"),
                                 "--output", str(d / "sky"), *sky.argv()]) == 0
    assert make_cutouts.main(["--targets", hosts, "--coadd-base", str(d / "sky"),
                              "--output", str(d / "cutouts")]) == 0
    return resolve_manifest(str(d / "manifest"))


def _baselines(d: Path, manifest: str) -> dict[str, float]:
    """Stamps per second of :func:`udfs.stamps.inject.inject_tasks` on the same rows in stage 5's
    batches (:data:`udfs.stamps.inject_bucket.BATCH_ROWS`), one process: the default config and
    the old default (``gaussian`` PSF, white arc noise)."""
    import dataclasses

    import pyarrow as pa
    import pyarrow.parquet as pq

    from udfs.config.provenance import REPO_ROOT
    from udfs.io.datasets import dataset_files
    from udfs.schemas.cutouts import READER_COLUMNS
    from udfs.sources.bank import read_bank
    from udfs.stamps.inject import inject_tasks, load_settings
    from udfs.stamps.inject_bucket import BATCH_ROWS

    tasks = pa.concat_tables([pq.read_table(f) for f in dataset_files(manifest)]).to_pandas()
    cuts = pa.concat_tables([pq.read_table(f) for f in dataset_files(str(d / "cutouts"))]).to_pandas()
    joined = tasks.merge(cuts[READER_COLUMNS].rename(columns={"ok": "cutout_ok", "fail_reason": "cutout_fail_reason"}),
                         on="target_id", how="left")
    bank = read_bank(str(d / "bank.h5"))
    default = load_settings(str(REPO_ROOT / "conf" / "injection.yaml"))
    old = dataclasses.replace(default, psf_model="gaussian", arc_noise_texture=False)
    rates = {}
    for name, settings in (("default", default), ("gaussian_white", old)) * 2:  # twice: the 2nd counts
        inject_tasks(joined.head(4), bank, settings, 64)  # JIT warm-up
        t0 = time.perf_counter()
        for start in range(0, len(joined), BATCH_ROWS):  # in the job's batches
            inject_tasks(joined.iloc[start:start + BATCH_ROWS], bank, settings, 64)
        rates[name] = len(joined) / (time.perf_counter() - t0)
    return rates


def _buckets_in_process(d: Path, manifest: str) -> float:
    """Stamps per second of stage 5's per-bucket work (read both files, merge, inject, write the
    split files: :func:`udfs.stamps.inject_bucket.inject_bucket`) over every bucket in one process,
    no Spark: what the job does per core, without Spark's own costs."""
    from udfs.config.provenance import REPO_ROOT
    from udfs.io.datasets import dataset_files, file_schema
    from udfs.schemas import stamps as schema
    from udfs.sources.bank import load_bank
    from udfs.stamps.inject import inject_tasks, load_settings
    from udfs.stamps.inject_bucket import colocated_buckets, inject_bucket

    settings = load_settings(str(REPO_ROOT / "conf" / "injection.yaml"))
    bank, names = load_bank(str(d / "bank.h5")), schema.columns(settings.bands)
    file_schema_ = schema.stamp_schema(settings.bands, 64, {"pixel_scale_arcsec": str(settings.pixel_scale)})
    cutouts_schema = file_schema(dataset_files(str(d / "cutouts"))[0])

    def inject(pdf):
        return inject_tasks(pdf, bank, settings, 64).assign(code_version="bench", injection_config_hash="bench")[names]

    n, t0 = 0, time.perf_counter()
    for b, (m, c) in colocated_buckets(manifest, str(d / "cutouts")).items():
        done = inject_bucket(b, m, c, str(d / "stamps-in-process"), inject=inject, file_schema_=file_schema_,
                             cutouts_schema=cutouts_schema)
        n += sum(r["rows"] for r in done)
    return n / (time.perf_counter() - t0)


def _column_bytes(uri: Path) -> tuple[dict[str, int], int, int]:
    """Compressed data bytes per top-level column (summed over files and row groups), footer bytes
    (file size minus data: metadata and schema, fixed per file), and rows of a dataset."""
    import pyarrow.parquet as pq

    by_col, footers, rows = {}, 0, 0
    for f in sorted(uri.rglob("*.parquet")):
        md = pq.read_metadata(f)
        data = 0
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                name = col.path_in_schema.split(".")[0]
                by_col[name] = by_col.get(name, 0) + col.total_compressed_size
                data += col.total_compressed_size
        footers += f.stat().st_size - data
        rows += md.num_rows
    return by_col, footers, rows


def _storage(d: Path) -> dict:
    """Bytes per stamp where no background repeats beyond its pair: one config (cosmos), one
    replicate, so each of the 53 cutouts is in 2 rows (its injected stamp and its control).
    Data bytes (the column chunks) per stamp; footers (fixed per file, ~1/10^4 of a survey-scale
    file) apart."""
    from jobs import build_manifest, inject_stamps
    from udfs.config.provenance import REPO_ROOT
    from udfs.stamps.manifest import resolve_manifest

    priors = yaml.safe_load((REPO_ROOT / "conf" / "demo_injection_priors.yaml").read_text())
    priors["replicates"], priors["configs"] = 1, [c for c in priors["configs"] if c["name"] == "cosmos"]
    (d / "priors-storage.yaml").write_text(yaml.safe_dump(priors))
    assert build_manifest.main(["--targets", str(d / "hosts"), "--config", str(d / "priors-storage.yaml"),
                                "--output", str(d / "manifest-storage"), "--bank", str(d / "bank.h5")]) == 0
    assert inject_stamps.main(["--manifest", resolve_manifest(str(d / "manifest-storage")), "--cutouts",
                               str(d / "cutouts"), "--bank", str(d / "bank.h5"),
                               "--output", str(d / "stamps-storage")]) == 0
    by_col, footers, rows = _column_bytes(d / "stamps-storage")
    pixels = ("image", "invvar", "arc", "maskbits")
    per = {c: by_col.get(c, 0) / rows for c in pixels}
    scalars = sum(v for c, v in by_col.items() if c not in pixels) / rows
    cut_cols, _, cut_rows = _column_bytes(d / "cutouts")
    return {"rows": rows, "bytes_per_stamp": round(sum(by_col.values()) / rows),
            "by_column": {**{c: round(v) for c, v in per.items()}, "scalars": round(scalars)},
            "footer_bytes_per_file": round(footers / len(list((d / "stamps-storage").rglob("*.parquet")))),
            "cutout_image_bytes_per_target": round(cut_cols["image"] / cut_rows)}


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
        stored = sum(f.stat().st_size for f in (d / "stamps").rglob("*.parquet"))
        cut = json.loads((d / "cutouts" / "_summary.json").read_text())
        rates = _baselines(d, manifest)
        direct = rates["default"]
        buckets = _buckets_in_process(d, manifest)
        storage = _storage(d)
    cores = 2  # local[2]
    per_core = n / wall / cores
    return {
        "e2e_stamps": n,
        "e2e_wall_s": round(wall, 1),
        "e2e_stamps_per_s_per_core": round(per_core, 1),
        "e2e_stamps_per_s_per_core_baseline": "transform_stamps_per_s (the same rows without Spark)",
        "e2e_baseline_inject_tasks_stamps_per_s": round(direct, 1),
        "e2e_spark_efficiency": round(per_core / direct, 3),
        "spark_efficiency": round(per_core / direct, 3),
        "spark_efficiency_baseline": "inject_tasks on the same rows in one process, no Spark, per core",
        "e2e_baseline_buckets_in_process_stamps_per_s": round(buckets, 1),
        "spark_only_efficiency": round(per_core / buckets, 3),
        "spark_only_efficiency_baseline": "stage 5's bucket work (read, merge, inject, write Parquet) in one "
                                          "process, no Spark, same rows: Spark's own cost, I/O excluded",
        "io_share_of_bucket_work": round(1 - buckets / direct, 3),
        "transform_stamps_per_s": round(rates["default"], 1),
        "transform_stamps_per_s_baseline": "stage5_baseline_gaussian_white_stamps_per_s (old default, same rows)",
        "bytes_per_stamp": storage["bytes_per_stamp"],
        "bytes_per_stamp_baseline": f"raw pixels of a stamp row (image, invvar, arc float32, maskbits int32): {4 * 64 * 64 * 10}",
        "bytes_per_stamp_note": "data bytes per stamp, 53 backgrounds of real-like noise (the demo's stand-in sky), "
                                "each in one injected stamp and its control only; Parquet footers apart",
        "bytes_per_stamp_by_column": storage["by_column"],
        "bytes_per_stamp_footer_bytes_per_file": storage["footer_bytes_per_file"],
        "bytes_per_stamp_10M_GB": round(storage["bytes_per_stamp"] * 1e7 / 1e9, 1),
        "bytes_per_stamp_cutout_image_bytes_per_target": storage["cutout_image_bytes_per_target"],
        "bytes_per_stamp_repeated_backgrounds": round(stored / n),
        "e2e_note": "3-band 64x64 stamps incl. controls; Spark local[2] job start-up included",
        "stage5_default_stamps_per_s": round(rates["default"], 1),
        "stage5_baseline_gaussian_white_stamps_per_s": round(rates["gaussian_white"], 1),
        "stage5_throughput_vs_gaussian_white": round(rates["default"] / rates["gaussian_white"], 3),
        "cutout_psf_sources_demo": cut.get("psf_source_counts"),
        "cutout_bytes_per_stamp_demo": cut.get("bytes_read_per_stamp_mean"),
        "cutout_whole_file_bytes_per_stamp_demo": cut.get("whole_files_bytes_per_stamp_mean"),
    }


if __name__ == "__main__":
    print(json.dumps(run()))
