"""The CCD units the PSF stack relies on, checked on the real testcase6 patch against its coadd.

The stack weights each CCD by ``1 / sig1**2`` from the CCD table (udfs.survey.psf_stack), taking
``sig1`` to be the CCD's per-pixel noise in nanomaggies. Here the CCD cutouts (ADU, their own spline
sky) are calibrated with the table's zero point, ``nanomaggies = (counts - sky) * 10**(-0.4 *
(ccdzpt - 22.5)) / exptime``, and checked two ways: the calibrated weight-map noise equals ``sig1``,
and the DEV galaxy's aperture flux on the CCD that went into the survey's z coadd equals the coadd's.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning
from scipy.interpolate import RectBivariateSpline

DEV = (110.30856314924289, 23.91679202853423)


@pytest.fixture(scope="module")
def patch(data_root):
    ls = data_root / "legacysurvey"
    return {"root": ls / "dr9_ccds_testcase6", "ccds": Table.read(ls / "dr9_ccds_testcase6" / "survey-ccds-1.fits.gz"),
            "coadd": ls / "coadd_1102p240_z"}


def _spline_sky(root, row, shape) -> np.ndarray:
    """legacypipe's per-CCD spline sky (calib/sky-single) on the cutout's pixels (ADU)."""
    folder, name = row["image_filename"].strip().rsplit("/", 1)
    stem = name.removesuffix(".fits").split(".")[0]
    s = Table.read(root / "calib" / "sky-single" / folder / stem / f"{stem}-{row['ccdname'].strip()}-splinesky.fits")[0]
    spline = RectBivariateSpline(s["xgrid"], s["ygrid"], s["gridvals"].T, kx=s["order"], ky=s["order"])
    return spline(s["x0"] + np.arange(shape[1]), s["y0"] + np.arange(shape[0])).T


def _calibrated(root, row) -> tuple[np.ndarray, np.ndarray, WCS]:
    path = root / "images" / row["image_filename"].strip()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        with fits.open(path) as hdul:
            counts, wcs = hdul[row["image_hdu"]].data.astype(float), WCS(hdul[row["image_hdu"]].header)
    with fits.open(str(path).replace("_ooi_", "_oow_")) as hdul:
        weight = hdul[row["image_hdu"]].data.astype(float)
    per_count = 10 ** (-0.4 * (row["ccdzpt"] - 22.5)) / row["exptime"]
    return (counts - _spline_sky(root, row, counts.shape)) * per_count, weight / per_count ** 2, wcs


def _aperture(image, x, y, radius, sub=10) -> float:
    yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    return float(sum(np.sum(image * (np.hypot(xx + dx - x, yy + dy - y) < radius))
                     for dy in offsets for dx in offsets) / sub ** 2)


def test_calibrated_weight_map_noise_is_the_tables_sig1(patch):
    for row in patch["ccds"]:
        _, invvar, _ = _calibrated(patch["root"], row)
        noise = float(np.median(1 / np.sqrt(invvar[invvar > 0])))
        print(f"\n{row['filter']} {row['ccdname'].strip()}: median weight-map sigma {noise:.5f} nmgy, "
              f"sig1 {row['sig1']:.5f} (ratio {noise / row['sig1']:.3f})")
        # sig1 is legacypipe's own sky-noise estimate; the CP weight map's median is 1-10% above it
        assert 1.0 <= noise / row["sig1"] < 1.12


def test_dev_galaxy_flux_on_the_calibrated_ccd_matches_the_survey_coadd(patch):
    coadd = patch["coadd"]
    went_in = Table.read(coadd / "legacysurvey-1102p240-ccds.fits")
    assert len(went_in) == 1 and "c4d_150110_053718_ooi_z" in went_in["image_filename"][0]  # one z CCD
    row = next(r for r in patch["ccds"] if r["image_filename"].strip().endswith("c4d_150110_053718_ooi_z_ls9.S4.fits"))
    image, _, wcs = _calibrated(patch["root"], row)
    with fits.open(coadd / "legacysurvey-1102p240-image-z.fits.fz") as hdul:
        cimage, cwcs = hdul[1].data.astype(float), WCS(hdul[1].header)
    x, y = (float(v) for v in wcs.world_to_pixel_values(*DEV))
    cx, cy = (float(v) for v in cwcs.world_to_pixel_values(*DEV))
    for radius in (5.0, 6.0):  # px: inside both cutouts (the DEV galaxy sits 6.6 px from the edge)
        ccd, co = _aperture(image, x, y, radius), _aperture(cimage, cx, cy, radius)
        print(f"\nDEV z aperture r = {radius:.0f} px: calibrated CCD {ccd:.3f} nmgy, coadd {co:.3f} "
              f"(ratio {ccd / co:.3f})")
        assert ccd / co == pytest.approx(1.0, abs=0.05)
    # without the exposure time the calibration is 150x off: the check has teeth
    assert _aperture(image * row["exptime"], x, y, 6.0) / _aperture(cimage, cx, cy, 6.0) > 100
