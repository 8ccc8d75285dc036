"""A galaxy's fitted SED: a non-negative combination of GalSim's CWW templates, absolutely normalised.

Units and conventions:

- Templates (:data:`udfs.sources.colours.TEMPLATES`) are GalSim's rest-frame F_lambda tables
  (``share/SEDs/CWW_*_ext.sed``, wavelength in Angstrom). Basis template ``k`` is scaled to be the
  rest-frame F_lambda [erg/s/cm^2/A] seen from 10 pc whose F_nu at rest-frame 5500 A is 3631 Jy
  (AB magnitude 0 there). A galaxy's SED is ``sum_k sed_coeff[k] * T_k``: ``sed_coeff`` (N, 4)
  carries the ABSOLUTE normalisation, ``-2.5 log10(sum_k sed_coeff[k])`` is its absolute
  (monochromatic) AB magnitude at rest-frame 5500 A.
- At redshift z the observed F_lambda is ``F10(lambda / (1+z)) * (10 pc / D_L(z))^2 / (1+z)``: the
  wavelengths are stretched and the flux dimmed by the luminosity distance D_L of an astropy
  cosmology named as in :func:`udfs.sources.cosmology.get_cosmology` (``Planck18``, ...); the
  K-correction is implicit.
- Magnitudes are AB, photon-counting (``int F_lambda R lambda dlambda`` over the same integral of
  the AB reference), through speclite filter curves named ``<group>-<band>`` (``decam2014-r``,
  ``hsc2017-g``, ...). GalSim's ACS ``share/bandpasses/ACS_wfc_F814W.dat`` is registered once as
  ``acs-F814W`` (:data:`ACS_F814W`).

Template fluxes are linear in the coefficients: :func:`flux_matrix` integrates each template once
per distinct redshift (vectorised NumPy, no per-galaxy speclite calls); :func:`sed_mags` and
:func:`magnitudes_at` combine it with the coefficients.
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
from scipy.optimize import nnls

from udfs.sources.colours import DECAM_FILTERS, TEMPLATES, template
from udfs.sources.cosmology import get_cosmology

ACS_F814W = "acs-F814W"
NORM_WAVELENGTH = 5500.0                      # Angstrom, rest frame
C_ANGSTROM_S = 2.99792458e18                  # speed of light, Angstrom / s
AB_FNU = 3631e-23                             # erg/s/cm^2/Hz
TEN_PC_MPC = 1e-5
_GRID_STEP = 5.0                              # Angstrom: observed-frame integration step
_Z_CHUNK = 512


def _register_acs() -> None:
    """Wrap GalSim's ACS/WFC F814W throughput (nm) as the speclite filter ``acs-F814W`` (once)."""
    import astropy.units as u
    import galsim
    import speclite.filters

    if ACS_F814W in speclite.filters._filter_cache:
        return
    wave_nm, thr = np.loadtxt(os.path.join(galsim.meta_data.share_dir, "bandpasses", "ACS_wfc_F814W.dat"),
                              unpack=True)
    thr = np.clip(thr, 0.0, None)
    thr[0] = thr[-1] = 0.0
    speclite.filters.FilterResponse(wavelength=wave_nm * 10.0 * u.Angstrom, response=thr,
                                    meta={"group_name": "acs", "band_name": "F814W"})


@lru_cache(maxsize=None)
def filter_curve(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(wavelength [A], response)`` of a speclite filter (``acs-F814W`` included); ValueError if unknown."""
    import speclite.filters

    _register_acs()
    curve = speclite.filters.load_filter(name)
    return np.asarray(curve.wavelength, dtype=float), np.asarray(curve.response, dtype=float)


@lru_cache(maxsize=None)
def effective_wavelength(name: str) -> float:
    """Photon-weighted mean wavelength of the filter (Angstrom)."""
    w, r = filter_curve(name)
    return float(np.trapezoid(r * w * w, w) / np.trapezoid(r * w, w))


@lru_cache(maxsize=None)
def _weights(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Observed-frame grid and weights W with ``maggies = sum(W * F_lambda(grid))``."""
    w, r = filter_curve(name)
    n = int(np.ceil((w[-1] - w[0]) / _GRID_STEP)) + 1
    grid = np.union1d(w, np.linspace(w[0], w[-1], n))
    resp = np.interp(grid, w, r)
    trap = np.zeros_like(grid)
    d = np.diff(grid)
    trap[:-1] += 0.5 * d
    trap[1:] += 0.5 * d
    denom = np.sum(trap * resp * AB_FNU * C_ANGSTROM_S / grid)
    return grid, trap * resp * grid / denom


@lru_cache(maxsize=None)
def basis() -> tuple[np.ndarray, np.ndarray]:
    """``(wave [A], (4, L) F_lambda at 10 pc)``: the templates on a common rest-frame grid, each with
    F_nu(5500 A) = 3631 Jy."""
    waves = [template(name)[0] for name in TEMPLATES]
    wave = np.unique(np.concatenate(waves))
    f0 = AB_FNU * C_ANGSTROM_S / NORM_WAVELENGTH ** 2
    rows = []
    for name in TEMPLATES:
        tw, tf = template(name)
        rows.append(np.interp(wave, tw, tf, left=0.0, right=0.0) / np.interp(NORM_WAVELENGTH, tw, tf) * f0)
    return wave, np.array(rows)


def _dimming(z: np.ndarray, cosmology: str) -> np.ndarray:
    """``(10 pc / D_L)^2 / (1 + z)``."""
    if np.any(~(z > 0)):
        raise ValueError(f"redshifts must be > 0, got {z[~(z > 0)][:3]}")
    dl = get_cosmology(cosmology).luminosity_distance(z).to_value("Mpc")
    return (TEN_PC_MPC / dl) ** 2 / (1.0 + z)


def observed_maggies(wave: np.ndarray, flam10: np.ndarray, z, filters, cosmology: str) -> np.ndarray:
    """AB maggies ``(Nz, K, F)`` of K rest-frame spectra ``flam10`` (K, L) [erg/s/cm^2/A at 10 pc,
    on ``wave`` in A, zero outside it] placed at each redshift ``z`` (Nz,), through ``filters``."""
    z = np.atleast_1d(np.asarray(z, dtype=float))
    flam10 = np.atleast_2d(np.asarray(flam10, dtype=float))
    out = np.empty((len(z), len(flam10), len(filters)))
    dim = _dimming(z, cosmology)
    for j, name in enumerate(filters):
        grid, weights = _weights(name)
        for s in range(0, len(z), _Z_CHUNK):
            rest = grid[None, :] / (1.0 + z[s:s + _Z_CHUNK, None])          # (nz, G)
            for k, f in enumerate(flam10):
                out[s:s + _Z_CHUNK, k, j] = np.interp(rest, wave, f, left=0.0, right=0.0) @ weights
        out[:, :, j] *= dim[:, None]
    return out


def flux_matrix(z, filters, cosmology: str) -> np.ndarray:
    """``(N, 4, F)`` AB maggies of each unit basis template at each z, integrated once per distinct z."""
    z = np.atleast_1d(np.asarray(z, dtype=float))
    uz, inverse = np.unique(z, return_inverse=True)
    wave, flam = basis()
    return observed_maggies(wave, flam, uz, tuple(filters), cosmology)[inverse.reshape(-1)]


def _coeff_z(coeff, z) -> tuple[np.ndarray, np.ndarray]:
    coeff = np.atleast_2d(np.asarray(coeff, dtype=float))
    if coeff.shape[1] != len(TEMPLATES):
        raise ValueError(f"sed_coeff must be (N, {len(TEMPLATES)}), got {coeff.shape}")
    return coeff, np.broadcast_to(np.asarray(z, dtype=float), (len(coeff),))


def sed_mags(coeff, z, filters, cosmology: str) -> np.ndarray:
    """``(N, F)`` observed AB magnitudes of the SEDs ``coeff`` (N, 4) placed at redshifts ``z`` (N,)."""
    coeff, z = _coeff_z(coeff, z)
    maggies = np.einsum("nk,nkf->nf", coeff, flux_matrix(z, filters, cosmology))
    with np.errstate(divide="ignore"):
        return -2.5 * np.log10(maggies)


def magnitudes_at(coeff: np.ndarray, z: np.ndarray, cosmology: str) -> np.ndarray:
    """``(N, 3)`` DECam g, r, z AB magnitudes of the SEDs ``coeff`` (N, 4) moved to redshifts ``z`` (N,)."""
    return sed_mags(coeff, z, DECAM_FILTERS, cosmology)


def _template_index(template) -> np.ndarray:
    names = np.atleast_1d(np.asarray(template))
    if names.dtype.kind in "iu":
        return names.astype(int)
    return np.array([TEMPLATES.index(str(t)) for t in names])


def fit_sed(mags, filters, z, cosmology: str, template=None) -> np.ndarray:
    """``(N, 4)`` absolute SED coefficients fitted to AB magnitudes ``mags`` (N, F) through speclite
    ``filters`` of galaxies at redshifts ``z`` (N,).

    Non-finite magnitudes are missing bands. Without ``template``: non-negative least squares of the
    fluxes with equal relative weights (residuals ``model / observed - 1``). With ``template`` (N,)
    (indices into, or names from, :data:`TEMPLATES`): that template alone (one-hot), scaled to the
    given bands (exactly, for one band: e.g. F814W alone). A row without any finite band, or that no
    non-negative combination fits, raises ValueError naming it.
    """
    mags = np.atleast_2d(np.asarray(mags, dtype=float))
    coeff_z = np.broadcast_to(np.asarray(z, dtype=float), (len(mags),))
    if mags.shape[1] != len(filters):
        raise ValueError(f"mags have {mags.shape[1]} bands, filters name {len(filters)}")
    basis_maggies = flux_matrix(coeff_z, filters, cosmology)               # (N, 4, F)
    one_hot = None if template is None else np.broadcast_to(_template_index(template), (len(mags),))
    out = np.zeros((len(mags), len(TEMPLATES)))
    for i, row in enumerate(mags):
        ok = np.isfinite(row)
        if not ok.any():
            raise ValueError(f"row {i}: no finite magnitude in {filters}")
        design = basis_maggies[i][:, ok] / 10.0 ** (-0.4 * row[ok])        # (4, F_ok)
        if one_hot is not None:
            b = design[one_hot[i]]
            out[i, one_hot[i]] = b.sum() / (b @ b)
            continue
        out[i], _ = nnls(design.T, np.ones(int(ok.sum())))
        if not np.any(out[i] > 0):
            raise ValueError(f"row {i}: no non-negative template combination fits {row} at z={coeff_z[i]}")
    return out


def anchored_decam(mags, filters, coeff, z, cosmology: str) -> tuple[np.ndarray, np.ndarray]:
    """``(DECam g, r, z (N, 3), coeff rescaled (N, 4))`` for galaxies with measured ``mags`` (N, F).

    Each DECam band is the measured magnitude in the nearest finite band (by effective wavelength)
    plus the fitted SED's DECam-minus-that-band colour term, so the measured colours carry the
    galaxy and the SED only the filter differences. ``coeff`` is rescaled so that the SED's DECam r
    at ``z`` equals the anchored r (``magnitudes_at(coeff, z)[:, 1] == mag_r``)."""
    mags = np.atleast_2d(np.asarray(mags, dtype=float))
    coeff, z = _coeff_z(coeff, z)
    model = sed_mags(coeff, z, tuple(filters) + DECAM_FILTERS, cosmology)
    nf = len(filters)
    lam = np.array([effective_wavelength(f) for f in filters])
    out = np.empty((len(mags), 3))
    for b, name in enumerate(DECAM_FILTERS):
        order = np.argsort(np.abs(lam - effective_wavelength(name)), kind="stable")
        valid = np.isfinite(mags[:, order])
        anchor = order[np.argmax(valid, axis=1)]
        rows = np.arange(len(mags))
        out[:, b] = mags[rows, anchor] + model[:, nf + b] - model[rows, anchor]
    scale = 10.0 ** (-0.4 * (out[:, 1] - model[:, nf + 1]))
    return out, coeff * scale[:, None]
