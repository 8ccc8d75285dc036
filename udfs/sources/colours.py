"""Per-galaxy DECam g-r and r-z colours of a COSMOS source at its photometric redshift.

Two routes, recorded per galaxy in ``colour_source``:

- ``hsc_photometry``: the catalogue's HSC g, r, i, z, y AB magnitudes are fitted by a non-negative
  combination of the CWW templates shipped with GalSim, redshifted to the photo-z; the DECam
  magnitude in each band is the nearest HSC magnitude plus the fitted SED's DECam-minus-HSC colour
  term (``decam2014-g`` from ``hsc2017-g``, ``-r`` from ``hsc2017-r``, ``-z`` from ``hsc2017-z``). The
  observed HSC colours therefore carry the galaxy; the template only supplies the small filter
  differences.
- ``cww_template``: no photometry: the CWW template GalSim's COSMOSCatalog assigns to a Sersic
  profile (n < 1.5 Scd, 1.5 <= n < 3 Sbc, n >= 3 E) is redshifted to the photo-z and integrated
  through the DECam curves.

Filter curves come from ``speclite``; templates are F_lambda tables in GalSim's ``share/SEDs``.
The bank builder now stores each galaxy's absolute SED and its DECam magnitudes through
:mod:`udfs.sources.sed` and :mod:`udfs.sources.bank_photometry` (same two routes, plus external
photometry); the per-galaxy functions here remain as the reference implementation.
"""
from __future__ import annotations

import os
from functools import lru_cache

import astropy.units as u
import numpy as np
from scipy.optimize import nnls

HSC_FILTERS = ("hsc2017-g", "hsc2017-r", "hsc2017-i", "hsc2017-z", "hsc2017-y")
DECAM_FILTERS = ("decam2014-g", "decam2014-r", "decam2014-z")
TEMPLATES = ("CWW_E_ext", "CWW_Sbc_ext", "CWW_Scd_ext", "CWW_Im_ext")
# DECam band -> index of the HSC band it is anchored to
_ANCHOR = {0: 0, 1: 1, 2: 3}
_FLAM = u.erg / (u.cm ** 2 * u.s * u.Angstrom)


@lru_cache(maxsize=None)
def _filters(names: tuple[str, ...]):
    import speclite.filters

    return speclite.filters.load_filters(*names)


@lru_cache(maxsize=None)
def template(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Rest-frame (wavelength [Angstrom], F_lambda [arbitrary]) of a GalSim CWW template."""
    import galsim

    path = os.path.join(galsim.meta_data.share_dir, "SEDs", f"{name}.sed")
    wave, flam = np.loadtxt(path, unpack=True)
    return wave, flam


def ab_mags(wave: np.ndarray, flam: np.ndarray, filters: tuple[str, ...]) -> np.ndarray:
    """AB magnitudes of an observed-frame F_lambda spectrum (Angstrom, erg/s/cm2/A) through ``filters``."""
    table = _filters(filters).get_ab_magnitudes(flam * _FLAM, wave * u.Angstrom)
    return np.array([table[n][0] for n in table.colnames], dtype=float)


def redshifted(name: str, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Observed-frame template at redshift ``z`` (F_lambda scaled by 1/(1+z); colours are unaffected)."""
    wave, flam = template(name)
    return wave * (1.0 + z), flam / (1.0 + z)


def template_for_sersic_n(n: float) -> str:
    """GalSim COSMOSCatalog's chromatic assignment of a CWW template to a Sersic index."""
    if n < 1.5:
        return "CWW_Scd_ext"
    return "CWW_Sbc_ext" if n < 3.0 else "CWW_E_ext"


def _template_mags(z: float) -> tuple[np.ndarray, np.ndarray]:
    """(n_templates, 5) HSC and (n_templates, 3) DECam AB mags of every template at ``z``."""
    hsc, dec = [], []
    for name in TEMPLATES:
        wave, flam = redshifted(name, z)
        hsc.append(ab_mags(wave, flam, HSC_FILTERS))
        dec.append(ab_mags(wave, flam, DECAM_FILTERS))
    return np.array(hsc), np.array(dec)


def hsc_to_decam(hsc_mags: np.ndarray, z: float) -> np.ndarray:
    """DECam g, r, z AB magnitudes from HSC g, r, i, z, y AB magnitudes of a galaxy at redshift ``z``.

    Fits the HSC fluxes (equal relative weights) with a non-negative sum of the CWW templates at
    ``z``; returns HSC anchor magnitude + fitted (DECam - HSC) colour term per DECam band.
    """
    hsc_mags = np.asarray(hsc_mags, dtype=float)
    if hsc_mags.shape != (5,) or not np.all(np.isfinite(hsc_mags)):
        raise ValueError(f"need 5 finite HSC g,r,i,z,y magnitudes, got {hsc_mags}")
    t_hsc, t_dec = _template_mags(z)
    obs = 10.0 ** (-0.4 * hsc_mags)
    basis = 10.0 ** (-0.4 * t_hsc)                    # (k, 5)
    coeff, _ = nnls((basis / obs).T, np.ones(5))
    if not np.any(coeff > 0):
        raise ValueError(f"no non-negative template combination fits HSC mags {hsc_mags} at z={z}")
    model_hsc = -2.5 * np.log10(coeff @ basis)
    model_dec = -2.5 * np.log10(coeff @ 10.0 ** (-0.4 * t_dec))
    anchors = np.array([_ANCHOR[b] for b in range(3)])
    return hsc_mags[anchors] + (model_dec - model_hsc[anchors])


def galaxy_colours(z: float, hsc_mags: np.ndarray | None, sersic_n: float) -> tuple[float, float, str]:
    """``(g-r, r-z, colour_source)`` in DECam bands for one galaxy (see module docstring)."""
    if hsc_mags is not None:
        g, r, zb = hsc_to_decam(hsc_mags, z)
        return float(g - r), float(r - zb), "hsc_photometry"
    wave, flam = redshifted(template_for_sersic_n(sersic_n), z)
    g, r, zb = ab_mags(wave, flam, DECAM_FILTERS)
    return float(g - r), float(r - zb), "cww_template"
