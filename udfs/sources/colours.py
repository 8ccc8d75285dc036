"""The CWW templates and filter curves behind every galaxy colour: GalSim's rest-frame F_lambda
tables (``share/SEDs``), their redshifting, speclite AB magnitudes (HSC and DECam curves), and the
template GalSim's COSMOSCatalog assigns to a Sersic profile (n < 1.5 Scd, 1.5 <= n < 3 Sbc,
n >= 3 E). The bank's per-galaxy SEDs and DECam magnitudes are :mod:`udfs.sources.sed` and
:mod:`udfs.sources.bank_photometry`; the red-sequence host colours :mod:`udfs.sources.red_galaxy`.
"""
from __future__ import annotations

import os
from functools import lru_cache

import astropy.units as u
import numpy as np

HSC_FILTERS = ("hsc2017-g", "hsc2017-r", "hsc2017-i", "hsc2017-z", "hsc2017-y")
DECAM_FILTERS = ("decam2014-g", "decam2014-r", "decam2014-z")
TEMPLATES = ("CWW_E_ext", "CWW_Sbc_ext", "CWW_Scd_ext", "CWW_Im_ext")
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
