"""Stage 2: build the COSMOS source bank (one HDF5 file broadcast to the injection executors).

    .venv/bin/python -m jobs.cosmos_source_loader --cosmos-dir DIR --output bank.h5 \
        [--config conf/bank.yaml] [--max-galaxies N] [--seed S] [--workers W] \
        [--exclusion-level LEVEL] [--mag-min M] [--mag-max M] [--hlr-min A] [--hlr-max A] \
        [--photometry FILE]

The driver validates the catalogue and applies the catalogue-level cuts; Spark renders the
remaining galaxies in ``--workers`` partitions (:func:`udfs.sources.bank_build.render_rows`; an
``s3://`` catalogue is staged once per Python worker, each task returns plain arrays); the driver
writes the bank in catalogue order through ``udfs.io.storage`` (local or s3://) and prints a summary. Layout: :mod:`udfs.sources.bank`.

``--photometry FILE`` (FITS, CSV, TSV or Parquet; e.g. COSMOS2020 with HSC g/r/i/z/y and a photo-z;
columns in the config's ``photometry`` section) is cross-matched by sky position with the
catalogue's RA/DEC on the driver; matched galaxies take its photo-z (before the ``bad_zphot`` cut)
and magnitudes, unmatched ones keep the catalogue route, counted in the summary and labelled per
galaxy (``colour_source``, ``phot_sep_arcsec`` NaN). Routes: :mod:`udfs.sources.bank_photometry`.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

from jobs.cli import job_main
from udfs.config import bank as bank_config
from udfs.config.provenance import REPO_ROOT, code_version, config_hash
from udfs.io import storage
from udfs.io.publish import publishing
from udfs.sources import bank_build, bank_photometry
from udfs.sources.cosmos_catalog import open_catalog, staged_directory

DEFAULT_CONFIG = str(REPO_ROOT / "conf" / "bank.yaml")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="jobs.cosmos_source_loader", description=__doc__.split("\n")[0])
    p.add_argument("--cosmos-dir", required=True, help="GalSim COSMOS catalogue directory (local or s3://)")
    p.add_argument("--output", required=True, help="bank HDF5 file (local or s3://)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="bank YAML config (default conf/bank.yaml)")
    p.add_argument("--max-galaxies", type=int, default=None,
                   help="use a random subset of N catalogue rows (drawn with --seed, kept in catalogue order)")
    p.add_argument("--seed", type=int, default=0, help="seed for --max-galaxies and the twins' noise (default 0)")
    p.add_argument("--workers", type=int, default=2, help="number of Spark render tasks (default 2)")
    p.add_argument("--exclusion-level", choices=bank_config.EXCLUSION_LEVELS, default=None)
    p.add_argument("--mag-min", type=float, default=None, help="F814W magnitude range (overrides config)")
    p.add_argument("--mag-max", type=float, default=None)
    p.add_argument("--hlr-min", type=float, default=None, help="half-light radius range, arcsec (overrides config)")
    p.add_argument("--hlr-max", type=float, default=None)
    p.add_argument("--max-neighbour-flux-ratio", type=float, default=None)
    p.add_argument("--photometry", default=None,
                   help="external photometric catalogue (FITS/CSV/TSV/Parquet, local or s3://) to cross-match")
    args = p.parse_args(argv)
    if args.max_galaxies is not None and args.max_galaxies < 1:
        p.error("--max-galaxies must be >= 1")
    if args.workers < 1:
        p.error("--workers must be >= 1")
    return args


def _run_spark(cosmos_dir: str, todo: list[int], cfg: bank_config.BankConfig, seed: int, workers: int) -> list:
    """Render the ``todo`` rows in Spark tasks (:func:`udfs.sources.bank_build.render_rows`), with a
    progress bar; the results sorted by catalogue row."""
    from tqdm import tqdm

    from jobs.spark import get_spark

    spark = get_spark("cosmos_source_loader", {"spark.ui.showConsoleProgress": "false"})
    sc = spark.sparkContext
    n_parts = max(1, min(len(todo), workers * 4))   # several tasks per worker: a smoother progress bar
    chunks = [todo[k::n_parts] for k in range(n_parts)]
    rdd = sc.parallelize(list(enumerate(chunks)), n_parts).flatMap(
        lambda kv: bank_build.render_rows(cosmos_dir, kv[1], cfg, seed))
    group = f"bank-{os.getpid()}-{time.time_ns()}"
    result, error = [], []

    def collect():
        sc.setJobGroup(group, "render COSMOS bank")
        try:
            result.extend(rdd.collect())
        except Exception as exc:  # re-raised on the driver thread below
            error.append(exc)

    thread = threading.Thread(target=collect, daemon=True)
    thread.start()
    sizes = [len(c) for c in chunks]
    with tqdm(total=len(todo), unit="galaxy", desc="rendering", file=sys.stderr) as bar:
        while thread.is_alive():
            thread.join(0.5)
            done = 0
            for job in sc.statusTracker().getJobIdsForGroup(group):
                info = sc.statusTracker().getJobInfo(job)
                for stage in (info.stageIds if info else []):
                    s = sc.statusTracker().getStageInfo(stage)
                    done += s.numCompletedTasks if s else 0
            bar.update(min(sum(sorted(sizes)[:done]), len(todo)) - bar.n)
        bar.update(len(todo) - bar.n)
    if error:
        raise error[0]
    return sorted(result, key=lambda r: r[0])


def _load_config(args: argparse.Namespace) -> bank_config.BankConfig:
    overrides = {"selection": {"exclusion_level": args.exclusion_level, "mag_f814w_min": args.mag_min,
                               "mag_f814w_max": args.mag_max, "hlr_arcsec_min": args.hlr_min,
                               "hlr_arcsec_max": args.hlr_max,
                               "max_neighbour_flux_ratio": args.max_neighbour_flux_ratio}}
    return bank_config.load(args.config, overrides)


def _attrs(cfg: bank_config.BankConfig, args: argparse.Namespace, catalog_name: str, n_considered: int,
           rejected: dict[str, int], phot_counts: dict) -> dict:
    """The bank's HDF5 attributes: provenance, the run's config and the selection counts."""
    run_config = {**cfg.as_dict(), "cosmos_dir": args.cosmos_dir, "max_galaxies": args.max_galaxies,
                  "seed": args.seed, "photometry_file": args.photometry}
    return {"pixel_scale_arcsec": float(cfg.render.pixel_scale_arcsec), "code_version": code_version(),
            "config": run_config, "config_hash": config_hash(run_config), "catalog_name": catalog_name,
            "n_considered": n_considered, "rejected_counts": rejected, "photometry_counts": phot_counts}


@job_main
def main(argv=None) -> int:
    args = parse_args(argv)
    storage.check_writable(args.output, folder=False)  # before any input is read
    cfg = _load_config(args)
    with publishing(args.output, job="jobs.cosmos_source_loader", config_hash=config_hash(cfg.as_dict()),
                    folder=False) as output:
        _build(args, cfg)
        output.commit([])
    return 0


def _build(args, cfg) -> None:
    """Select, render and write the bank; print what it holds."""
    start = time.perf_counter()
    cat = open_catalog(staged_directory(args.cosmos_dir))
    rows = bank_build.considered_rows(cat, args.max_galaxies, args.seed)
    ext = bank_photometry.match_catalog(args.photometry, cfg.photometry, cat) if args.photometry else None
    pre = bank_build.catalogue_cuts(cat, cfg, bank_photometry.effective_zphot(cat, ext))[rows]
    todo = [int(i) for i in rows[pre < 0]]
    results = _run_spark(args.cosmos_dir, todo, cfg, args.seed, args.workers) if todo else []
    images, meta, rejected = bank_build.assemble(results, pre, cfg)
    meta.update(bank_photometry.sed_columns(meta, cat, ext, cfg.cosmology))
    phot = bank_photometry.counts(meta, ext)
    blob = bank_build.write_bank(images, meta, _attrs(cfg, args, cat.file_name, len(rows), rejected, phot),
                                 cfg.output)
    storage.write_bytes(args.output, blob)
    print(f"COSMOS source bank: {args.output}")
    print(f"  catalogue  {cat.path}")
    print(f"  considered {len(rows)}, selected {len(images)}")
    for reason, n in rejected.items():
        if n:
            print(f"  rejected   {n:6d}  {reason}")
    if ext is not None:
        med = "n/a" if phot["median_sep_arcsec"] is None else f'{phot["median_sep_arcsec"]:.3f}"'
        print(f"  photometry {args.photometry}: matched {phot['matched']}/{phot['galaxies']} within "
              f"{cfg.photometry.match_radius_arcsec}\" (median separation {med}), used {phot['used']}, "
              f"{phot['unmatched']} unmatched and {phot['matched_unusable']} without photo-z/bands keep the "
              "catalogue route")
    print(f"  time {round(time.perf_counter() - start, 1)} s, file size {len(blob) / 1e6:.2f} MB")


if __name__ == "__main__":
    sys.exit(main())
