"""The stage-3 priors config (``conf/injection_priors.yaml``) as typed frozen objects.

``defaults`` holds the priors, each entry of ``configs`` overrides some of them and is one "config"
of the manifest (:mod:`udfs.stamps.manifest` turns it into tasks). Every key is required, unknown
keys are errors, and errors name the file and the dotted key (:class:`udfs.config.checker.Checker`).
Each sampled parameter must lie in its physical support ``SUPPORT``: ``(low, high, low_open)``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

from udfs.config.checker import Checker, load_yaml
from udfs.config.limits import SERSIC_N_RANGE

SRC_MODES = ("cosmos", "sersic")
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
class InjectionConfig:
    name: str
    src_mode: str
    priors: dict[str, Prior]
    r_min_over_theta_e: float
    r_max_over_theta_e: float
    merged: dict                          # validated mapping of this config (hashed)
    ablation_of: str | None = None        # draw every parameter as this (earlier) config does


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
    allowed = {"src_mode", "src_position", *COMMON_PARAMS, *SERSIC_PARAMS}
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
        params = COMMON_PARAMS + (SERSIC_PARAMS if mode == "sersic" else ())
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
        kept = {k: merged[k] for k in ("src_mode", "src_position", *params)}
        configs.append(InjectionConfig(name=name, src_mode=mode, priors=priors, r_min_over_theta_e=rmin,
                                       r_max_over_theta_e=rmax, merged={"name": name, **kept}))
    return ManifestPlan(version=version, replicates=replicates, paired_controls=paired,
                        bank_size=bank_size, n_buckets=n_buckets, configs=tuple(configs), raw=raw)


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
                           r_max_over_theta_e=ref.r_max_over_theta_e, merged=merged, ablation_of=ref_name)
