"""The stage-3 priors config (``conf/injection_priors.yaml``) as typed frozen objects.

``defaults`` holds the priors, each entry of ``configs`` overrides some of them and is one "config"
of the manifest (:mod:`udfs.stamps.manifest` turns it into tasks). Every key is required, unknown
keys are errors, and errors name the file and the dotted key (:class:`udfs.config.checker.Checker`).
Each sampled parameter must lie in its physical support ``SUPPORT``: ``(low, high, low_open)``.

Modes (per config):

- ``lens_mode``: ``deflector`` (the default of the shipped configs) derives theta_E, the mass axis
  ratio and angle from the target's light and redshift (:mod:`udfs.lensing.deflector`, settings in
  ``deflector``); ``uniform`` draws ``theta_e`` and ``lens_q`` from their priors (completeness grids).
- ``src_redshift``: ``own`` keeps each bank galaxy at its own photo-z (only galaxies behind the lens
  are drawn); ``prior`` moves it to a ``src_z`` draw (above the lens in deflector mode).
- ``src_brightness``: ``own`` keeps the galaxy's own unlensed r (moved through its SED when its
  redshift is moved); ``prior`` draws ``src_mag_r``.

A config entry may not set a prior its modes do not use (``theta_e``/``lens_q`` in deflector mode,
``src_z`` with ``own`` redshifts, ``src_mag_r`` with ``own`` brightness); such defaults are left out
of the config (and its hash).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

from udfs.config.checker import Checker, load_yaml
from udfs.config.limits import SERSIC_N_RANGE

SRC_MODES = ("cosmos", "sersic")
LENS_MODES = ("deflector", "uniform")
OWN_OR_PRIOR = ("own", "prior")
# Physical support of each sampled parameter: (low, high, low_open).
SUPPORT = {
    "theta_e": (0.0, 10.0, True),
    "lens_q": (0.0, 1.0, True),
    "shear_gamma": (0.0, 0.5, False),
    "src_mag_r": (10.0, 35.0, False),
    "src_z": (0.0, 20.0, True),
    "sersic_n": (*SERSIC_N_RANGE, False),    # what GalSim can draw
    "sersic_re_arcsec": (0.0, 10.0, True),
    "sersic_q": (0.0, 1.0, True),
}
SERSIC_PARAMS = ("sersic_n", "sersic_re_arcsec", "sersic_q")
COMMON_PARAMS = ("theta_e", "lens_q", "shear_gamma", "src_mag_r", "src_z")
DEFLECTOR_KEYS = ("sigma_star_kms", "alpha", "mstar_r_minus_5logh", "mstar_z", "evolution_mag_per_z",
                  "scatter_dex", "cross_section_weighting", "lens_q_scatter", "lens_pa_scatter_deg",
                  "min_source_dz")

@dataclass(frozen=True)
class Prior:
    """A 1-D prior: uniform(low, high), loguniform(low, high), normal(mean, sigma) truncated to
    [low, high] (either may be null), or fixed(value)."""
    dist: str
    params: dict

    def ppf(self, u: np.ndarray) -> np.ndarray:
        p = self.params
        if self.dist == "uniform":
            return p["low"] + u * (p["high"] - p["low"])
        if self.dist == "loguniform":
            return np.exp(math.log(p["low"]) + u * (math.log(p["high"]) - math.log(p["low"])))
        if self.dist == "normal":
            from scipy.stats import truncnorm

            a, b = self._ab()
            return truncnorm.ppf(u, a, b, loc=p["mean"], scale=p["sigma"])
        return np.full(len(u), float(p["value"]))

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """The prior's cumulative distribution at ``x`` (the inverse of :meth:`ppf`)."""
        p, x = self.params, np.asarray(x, dtype=float)
        if self.dist == "uniform":
            return np.clip((x - p["low"]) / (p["high"] - p["low"]), 0.0, 1.0)
        if self.dist == "loguniform":
            ratio = np.log(np.maximum(x, p["low"]) / p["low"]) / math.log(p["high"] / p["low"])
            return np.clip(ratio, 0.0, 1.0)
        if self.dist == "normal":
            from scipy.stats import truncnorm

            a, b = self._ab()
            return truncnorm.cdf(x, a, b, loc=p["mean"], scale=p["sigma"])
        return (x >= p["value"]).astype(float)

    def _ab(self) -> tuple[float, float]:
        p = self.params
        lo = -np.inf if p.get("low") is None else (p["low"] - p["mean"]) / p["sigma"]
        hi = np.inf if p.get("high") is None else (p["high"] - p["mean"]) / p["sigma"]
        return lo, hi

    def bounds(self) -> tuple[float, float]:
        p = self.params
        if self.dist == "fixed":
            return p["value"], p["value"]
        lo, hi = p.get("low"), p.get("high")
        return (-np.inf if lo is None else lo), (np.inf if hi is None else hi)


@dataclass(frozen=True)
class Deflector:
    """The ``deflector`` block: the sigma-L relation and how mass follows light (see
    :mod:`udfs.lensing.deflector`). Velocity dispersions in km/s, angles in degrees."""
    sigma_star_kms: float
    alpha: float
    mstar_r_minus_5logh: float
    mstar_z: float
    evolution_mag_per_z: float
    scatter_dex: float
    cross_section_weighting: bool         # draw sigma as lenses are found: weighted by theta_E^2 ~ sigma^4
    lens_q_scatter: float                 # Gaussian scatter of the mass axis ratio about the light's
    lens_pa_scatter_deg: float            # Gaussian scatter of the mass angle about the light's
    min_source_dz: float                  # sources lie at z_s >= z_l + this


@dataclass(frozen=True)
class InjectionConfig:
    name: str
    src_mode: str
    priors: dict[str, Prior]
    r_min_over_theta_e: float
    r_max_over_theta_e: float
    merged: dict                          # validated mapping of this config (hashed)
    ablation_of: str | None = None        # draw every parameter as this (earlier) config does
    lens_mode: str = "uniform"
    src_redshift: str = "prior"
    src_brightness: str = "prior"
    deflector: Deflector | None = None


@dataclass(frozen=True)
class ManifestPlan:
    version: str
    replicates: int
    paired_controls: bool
    bank_size: int | None                 # from the config; --bank overrides
    n_buckets: int
    configs: tuple[InjectionConfig, ...]
    raw: dict


def load_config(uri: str) -> ManifestPlan:
    return parse_config(load_yaml(uri), uri)


def _prior(c: Checker, spec, key: str, name: str) -> Prior:
    if not isinstance(spec, dict):
        raise c.fail(key, f"expected a mapping with 'dist', got {spec!r}")
    dist = c.string(spec, "dist", f"{key}.dist", choices=("uniform", "loguniform", "normal", "fixed"))
    lo_s, hi_s, lo_open = SUPPORT[name]
    if dist == "fixed":
        c.unknown(spec, {"dist", "value"}, key)
        params = {"value": c.number(spec, "value", f"{key}.value", lo=lo_s, hi=hi_s, lo_open=lo_open)}
    elif dist in ("uniform", "loguniform"):
        c.unknown(spec, {"dist", "low", "high"}, key)
        lo_s = max(lo_s, 0.0) if dist == "loguniform" else lo_s
        params = {"low": c.number(spec, "low", f"{key}.low", lo=lo_s, hi=hi_s,
                                  lo_open=lo_open or dist == "loguniform"),
                  "high": c.number(spec, "high", f"{key}.high", lo=lo_s, hi=hi_s, lo_open=lo_open)}
        if params["low"] >= params["high"]:
            raise c.fail(key, f"low ({params['low']}) must be below high ({params['high']})")
    else:
        c.unknown(spec, {"dist", "mean", "sigma", "low", "high"}, key)
        params = {"mean": c.number(spec, "mean", f"{key}.mean"),
                  "sigma": c.number(spec, "sigma", f"{key}.sigma", lo=0, lo_open=True),
                  "low": c.number(spec, "low", f"{key}.low", lo=lo_s, hi=hi_s, lo_open=lo_open),
                  "high": c.number(spec, "high", f"{key}.high", lo=lo_s, hi=hi_s, lo_open=lo_open)}
        if params["low"] >= params["high"]:
            raise c.fail(key, f"low ({params['low']}) must be below high ({params['high']})")
    return Prior(dist=dist, params=params)


def parse_config(raw: dict, source: str = "<config>") -> ManifestPlan:
    """Validate the priors config; every key is required and unknown keys are errors."""
    c = Checker(source)
    c.unknown(raw, {"version", "replicates", "paired_controls", "bank_size", "n_buckets", "defaults",
                    "configs"}, "")
    version = c.string(raw, "version", "version")
    replicates = c.integer(raw, "replicates", "replicates", lo=1)
    paired = c.boolean(raw, "paired_controls", "paired_controls")
    bank_size = c.get(raw, "bank_size", "bank_size")
    if bank_size is not None:
        bank_size = c.integer(raw, "bank_size", "bank_size", lo=1)
    n_buckets = c.integer(raw, "n_buckets", "n_buckets", lo=1)
    defaults = c.mapping(raw, "defaults", "defaults")
    entries = c.get(raw, "configs", "configs")
    if not isinstance(entries, list) or not entries:
        raise c.fail("configs", "expected a non-empty list of configs (each with a 'name')")
    allowed = {"src_mode", "src_position", "lens_mode", "deflector", "src_redshift", "src_brightness",
               *COMMON_PARAMS, *SERSIC_PARAMS}
    c.unknown(defaults, allowed, "defaults")
    configs, names = [], set()
    for i, entry in enumerate(entries):
        key = f"configs[{i}]"
        if not isinstance(entry, dict):
            raise c.fail(key, f"expected a mapping, got {entry!r}")
        c.unknown(entry, allowed | {"name", "ablation_of"}, key)
        name = c.string(entry, "name", f"{key}.name")
        if name in names:
            raise c.fail(f"{key}.name", f"duplicate config name {name!r}")
        names.add(name)
        if "ablation_of" in entry:
            configs.append(_ablation(c, entry, key, configs))
            continue
        merged = copy.deepcopy(defaults)
        merged.update(copy.deepcopy({k: v for k, v in entry.items() if k != "name"}))
        where = lambda k: f"{key}.{k}" if k in entry else f"defaults.{k}"  # noqa: E731
        mode = c.string(merged, "src_mode", where("src_mode"), choices=SRC_MODES)
        (lens_mode, src_z_mode, src_b_mode), deflector = _modes(c, merged, entry, where)
        params = _used_params(lens_mode, src_z_mode, src_b_mode) + (SERSIC_PARAMS if mode == "sersic" else ())
        priors = {p: _prior(c, c.get(merged, p, where(p)), where(p), p) for p in params}
        pos = c.get(merged, "src_position", where("src_position"))
        if not isinstance(pos, dict):
            raise c.fail(where("src_position"), f"expected a mapping, got {pos!r}")
        c.unknown(pos, {"r_min_over_theta_e", "r_max_over_theta_e"}, where("src_position"))
        rmin = c.number(pos, "r_min_over_theta_e", where("src_position") + ".r_min_over_theta_e", lo=0)
        rmax = c.number(pos, "r_max_over_theta_e", where("src_position") + ".r_max_over_theta_e",
                        lo=0, hi=3, lo_open=True)
        if rmin >= rmax:
            raise c.fail(where("src_position"), f"r_min_over_theta_e ({rmin}) must be below r_max ({rmax})")
        kept = {k: merged[k] for k in ("src_mode", "src_position", "lens_mode", "src_redshift",
                                       "src_brightness", *(("deflector",) if deflector else ()), *params)}
        configs.append(InjectionConfig(name=name, src_mode=mode, priors=priors, r_min_over_theta_e=rmin,
                                       r_max_over_theta_e=rmax, merged={"name": name, **kept},
                                       lens_mode=lens_mode, src_redshift=src_z_mode, src_brightness=src_b_mode,
                                       deflector=deflector))
    return ManifestPlan(version=version, replicates=replicates, paired_controls=paired,
                        bank_size=bank_size, n_buckets=n_buckets, configs=tuple(configs), raw=raw)


def _modes(c: Checker, merged: dict, entry: dict, where) -> tuple[tuple[str, str, str], Deflector | None]:
    """``((lens_mode, src_redshift, src_brightness), deflector)`` of a config; an entry that sets a
    prior (or the deflector block) its modes do not use is refused."""
    modes = (c.string(merged, "lens_mode", where("lens_mode"), choices=LENS_MODES),
             c.string(merged, "src_redshift", where("src_redshift"), choices=OWN_OR_PRIOR),
             c.string(merged, "src_brightness", where("src_brightness"), choices=OWN_OR_PRIOR))
    for p in sorted(set(COMMON_PARAMS) - set(_used_params(*modes))):
        if p in entry:
            raise c.fail(where(p), f"not used with lens_mode {modes[0]}, src_redshift {modes[1]}, "
                                   f"src_brightness {modes[2]}: remove it")
    if modes[0] == "deflector":
        return modes, _deflector(c, c.mapping(merged, "deflector", where("deflector")), where("deflector"))
    if "deflector" in entry:
        raise c.fail(where("deflector"), "only used with lens_mode deflector: remove it")
    return modes, None


def _used_params(lens_mode: str, src_redshift: str, src_brightness: str) -> tuple[str, ...]:
    """The common priors a config with these modes draws from."""
    return tuple(p for p in COMMON_PARAMS if not (
        (p in ("theta_e", "lens_q") and lens_mode == "deflector")
        or (p == "src_z" and src_redshift == "own") or (p == "src_mag_r" and src_brightness == "own")))


def _deflector(c: Checker, raw: dict, key: str) -> Deflector:
    c.unknown(raw, set(DEFLECTOR_KEYS), key)
    num = lambda name, **kw: c.number(raw, name, f"{key}.{name}", **kw)  # noqa: E731
    return Deflector(
        sigma_star_kms=num("sigma_star_kms", lo=0, lo_open=True), alpha=num("alpha", lo=0, lo_open=True),
        mstar_r_minus_5logh=num("mstar_r_minus_5logh", lo=-30, hi=-10), mstar_z=num("mstar_z", lo=0),
        evolution_mag_per_z=num("evolution_mag_per_z", lo=-5, hi=5), scatter_dex=num("scatter_dex", lo=0, hi=1),
        cross_section_weighting=c.boolean(raw, "cross_section_weighting", f"{key}.cross_section_weighting"),
        lens_q_scatter=num("lens_q_scatter", lo=0, hi=1), lens_pa_scatter_deg=num("lens_pa_scatter_deg", lo=0, hi=90),
        min_source_dz=num("min_source_dz", lo=0, hi=5))


def _ablation(c: Checker, entry: dict, key: str, earlier: list[InjectionConfig]) -> InjectionConfig:
    """A config that repeats an earlier config's draws task for task, with another source mode.

    ``{name: sersic_twin, ablation_of: cosmos, src_mode: sersic}``: each task takes the seed of the
    referenced config's task (same target and replicate) to draw its parameters, so theta_E, lens,
    shear, position, bank row, rotation, magnitude and redshift are identical; its own ``seed``
    (noise) stays unique. Its Sersic parameters are null, so the injection step uses the bank row's
    Sersic twin (same size, shape, brightness).
    """
    ref_name = c.string(entry, "ablation_of", f"{key}.ablation_of")
    ref = next((cfg for cfg in earlier if cfg.name == ref_name and cfg.ablation_of is None), None)
    if ref is None:
        raise c.fail(f"{key}.ablation_of", f"no earlier (non-ablation) config named {ref_name!r}")
    c.unknown(entry, {"name", "ablation_of", "src_mode"}, key)
    mode = c.string(entry, "src_mode", f"{key}.src_mode", choices=SRC_MODES)
    if mode == ref.src_mode:
        raise c.fail(f"{key}.src_mode", f"an ablation must change the source mode of {ref_name!r} ({mode})")
    merged = {"name": entry["name"], "ablation_of": ref.merged, "src_mode": mode}
    return InjectionConfig(name=entry["name"], src_mode=mode, priors=ref.priors,
                           r_min_over_theta_e=ref.r_min_over_theta_e,
                           r_max_over_theta_e=ref.r_max_over_theta_e, merged=merged, ablation_of=ref_name,
                           lens_mode=ref.lens_mode, src_redshift=ref.src_redshift,
                           src_brightness=ref.src_brightness, deflector=ref.deflector)
