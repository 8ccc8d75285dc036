"""Angular-size rescaling of a bank galaxy to a new source redshift.

A galaxy of fixed physical size seen at ``z_new`` instead of its photo-z ``z_old`` subtends an angle
smaller by ``D_A(z_old) / D_A(z_new)`` (angular-diameter distances). The injection step multiplies
the bank image's angular size (and any angular size) by this factor. The cosmology is named in
the bank's config (``cosmology``), one of astropy's built-in realisations (e.g. ``Planck18``).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=8)
def get_cosmology(name: str):
    """An astropy built-in cosmology by name (``Planck18``, ``WMAP9``, ...)."""
    from astropy import cosmology

    if name not in cosmology.realizations.available:
        raise ValueError(f"unknown cosmology {name!r}; astropy provides {', '.join(cosmology.realizations.available)}")
    return getattr(cosmology, name)


def angular_size_ratio(z_old, z_new, cosmology: str = "Planck18"):
    """``D_A(z_old) / D_A(z_new)``: the factor by which angular sizes at ``z_old`` scale when the same
    galaxy is placed at ``z_new`` (both > 0). Works element-wise on arrays."""
    z_old = np.asarray(z_old, dtype=float)
    z_new = np.asarray(z_new, dtype=float)
    if np.any(~(z_old > 0)) or np.any(~(z_new > 0)):
        raise ValueError(f"redshifts must be > 0, got z_old={z_old}, z_new={z_new}")
    cosmo = get_cosmology(cosmology)
    ratio = (cosmo.angular_diameter_distance(z_old) / cosmo.angular_diameter_distance(z_new)).decompose().value
    return float(ratio) if np.ndim(ratio) == 0 else ratio
