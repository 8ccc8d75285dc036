"""Source-bank memory benchmark (issue 13, item 4): the bank's memory per Python worker for 10^5 galaxies.

Bank: the real btk_ext26 sample built by ``jobs.cosmos_source_loader`` (all 100 rows: 41 galaxies;
``--max-galaxies`` fewer) gives the footprint crops; they are drawn with replacement (seed 0) to
10^5 galaxies, each with its own meta row, and written by ``udfs.sources.bank_build.write_bank``
(the bank job's writer, ``conf/bank.yaml`` output settings).

Workers: two fresh interpreters run at once, as two Python workers of one executor node. Each imports
what a stage-5 worker imports (numpy, h5py, numba, ``udfs.sources.bank``, ``udfs.lensing.render``,
the renderer compiled on a one-image bank) and measures itself: the baseline. Then it calls
``load_bank(uri)`` as ``udfs.stamps.inject.inject_partition`` does (the first worker writes the node
copy, the other waits on its lock), touches every galaxy (sums each crop, computes ``support_pix``),
renders 64 lensed stamps from random galaxies, and measures itself again while the other worker
still holds the bank. ``bank_bytes_per_worker_1e5``: the larger of the two workers' private memory
(USS = Private_Clean + Private_Dirty of ``/proc/self/smaps_rollup``) minus its baseline. Baseline
figure: the full ``96 x 96`` float32 squares the previous ``load_bank`` decoded in every worker,
``N S^2 4`` bytes.

Disk: whole file / N for the real 41-galaxy bank as written now and in the earlier layout (the same
galaxies as full squares, gzip 4 + shuffle in 16-image chunks, same meta and attributes). The
resampled 10^5 bank's own figure is lower than a real one's: gzip finds the repeated crops.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_GALAXIES = 100_000
N_WORKERS = 2

WORKER = r"""
import json, resource, sys, time
import h5py, numba, numpy as np
from udfs.lensing.lens_model import Lens
from udfs.lensing.render import MODE_COSMOS, render_unit_arcs
from udfs.sources.bank import Crops, load_bank

def smaps():
    out = {}
    for line in open("/proc/self/smaps_rollup"):
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    out["USS"] = out["Private_Clean"] + out["Private_Dirty"]
    out["Shared"] = out["Shared_Clean"] + out["Shared_Dirty"]
    return out

def render(crops, support, index, scale, n):
    rng = np.random.default_rng(1)
    lens = Lens.make(rng.uniform(0.8, 2.0, n), 0.05, -0.03, 0.0, 0.0, 0.02, 0.01)
    out, _ = render_unit_arcs(lens, npix=64, pixel_scale=0.262, mode=[MODE_COSMOS] * n,
                              src_x=rng.uniform(-0.4, 0.4, n), src_y=rng.uniform(-0.4, 0.4, n),
                              src_phi=rng.uniform(0, 6.28, n), src_index=index, images=crops,
                              image_scale=scale, support=support, k=4)
    return float(out.sum())

yy, xx = np.mgrid[0:96, 0:96] - 47.5
one = Crops.from_squares(np.exp(-(xx ** 2 + yy ** 2) / 50.0)[None] * (np.hypot(xx, yy) < 15))
render(one, None, [0], 0.03, 1)  # compile (or load) the renderer before the baseline
base = smaps()
t0 = time.perf_counter()
bank = load_bank(sys.argv[1])
t_load = time.perf_counter() - t0
t0 = time.perf_counter()
total = sum(float(bank.crops.crop(i).sum(dtype=np.float64)) for i in range(len(bank)))
support = bank.support_pix
index = np.random.default_rng(2).integers(0, len(bank), 64)
flux = render(bank.crops, support, index, bank.pixel_scale, 64)
t_touch = time.perf_counter() - t0
print("ready", flush=True)
sys.stdin.readline()
after = smaps()
print(json.dumps({"base": base, "after": after, "load_s": t_load, "touch_s": t_touch, "flux_sum": total,
                  "render_flux": flux, "n": len(bank), "size": bank.image_size,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}), flush=True)
sys.stdin.readline()
"""


def _real_bank(d: Path, max_galaxies: int | None) -> Path:
    from jobs import cosmos_source_loader
    from udfs.config.sample_data import data_root

    out = d / "real.h5"
    extra = ["--max-galaxies", str(max_galaxies), "--seed", "1"] if max_galaxies else []
    assert cosmos_source_loader.main(["--cosmos-dir", str(data_root() / "cosmos" / "btk_ext26"),
                                      "--output", str(out), "--workers", "2", *extra]) == 0
    return out


def _earlier_layout_bytes(real: Path) -> int:
    """Size of the real bank as the earlier ``write_bank`` stored it: the same meta and attributes,
    the full squares as dataset ``images``, gzip + shuffle in chunks of ``images_per_chunk`` squares."""
    import io

    import h5py

    from udfs.config import bank as bank_config
    from udfs.config.provenance import REPO_ROOT
    from udfs.sources.bank import read_bank, untimed_group
    from udfs.sources.bank_build import META_COLUMNS

    output = bank_config.load(str(REPO_ROOT / "conf" / "bank.yaml")).output
    bank = read_bank(str(real))
    squares = np.stack([bank.image(i) for i in range(len(bank))])
    buf = io.BytesIO()
    with h5py.File(buf, "w", libver=("earliest", "v110"), track_order=False) as f:
        chunks = (min(output.images_per_chunk, len(squares)),) + squares.shape[1:]
        f.create_dataset("images", data=squares, chunks=chunks,
                         compression="gzip", compression_opts=output.gzip_level, shuffle=True, track_times=False)
        grp = untimed_group(f, "meta")
        for name, dtype in META_COLUMNS.items():
            grp.create_dataset(name, data=np.asarray(bank.meta[name]).astype(dtype), track_times=False)
        for key, value in bank.attrs.items():
            if key != "image_size":
                f.attrs[key] = value
    return len(buf.getvalue())


def _resampled_bank(real: Path, path: Path, n: int, seed: int = 0) -> dict:
    """Write an ``n``-galaxy bank drawing the real bank's crops and meta rows with replacement."""
    from udfs.config import bank as bank_config
    from udfs.config.provenance import REPO_ROOT
    from udfs.sources.bank import Crops, read_bank
    from udfs.sources.bank_build import write_bank

    bank = read_bank(str(real))
    idx = np.random.default_rng(seed).integers(0, len(bank), n)
    boxes = bank.crops.boxes[idx].copy()
    areas = boxes[:, 3] * boxes[:, 4]
    boxes[:, 0] = np.concatenate([[0], np.cumsum(areas)[:-1]])
    pixels = np.concatenate([bank.crops.crop(int(i)).ravel() for i in idx])
    crops = Crops.checked(pixels, boxes, bank.image_size)
    meta = {k: v[idx] for k, v in bank.meta.items()}
    output = bank_config.load(str(REPO_ROOT / "conf" / "bank.yaml")).output
    attrs = {k: v for k, v in bank.attrs.items() if k != "image_size"}
    path.write_bytes(write_bank(crops, meta, attrs, output))
    return {"median_crop": [int(np.median(boxes[:, 3])), int(np.median(boxes[:, 4]))],
            "mean_crop_pixels": float(areas.mean()), "n_distinct": int(len(np.unique(idx)))}


def _workers(uri: str, local: Path, n: int) -> list[dict]:
    """Run ``n`` worker interpreters at once; each measures itself while all hold the bank."""
    from udfs.config.provenance import REPO_ROOT

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SPARK_LOCAL_DIRS": str(local),
           "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, uri], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    try:
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"bank worker failed (exit {p.wait()}): {line}")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.stdout.readline()) for p in procs]
        for p in procs:
            p.stdin.write("exit\n")
            p.stdin.flush()
            p.wait(timeout=60)
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def run(n_galaxies: int = N_GALAXIES, max_galaxies: int | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        real = _real_bank(d, max_galaxies)
        from udfs.sources.bank import read_bank_info

        n_real = read_bank_info(str(real)).size
        disk_new, disk_old = real.stat().st_size / n_real, _earlier_layout_bytes(real) / n_real
        big = d / "bank_1e5.h5"
        t0 = time.perf_counter()
        crops = _resampled_bank(real, big, n_galaxies)
        t_write = time.perf_counter() - t0
        results = _workers(str(big), d / "local", N_WORKERS)
        (copy,) = (d / "local" / "source-bank-cache").glob("*.h5")
        copy_bytes, big_bytes = copy.stat().st_size, big.stat().st_size
    size = results[0]["size"]
    assert all(r["n"] == n_galaxies and abs(r["flux_sum"] - n_galaxies) < 1e-3 * n_galaxies for r in results)
    per_worker = [r["after"]["USS"] - r["base"]["USS"] for r in results]
    worst = results[int(np.argmax(per_worker))]
    full = n_galaxies * size * size * 4
    return {
        "bank_bytes_per_worker_1e5": int(max(per_worker)),
        "bank_bytes_per_worker_1e5_baseline": f"full {size}x{size} squares decoded per worker: {full}",
        "bank_worker_rss_bytes_1e5": int(worst["after"]["Rss"] - worst["base"]["Rss"]),
        "bank_worker_shared_bytes_1e5": int(worst["after"]["Shared"] - worst["base"]["Shared"]),
        "bank_worker_baseline_uss_bytes": int(worst["base"]["USS"]),
        "bank_worker_peak_rss_bytes_1e5": int(max(r["peak_rss"] for r in results)),
        "bank_node_copy_bytes_1e5": int(copy_bytes),
        "bank_load_s_1e5": [round(r["load_s"], 2) for r in results],
        "bank_touch_all_s_1e5": round(max(r["touch_s"] for r in results), 2),
        "bank_disk_bytes_per_galaxy": round(disk_new),
        "bank_disk_bytes_per_galaxy_full_squares": round(disk_old),
        "bank_disk_bytes_per_galaxy_1e5_resampled": round(big_bytes / n_galaxies),
        "bank_write_s_1e5": round(t_write, 1),
        "bank_footprints": (f"crops of the {n_real}-galaxy btk_ext26 bank drawn with replacement "
                            f"({crops['n_distinct']} distinct; median crop {crops['median_crop'][0]}x"
                            f"{crops['median_crop'][1]}, mean {crops['mean_crop_pixels']:.0f} px); "
                            f"{N_WORKERS} workers on one node"),
    }


if __name__ == "__main__":
    print(json.dumps(run()))
