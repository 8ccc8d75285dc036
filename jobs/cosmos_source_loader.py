"""Stage 2: build the COSMOS source bank (one HDF5 file broadcast to the injection executors).

    .venv/bin/python -m jobs.cosmos_source_loader --cosmos-dir DIR --output bank.h5 \
        [--config conf/bank.yaml] [--max-galaxies N] [--seed S] [--workers W] \
        [--exclusion-level LEVEL] [--mag-min M] [--mag-max M] [--hlr-min A] [--hlr-max A]

The driver validates the catalogue and applies the catalogue-level cuts; Spark renders the
remaining galaxies in ``--workers`` partitions (each task opens the catalogue once and returns
plain arrays); the driver writes the bank in catalogue order through ``udfs.io.storage`` (local or
s3://) and prints a summary. Layout: :mod:`udfs.sources.bank`.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np

from udfs.sources import bank_build
from udfs.config import bank as bank_config
from udfs.io import storage
from udfs.sources.cosmos_catalog import CatalogError, open_catalog, stage_to_local
from udfs.config.provenance import REPO_ROOT, code_version, config_hash

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
    args = p.parse_args(argv)
    if args.max_galaxies is not None and args.max_galaxies < 1:
        p.error("--max-galaxies must be >= 1")
    if args.workers < 1:
        p.error("--workers must be >= 1")
    return args


def _render_partition(cosmos_dir: str, indices: list[int], cfg: dict, seed: int):
    """Spark task: render the given catalogue rows; yields plain tuples (no GalSim objects)."""
    import galsim

    with tempfile.TemporaryDirectory(prefix="cosmos-") as tmp:
        cat = open_catalog(stage_to_local(cosmos_dir, tmp))
        rgc = galsim.RealGalaxyCatalog(cat.file_name, dir=cat.directory)
        try:
            for index in indices:
                status, row, image = bank_build.process_galaxy(cat, rgc, index, cfg, seed)
                yield index, status, json.dumps(row), (image.tobytes() if image is not None else None)
        finally:
            rgc.close()


def _run_spark(cosmos_dir: str, todo: list[int], cfg: dict, seed: int, workers: int) -> list:
    from tqdm import tqdm

    from jobs.spark import get_spark

    spark = get_spark("cosmos_source_loader", {"spark.ui.showConsoleProgress": "false"})
    sc = spark.sparkContext
    n_parts = max(1, min(len(todo), workers * 4))   # several tasks per worker: a smoother progress bar
    chunks = [todo[k::n_parts] for k in range(n_parts)]
    rdd = sc.parallelize(list(enumerate(chunks)), n_parts).flatMap(
        lambda kv: _render_partition(cosmos_dir, kv[1], cfg, seed))
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


def build(args: argparse.Namespace) -> dict:
    overrides = {"selection": {"exclusion_level": args.exclusion_level, "mag_f814w_min": args.mag_min,
                               "mag_f814w_max": args.mag_max, "hlr_arcsec_min": args.hlr_min,
                               "hlr_arcsec_max": args.hlr_max,
                               "max_neighbour_flux_ratio": args.max_neighbour_flux_ratio}}
    cfg = bank_config.load(args.config, overrides)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cosmos-driver-") as tmp:
        cat = open_catalog(stage_to_local(args.cosmos_dir, tmp))
        rows = np.arange(len(cat))
        if args.max_galaxies is not None and args.max_galaxies < len(cat):
            rng = np.random.default_rng(args.seed)
            rows = np.sort(rng.choice(len(cat), size=args.max_galaxies, replace=False))
        pre = bank_build.catalogue_cuts(cat, cfg)[rows]
    counts = collections.Counter(bank_build.REASONS[r] for r in pre if r >= 0)
    todo = [int(i) for i in rows[pre < 0]]
    results = _run_spark(args.cosmos_dir, todo, cfg, args.seed, args.workers) if todo else []
    size = cfg["render"]["stamp_size"]
    images, metas = [], []
    for _, status, row_json, image in results:
        if status == "selected":
            metas.append(json.loads(row_json))
            images.append(np.frombuffer(image, dtype=np.float32).reshape(size, size))
        else:
            counts[status] += 1
    meta = {name: np.array([m[name] for m in metas]) if metas else np.zeros(0) for name in bank_build.META_COLUMNS}
    run_config = {**cfg, "cosmos_dir": args.cosmos_dir, "max_galaxies": args.max_galaxies, "seed": args.seed}
    attrs = {"pixel_scale_arcsec": float(cfg["render"]["pixel_scale_arcsec"]), "code_version": code_version(),
             "config": run_config, "config_hash": config_hash(run_config), "catalog_name": cat.file_name,
             "n_considered": int(len(rows)),
             "rejected_counts": {k: int(counts.get(k, 0)) for k in bank_build.REASONS}}
    stack = np.stack(images) if images else np.zeros((0, size, size), np.float32)
    blob = bank_build.write_bank(stack, meta, attrs, cfg)
    storage.write_bytes(args.output, blob)
    return {"output": args.output, "catalogue": cat.path, "considered": int(len(rows)), "selected": len(images),
            "rejected": {k: int(counts[k]) for k in bank_build.REASONS if counts.get(k)},
            "seconds": round(time.perf_counter() - start, 1), "bytes": len(blob)}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary = build(args)
    except (CatalogError, bank_config.ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"COSMOS source bank: {summary['output']}")
    print(f"  catalogue  {summary['catalogue']}")
    print(f"  considered {summary['considered']}, selected {summary['selected']}")
    for reason, n in summary["rejected"].items():
        print(f"  rejected   {n:6d}  {reason}")
    print(f"  time {summary['seconds']} s, file size {summary['bytes'] / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
