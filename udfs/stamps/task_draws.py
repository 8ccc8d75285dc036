"""The parameters of stage-3 injection tasks, drawn from each task's seed (:mod:`udfs.stamps.manifest`
builds the tasks; :mod:`udfs.stamps.priors` is the config).

- Parameters are pure functions of the seed: parameter k uses the uniform number
  ``SplitMix64(seed + (k+1) * 0x9E3779B97F4A7C15) / 2^64`` (counter-based, so any subset of tasks
  can be regenerated exactly, on any partitioning) mapped through the prior's inverse CDF.
- Lens (lenstronomy SIE + SHEAR conventions): ``theta_e`` (arcsec), axis ratio ``lens_q`` and
  position angle ``lens_phi`` (rad in [0, pi), counter-clockwise from +x = West in the stamp) give
  ``lens_e1, lens_e2`` = ``param_util.phi_q2_ellipticity``; ``shear_gamma`` and ``shear_phi``
  (uniform in [0, pi)) give ``shear_g1, shear_g2`` = ``param_util.shear_polar2cartesian``.

  ``lens_mode: deflector`` (:mod:`udfs.lensing.deflector`): ``z_l`` and ``zl_source`` are the
  target's; ``host_abs_mag_r`` its rest-frame r absolute magnitude; ``sigma_v`` (km/s) the
  Faber-Jackson mean times ``10^(scatter_dex * N(0,1))`` (with ``cross_section_weighting`` the mean
  of log sigma is raised by ``4 ln(10) scatter_dex^2``: the log-normal weighted by the lensing
  cross-section ``theta_E^2 ~ sigma^4``, i.e. as deflectors of found lenses are distributed);
  ``theta_e`` = the SIS Einstein radius for the source's ``src_z``; ``light_q``, ``light_phi`` the
  host's Tractor shape in the stamp frame; ``lens_q`` = ``light_q + lens_q_scatter * N(0,1)``
  clipped to [0.2, 1]; ``lens_phi`` = ``light_phi + lens_pa_scatter_deg * N(0,1)`` (uniform for a
  round host). ``lens_mode: uniform``: ``theta_e`` and ``lens_q`` from their priors, ``lens_phi``
  uniform, the deflector columns null.
- Source position ``(src_x, src_y)`` (arcsec, source plane, relative to the lens centre; x along
  the image columns, y along the rows): uniform in area over the annulus
  ``r_min_over_theta_e * theta_e <= beta <= r_max_over_theta_e * theta_e``. For an SIS the
  multiple-image region is ``beta < theta_E``; ``r_max_over_theta_e = 1`` (the shipped configs)
  reaches that caustic, so near-caustic configurations, and singles where an SIE's cut lies inside
  it, occur at their natural (area) rate; above 1 adds singles beyond it.
- Source: ``src_mode`` cosmos | sersic; ``src_index`` uniform over the bank's rows (also in Sersic
  mode, where it supplies the colours) that lie behind the lens (``zphot >= z_l + min_source_dz``
  with ``src_redshift: own`` in deflector mode; with ``cross_section_weighting`` each with
  probability proportional to ``(D_ls / D_s)^2``, the rest of ``theta_E^2``: sources as found behind
  lenses, not as counted in the field; no such galaxy: ``src_index`` and ``theta_e`` null,
  so stage 5 fails the task with a named parameter); ``src_phi`` uniform in [0, 2 pi) (rad,
  counter-clockwise rotation of the source image); ``src_z``: the galaxy's own ``zphot``
  (``src_redshift: own``) or a prior draw (above ``z_l + min_source_dz`` in deflector mode);
  ``src_mag_r`` unlensed AB r: the galaxy's own ``mag_r`` (``src_brightness: own``; at a moved
  redshift, through its fitted SED, :func:`udfs.sources.sed.magnitudes_at`) or a prior draw;
  g and z follow at injection (the bank colours, or the SED's at a moved redshift). Sersic mode adds ``sersic_n``,
  ``sersic_re_arcsec`` (half-light radius), ``sersic_q``, ``sersic_phi`` (uniform in [0, pi)).
- Ablation configs (``ablation_of: <earlier config>``, another ``src_mode``) draw every parameter
  with the referenced task's seed, so the Sersic-vs-COSMOS comparison changes nothing but the
  source; their Sersic parameters are null and the injection uses the bank row's Sersic twin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from udfs.sources.bank import BankError
from udfs.stamps.priors import COMMON_PARAMS, SERSIC_PARAMS, InjectionConfig

# Random stream of each sampled quantity: fixed forever (changing one changes every manifest).
STREAM = {"theta_e": 1, "lens_q": 2, "lens_phi": 3, "shear_gamma": 4, "shear_phi": 5, "src_r": 6,
          "src_angle": 7, "src_index": 8, "src_phi": 9, "src_mag_r": 10, "src_z": 11, "sersic_n": 12,
          "sersic_re_arcsec": 13, "sersic_q": 14, "sersic_phi": 15, "sigma_scatter": 16,
          "lens_q_scatter": 17, "lens_pa_scatter": 18}


@dataclass(frozen=True)
class BankSources:
    """What stage 3 knows of the bank's galaxies: their count and, when the bank file is given,
    each galaxy's photo-z, unlensed DECam r (AB) and fitted SED coefficients, and the bank's cosmology."""
    size: int
    zphot: np.ndarray | None = None
    mag_r: np.ndarray | None = None
    sed_coeff: np.ndarray | None = None
    cosmology: str | None = None

    @property
    def complete(self) -> bool:
        return self.zphot is not None and self.mag_r is not None and self.cosmology is not None


def _normal(u: np.ndarray) -> np.ndarray:
    from scipy.special import ndtri

    return ndtri(np.clip(u, 1e-300, 1.0 - 2.0 ** -53))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def uniforms(seeds: np.ndarray, stream: int) -> np.ndarray:
    """Counter-based uniform numbers in [0, 1) (53 bits) for each seed and a stream number."""
    with np.errstate(over="ignore"):
        x = np.asarray(seeds, dtype=np.int64).view(np.uint64) + _GOLDEN * np.uint64(stream + 1)
        return (_splitmix64(x) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def sample_parameters(seeds: np.ndarray, cfg: InjectionConfig, bank: BankSources,
                      hosts: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Every arc parameter of the injected tasks with these seeds (see the module docstring).

    ``hosts``: the targets' :data:`DEFLECTOR_INPUT_COLUMNS` arrays, row-aligned with ``seeds``
    (needed in deflector mode)."""
    from lenstronomy.Util import param_util

    n = len(seeds)
    u = {name: uniforms(seeds, k) for name, k in STREAM.items()}
    out = {p: cfg.priors[p].ppf(u[p]) for p in COMMON_PARAMS if p in cfg.priors}
    z_l = np.asarray(hosts["z_l"], dtype=float) if cfg.lens_mode == "deflector" else None
    out["src_index"], out["src_z"] = _source_draw(u, cfg, bank, z_l)
    if cfg.src_brightness == "own":
        idx = np.where(out["src_index"] >= 0, out["src_index"], 0)
        moved = cfg.src_redshift == "prior"
        out["src_mag_r"] = (_moved_mag_r(bank, idx, out["src_z"]) if moved else bank.mag_r[idx].astype(float))
    if cfg.lens_mode == "deflector":
        out.update(_deflector_draw(u, cfg, bank, hosts, z_l, out["src_z"]))
    else:
        out["lens_phi"] = np.pi * u["lens_phi"]
        for col in ("z_l", "sigma_v", "host_abs_mag_r", "light_q", "light_phi"):
            out[col] = np.full(n, np.nan)
        out["zl_source"] = np.full(n, None, dtype=object)
    out["lens_e1"], out["lens_e2"] = param_util.phi_q2_ellipticity(out["lens_phi"], out["lens_q"])
    out["shear_phi"] = np.pi * u["shear_phi"]
    out["shear_g1"], out["shear_g2"] = param_util.shear_polar2cartesian(out["shear_phi"], out["shear_gamma"])
    a, b = cfg.r_min_over_theta_e, cfg.r_max_over_theta_e
    beta = out["theta_e"] * np.sqrt(a * a + u["src_r"] * (b * b - a * a))
    angle = 2 * np.pi * u["src_angle"]
    out["src_x"], out["src_y"] = beta * np.cos(angle), beta * np.sin(angle)
    out["src_mode"] = np.full(n, cfg.src_mode, dtype=object)
    out["src_phi"] = 2 * np.pi * u["src_phi"]
    if cfg.src_mode == "sersic" and cfg.ablation_of is None:
        for p in SERSIC_PARAMS:
            out[p] = cfg.priors[p].ppf(u[p])
        out["sersic_phi"] = np.pi * u["sersic_phi"]
    else:
        for p in SERSIC_PARAMS + ("sersic_phi",):
            out[p] = np.full(n, np.nan)
    none = out["src_index"] < 0  # no bank galaxy behind the lens: the task carries nulls stage 5 names
    for col in ("theta_e", "src_z", "src_mag_r", "src_x", "src_y"):
        out[col] = np.where(none, np.nan, out[col])
    out["src_index"] = np.array([None if k < 0 else int(k) for k in out["src_index"]], dtype=object)
    return out


def _source_draw(u: dict, cfg: InjectionConfig, bank: BankSources, z_l) -> tuple[np.ndarray, np.ndarray]:
    """``(src_index, src_z)``; index -1 where no bank galaxy lies behind the lens."""
    n = len(u["src_index"])
    behind = z_l + cfg.deflector.min_source_dz if z_l is not None else None
    if cfg.src_redshift == "own" and behind is not None:
        order = np.argsort(bank.zphot, kind="stable")
        zs_sorted = bank.zphot[order]
        start = np.searchsorted(zs_sorted, behind, side="left")   # galaxies order[start:] lie behind
        count = bank.size - start
        if cfg.deflector.cross_section_weighting:
            pick = _weighted_pick(u["src_index"], zs_sorted, start, z_l, bank.cosmology)
        else:
            pick = start + np.minimum((u["src_index"] * np.maximum(count, 1)).astype(np.int64),
                                      np.maximum(count - 1, 0))
        idx = np.where(count > 0, order[np.minimum(pick, bank.size - 1)], -1)
    else:
        idx = np.minimum((u["src_index"] * bank.size).astype(np.int64), bank.size - 1)
    if cfg.src_redshift == "own":
        z = np.where(idx >= 0, bank.zphot[np.maximum(idx, 0)], np.nan) if bank.zphot is not None else np.full(n, np.nan)
        return idx, z
    prior = cfg.priors["src_z"]
    lo = prior.cdf(behind) if behind is not None else np.zeros(n)
    z = prior.ppf(lo + u["src_z"] * (1.0 - lo))
    return np.where(lo < 1.0, idx, -1), z


def _weighted_pick(u: np.ndarray, zs_sorted: np.ndarray, start: np.ndarray, z_l: np.ndarray,
                   cosmology: str) -> np.ndarray:
    """Per row, the position in ``zs_sorted`` of a galaxy drawn from ``zs_sorted[start:]`` with
    probability proportional to ``(D_ls / D_s)^2`` (the SIS cross-section's dependence on the source),
    by inverting the cumulative weight with ``u``. In a flat cosmology ``D_ls / D_s = 1 - D_C(z_l) /
    D_C(z_s)`` (comoving distances), so ``sum_j w_j = S0 - 2 a S1 + a^2 S2`` with ``a = D_C(z_l)`` and
    running sums of ``1``, ``1/D_C``, ``1/D_C^2`` over the sorted galaxies: exact, and O(log N) per row."""
    from udfs.sources.cosmology import get_cosmology

    cosmo = get_cosmology(cosmology)
    if abs(float(cosmo.Ok0)) > 1e-9:
        raise ValueError(f"cross_section_weighting needs a flat cosmology, the bank's {cosmology} has Ok0 = {cosmo.Ok0}")
    dc = np.maximum(cosmo.comoving_distance(np.maximum(zs_sorted, 1e-6)).value, 1e-9)
    sums = [np.concatenate([[0.0], np.cumsum(t)]) for t in (np.ones_like(dc), 1.0 / dc, 1.0 / dc ** 2)]
    a = cosmo.comoving_distance(np.asarray(z_l, dtype=float)).value

    def cum(j):
        return sums[0][j] - 2.0 * a * sums[1][j] + a * a * sums[2][j]

    n_gal = len(zs_sorted)
    lo, hi = np.minimum(start, n_gal), np.full(len(start), n_gal)
    target = cum(lo) + u * (cum(hi) - cum(lo))
    while np.any(hi - lo > 1):          # smallest j with cum(j) > target lies in (lo, hi]
        mid = (lo + hi) // 2
        above = cum(mid) > target
        hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
    return lo


def _moved_mag_r(bank: BankSources, idx: np.ndarray, z_new: np.ndarray) -> np.ndarray:
    """Unlensed r of bank galaxies moved to ``z_new`` through their fitted SEDs."""
    from udfs.sources.sed import magnitudes_at

    if bank.sed_coeff is None:
        raise BankError("the bank has no sed_coeff meta column: src_redshift prior with src_brightness own "
                        "moves galaxies through their SEDs (rebuild the bank with jobs.cosmos_source_loader)")
    return magnitudes_at(bank.sed_coeff[idx], np.where(np.isfinite(z_new), z_new, 1.0), bank.cosmology)[:, 1]


def _deflector_draw(u: dict, cfg: InjectionConfig, bank: BankSources, hosts: dict, z_l: np.ndarray,
                    z_s: np.ndarray) -> dict[str, np.ndarray]:
    """The deflector columns of the module docstring for lens_mode deflector."""
    from udfs.lensing.deflector import faber_jackson_sigma, sis_theta_e, tractor_to_stamp
    from udfs.sources.red_galaxy import absolute_mag_r

    d = cfg.deflector
    abs_mag = absolute_mag_r(hosts["mag_r"], z_l, bank.cosmology)
    log_sigma = np.log10(faber_jackson_sigma(abs_mag, z_l, sigma_star=d.sigma_star_kms, alpha=d.alpha,
                                             mstar_h=d.mstar_r_minus_5logh, mstar_z=d.mstar_z,
                                             evolution=d.evolution_mag_per_z, cosmology=bank.cosmology))
    if d.cross_section_weighting:
        log_sigma = log_sigma + 4.0 * math.log(10.0) * d.scatter_dex ** 2
    sigma = 10.0 ** (log_sigma + d.scatter_dex * _normal(u["sigma_scatter"]))
    light_q, light_phi = tractor_to_stamp(hosts["shape_e1"], hosts["shape_e2"])
    round_host = light_q >= 1.0
    phi = light_phi + math.radians(d.lens_pa_scatter_deg) * _normal(u["lens_pa_scatter"])
    return {"z_l": z_l, "zl_source": np.asarray(hosts["zl_source"], dtype=object), "sigma_v": sigma,
            "host_abs_mag_r": abs_mag, "light_q": light_q, "light_phi": light_phi,
            "theta_e": sis_theta_e(sigma, z_l, z_s, bank.cosmology),
            "lens_q": np.clip(light_q + d.lens_q_scatter * _normal(u["lens_q_scatter"]), 0.2, 1.0),
            "lens_phi": np.where(round_host, np.pi * u["lens_phi"], np.mod(phi, np.pi))}
