"""The brick grid against the real survey-bricks table, and the rendered sample sky: coadd file
format, WCS, determinism, and source flux and shape against the real catalogue rows."""
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table

from udfs.survey.bricks import BrickError, brick_at, brick_from_name, coadd_wcs_header
from udfs.survey.coadd_cutouts import CutoutConfig, cut_brick
from udfs.survey.coadd_files import brick_file
from udfs.survey.sample_sky import read_catalogs, render_brick, write_sky_for_targets


def test_brick_grid_matches_the_survey_bricks_table_and_coadd_header(data_root):
    folder = data_root / "legacysurvey" / "dr6_coadd_0959p805"
    row = Table.read(folder / "survey-bricks.fits.gz")[0]
    b = brick_from_name("0959p805")
    assert b.name == row["BRICKNAME"].strip()
    for ours, col in ((b.ra, "RA"), (b.dec, "DEC"), (b.ra1, "RA1"), (b.ra2, "RA2"), (b.dec1, "DEC1"), (b.dec2, "DEC2")):
        assert ours == pytest.approx(row[col], abs=1e-7)
    real = fits.getheader(folder / "legacysurvey-0959p805-image-g.fits.fz", 1)
    for k, v in coadd_wcs_header(b).items():
        assert real[k] == pytest.approx(v, rel=1e-12) if not isinstance(v, str) else real[k] == v
    cat = read_catalogs([str(data_root / "legacysurvey" / "dr9_tractor" / "tractor-1054p567.fits")])
    assert brick_at(cat.ra[0], cat.dec[0]).name == cat.brickname[0] == "1054p567"
    with pytest.raises(BrickError, match="0959p806"):
        brick_from_name("0959p806")


@pytest.fixture(scope="module")
def catalog(data_root):
    ls = data_root / "legacysurvey"
    return read_catalogs(sorted(str(p) for p in (ls / "dr8_tractor").glob("tractor-*.fits")) +
                         sorted(str(p) for p in (ls / "dr8_sweeps").glob("sweep-*.fits")))


def _targets(catalog, picks):
    rows = pd.concat([catalog[(catalog.brickname == b) & (catalog.objid == o)] for b, o in picks])
    return pd.DataFrame({"target_id": [f"{b}-{o}" for b, o in picks], "ra": rows.ra.values,
                         "dec": rows.dec.values, "brickname": rows.brickname.values,
                         "psf_fwhm_g": 1.3, "psf_fwhm_r": 1.1, "psf_fwhm_z": 1.0, "split": "train"}), rows


def test_sample_sky_files_read_back_with_catalogue_fluxes(catalog, tmp_path):
    # bright, isolated real sources: a REX (3301m002 #15) and an EXP (3301m007 #8)
    targets, rows = _targets(catalog, [("3301m002", 15), ("3301m007", 8)])
    summary = write_sky_for_targets(targets, catalog, str(tmp_path / "a"))
    assert [s["brickname"] for s in summary] == ["3301m002", "3301m007"]
    path = brick_file(str(tmp_path / "a"), "3301m002", "image", "r")
    with fits.open(path) as hdul:
        hdu = hdul[1]
        assert isinstance(hdu, fits.CompImageHDU)
        assert hdu._header["ZCMPTYPE"] == "RICE_1" and (hdu._header["ZTILE1"], hdu._header["ZTILE2"]) == (100, 100)
        h = hdu.header
        assert (h["CTYPE1"], h["CTYPE2"], h["MAGZERO"], h["BUNIT"]) == ("RA---TAN", "DEC--TAN", 22.5, "nanomaggy")
        assert (h["CRVAL1"], h["CRVAL2"]) == (330.125, -0.25) and h["CD1_1"] == pytest.approx(-0.262 / 3600)
        assert h["CRPIX1"] == 1800.5 - h["SECX0"] and h["SAMPSKY"]
    # byte-identical rerun
    write_sky_for_targets(targets.iloc[:1], catalog, str(tmp_path / "b"))
    assert open(path, "rb").read() == open(brick_file(str(tmp_path / "b"), "3301m002", "image", "r"), "rb").read()

    for (_, t), (_, c) in zip(targets.iterrows(), rows.iterrows()):
        out = cut_brick(str(tmp_path / "a"), t.brickname, t.to_frame().T, CutoutConfig(stamp_size=96)).iloc[0]
        assert out.ok and out.has_maskbits
        img = out.image.reshape(3, 96, 96)
        ivar = out.invvar.reshape(3, 96, 96)
        yy, xx = np.mgrid[:96, :96]
        ap = np.hypot(xx - (47.5 + out.dx_pix), yy - (47.5 + out.dy_pix)) < 10.0 / 0.262  # 10" radius
        for k, b in enumerate("grz"):
            flux, sigma = img[k][ap].sum(), np.sqrt((1.0 / ivar[k][ap]).sum())
            # noise (4 sigma) plus 1% for the profile beyond the drawing box / aperture
            assert abs(flux - c[f"flux_{b}"]) < 4 * sigma + 0.01 * c[f"flux_{b}"], (t.target_id, b)
        # the brightest pixel is at the catalogue position
        iy, ix = np.unravel_index(np.argmax(img[2]), img[2].shape)
        assert abs(ix - (47.5 + out.dx_pix)) <= 1 and abs(iy - (47.5 + out.dy_pix)) <= 1
        far = ~(np.hypot(xx - 47.5, yy - 47.5) < 25)
        assert np.std(img[1][far] * np.sqrt(ivar[1][far])) == pytest.approx(1.0, abs=0.1)


def test_tractor_ellipticity_orientation(catalog):
    """e1 > 0: major axis north-south (image y); e2 > 0: position angle 45 deg east of north,
    i.e. along (-x, +y) because RA increases to -x (Tractor EllipseE convention)."""
    b = brick_from_name("3301m002")
    base = catalog[catalog.brickname == "3301m002"].iloc[[2]].copy()  # real row for depths
    base = base.assign(type="EXP", shapeexp_r=2.0, flux_g=5e3, flux_r=5e3, flux_z=5e3,
                       ra=b.ra, dec=b.dec, objid=999)
    moments = []
    for e1, e2 in ((0.5, 0.0), (0.0, 0.5)):
        cat = pd.concat([catalog[catalog.brickname == "3301m002"].iloc[[2]].assign(ra=b.ra + 1, flux_g=0, flux_r=0, flux_z=0),
                         base.assign(shapeexp_e1=e1, shapeexp_e2=e2)])
        img = render_brick(b, cat, (1700, 1700, 200, 200), bands="r")["images"]["r"]
        yy, xx = np.mgrid[:200, :200] - 99.5
        w = np.clip(img, 0, None)
        moments.append(((w * xx**2).sum() / w.sum(), (w * yy**2).sum() / w.sum(), (w * xx * yy).sum() / w.sum()))
    (vx1, vy1, _), (vx2, vy2, cxy2) = moments
    assert vy1 > 1.5 * vx1
    assert cxy2 < -0.3 * np.sqrt(vx2 * vy2)
