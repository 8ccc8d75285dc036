"""Read a cutout FITS file and write the injected stamp in the same layout.

Two layouts are read:

- ``cube``: a Legacy Survey viewer ``fits-cutout``: one image HDU holding ``(n_bands, H, W)``
  with a ``BANDS`` keyword (e.g. ``'grz'``); an optional HDU ``EXTNAME = 'INVVAR'`` of the same
  shape holds the inverse variance.
- ``per_band``: image HDUs ``IMAGE_G``, ``IMAGE_R``, ... with optional ``INVVAR_G``, ...

Pixels are nanomaggies; the pixel scale comes from the (celestial) TAN WCS. A file that cannot
serve (unreadable, a band missing, no WCS, ...) raises :class:`CutoutFileError` naming it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales

from udfs.io import storage
from udfs.io.errors import InputError
from udfs.survey.bands import SURVEY_BANDS


class CutoutFileError(InputError):
    """A cutout FITS file that cannot be read or injected into; the message names the file."""


@dataclass
class Cutout:
    path: str
    layout: str                  # 'cube' | 'per_band'
    bands: str                   # the bands asked for, in order
    image: np.ndarray            # (n_bands, N, N) float32, nanomaggies
    invvar: np.ndarray | None    # (n_bands, N, N) float32, nanomaggies^-2, or None
    wcs: WCS
    pixel_scale: float           # arcsec / pixel
    hdul: fits.HDUList           # the file as read (headers are carried to the output)

    @property
    def npix(self) -> int:
        return self.image.shape[-1]


def _wcs_scale(header: fits.Header, path: str) -> tuple[WCS, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header).celestial
    if not wcs.has_celestial:
        raise CutoutFileError(f"{path}: no celestial WCS in the image header")
    sx, sy = proj_plane_pixel_scales(wcs) * 3600.0
    if not np.isclose(sx, sy, rtol=1e-3):
        raise CutoutFileError(f"{path}: non-square pixels ({sx:.4f} x {sy:.4f} arcsec)")
    return wcs, float(0.5 * (sx + sy))


def read_cutout(path: str, bands: str = SURVEY_BANDS) -> Cutout:
    """Read ``path`` (local or s3://); raise :class:`CutoutFileError` naming the file and the problem."""
    try:
        hdul = fits.open(storage.open_input(path), lazy_load_hdus=False)
    except FileNotFoundError as exc:  # storage's message names the file
        raise CutoutFileError(str(exc)) from exc
    except OSError as exc:
        raise CutoutFileError(f"{path}: not a readable FITS file ({exc})") from exc
    names = {h.name.upper(): h for h in hdul}
    per_band = [n[len("IMAGE_"):].lower() for n in names if n.startswith("IMAGE_") and len(n) == len("IMAGE_x")]
    if per_band:
        layout = "per_band"
        missing = [b for b in bands if f"IMAGE_{b.upper()}" not in names]
        if missing:
            have = "".join(per_band)
            raise CutoutFileError(f"{path}: missing band(s) {''.join(missing)} (file has IMAGE_ HDUs for {have})")
        image = np.stack([np.asarray(names[f"IMAGE_{b.upper()}"].data, dtype=np.float32) for b in bands])
        iv = [names.get(f"INVVAR_{b.upper()}") for b in bands]
        invvar = np.stack([np.asarray(h.data, dtype=np.float32) for h in iv]) if all(iv) else None
        header = names[f"IMAGE_{bands[0].upper()}"].header
    else:
        cube = next((h for h in hdul if h.data is not None and h.data.ndim == 3
                     and h.name.upper() != "INVVAR"), None)
        if cube is None:
            raise CutoutFileError(f"{path}: neither a (bands, H, W) image cube nor IMAGE_<band> HDUs")
        file_bands = str(cube.header.get("BANDS", "")).strip()
        if len(file_bands) != cube.data.shape[0]:
            raise CutoutFileError(f"{path}: BANDS keyword {file_bands!r} does not describe the "
                             f"{cube.data.shape[0]} planes of the cube")
        missing = [b for b in bands if b not in file_bands]
        if missing:
            raise CutoutFileError(f"{path}: missing band(s) {''.join(missing)} (BANDS = {file_bands!r})")
        order = [file_bands.index(b) for b in bands]
        layout = "cube"
        image = np.asarray(cube.data, dtype=np.float32)[order]
        inv = names.get("INVVAR")
        invvar = np.asarray(inv.data, dtype=np.float32)[order] if inv is not None else None
        header = cube.header
    if image.shape[-1] != image.shape[-2]:
        raise CutoutFileError(f"{path}: cutout must be square, got {image.shape[-2]} x {image.shape[-1]}")
    if invvar is not None and invvar.shape != image.shape:
        raise CutoutFileError(f"{path}: invvar shape {invvar.shape} differs from image shape {image.shape}")
    for b, band in enumerate(bands):
        if not np.isfinite(image[b]).any():
            raise CutoutFileError(f"{path}: band {band} has no finite pixel (all NaN/inf)")
    wcs, scale = _wcs_scale(header, path)
    return Cutout(path, layout, bands, image, invvar, wcs, scale, hdul)


def lens_centre_offset(cutout: Cutout, ra: float, dec: float) -> tuple[float, float]:
    """(x, y) arcsec of sky position (ra, dec) from the stamp's geometric centre, via the WCS."""
    px, py = cutout.wcs.world_to_pixel_values(ra, dec)
    c = (cutout.npix - 1) / 2.0
    x, y = (float(px) - c) * cutout.pixel_scale, (float(py) - c) * cutout.pixel_scale
    half = cutout.npix / 2.0 * cutout.pixel_scale
    if not (abs(x) < half and abs(y) < half):
        raise CutoutFileError(f"{cutout.path}: RA, Dec ({ra}, {dec}) lies off the cutout")
    return x, y


def write_injected(cutout: Cutout, out_path: str, injected: np.ndarray, arcs: np.ndarray,
                   cards: dict) -> None:
    """Write the injected image in the input's layout, plus ``ARC_<BAND>`` HDUs (noiseless arc,
    nanomaggies); ``cards`` (parameters, metrics, provenance) go into every written header."""
    hdul = fits.HDUList([h.copy() for h in cutout.hdul])
    if cutout.layout == "cube":
        cube = next(h for h in hdul if h.data is not None and h.data.ndim == 3 and h.name.upper() != "INVVAR")
        file_bands = str(cube.header["BANDS"]).strip()
        data = np.array(cube.data, dtype=np.float32)
        for b, band in enumerate(cutout.bands):
            data[file_bands.index(band)] = injected[b]
        cube.data = data
        target = cube
    else:
        for b, band in enumerate(cutout.bands):
            hdul[f"IMAGE_{band.upper()}"].data = injected[b].astype(np.float32)
        target = hdul[f"IMAGE_{cutout.bands[0].upper()}"]
    wcs_header = cutout.wcs.to_header()
    for b, band in enumerate(cutout.bands):
        arc = fits.ImageHDU(arcs[b].astype(np.float32), header=wcs_header, name=f"ARC_{band.upper()}")
        arc.header["BUNIT"] = ("nanomaggy", "noiseless lensed arc, PSF-convolved")
        hdul.append(arc)
    for key, value in cards.items():
        target.header[key] = value
        hdul[0].header[key] = value
    storage.write_bytes(out_path, _to_bytes(hdul))


def _to_bytes(hdul: fits.HDUList) -> bytes:
    import io

    buf = io.BytesIO()
    hdul.writeto(buf, output_verify="exception", checksum=False)
    return buf.getvalue()
