"""Generated stage-5 stamps datasets (:mod:`udfs.schemas.stamps`) for the stage-6 tests.

Each target gets a cutout (a Gaussian "LRG" of random brightness on Gaussian sky noise, invvar
constant per band) and one injected/control pair: the control is the cutout, the injected stamp
adds an arc segment of radius theta_E with its own Poisson noise (``udfs.survey.shot_noise``). The metrics
come from ``udfs.lensing.arc_metrics``. ``core_shortcut`` plants extra central flux in the injected arcs
(the previous pipeline's core-brightness shortcut); gains from ``udfs.survey.shot_noise.gain_estimate``; ``n_failed`` injected rows fail (pixels = lists
of nulls); ``nan_rows`` ok rows get one NaN pixel. Files: ``split=<s>/part-0000<k>.parquet``, rows
hashed by task_id into two files per split, so injected and control rows of a pair are often in
different files.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from udfs.io import pixel_codec, storage
from udfs.lensing.arc_metrics import arc_metrics
from udfs.survey.shot_noise import add_poisson_noise, gain_estimate
from udfs.schemas.stamps import stamp_schema

BANDS = "grz"
PIXEL_SCALE = 0.262
SKY_SIGMA = np.array([0.010, 0.015, 0.030])   # nanomaggies per pixel
COLOURS = np.array([0.6, 1.0, 1.3])           # arc flux ratios g:r:z



def schema(npix: int) -> pa.Schema:
    """The stage-5 stamps schema (:mod:`udfs.schemas.stamps`) at this pixel scale."""
    return stamp_schema(BANDS, npix, {"pixel_scale_arcsec": str(PIXEL_SCALE)})


def _arc_image(npix, theta_px, phi0, width_px, flux, core_shortcut):
    c = (npix - 1) / 2.0
    y, x = np.mgrid[:npix, :npix]
    r = np.hypot(x - c, y - c)
    dphi = np.angle(np.exp(1j * (np.arctan2(y - c, x - c) - phi0)))
    shape = np.exp(-0.5 * ((r - theta_px) / width_px) ** 2) * np.exp(-0.5 * (dphi / 0.7) ** 2)
    shape /= shape.sum()
    if core_shortcut:
        blob = np.exp(-0.5 * (r / 1.5) ** 2)
        shape = shape + core_shortcut * blob / blob.sum()
    return flux[:, None, None] * shape[None]


def _pixels(rng, npix: int, r2: np.ndarray, src_mode: str, core_shortcut: float) -> dict:
    """One target's cutout, invvar and injected arc (noiseless and with its Poisson noise)."""
    nb = len(BANDS)
    lrg = rng.uniform(5, 30) * np.exp(-0.5 * r2 / 2.5 ** 2) / (2 * np.pi * 2.5 ** 2)
    cutout = (COLOURS[:, None, None] * lrg[None] +
              rng.normal(size=(nb, npix, npix)) * SKY_SIGMA[:, None, None]).astype(np.float32)
    invvar = np.broadcast_to((1.0 / SKY_SIGMA ** 2)[:, None, None], (nb, npix, npix)).astype(np.float32)
    theta_e = rng.uniform(1.8, 3.0)
    flux = rng.uniform(1.0, 4.0) * COLOURS
    width = 1.0 if src_mode == "cosmos" else 1.6
    arc = _arc_image(npix, theta_e / PIXEL_SCALE, rng.uniform(-np.pi, np.pi), width, flux, core_shortcut)
    arc = arc.astype(np.float16).astype(np.float64)  # as stage 5 stores it (the noise follows the stored arc)
    gain = np.array([gain_estimate(invvar[b], BANDS[b], PIXEL_SCALE) for b in range(nb)])
    noisy = np.stack([add_poisson_noise(arc[b], gain[b], rng) for b in range(nb)])
    return {"cutout": cutout, "invvar": invvar, "theta_e": theta_e, "flux": flux, "gain": gain,
            "injected": (cutout.astype(np.float64) + noisy).astype(np.float32), "arc": arc.astype(np.float32)}


def _truth(rng, px: dict, src_mode: str) -> dict:
    """The injected row's truth columns (morphology differs by source mode)."""
    morph = ({"src_gini": rng.uniform(0.45, 0.65), "src_m20": rng.uniform(-1.9, -1.2),
              "src_clumpiness": rng.uniform(0.05, 0.3)} if src_mode == "cosmos" else
             {"src_gini": rng.uniform(0.35, 0.45), "src_m20": rng.uniform(-2.2, -1.9),
              "src_clumpiness": rng.uniform(0.0, 0.03)})
    return {"theta_e": px["theta_e"], "lens_e1": rng.normal(0, 0.05), "lens_e2": rng.normal(0, 0.05),
            "shear_g1": rng.normal(0, 0.02), "shear_g2": rng.normal(0, 0.02),
            "src_x": rng.uniform(-0.3, 0.3), "src_y": rng.uniform(-0.3, 0.3),
            "src_phi": rng.uniform(0, 2 * np.pi), "src_mode": src_mode, "src_index": int(rng.integers(100)),
            "src_z": rng.uniform(1, 2.5), "src_hlr_arcsec": rng.uniform(0.1, 0.5),
            **{f"src_mag_{b}": 22.5 - 2.5 * np.log10(px["flux"][k] / 8.0) for k, b in enumerate(BANDS)},
            **({"sersic_n": 1.0, "sersic_re_arcsec": 0.3, "sersic_q": 0.7} if src_mode == "sersic" else {}),
            **morph}


def _pair(rng, i: int, seed: int, npix: int, r2: np.ndarray, split: str, src_mode: str,
          core_shortcut: float) -> tuple[dict, dict]:
    """The injected and control rows of target ``i``."""
    nb = len(BANDS)
    target = f"9010-{1000 + i}-{i}"
    task = f"{target}_cfg{seed}_r0"
    px = _pixels(rng, npix, r2, src_mode, core_shortcut)
    m = arc_metrics(px["arc"][None].astype(np.float64), px["invvar"][None].astype(np.float64), np.array([8.0]),
                    np.array([2]), np.zeros(1), np.zeros(1), BANDS, PIXEL_SCALE)
    psf = {b: float(rng.uniform(1.0, 1.6)) for b in BANDS}
    depth = {b: float(1.0 / (SKY_SIGMA[k] ** 2 * 4 * np.pi * (psf[b] / 2.355 / PIXEL_SCALE) ** 2))
             for k, b in enumerate(BANDS)}
    common = {"target_id": target, "pair_id": task, "replicate": 0, "config_hash": f"cfg{seed}",
              "code_version": "factory", "ra": 150.0 + 0.01 * i, "dec": 2.0 + 0.01 * i,
              "brickname": "1500p020", "split": split, "maskbits": np.zeros(npix * npix, np.int32),
              **{f"psf_fwhm_{b}": psf[b] for b in BANDS}, **{f"psfdepth_{b}": depth[b] for b in BANDS}}
    metrics = {k: float(v[0]) for k, v in m.items()}
    metrics.update({f"gain_{b}": float(px["gain"][k]) for k, b in enumerate(BANDS)})
    inj = {**common, **_truth(rng, px, src_mode), **metrics, "task_id": task, "is_control": False,
           "seed": int.from_bytes(hashlib.blake2b(task.encode(), digest_size=8).digest(), "little") >> 1,
           "ok": True, "fail_reason": None, "image": px["injected"].ravel(), "invvar": px["invvar"].ravel(),
           "arc": px["arc"].ravel()}
    ctl = {**common, "task_id": task + "_ctl", "is_control": True, "seed": inj["seed"] ^ 1, "ok": True,
           "fail_reason": None, "image": px["cutout"].ravel(), "invvar": px["invvar"].ravel(),
           "arc": np.zeros(nb * npix * npix, np.float32)}
    return inj, ctl


def make_rows(n_pairs: int, *, npix: int = 64, seed: int = 1, core_shortcut: float = 0.0,
              src_mode: str = "cosmos", n_failed: int = 0, nan_rows: int = 0,
              split_names=("train", "val")) -> list[dict]:
    """Rows (dicts of Python/NumPy values) of ``n_pairs`` injected/control pairs."""
    rng = np.random.default_rng(seed)
    c = (npix - 1) / 2.0
    y, x = np.mgrid[:npix, :npix]
    r2 = (x - c) ** 2 + (y - c) ** 2
    rows = []
    nan_left = nan_rows
    for i in range(n_pairs):
        inj, ctl = _pair(rng, i, seed, npix, r2, split_names[i % len(split_names)], src_mode, core_shortcut)
        if i < n_failed:
            inj.update(ok=False, fail_reason="psf_kernel_too_large", image=None, invvar=None, arc=None,
                       maskbits=None)
        elif nan_left > 0:
            inj["image"] = inj["image"].copy()
            inj["image"][7] = np.nan
            nan_left -= 1
        rows += [inj, ctl]
    return rows


def _column(rows, f: pa.Field):
    name, typ = f.name, f.type
    if pixel_codec.is_encoded(f):
        return pixel_codec.encode([r.get(name) for r in rows], f)
    if pa.types.is_fixed_size_list(typ):
        n = typ.list_size
        flat = np.concatenate([np.full(n, np.nan) if r.get(name) is None else np.asarray(r[name], np.float64)
                               for r in rows])
        values = pa.array(flat, type=typ.value_type, from_pandas=True)
        return pa.FixedSizeListArray.from_arrays(values, n)
    return pa.array([r.get(name) for r in rows], type=typ)


def write_dataset(uri: str, rows: list[dict], npix: int = 64) -> list[str]:
    """Write rows as ``<uri>/split=<s>/part-0000<k>.parquet`` (k = hash of task_id mod 2)."""
    sch = schema(npix)
    groups: dict[tuple, list] = {}
    for r in rows:
        k = hashlib.blake2b(r["task_id"].encode(), digest_size=2).digest()[0] % 2
        groups.setdefault((r["split"], k), []).append(r)
    written = []
    for (split, k), part in sorted(groups.items()):
        table = pa.table([_column(part, f) for f in sch], schema=sch)
        path = storage.join(uri, f"split={split}", f"part-{k:05d}.parquet")
        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes(path, buf.getvalue())
        written.append(path)
    return written
