"""A rendered stand-in sky in the exact Legacy Survey coadd file format (for the offline demo).

Real coadds of the sample LRGs are not available offline, so this writes, per brick,
``coadd/<bri>/<brick>/legacysurvey-<brick>-{image,invvar}-<band>.fits.fz`` and ``-maskbits.fits.fz``:
an empty primary HDU and a RICE_1 tile-compressed image HDU (100x100 tiles, SUBTRACTIVE_DITHER_2
quantisation with a fixed dither seed) carrying the brick's real TAN WCS (CRVAL at the brick centre,
0.262"/pixel), MAGZERO = 22.5, BUNIT, FILTER and BRICKBND, exactly as the survey's coadds.

What is rendered: every real catalogue row (Tractor catalogue or sweep rows, DR8 or DR9 data model)
falling on the image, from its Tractor model with GalSim: PSF (point source), REX (round
exponential), EXP, DEV (de Vaucouleurs truncated at 8 r_e), COMP (DR8: FRACDEV DEV + (1-FRACDEV) EXP
with their own shapes), SER (DR9 Sersic). Shapes: r_e (arcsec) and Tractor ellipticities e1, e2
(|e| = (1-b/a)/(1+b/a), position angle east of north = atan2(e2, e1)/2); in GalSim's celestial
frame (+u west, +v north) that is the reduced shear (g1, g2) = (-e1, -e2). Fluxes FLUX_<b> as
catalogued (observed nanomaggies). PSF per band: a survey PSFEx model (``psfex``), evaluated at
each source's own position on the band's pseudo-CCD (:mod:`udfs.survey.sky_ccds`: the brick's grid,
the model's fit centre at the brick centre; written beside the coadds as ``-ccds.fits`` with the
moved model under ``calib/``, so that stage 4's :func:`udfs.survey.psf_stack.psf_at_target` gives
the PSF the sky was drawn with), else a Gaussian of the brick's median PSFSIZE_<b> (or the FWHM
inferred from PSFDEPTH/GALDEPTH, :mod:`udfs.survey.psf_size`). Noise:
``sigma = 1/sqrt(PSFDEPTH * NEA_psf)`` from the brick's median PSFDEPTH_<b> (invvar = 1/sigma^2,
sky only, as in the survey's files) plus the sources' own shot noise (variance model/gain, the gain
model of :mod:`udfs.survey.shot_noise`), drawn with the real coadd's noise texture (``texture``,
:mod:`udfs.survey.noise_texture`) or white. Headers record PSFSRC, PSFFWHM, SKYSIG, GAIN, NOISECOR,
NOISESRC and PSFVARY. Seeds are derived from (seed, brick, band): the same inputs give the same pixels.
MASKBITS: only bit 0 (NPRIMARY, pixel outside the brick's unique area) is set; nothing else is
simulated. Size: by default a tile-aligned section of the 3600x3600 brick covering the targets'
stamps plus a margin, with the full brick's pixel grid and sky mapping (keywords SECX0, SECY0 give
its origin); ``full_brick=True`` writes all 3600x3600 pixels.
"""
from __future__ import annotations

import functools
import gzip
import io
import json
import math
import posixpath

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS

from udfs.io import storage
from udfs.config.limits import SERSIC_N_RANGE
from udfs.survey.bands import SURVEY_BANDS
from udfs.survey.bricks import BRICK_NPIX, PIXSCALE_ARCSEC, Brick, BrickError, brick_from_name, coadd_wcs_header
from udfs.survey.sky_files import TILE, seed_for, write_brick
from udfs.survey.depth import pixel_sigma
from udfs.survey.noise_texture import correlated_noise
from udfs.survey.psf_size import fwhm_from_depth_ratio
from udfs.survey.shot_noise import gain_estimate
from udfs.survey.sky_ccds import PseudoCCD, calib_root, write_ccds
from udfs.survey.tractor_catalog import CatalogError

MAX_STAMP = 512  # largest GalSim drawing box per source (pixels)
NPRIMARY = 1 << 0
SHAPE_COLS = ["shape_r", "shape_e1", "shape_e2", "sersic", "fracdev", "shapedev_r", "shapedev_e1",
              "shapedev_e2", "shapeexp_r", "shapeexp_e1", "shapeexp_e2"]


def read_catalog(uri: str, bands: str = SURVEY_BANDS) -> pd.DataFrame:
    """Rows of a Tractor or sweep FITS catalogue, lower-case columns; absent shape/PSFSIZE columns NaN."""
    from astropy.table import Table

    blob = storage.read_bytes(uri)
    if uri.lower().endswith(".gz"):
        blob = gzip.decompress(blob)
    with fits.open(io.BytesIO(blob)) as hdul:
        tab = Table(hdul[1].data)
    need = ["BRICKNAME", "OBJID", "TYPE", "RA", "DEC"] + [f"{p}_{b.upper()}" for b in bands
                                                         for p in ("FLUX", "PSFDEPTH", "GALDEPTH")]
    missing = [c for c in need if c not in tab.colnames]
    if missing:
        raise CatalogError(f"{uri}: catalogue lacks column(s) {', '.join(missing)}")
    out = pd.DataFrame({c.lower(): _native(tab[c]) for c in need})
    for c in SHAPE_COLS + [f"psfsize_{b}" for b in bands]:
        out[c] = np.asarray(tab[c.upper()], dtype=np.float64) if c.upper() in tab.colnames else np.nan
    for c in ("brickname", "type"):
        out[c] = [v.decode() if isinstance(v, bytes) else str(v) for v in out[c]]
        out[c] = out[c].str.strip()
    out["source"] = uri
    return out


def _native(col) -> np.ndarray:
    arr = np.asarray(col)
    return arr.astype(arr.dtype.newbyteorder("=")) if arr.dtype.byteorder not in ("=", "|") else arr


def read_catalogs(uris: list[str], bands: str = SURVEY_BANDS) -> pd.DataFrame:
    """All rows of several catalogues, one row per (brickname, objid): the first file listed wins."""
    frames = [read_catalog(u, bands) for u in uris]
    cat = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return cat.drop_duplicates(["brickname", "objid"], keep="first").reset_index(drop=True)


def _shear(obj, e1: float, e2: float):
    e1 = 0.0 if not np.isfinite(e1) else float(e1)
    e2 = 0.0 if not np.isfinite(e2) else float(e2)
    return obj.shear(g1=-e1, g2=-e2) if (e1 or e2) else obj


def galsim_profile(row: dict):
    """Unit-flux GalSim profile of a catalogue row's Tractor model (None for TYPE DUP)."""
    import galsim

    kind = row["type"]
    where = f"{row.get('source', '?')} row objid={row['objid']}"

    def radius(value, what):
        if not (np.isfinite(value) and value > 0):
            raise CatalogError(f"{where}: TYPE {kind} needs {what} > 0, got {value}")
        return float(value)

    dr9 = np.isfinite(row["shape_r"])
    if kind == "PSF":
        return galsim.DeltaFunction()
    if kind == "DUP":
        return None
    if kind == "REX":
        return galsim.Exponential(half_light_radius=radius(row["shape_r"] if dr9 else row["shapeexp_r"], "shape_r"))
    if kind == "EXP":
        if dr9:
            return _shear(galsim.Exponential(half_light_radius=radius(row["shape_r"], "shape_r")),
                          row["shape_e1"], row["shape_e2"])
        return _shear(galsim.Exponential(half_light_radius=radius(row["shapeexp_r"], "shapeexp_r")),
                      row["shapeexp_e1"], row["shapeexp_e2"])
    if kind == "DEV":
        if dr9:
            re, e1, e2 = radius(row["shape_r"], "shape_r"), row["shape_e1"], row["shape_e2"]
        else:
            re, e1, e2 = radius(row["shapedev_r"], "shapedev_r"), row["shapedev_e1"], row["shapedev_e2"]
        return _shear(galsim.DeVaucouleurs(half_light_radius=re, trunc=8 * re), e1, e2)
    if kind == "SER":
        re = radius(row["shape_r"], "shape_r")
        n = float(np.clip(row["sersic"], *SERSIC_N_RANGE))
        return _shear(galsim.Sersic(n=n, half_light_radius=re, trunc=8 * re), row["shape_e1"], row["shape_e2"])
    if kind == "COMP":
        f = float(np.clip(row["fracdev"], 0.0, 1.0))
        rd = radius(row["shapedev_r"], "shapedev_r")
        dev = _shear(galsim.DeVaucouleurs(half_light_radius=rd, trunc=8 * rd), row["shapedev_e1"], row["shapedev_e2"])
        exp = _shear(galsim.Exponential(half_light_radius=radius(row["shapeexp_r"], "shapeexp_r")),
                     row["shapeexp_e1"], row["shapeexp_e2"])
        return galsim.Add([dev.withFlux(f), exp.withFlux(1.0 - f)])
    raise CatalogError(f"{where}: unknown TYPE {kind!r}")


def brick_psf_and_sigma(rows: pd.DataFrame, band: str, brick: str) -> tuple[float, float, float]:
    """(PSF FWHM arcsec, per-pixel sigma nanomaggies, PSFDEPTH) for a brick from its catalogue rows."""
    depth = rows[f"psfdepth_{band}"].to_numpy(np.float64)
    depth = depth[np.isfinite(depth) & (depth > 0)]
    if depth.size == 0:
        raise CatalogError(f"brick {brick}: no catalogue row with PSFDEPTH_{band.upper()} > 0")
    size = rows[f"psfsize_{band}"].to_numpy(np.float64)
    size = size[np.isfinite(size) & (size > 0)]
    if size.size == 0:
        size = fwhm_from_depth_ratio(rows[f"psfdepth_{band}"].to_numpy(np.float64),
                                     rows[f"galdepth_{band}"].to_numpy(np.float64))
        size = size[np.isfinite(size)]
    if size.size == 0:
        raise CatalogError(f"brick {brick}: neither PSFSIZE_{band.upper()} nor usable "
                         f"PSFDEPTH/GALDEPTH_{band.upper()} to set the PSF")
    fwhm = float(np.median(size))
    psfdepth = float(np.median(depth))
    return fwhm, pixel_sigma(psfdepth, fwhm), psfdepth


def section_for(brick: Brick, ra, dec, stamp_size: int, margin: int) -> tuple[int, int, int, int]:
    """Tile-aligned (x0, y0, nx, ny) of the brick grid covering every target's stamp plus margin."""
    w = WCS(fits.Header(coadd_wcs_header(brick)))
    x, y = w.all_world2pix(np.atleast_1d(ra), np.atleast_1d(dec), 0)
    half = stamp_size / 2 + margin
    lo_x = max(0, int(math.floor((np.min(x) - half) / TILE)) * TILE)
    lo_y = max(0, int(math.floor((np.min(y) - half) / TILE)) * TILE)
    hi_x = min(BRICK_NPIX, int(math.ceil((np.max(x) + half) / TILE)) * TILE)
    hi_y = min(BRICK_NPIX, int(math.ceil((np.max(y) + half) / TILE)) * TILE)
    if hi_x <= lo_x or hi_y <= lo_y:
        raise BrickError(f"brick {brick.name}: targets at x={np.round(x, 1)}, y={np.round(y, 1)} "
                         "are not on the brick")
    return lo_x, lo_y, hi_x - lo_x, hi_y - lo_y


def _psf(band: str, fwhm: float, ccd: PseudoCCD | None, x0: int, y0: int):
    """(PSF at section pixel (px, py) -> (GalSim PSF, drawing method), FWHM arcsec, source) of one
    band: its PSFEx model at the source's own pseudo-CCD pixel (an effective PSF: drawn without a
    further pixel; FWHM at the brick centre) or a Gaussian of the catalogue FWHM."""
    import galsim

    if ccd is not None:
        def psf_at(px, py):  # section pixel (0-based) -> 1-based CCD (= brick) pixel
            return ccd.psf_at(px + x0 + 1.0, py + y0 + 1.0), "no_pixel"
        return psf_at, ccd.fwhm_arcsec, posixpath.basename(ccd.origin)
    gaussian = galsim.Gaussian(fwhm=fwhm)
    return (lambda px, py: (gaussian, "auto")), fwhm, "gaussian"


def _draw_sources(img, rows: pd.DataFrame, profiles: list, band: str, psf_at) -> None:
    import galsim

    for prof, r in zip(profiles, rows.to_dict("records")):
        flux = float(r[f"flux_{band}"])
        if prof is None or not np.isfinite(flux) or flux == 0:
            continue
        psf, method = psf_at(r["px"], r["py"])
        obj = galsim.Convolve(prof.withFlux(flux), psf)
        size = min(obj.getGoodImageSize(PIXSCALE_ARCSEC), MAX_STAMP)
        pos = galsim.PositionD(r["px"] + 1.0, r["py"] + 1.0)
        ix, iy = int(round(pos.x)), int(round(pos.y))
        bounds = galsim.BoundsI(ix - size // 2, ix + size // 2, iy - size // 2, iy + size // 2) & img.bounds
        if bounds.isDefined():
            sub = img[bounds]
            obj.drawImage(image=sub, add_to_image=True, offset=pos - sub.true_center, method=method)


def sky_noise(model: np.ndarray, sigma: float, band: str, texture: dict | None,
              rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Noise of one rendered band and the gain used: sky noise ``sigma`` plus the sources' shot noise
    (variance ``model / gain``, the gain model of :mod:`udfs.survey.shot_noise`), Gaussian, with the
    coadd's texture (``texture["kernel"]``, :mod:`udfs.survey.noise_texture`) or white without one."""
    gain = gain_estimate(np.full(1, 1.0 / sigma**2), band, PIXSCALE_ARCSEC)
    std = np.sqrt(sigma**2 + np.clip(model, 0.0, None) / gain)
    if texture is None:
        return rng.normal(0.0, 1.0, model.shape) * std, gain
    return correlated_noise(model.shape, std, np.asarray(texture["kernel"], float), rng), gain


def render_brick(brick: Brick, catalog: pd.DataFrame, section: tuple[int, int, int, int],
                 bands: str = SURVEY_BANDS, seed: int = 0, psfex: dict | None = None,
                 texture: dict | None = None) -> dict:
    """Images, invvars, maskbits and headers of one brick (section); see the module docstring.

    ``psfex``: band -> PSFEx model file (bands without one get the Gaussian); ``texture``: the
    coadd noise texture (``NoiseTexture.as_dict()`` plus its ``source``), or ``None`` for white noise.
    ``ccds`` in the result: band -> :class:`udfs.survey.sky_ccds.PseudoCCD` of the PSFEx bands.
    """
    import galsim

    x0, y0, nx, ny = section
    wcs_hdr = fits.Header(coadd_wcs_header(brick, x0, y0, nx, ny))
    awcs = WCS(wcs_hdr)
    px, py = awcs.all_world2pix(catalog["ra"].to_numpy(), catalog["dec"].to_numpy(), 0)
    pad = 20
    on = (px > -pad) & (px < nx + pad) & (py > -pad) & (py < ny + pad)
    rows = catalog[on].assign(px=px[on], py=py[on]).sort_values(["brickname", "objid"]).reset_index(drop=True)
    in_brick = catalog[catalog["brickname"] == brick.name]
    depth_rows = in_brick if len(in_brick) else rows
    if not len(depth_rows):
        raise CatalogError(f"brick {brick.name}: no catalogue rows in or on this brick to set its depth")

    ccds = {b: PseudoCCD(brick, b, psfex[b]) for b in bands if psfex and b in psfex}
    out = {"bands": bands, "section": section, "images": {}, "invvars": {}, "psf_fwhm": {}, "sigma": {},
           "psf_source": {}, "gain": {}, "texture": texture, "n_sources": len(rows), "wcs_header": wcs_hdr,
           "ccds": ccds}
    profiles = [galsim_profile(r) for r in rows.to_dict("records")]
    for band in bands:
        catalog_fwhm, _, psfdepth = brick_psf_and_sigma(depth_rows, band, brick.name)
        psf_at, fwhm, source = _psf(band, catalog_fwhm, ccds.get(band), x0, y0)
        sigma = pixel_sigma(psfdepth, fwhm)
        img = galsim.ImageF(nx, ny, wcs=galsim.GSFitsWCS(header=wcs_hdr))  # GalSim (1, 1) = 0-based (0, 0)
        _draw_sources(img, rows, profiles, band, psf_at)
        noise, gain = sky_noise(img.array.astype(np.float64), sigma, band, texture,
                                np.random.default_rng(seed_for(seed, brick.name, band)))
        out["images"][band] = (img.array + noise).astype(np.float32)
        out["invvars"][band] = np.full((ny, nx), 1.0 / sigma**2, np.float32)
        out["psf_fwhm"][band], out["sigma"][band] = fwhm, sigma
        out["psf_source"][band], out["gain"][band] = source, gain

    yy, xx = np.mgrid[0:ny, 0:nx]
    ra, dec = awcs.all_pix2world(xx.ravel(), yy.ravel(), 0)
    inside = ((ra >= brick.ra1) & (ra < brick.ra2) & (dec >= brick.dec1) & (dec < brick.dec2)).reshape(ny, nx)
    out["maskbits"] = np.where(inside, 0, NPRIMARY).astype(np.int16)
    return out


def write_sky_for_brick(base: str, brickname: str, target_ra, target_dec, catalog: pd.DataFrame, *,
                        bands: str = SURVEY_BANDS, stamp_size: int = 64, margin: int = 64, seed: int = 0,
                        full_brick: bool = False, psfex: dict | None = None, texture: dict | None = None) -> dict:
    """Render and write one brick covering the given targets; return a summary dict (``files``: the
    coadd files; ``ccds_file``, ``psfex_files``, ``calib_root``: :mod:`udfs.survey.sky_ccds`)."""
    brick = brick_from_name(brickname)
    section = ((0, 0, BRICK_NPIX, BRICK_NPIX) if full_brick
               else section_for(brick, target_ra, target_dec, stamp_size, margin))
    rendered = render_brick(brick, catalog, section, bands, seed, psfex, texture)
    files = write_brick(base, brick, rendered)
    table, models = write_ccds(base, brick, rendered["ccds"], rendered["sigma"])
    return {"brickname": brickname, "section": list(section), "n_sources": rendered["n_sources"],
            "psf_fwhm": rendered["psf_fwhm"], "psf_source": rendered["psf_source"], "sigma": rendered["sigma"],
            "gain": rendered["gain"], "noise_neighbour_correlation": texture["neighbour"] if texture else 0.0,
            "files": files, "ccds_file": table, "psfex_files": models, "calib_root": calib_root(base)}


def write_sky_for_targets(targets: pd.DataFrame, catalog: pd.DataFrame, base: str, **kw) -> list[dict]:
    """Write every brick named in ``targets`` (columns brickname, ra, dec); see write_sky_for_brick."""
    out = []
    for name, grp in targets.groupby("brickname", sort=True):
        out.append(write_sky_for_brick(base, name, grp["ra"].to_numpy(), grp["dec"].to_numpy(), catalog, **kw))
    return out


@functools.lru_cache(maxsize=2)
def _catalogs_once(catalogs: tuple[str, ...], bands: str) -> pd.DataFrame:
    """:func:`read_catalogs`, once per Python worker for the same files (one brick per batch)."""
    return read_catalogs(list(catalogs), bands)


def render_partition(batches, catalogs: list[str], base: str, opts: dict):
    """Spark task body (mapInPandas over target rows brickname, ra, dec, partitioned by brick):
    render and write each brick; yields one ``(brickname, summary JSON)`` row per brick."""
    for batch in batches:
        if batch.empty:
            continue
        cat = _catalogs_once(tuple(catalogs), opts["bands"])
        for s in write_sky_for_targets(batch, cat, base, **opts):
            yield pd.DataFrame({"brickname": [s["brickname"]], "summary": [json.dumps(s, sort_keys=True)]})
