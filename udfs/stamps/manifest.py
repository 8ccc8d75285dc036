"""Stage 3 logic: targets x configs x replicates -> injection tasks (+ paired controls).

Config (``conf/injection_priors.yaml``, validated by :func:`parse_config`): ``defaults`` holds the
priors, each entry of ``configs`` overrides some of them and is one "config" of the manifest.

Per task:

- ``seed`` (int64): BLAKE2b-64 of ``"<target_id>|<config_hash>|<replicate>"`` (controls append
  ``"|control"``). ``config_hash`` hashes the config's merged priors, its name, the manifest
  ``version`` and the bank size; ``replicates`` and ``paired_controls`` are left out, so adding
  replicates keeps the earlier tasks unchanged.
- Parameters are pure functions of the seed: parameter k uses the uniform number
  ``SplitMix64(seed + (k+1) * 0x9E3779B97F4A7C15) / 2^64`` (counter-based, so any subset of tasks
  can be regenerated exactly, on any partitioning) mapped through the prior's inverse CDF.
- Lens (lenstronomy SIE + SHEAR conventions): ``theta_e`` (arcsec); axis ratio ``lens_q`` and
  position angle ``lens_phi`` (rad, uniform in [0, pi)) give ``lens_e1, lens_e2`` =
  ``param_util.phi_q2_ellipticity``; ``shear_gamma`` and ``shear_phi`` (uniform in [0, pi)) give
  ``shear_g1, shear_g2`` = ``param_util.shear_polar2cartesian``.
- Source position ``(src_x, src_y)`` (arcsec, source plane, relative to the lens centre; x along
  the image columns, y along the rows): uniform in area over the annulus
  ``r_min_over_theta_e * theta_e <= beta <= r_max_over_theta_e * theta_e``. For an SIS the
  multiple-image region is ``beta < theta_E``; fractions below ~0.6 keep sources well inside the
  caustics of SIEs with q >= 0.5, giving arcs/rings rather than faint single images.
- Source: ``src_mode`` cosmos | sersic; ``src_index`` uniform over the bank's rows (also in Sersic
  mode, where it supplies the colours); ``src_phi`` uniform in [0, 2 pi) (rad, counter-clockwise
  rotation of the source image); ``src_mag_r`` unlensed AB r magnitude; ``src_z``; colours come
  from the bank row (``g_r``, ``r_z``) at injection. Sersic mode adds ``sersic_n``,
  ``sersic_re_arcsec`` (half-light radius), ``sersic_q``, ``sersic_phi`` (uniform in [0, pi)).
- Ablation configs (``ablation_of: <earlier config>``, another ``src_mode``) draw every parameter
  with the referenced task's seed, so the Sersic-vs-COSMOS comparison changes nothing but the
  source; their Sersic parameters are null and the injection uses the bank row's Sersic twin.
- A paired control (``is_control``) per injected task: same target, config and replicate, every
  arc parameter null. ``pair_id`` is the injected task's ``task_id`` on both rows of a pair.
"""
from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from udfs.config.provenance import config_hash
from udfs.config.checker import Checker, load_yaml

SRC_MODES = ("cosmos", "sersic")
# Physical support of each sampled parameter: (low, high, low_open).
SUPPORT = {
    "theta_e": (0.0, 10.0, True),
    "lens_q": (0.0, 1.0, True),
    "shear_gamma": (0.0, 0.5, False),
    "src_mag_r": (10.0, 35.0, False),
    "src_z": (0.0, 20.0, True),
    "sersic_n": (0.3, 6.2, False),           # GalSim's Sersic range
    "sersic_re_arcsec": (0.0, 10.0, True),
    "sersic_q": (0.0, 1.0, True),
}
SERSIC_PARAMS = ("sersic_n", "sersic_re_arcsec", "sersic_q")
COMMON_PARAMS = ("theta_e", "lens_q", "shear_gamma", "src_mag_r", "src_z")
# Random stream of each sampled quantity: fixed forever (changing one changes every manifest).
STREAM = {"theta_e": 1, "lens_q": 2, "lens_phi": 3, "shear_gamma": 4, "shear_phi": 5, "src_r": 6,
          "src_angle": 7, "src_index": 8, "src_phi": 9, "src_mag_r": 10, "src_z": 11, "sersic_n": 12,
          "sersic_re_arcsec": 13, "sersic_q": 14, "sersic_phi": 15}
TARGET_COLUMNS = ("target_id", "ra", "dec", "brickname", "split", "psf_fwhm_g", "psf_fwhm_r", "psf_fwhm_z")
ARC_COLUMNS = ("theta_e", "lens_q", "lens_phi", "lens_e1", "lens_e2", "shear_gamma", "shear_phi",
               "shear_g1", "shear_g2", "src_x", "src_y", "src_mode", "src_index", "src_phi",
               "src_mag_r", "src_z", "sersic_n", "sersic_re_arcsec", "sersic_q", "sersic_phi")

MANIFEST_SCHEMA = pa.schema([
    ("task_id", pa.string()), ("target_id", pa.string()), ("ra", pa.float64()), ("dec", pa.float64()),
    ("brickname", pa.string()), ("split", pa.string()), ("is_control", pa.bool_()),
    ("pair_id", pa.string()), ("seed", pa.int64()), ("config_hash", pa.string()),
    ("config_name", pa.string()), ("replicate", pa.int32()),
    ("theta_e", pa.float64()), ("lens_q", pa.float64()), ("lens_phi", pa.float64()),
    ("lens_e1", pa.float64()), ("lens_e2", pa.float64()),
    ("shear_gamma", pa.float64()), ("shear_phi", pa.float64()),
    ("shear_g1", pa.float64()), ("shear_g2", pa.float64()),
    ("src_x", pa.float64()), ("src_y", pa.float64()), ("src_mode", pa.string()),
    ("src_index", pa.int32()), ("src_phi", pa.float64()), ("src_mag_r", pa.float64()),
    ("src_z", pa.float64()),
    ("sersic_n", pa.float64()), ("sersic_re_arcsec", pa.float64()), ("sersic_q", pa.float64()),
    ("sersic_phi", pa.float64()),
    ("psf_fwhm_g", pa.float64()), ("psf_fwhm_r", pa.float64()), ("psf_fwhm_z", pa.float64()),
    ("bank_size", pa.int32()), ("manifest_version", pa.string()), ("code_version", pa.string()),
])


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


def config_hashes(plan: ManifestPlan, bank_size: int) -> list[str]:
    """The per-config hash that enters each task's seed."""
    return [config_hash({"version": plan.version, "bank_size": bank_size, "config": cfg.merged})
            for cfg in plan.configs]


def manifest_hash(plan: ManifestPlan, bank_size: int) -> str:
    """Hash of everything that shapes the manifest: names its output folder."""
    return config_hash({"config": plan.raw, "bank_size": bank_size})


def task_seed(target_id: str, chash: str, replicate: int, control: bool = False) -> int:
    key = f"{target_id}|{chash}|{replicate}" + ("|control" if control else "")
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


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


def sample_parameters(seeds: np.ndarray, cfg: InjectionConfig, bank_size: int) -> dict[str, np.ndarray]:
    """Every arc parameter of the injected tasks with these seeds (see the module docstring)."""
    from lenstronomy.Util import param_util

    n = len(seeds)
    u = {name: uniforms(seeds, k) for name, k in STREAM.items()}
    out = {p: cfg.priors[p].ppf(u[p]) for p in COMMON_PARAMS}
    out["lens_phi"] = np.pi * u["lens_phi"]
    out["lens_e1"], out["lens_e2"] = param_util.phi_q2_ellipticity(out["lens_phi"], out["lens_q"])
    out["shear_phi"] = np.pi * u["shear_phi"]
    out["shear_g1"], out["shear_g2"] = param_util.shear_polar2cartesian(out["shear_phi"], out["shear_gamma"])
    a, b = cfg.r_min_over_theta_e, cfg.r_max_over_theta_e
    beta = out["theta_e"] * np.sqrt(a * a + u["src_r"] * (b * b - a * a))
    angle = 2 * np.pi * u["src_angle"]
    out["src_x"], out["src_y"] = beta * np.cos(angle), beta * np.sin(angle)
    out["src_mode"] = np.full(n, cfg.src_mode, dtype=object)
    out["src_index"] = np.minimum((u["src_index"] * bank_size).astype(np.int64), bank_size - 1)
    out["src_phi"] = 2 * np.pi * u["src_phi"]
    if cfg.src_mode == "sersic" and cfg.ablation_of is None:
        for p in SERSIC_PARAMS:
            out[p] = cfg.priors[p].ppf(u[p])
        out["sersic_phi"] = np.pi * u["sersic_phi"]
    else:
        for p in SERSIC_PARAMS + ("sersic_phi",):
            out[p] = np.full(n, np.nan)
    return out


def build_tasks(targets: pd.DataFrame, plan: ManifestPlan, bank_size: int, chashes: list[str],
                code_version: str) -> pd.DataFrame:
    """All tasks (and paired controls) for a batch of targets, in the schema :data:`MANIFEST_SCHEMA`."""
    parts: list[dict[str, np.ndarray]] = []
    n = len(targets)
    tid = targets["target_id"].astype(str).to_numpy()
    base = {c: targets[c].to_numpy() for c in TARGET_COLUMNS}
    hash_of = {cfg.name: chash for cfg, chash in zip(plan.configs, chashes)}
    for cfg, chash in zip(plan.configs, chashes):
        draw_hash = hash_of[cfg.ablation_of] if cfg.ablation_of else chash
        for rep in range(plan.replicates):
            task_id = np.array([f"{t}_{chash}_r{rep}" for t in tid], dtype=object)
            seeds = np.array([task_seed(t, chash, rep) for t in tid], dtype=np.int64)
            draws = seeds if draw_hash == chash else np.array([task_seed(t, draw_hash, rep) for t in tid],
                                                               dtype=np.int64)
            common = {"config_hash": np.full(n, chash, dtype=object),
                      "config_name": np.full(n, cfg.name, dtype=object),
                      "replicate": np.full(n, rep, dtype=np.int32),
                      "pair_id": task_id, "bank_size": np.full(n, bank_size, dtype=np.int32),
                      "manifest_version": np.full(n, plan.version, dtype=object),
                      "code_version": np.full(n, code_version, dtype=object)}
            parts.append({**base, **common, "task_id": task_id, "is_control": np.zeros(n, dtype=bool),
                          "seed": seeds, **sample_parameters(draws, cfg, bank_size)})
            if plan.paired_controls:
                ctl = np.array([task_seed(t, chash, rep, control=True) for t in tid], dtype=np.int64)
                parts.append({**base, **common, "task_id": task_id + "_ctl",
                              "is_control": np.ones(n, dtype=bool), "seed": ctl,
                              **{c: np.full(n, None, dtype=object) for c in ARC_COLUMNS}})
    columns = {}
    for name in MANIFEST_SCHEMA.names:
        arrays = [p[name] for p in parts]
        if name in ARC_COLUMNS:  # None marks a null; NaN (Sersic values of cosmos tasks) too
            arrays = [np.where(pd.isna(a), None, a.astype(object)) for a in arrays]
        columns[name] = np.concatenate(arrays) if arrays else np.zeros(0, dtype=object)
    return pd.DataFrame(columns)


def to_arrow(tasks: pd.DataFrame) -> pa.Table:
    """Tasks as an Arrow table with the manifest schema (nulls stay nulls, not zeros)."""
    return pa.Table.from_pandas(tasks, schema=MANIFEST_SCHEMA, preserve_index=False)
