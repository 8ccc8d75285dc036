"""The PSF at a target, per band, from the survey's own CCD PSFEx models (issue 11, item 1).

Math and conventions, once:

- **Which CCDs.** A row of a ``survey-ccds`` table covers ``(ra, dec)`` in ``band`` when the
  target's CCD pixel ``(x, y)`` lies on it: ``0.5 <= x <= width + 0.5`` and the same for ``y``
  (FITS 1-based pixel centres, the convention PSFEx fits its POLZERO/POLSCAL polynomial in).
  ``(x, y)`` comes from the image file's own header WCS (TPV, with the DECam distortion) when
  the images are reachable, else from the table's TAN ``crpix/crval/cd`` columns. The table's
  TAN misses by ~20 px on DECam: its ``crval`` is the boresight, thousands of pixels away, so
  the distortion is not negligible (measured on ``dr9_ccds_testcase6``: TAN puts the DEV galaxy
  at y = -10 on S9, TPV at y = 8.3, in agreement with the S4 CCDs).
- **Which model.** ``<calib>/psfex/<image dir>/<image base>-psfex.fits`` (the base is the image
  file name up to its first dot), or the row's own ``psfex_file`` where the table has that column
  (a URI, or a path relative to ``<calib>``; the demo's stand-in sky writes such tables), the row whose ``ccdname`` matches (merged per-exposure files
  have one row per CCD; a one-row file without ``ccdname`` is taken as is). The table's
  PSFEx keywords go into a header so that GalSim's ``DES_PSFEx`` evaluates the polynomial at
  ``(x, y)``, as :func:`udfs.survey.psf.psfex_kernel` does for single-CCD files.
- **Onto the coadd grid.** The model (in CCD pixels, pixel response included) is mapped by the
  local Jacobian of CCD pixels -> coadd pixels at the target (rotation, flip, scale and the
  distortion of the CCD's WCS; coadd pixels: ``pixel_scale`` arcsec, north up, east left),
  sampled at coadd pixel centres (``method='no_pixel'``), recentred so that its first moments
  sit on the stamp centre, and normalised to unit sum.
- **Weights.** A Legacy Survey coadd averages CCDs in nanomaggies with their inverse variance;
  per CCD that is ``1 / sig1**2`` (``sig1``: the CCD's median per-pixel noise in nanomaggies;
  tests/test_ccd_calibration.py: ``median(1/sqrt(oow)) * 10**(-0.4 (ccdzpt - 22.5)) / exptime``
  is 1.01-1.10x ``sig1`` for all 6 CCDs of the testcase). ``psfnorm``/``galnorm`` enter legacypipe's
  *depths*, not its pixel coadd, so they are not used.
- **Stack.** ``sum_i w_i P_i / sum_i w_i`` of unit-sum ``P_i``, cropped to the smallest odd
  ``K`` whose central ``K x K`` holds ``flux_fraction`` of the full stamp, renormalised.
"""
from __future__ import annotations

import gzip
import io
import math
import posixpath
import warnings

import galsim
import galsim.des
import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning

from udfs.io import storage
from udfs.io.errors import InputError
from udfs.survey.bricks import PIXSCALE_ARCSEC
from udfs.survey.psf import des_psfex



class PSFStackError(InputError):
    """No covering CCD, or a PSFEx model/image header that cannot be read; the message names it."""


def _strip(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value).strip()


def _table_wcs(row) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [float(row["crpix1"]), float(row["crpix2"])]
    w.wcs.crval = [float(row["crval1"]), float(row["crval2"])]
    w.wcs.cd = [[float(row["cd1_1"]), float(row["cd1_2"])], [float(row["cd2_1"]), float(row["cd2_2"])]]
    return w


def _header_wcs(uri: str, hdu: int, log: list) -> WCS:
    try:
        with storage.open_input(uri) as f:
            with fits.open(f, lazy_load_hdus=True) as hdul:
                header = hdul[hdu].header
                nbytes = f.tell()
    except (OSError, IndexError) as exc:
        raise PSFStackError(f"{uri}[{hdu}]: cannot read the CCD image header ({exc})") from exc
    log.append({"uri": uri, "bytes": int(nbytes), "what": "image header"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header)


def _jacobian(wcs: WCS, x: float, y: float, pixel_scale: float) -> np.ndarray:
    """d(coadd pixel)/d(CCD pixel) at (x, y): coadd u grows to the west (RA down), v to the north."""
    pts = np.array([[x + 1, y], [x - 1, y], [x, y + 1], [x, y - 1]], dtype=float)
    ra, dec = wcs.all_pix2world(pts[:, 0], pts[:, 1], 1)
    dra = ((ra[[0, 2]] - ra[[1, 3]] + 180.0) % 360.0) - 180.0
    ddec = dec[[0, 2]] - dec[[1, 3]]
    k = 3600.0 / pixel_scale / 2.0
    du = -dra * math.cos(math.radians(float(np.mean(dec)))) * k
    dv = ddec * k
    return np.array([[du[0], du[1]], [dv[0], dv[1]]])


def covering_ccds(ccds_table, ra: float, dec: float, band: str, image_root: str | None = None,
                  pixel_scale: float = PIXSCALE_ARCSEC, cache: "FileCache | None" = None) -> Table:
    """Rows of ``ccds_table`` (a Table or a file) covering ``(ra, dec)`` in ``band``, with
    columns ``x, y`` (1-based CCD pixel of the target), ``jac`` (coadd px per CCD px) and
    ``wcs_source`` ('header TPV' with ``image_root``, else 'table TAN')."""
    cache = FileCache() if cache is None else cache
    table = ccds_table if isinstance(ccds_table, Table) else cache.table(str(ccds_table))
    table = table[[_strip(f) == band for f in table["filter"]]]
    keep, xs, ys, jacs, srcs = [], [], [], [], []
    for i, row in enumerate(table):
        if image_root is not None:
            uri = storage.join(image_root, _strip(row["image_filename"]))
            wcs, src = cache.header_wcs(uri, int(row["image_hdu"])), "header TPV"
        else:
            wcs, src = _table_wcs(row), "table TAN"
        x, y = (float(v) for v in wcs.all_world2pix(ra, dec, 1))
        if 0.5 <= x <= int(row["width"]) + 0.5 and 0.5 <= y <= int(row["height"]) + 0.5:
            keep.append(i)
            xs.append(x)
            ys.append(y)
            jacs.append(_jacobian(wcs, x, y, pixel_scale))
            srcs.append(src)
    out = table[keep]
    out["x"], out["y"], out["wcs_source"] = xs, ys, srcs
    out["jac"] = np.array(jacs).reshape(len(keep), 2, 2)
    return out


def _read_table(uri: str, log: list) -> Table:
    try:
        data = storage.read_bytes(uri)
        raw = gzip.decompress(data) if uri.endswith(".gz") else data
        table = Table.read(io.BytesIO(raw), format="fits")
    except (OSError, ValueError) as exc:
        raise PSFStackError(f"{uri}: cannot read the CCD table ({exc})") from exc
    log.append({"uri": uri, "bytes": len(data), "what": "ccds table"})
    return table


def ccd_weight(row) -> float:
    """Inverse-variance weight of a CCD in a coadd: ``1 / sig1**2`` (sig1 in nanomaggies)."""
    sig1 = float(row["sig1"])
    if not (math.isfinite(sig1) and sig1 > 0):
        raise PSFStackError(f"CCD {_strip(row['image_filename'])} {_strip(row['ccdname'])}: "
                            f"sig1 = {sig1} is not a positive noise level")
    return 1.0 / sig1 ** 2


def psfex_uri(calib_root: str, image_filename: str) -> str:
    """``<calib>/psfex/<image dir>/<image base up to its first dot>-psfex.fits``."""
    name = _strip(image_filename)
    base = posixpath.basename(name).split(".")[0]
    return storage.join(calib_root, "psfex", posixpath.dirname(name), base + "-psfex.fits")


def read_psfex_model(uri: str, ccdname: str, log: list | None = None) -> galsim.des.DES_PSFEx:
    """GalSim ``DES_PSFEx`` of the row of a Legacy Survey PSFEx file whose ccdname matches."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise PSFStackError(f"{uri}: PSFEx file not found") from None
    try:
        with fits.open(io.BytesIO(data)) as hdul:
            table = hdul[1]
            names = [n.lower() for n in table.columns.names]
            if "ccdname" in names:
                rows = [i for i, c in enumerate(table.data["ccdname"]) if _strip(c) == ccdname]
            else:
                rows = [0] if len(table.data) == 1 else []
            if not rows:
                raise KeyError(f"no row for CCD {ccdname}")
            model = des_psfex(table, rows[0])
    except (OSError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise PSFStackError(f"{uri}: no readable PSFEx model for CCD {ccdname} ({exc})") from exc
    if log is not None:
        log.append({"uri": uri, "bytes": len(data), "what": f"psfex {ccdname}"})
    return model


def _moments(img: np.ndarray) -> tuple[float, float]:
    yy, xx = np.indices(img.shape, dtype=float)
    c = (img.shape[0] - 1) / 2.0
    s = img.sum()
    return float((img * xx).sum() / s - c), float((img * yy).sum() / s - c)


def ccd_psf_on_coadd(model, x: float, y: float, jac: np.ndarray, size: int) -> np.ndarray:
    """The model at CCD pixel (x, y) on a ``size`` x ``size`` coadd-pixel stamp, centred, unit sum."""
    psf = model.getPSF(galsim.PositionD(x, y)).transform(*np.asarray(jac, float).ravel())
    for _ in range(3):  # first moments onto the stamp centre
        img = psf.drawImage(nx=size, ny=size, scale=1.0, method="no_pixel").array.astype(np.float64)
        mx, my = _moments(img)
        if math.hypot(mx, my) < 1e-3:
            break
        psf = psf.shift(-mx, -my)
    return img / img.sum()


def crop_to_fraction(kernel: np.ndarray, flux_fraction: float) -> np.ndarray:
    """Central odd ``K x K`` of an odd stamp, smallest holding ``flux_fraction``, unit sum."""
    n = kernel.shape[0]
    total, c = kernel.sum(), n // 2
    for h in range(n // 2 + 1):
        cut = kernel[c - h: c + h + 1, c - h: c + h + 1]
        if cut.sum() >= flux_fraction * total:
            return cut / cut.sum()
    return kernel / total


def fwhm_pixels(kernel: np.ndarray) -> float:
    """FWHM in pixels (GalSim's ``calculateFWHM`` about the stamp centre)."""
    img = galsim.Image(np.ascontiguousarray(kernel, dtype=np.float64), scale=1.0)
    return float(img.calculateFWHM(center=img.true_center))


def flux_beyond(kernel: np.ndarray, radius_px: float) -> float:
    """Fraction of the kernel's sum at pixel centres farther than ``radius_px`` from its centre."""
    yy, xx = np.indices(kernel.shape, dtype=float)
    c = (kernel.shape[0] - 1) / 2.0
    r = np.hypot(xx - c, yy - c)
    return float(kernel[r > radius_px].sum() / kernel.sum())


class FileCache:
    """Files a stack reads, each read once (per brick in stage 4): CCD tables, image-header WCSs,
    PSFEx models; ``log`` lists every file read with its bytes."""

    def __init__(self):
        self.log: list = []
        self._tables: dict = {}
        self._wcs: dict = {}
        self._models: dict = {}

    def table(self, uri: str) -> Table:
        if uri not in self._tables:
            self._tables[uri] = _read_table(uri, self.log)
        return self._tables[uri]

    def header_wcs(self, uri: str, hdu: int) -> WCS:
        if (uri, hdu) not in self._wcs:
            self._wcs[(uri, hdu)] = _header_wcs(uri, hdu, self.log)
        return self._wcs[(uri, hdu)]

    def model(self, uri: str, ccdname: str):
        """The model, or the same PSFStackError again for a file that failed (read once)."""
        if (uri, ccdname) not in self._models:
            try:
                self._models[(uri, ccdname)] = read_psfex_model(uri, ccdname, self.log)
            except PSFStackError as exc:
                self._models[(uri, ccdname)] = exc
        found = self._models[(uri, ccdname)]
        if isinstance(found, PSFStackError):
            raise found
        return found

    @property
    def bytes_read(self) -> int:
        return int(sum(e["bytes"] for e in self.log))


def model_uri(row, calib_root: str) -> str:
    """The PSFEx file of a CCD row: its ``psfex_file`` column where present (a URI, or a path
    relative to ``calib_root``), else :func:`psfex_uri`."""
    if "psfex_file" in row.colnames:
        name = _strip(row["psfex_file"])
        return name if "://" in name or name.startswith("/") else storage.join(calib_root, name)
    return psfex_uri(calib_root, row["image_filename"])


def psf_at_target(ccds_table, calib_root: str, ra: float, dec: float, band: str,
                  pixel_scale: float = PIXSCALE_ARCSEC, flux_fraction: float = 0.995,
                  image_root: str | None = "auto", cache: FileCache | None = None):
    """Inverse-variance stack of the covering CCDs' PSFEx models at ``(ra, dec)`` in ``band``.

    ``ccds_table``: a Table or a file URI. ``image_root='auto'``: ``<calib_root>/../images`` when it
    exists (header TPV WCS), else the table's TAN; ``None`` forces the TAN. ``cache``: share file
    reads between calls (one per brick). Returns ``(kernel, psf_source, record)``: kernel float32
    ``(K, K)`` odd, centred, unit sum; ``psf_source`` ``'psfex_stack:<n> ccds'``; record: the files
    this call read with their bytes (files already in ``cache`` are not listed again), their total
    and one entry per CCD used.
    """
    cache = FileCache() if cache is None else cache
    first = len(cache.log)
    if image_root == "auto":
        guess = storage.join(storage.parent(calib_root), "images")
        image_root = guess if storage.exists(guess) else None
    table = ccds_table if isinstance(ccds_table, Table) else cache.table(str(ccds_table))
    ccds = covering_ccds(table, ra, dec, band, image_root, pixel_scale, cache)
    if len(ccds) == 0:
        raise PSFStackError(f"no CCD in band {band} covers (ra, dec) = ({ra}, {dec})")
    stamps, weights, used = [], [], []
    for row in ccds:
        model = cache.model(model_uri(row, calib_root), _strip(row["ccdname"]))
        jac = np.asarray(row["jac"], float)
        span = 63 * float(model.sample_scale) * float(np.abs(jac).sum(axis=0).max())
        size = 2 * int(math.ceil(span / 2.0)) + 1
        stamps.append(ccd_psf_on_coadd(model, float(row["x"]), float(row["y"]), jac, size))
        weights.append(ccd_weight(row))
        used.append({"image_filename": _strip(row["image_filename"]), "ccdname": _strip(row["ccdname"]),
                     "x": float(row["x"]), "y": float(row["y"]), "weight": weights[-1],
                     "wcs_source": str(row["wcs_source"])})
    n = max(s.shape[0] for s in stamps)
    stack = np.zeros((n, n))
    for s, w in zip(stamps, weights):
        p = (n - s.shape[0]) // 2
        stack[p: p + s.shape[0], p: p + s.shape[0]] += w * s
    kernel = crop_to_fraction(stack / sum(weights), flux_fraction).astype(np.float32)
    kernel /= kernel.sum(dtype=np.float64)
    log = cache.log[first:]
    record = {"files": log, "bytes_read": int(sum(e["bytes"] for e in log)), "ccds": used,
              "band": band, "K": int(kernel.shape[0]), "fwhm_arcsec": fwhm_pixels(kernel) * pixel_scale}
    return kernel, f"psfex_stack:{len(used)} ccds", record
