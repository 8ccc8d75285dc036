"""Test inputs for the lensing core: a small bank of real COSMOS galaxies and cutout FITS files.

The bank is drawn here with GalSim from the real ``btk_ext26`` galaxies in the documented layout
(``udfs.sources.bank``), so the renderer is tested on real morphologies independently of the bank
job; the cutouts are generated with a TAN WCS at the DR10 pixel scale.
"""
from __future__ import annotations

import galsim
import h5py
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

BANK_SCALE = 0.03
BANK_SIZE = 64


def write_test_bank(path, cosmos_dir, n=6) -> None:
    cat = galsim.RealGalaxyCatalog("real_galaxy_catalog_26_extension_example.fits", dir=str(cosmos_dir))
    images = []
    for i in range(n):
        gal = galsim.Convolve(galsim.RealGalaxy(cat, index=i, flux=1.0), galsim.Gaussian(fwhm=0.09))
        img = gal.drawImage(nx=BANK_SIZE, ny=BANK_SIZE, scale=BANK_SCALE, method="no_pixel").array
        images.append(img / img.sum())
    cat.close()
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.asarray(images, dtype=np.float32))
        f.attrs["pixel_scale_arcsec"] = BANK_SCALE
        f.attrs["catalog_name"] = "btk_ext26 (test fixture)"
        meta = f.create_group("meta")
        meta["ident"] = np.arange(n)
        meta["g_r"] = np.linspace(0.3, 0.8, n)
        meta["r_z"] = np.linspace(0.2, 0.6, n)
        meta["sersic_n"] = np.full(n, 1.0)
        meta["sersic_hlr_arcsec"] = np.full(n, 0.3)
        meta["sersic_q"] = np.full(n, 0.7)
        meta["sersic_phi_rad"] = np.full(n, 0.4)


def tan_header(npix=64, scale=0.262, ra=150.0, dec=2.2) -> fits.Header:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(npix + 1) / 2.0, (npix + 1) / 2.0]
    w.wcs.cd = np.array([[-scale / 3600.0, 0.0], [0.0, scale / 3600.0]])
    return w.to_header()


def write_cube_cutout(path, npix=64, bands="grz", seed=1, invvar=True, nan_band=None) -> None:
    """Viewer-style cube: sky noise at DR10-like depth plus a smooth 'LRG' in the centre."""
    rng = np.random.default_rng(seed)
    ivar = {"g": 400.0, "r": 150.0, "z": 30.0}
    yy, xx = np.mgrid[0:npix, 0:npix] - (npix - 1) / 2.0
    lrg = np.exp(-np.hypot(xx, yy) / 3.0)
    cube = np.stack([lrg * (1 + i) + rng.normal(0, ivar[b] ** -0.5, (npix, npix)) for i, b in enumerate(bands)])
    if nan_band is not None:
        cube[bands.index(nan_band)] = np.nan
    hdr = tan_header(npix)
    hdr["BANDS"] = bands
    hdus = [fits.PrimaryHDU(cube.astype(np.float32), header=hdr)]
    if invvar:
        iv = np.stack([np.full((npix, npix), ivar[b], np.float32) for b in bands])
        hdus.append(fits.ImageHDU(iv, header=hdr, name="INVVAR"))
    fits.HDUList(hdus).writeto(path, overwrite=True)
