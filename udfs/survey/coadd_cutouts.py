"""Cut per-target stamps out of Legacy Survey coadd bricks, reading only the tiles they need.

Coadd files are located and read by :mod:`udfs.survey.coadd_files` (only the compressed tiles a
stamp overlaps are fetched, each once per brick group, every byte counted, remote errors retried).
``bytes_read`` of a row is its share of the group's fetched bytes (:func:`group_bytes_split`: a
file's headers split among the rows that opened it, each tile and its tile-table row among the
stamps that overlap it), so a group's rows sum exactly to the bytes it fetched.

Stamp geometry (0-based pixels, x along columns): the target's brick pixel position (x, y) comes from
the brick's TAN WCS; the stamp of N x N pixels starts at ``x0 = floor(x - (N-1)/2 + 0.5)`` so the
target sits at stamp position ``((N-1)/2 + dx_pix, (N-1)/2 + dy_pix)`` with dx, dy in [-0.5, 0.5).

Failures never raise: the row has ``ok=False``, ``fail_reason`` (first failure found, in this
order) and null pixel arrays. Reasons: ``bad_psf:<b>`` (psf_fwhm_<b> missing, non-finite or <= 0),
``missing_band:<b>`` (image or invvar file absent), ``missing_maskbits``, ``unreadable:<file>``
(not a readable FITS image), ``read_error:<file>`` (I/O still failing after the retries),
``wcs_mismatch:<file>``, ``off_image`` (target outside the image), ``stamp_crosses_edge``,
``all_nan:<b>`` (no finite image pixel), ``low_coverage:<b>`` (fewer than ``min_good_frac`` of the
pixels have finite image and invvar > 0). In good rows, pixels with a non-finite value are set to
image 0, invvar 0 (the survey's "no data" convention; the invvar marks them, they never pass as good).

Good rows also carry the target's PSF per band (:mod:`udfs.survey.target_psf`: ``psf``,
``psf_size``, ``psf_source``, and the bytes and files its reads cost, ``psf_bytes_read`` /
``psf_files``, paid by the brick's first target) and the stamp's noise texture per band
(:func:`udfs.survey.noise_texture.cutout_texture`: ``noise_rho``, ``noise_kernel``,
``noise_source``, ``noise_corr_<b>``).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from astropy.wcs import WCS

from udfs.io import storage
from udfs.io.range_reader import split_shared
from udfs.survey.bands import SURVEY_BANDS
from udfs.survey.coadd_files import CoaddFile, RemoteReadError, brick_file
from udfs.survey.cutout_config import CutoutConfig  # noqa: F401 - re-exported: the config of cut_brick
from udfs.survey.noise_texture import brick_median_texture, cutout_texture, neighbour_correlation
from udfs.survey.target_psf import BrickPSF, source_method

WCS_KEYS = ("NAXIS1", "NAXIS2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2")


def stamp_origin(x: float, n: int) -> tuple[int, float]:
    """First pixel of an n-pixel stamp around 0-based position x, and the target's offset dx."""
    x0 = int(math.floor(x - (n - 1) / 2 + 0.5))
    return x0, float(x - (x0 + (n - 1) / 2))


class _Failed(Exception):
    """A stamp that cannot be cut: ``args[0]`` is the row's fail_reason."""


def brick_psf(base: str, brick: str, cfg: CutoutConfig) -> BrickPSF:
    """The PSF maker of one brick: ``--ccds`` or the brick's ``-ccds.fits`` beside its coadd
    files; ``--calib-base`` or ``<base>/calib``."""
    ccds = cfg.psf.ccds or brick_file(base, brick, "ccds", layout=cfg.layout, ext=".fits")
    return BrickPSF(cfg.psf, ccds, cfg.psf.calib_base or storage.join(base, "calib"))


def cut_brick(base: str, brick: str, targets: pd.DataFrame, cfg: CutoutConfig) -> pd.DataFrame:
    """Stamps for the targets of one brick (columns target_id, ra, dec, psf_fwhm_<b>, and any
    others, which are carried through). One output row per input row, same order."""
    cfg.validate()
    files: dict[str, CoaddFile] = {}
    psfs = brick_psf(base, brick, cfg)

    def get(kind: str, band: str | None = None) -> CoaddFile:
        label = kind + (f"-{band}" if band else "")
        if label not in files:
            files[label] = CoaddFile(brick_file(base, brick, kind, band, cfg.layout), label,
                                     cfg.retry_policy(), cfg.max_remote_requests)
        return files[label]

    rows, claims = [], []
    try:
        for rec in targets.to_dict("records"):
            row = _cut_one(rec, brick, cfg, get)
            claims.append({label: f.take_claims() for label, f in files.items()})
            _add_psf_and_texture(row, cfg, psfs)
            rows.append(row)
    finally:
        for f in files.values():
            f.close()
    for row, paid in zip(rows, group_bytes_split(claims, list(files))):
        row["bytes_read"] = int(paid)
    _lend_brick_texture(rows, cfg.bands)
    return pd.DataFrame(rows)


def group_bytes_split(claims: list[dict], labels: list[str]) -> np.ndarray:
    """``bytes_read`` per row of a brick group: each file's fetched bytes split among the rows that
    used them (``claims[i][label]``: row i's byte ranges of that file). A file's headers are shared
    by every row that opened it, a tile and its tile-table row by every stamp it overlaps; the
    rows' bytes sum exactly to the bytes fetched. Rows that failed before reading pay nothing."""
    paid = np.zeros(len(claims), dtype=np.int64)
    for label in labels:
        paid += split_shared([c.get(label, []) for c in claims])
    return paid


def _lend_brick_texture(rows: list[dict], bands: str) -> None:
    """Bands of stamps whose texture could not be measured take the brick's median (recorded)."""
    ok = [r for r in rows if r["ok"]]
    for i, b in enumerate(bands):
        rhos = [r["noise_rho"].reshape(-1, 3, 3)[i].copy() for r in ok]
        measured = [bool(np.isfinite(rho).all()) for rho in rhos]
        if all(measured) or not any(measured):
            continue
        lent = brick_median_texture(rhos)
        for r, was_measured in zip(ok, measured):
            if was_measured:
                continue
            r["noise_rho"].reshape(-1, 3, 3)[i] = lent[0]
            r["noise_kernel"].reshape(-1, 3, 3)[i] = lent[1]
            r["noise_source"][i] = f"brick_median:{sum(measured)} stamps; {r['noise_source'][i]}"
            r[f"noise_corr_{b}"] = neighbour_correlation(lent[0])


def _cut_one(rec: dict, brick: str, cfg: CutoutConfig, get) -> dict:
    """One output row: the stamp, or ``ok=False`` with the first fail_reason and null pixels."""
    row = dict(rec)
    row.update(brickname=brick, ok=False, fail_reason=None, dx_pix=float("nan"), dy_pix=float("nan"),
               x_pix=float("nan"), y_pix=float("nan"), stamp_x0=-1, stamp_y0=-1, bands=cfg.bands,
               good_frac=float("nan"), has_maskbits=False, file_bytes=0,
               image=None, invvar=None, maskbits=None)
    try:
        for b in cfg.bands:
            fwhm = rec.get(f"psf_fwhm_{b}")
            if fwhm is None or not np.isfinite(fwhm) or fwhm <= 0:
                raise _Failed(f"bad_psf:{b}")
        needed, mask_f = _open_files(row, cfg, get)
        x0, y0 = _place(row, rec, needed, mask_f, cfg.stamp_size)
        images, invvars, good = _read_bands(needed, x0, y0, cfg)
        if mask_f is not None:
            row["maskbits"] = _section(mask_f, y0, x0, cfg.stamp_size).astype(np.int32).ravel()
            row["has_maskbits"] = True
    except _Failed as failed:
        row.update(ok=False, fail_reason=failed.args[0], image=None, invvar=None, maskbits=None)
        return row
    row.update(ok=True, image=np.stack(images).ravel(), invvar=np.stack(invvars).ravel(),
               good_frac=float(min(good)))
    return row


def _add_psf_and_texture(row: dict, cfg: CutoutConfig, psfs: BrickPSF) -> None:
    """The PSF and noise-texture columns of a row (null for failed rows)."""
    row.update(psf=None, psf_size=-1, psf_source=None, psf_bytes_read=0, psf_files=[],
               noise_rho=None, noise_kernel=None, noise_source=None,
               **{f"noise_corr_{b}": float("nan") for b in SURVEY_BANDS})
    if not row["ok"]:
        return
    first = len(psfs.cache.log)
    kernels, sources = psfs.at(float(row["ra"]), float(row["dec"]), cfg.bands,
                               {b: row[f"psf_fwhm_{b}"] for b in cfg.bands})
    read = psfs.cache.log[first:]
    row.update(psf=kernels.ravel(), psf_size=int(kernels.shape[-1]), psf_source=sources,
               psf_bytes_read=int(sum(e["bytes"] for e in read)), psf_files=[e["uri"] for e in read])
    n = cfg.stamp_size
    image = row["image"].reshape(len(cfg.bands), n, n)
    invvar = row["invvar"].reshape(len(cfg.bands), n, n)
    mask = None if row["maskbits"] is None else row["maskbits"].reshape(n, n)
    rhos, kerns, srcs = zip(*(cutout_texture(image[i], invvar[i], mask) for i in range(len(cfg.bands))))
    row.update(noise_rho=np.stack(rhos).astype(np.float32).ravel(),
               noise_kernel=np.stack(kerns).astype(np.float32).ravel(), noise_source=list(srcs))
    for b, rho in zip(cfg.bands, rhos):
        row[f"noise_corr_{b}"] = neighbour_correlation(rho) if np.isfinite(rho).all() else float("nan")


def _open_files(row: dict, cfg: CutoutConfig, get) -> tuple[list, CoaddFile | None]:
    """Open the image and invvar file of every band and the maskbits file; add their sizes to
    ``row["file_bytes"]``. Returns ``([(image, invvar, band), ...], maskbits or None)``."""
    needed = [(get("image", b), get("invvar", b), b) for b in cfg.bands]
    for img_f, iv_f, b in needed:
        for f in (img_f, iv_f):
            err = f.open()
            row["file_bytes"] += f.size
            if err == "missing":
                raise _Failed(f"missing_band:{b}")
            if err:
                raise _Failed(f"{err}:{f.label}")
    mask_f = get("maskbits")
    mask_err = mask_f.open()
    if mask_err == "missing":
        if cfg.require_maskbits:
            raise _Failed("missing_maskbits")
        return needed, None
    if mask_err:
        raise _Failed(f"{mask_err}:maskbits")
    row["file_bytes"] += mask_f.size
    return needed, mask_f


def _place(row: dict, rec: dict, needed: list, mask_f: CoaddFile | None, n: int) -> tuple[int, int]:
    """Check that every file shares the first image's WCS, locate the target, set the geometry
    columns of ``row``; return the stamp origin ``(x0, y0)`` in brick pixels."""
    ref = needed[0][0].hdu.header
    usable = [f for f, _, _ in needed] + [f for _, f, _ in needed] + ([mask_f] if mask_f is not None else [])
    for f in usable[1:]:
        if any(not np.isclose(f.hdu.header.get(k, np.nan), ref.get(k, np.nan), rtol=1e-10, atol=0)
               for k in WCS_KEYS):
            raise _Failed(f"wcs_mismatch:{f.label}")
    nx, ny = int(ref["NAXIS1"]), int(ref["NAXIS2"])
    x, y = WCS(ref).all_world2pix(float(rec["ra"]), float(rec["dec"]), 0)
    x, y = float(x), float(y)
    if not (np.isfinite(x) and np.isfinite(y)):
        raise _Failed("off_image")
    x0, dx = stamp_origin(x, n)
    y0, dy = stamp_origin(y, n)
    row.update(x_pix=x, y_pix=y, dx_pix=dx, dy_pix=dy, stamp_x0=x0, stamp_y0=y0)
    if not (-0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5):
        raise _Failed("off_image")
    if x0 < 0 or y0 < 0 or x0 + n > nx or y0 + n > ny:
        raise _Failed("stamp_crosses_edge")
    return x0, y0


def _section(f: CoaddFile, y0: int, x0: int, n: int) -> np.ndarray:
    try:
        return f.section(y0, x0, n)
    except RemoteReadError:
        raise _Failed(f"read_error:{f.label}") from None
    except Exception:  # noqa: BLE001 - corrupt tile data
        raise _Failed(f"unreadable:{f.label}") from None


def _read_bands(needed: list, x0: int, y0: int, cfg: CutoutConfig) -> tuple[list, list, list]:
    """Image and invvar stamps per band (non-finite pixels -> image 0, invvar 0) and good fractions."""
    images, invvars, good = [], [], []
    for img_f, iv_f, b in needed:
        img = _section(img_f, y0, x0, cfg.stamp_size).astype(np.float32)
        iv = _section(iv_f, y0, x0, cfg.stamp_size).astype(np.float32)
        finite = np.isfinite(img)
        if not finite.any():
            raise _Failed(f"all_nan:{b}")
        bad = ~finite | ~np.isfinite(iv) | ~(iv > 0)
        frac = 1.0 - bad.mean()
        if frac < cfg.min_good_frac:
            raise _Failed(f"low_coverage:{b}")
        img[~finite] = 0.0
        iv[bad] = 0.0
        images.append(img)
        invvars.append(iv)
        good.append(frac)
    return images, invvars, good


def cut_group(pdf: pd.DataFrame, base: str, cfg: CutoutConfig, provenance: dict[str, str],
              columns: list[str]) -> pd.DataFrame:
    """One brick's cutout rows: ``columns`` (the schema's, in order) and ``provenance`` set."""
    pdf = pdf.assign(**{f"psf_fwhm_{b}": np.nan for b in SURVEY_BANDS if f"psf_fwhm_{b}" not in pdf})
    # fixed row order: integer remainders of shared bytes go to the first rows, so bytes_read depends on it
    pdf = pdf.sort_values("target_id", kind="stable").reset_index(drop=True)
    out = cut_brick(base, str(pdf["brickname"].iloc[0]), pdf, cfg)
    out = out.assign(**provenance)
    out["split"] = out["split"].astype(object).where(out["split"].notna(), None)
    return pd.DataFrame({n: out[n] for n in columns})


def cut_bucket(pdf: pd.DataFrame, base: str, cfg: CutoutConfig, provenance: dict[str, str],
               columns: list[str]) -> pd.DataFrame:
    """The cutout rows of one output bucket's targets: :func:`cut_group` per brick, bricks in name order."""
    return pd.concat([cut_group(part, base, cfg, provenance, columns)
                      for _, part in pdf.groupby("brickname", sort=True)], ignore_index=True)


def summarise(df: pd.DataFrame, cfg: CutoutConfig) -> dict:
    """Counts by fail_reason and bytes read per stamp against the whole files' size, from the
    written rows' target_id, ok, fail_reason, bytes_read, file_bytes and brickname."""
    ok = df[df["ok"]]
    reasons = df.loc[~df["ok"], "fail_reason"].value_counts().sort_index()
    total_read = int(df["bytes_read"].sum())
    return {
        "n_targets": int(len(df)), "n_ok": int(len(ok)), "n_failed": int((~df["ok"]).sum()),
        "fail_reasons": {str(k): int(v) for k, v in reasons.items()},
        "n_bricks": int(df["brickname"].nunique()),
        "bytes_read_total": total_read,
        "bytes_read_per_stamp_mean": float(total_read / len(df)) if len(df) else None,
        "bytes_read_per_ok_stamp_median": float(np.median(ok["bytes_read"])) if len(ok) else None,
        "whole_files_bytes_per_stamp_mean": float(df["file_bytes"].mean()) if len(df) else None,
        "read_fraction_of_whole_files": (float(total_read / df["file_bytes"].sum())
                                         if df["file_bytes"].sum() else None),
        "stamp_size": cfg.stamp_size, "bands": cfg.bands,
        **psf_and_texture_summary(ok, cfg.bands),
    }


def psf_and_texture_summary(ok: pd.DataFrame, bands: str) -> dict:
    """PSF sources and noise-texture sources counted per band, fallback reasons, the median
    neighbour correlation per band, and per brick the PSF files read and their bytes."""
    psf_counts, noise_counts, reasons = {}, {}, {}
    for i, b in enumerate(bands):
        methods = pd.Series([source_method(v[i]) for v in ok["psf_source"]], dtype=object)
        psf_counts[b] = {str(k): int(v) for k, v in methods.value_counts().sort_index().items()}
        noise = pd.Series([source_method(v[i]) for v in ok["noise_source"]], dtype=object)
        noise_counts[b] = {str(k): int(v) for k, v in noise.value_counts().sort_index().items()}
        for v in ok["psf_source"]:
            if "; no stack: " in v[i]:
                why = v[i].split("; no stack: ", 1)[1]
                reasons[why] = reasons.get(why, 0) + 1
    per_brick = {}
    for brick, grp in ok.groupby("brickname", sort=True):
        files = sorted({f for fs in grp["psf_files"] for f in fs})
        per_brick[str(brick)] = {"psf_bytes_read": int(grp["psf_bytes_read"].sum()), "psf_files": files}
    corr = {b: (float(np.nanmedian(ok[f"noise_corr_{b}"])) if ok[f"noise_corr_{b}"].notna().any() else None)
            for b in bands}
    return {"psf_source_counts": psf_counts, "psf_fallback_reasons": dict(sorted(reasons.items())),
            "noise_source_counts": noise_counts, "noise_corr_median": corr, "psf_by_brick": per_brick,
            "psf_bytes_read_per_brick_mean": (float(np.mean([v["psf_bytes_read"] for v in per_brick.values()]))
                                              if per_brick else None)}
