"""Helpers of tests/test_select_lrgs.py: the LRG equations by hand, modified catalogue files, job inputs."""
from __future__ import annotations

import math

import numpy as np
from astropy.io import fits

from udfs.io import storage


def desi_lrg_by_hand(row, north):
    """The DESI main-survey LRG equations, written out per row (BRIEF.md constants)."""
    k = (21.61, 2.97, 1.8, 1.83, 17.13, 16.31, 3.4) if north else (21.6, 2.9, 1.8, 1.8, 17.14, 16.33, 3.3)
    zfib_max, gw1, rw1_lowz, slope, pivot, offset, highz = k

    def mag(flux):
        return 22.5 - 2.5 * math.log10(max(flux, 1e-7))

    flux = {b: float(row[f"FLUX_{b}"]) / float(row[f"MW_TRANSMISSION_{b}"]) for b in ("G", "R", "Z", "W1")}
    zfiber = float(row["FIBERFLUX_Z"]) / float(row["MW_TRANSMISSION_Z"])
    if not (flux["R"] > 0 and row["FLUX_IVAR_R"] > 0 and flux["Z"] > 0 and row["FLUX_IVAR_Z"] > 0
            and zfiber > 0 and flux["W1"] > 0 and row["FLUX_IVAR_W1"] > 0):
        return False
    if not (row["GAIA_PHOT_G_MEAN_MAG"] == 0 or row["GAIA_PHOT_G_MEAN_MAG"] > 18):
        return False
    if not 22.5 - 2.5 * math.log10(max(float(row["FIBERTOTFLUX_Z"]), 1e-7)) > 17.5:
        return False
    if not (row["NOBS_G"] > 0 and row["NOBS_R"] > 0 and row["NOBS_Z"] > 0):
        return False
    if int(row["MASKBITS"]) & (2 ** 1 + 2 ** 12 + 2 ** 13):
        return False
    g, r, z, w1 = (mag(flux[b]) for b in ("G", "R", "Z", "W1"))
    return (z - w1 > 0.8 * (r - z) - 0.6 and mag(zfiber) < zfib_max
            and (g - w1 > gw1 or r - w1 > rw1_lowz)
            and ((r - w1 > slope * (w1 - pivot) and r - w1 > w1 - offset) or r - w1 > highz))


def write_modified(src, dst, drop=None, set_column=None):
    with fits.open(src) as hdul:
        table = hdul[1].data
        cols = [c for c in table.columns if c.name != drop]
        hdu = fits.BinTableHDU.from_columns(fits.ColDefs(cols))
        if set_column:
            name, value = set_column
            hdu.data[name][:] = value
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(dst)
    return str(dst)


def stage1_inputs(data_root, where: str, base: str) -> list[str]:
    """Folder, glob and folder inputs over the DR8 sweeps/Tractor files and the DR9 Tractor file
    (copied to ``base`` on S3 for ``where == "s3"``)."""
    ls = data_root / "legacysurvey"
    if where == "local":
        return [str(ls / "dr8_sweeps"), str(ls / "dr8_tractor" / "tractor-*.fits"), str(ls / "dr9_tractor")]
    sources = [*sorted((ls / "dr8_sweeps").glob("*.fits")), *sorted((ls / "dr8_tractor").glob("*.fits")),
               ls / "dr9_tractor/tractor-1054p567.fits"]
    for p in sources:
        storage.write_bytes(storage.join(base, "cat", p.parent.name, p.name), p.read_bytes())
    return [storage.join(base, "cat", "dr8_sweeps"), storage.join(base, "cat", "dr8_tractor", "tractor-*.fits"),
            storage.join(base, "cat", "dr9_tractor")]


def small_bank(where: str, base: str, tmp_path) -> tuple[list[str], int]:
    """``(--bank args, bank size)``: a 5-image bank (local or on s3) with the meta stage 3's deflector
    mode reads (photo-z behind any LRG, unlensed r) and its cosmology."""
    import json

    import h5py

    with h5py.File(tmp_path / "bank.h5", "w") as h:
        h["images"] = np.full((5, 8, 8), 1 / 64, np.float32)
        h.attrs["pixel_scale_arcsec"] = 0.03
        h.attrs["config"] = json.dumps({"cosmology": "Planck18"})
        h["meta/zphot"] = np.array([1.2, 1.5, 2.0, 2.5, 3.0])
        h["meta/mag_r"] = np.array([24.0, 24.5, 23.8, 25.0, 24.2])
    storage.write_bytes(storage.join(base, "bank.h5"), (tmp_path / "bank.h5").read_bytes())
    return ["--bank", storage.join(base, "bank.h5")], 5
