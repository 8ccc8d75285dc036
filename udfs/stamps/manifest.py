"""Stage 3 logic: targets x configs x replicates -> injection tasks (+ paired controls).

Config: :mod:`udfs.stamps.priors` (``conf/injection_priors.yaml``). Columns:
:mod:`udfs.schemas.manifest`. Output: ``<root>/<manifest_hash>/`` with ``_manifest.json``
(:func:`resolve_manifest` finds it for the next stage).

Per task:

- ``seed`` (int64): BLAKE2b-64 of ``"<target_id>|<config_hash>|<replicate>"`` (controls append
  ``"|control"``). ``config_hash`` hashes the config's merged priors, its name, the manifest
  ``version`` and the bank size; ``replicates`` and ``paired_controls`` are left out, so adding
  replicates keeps the earlier tasks unchanged.
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
  multiple-image region is ``beta < theta_E``; ``r_max_over_theta_e`` above 1 reaches past the
  caustics, so singles and near-caustic configurations occur at their natural (area) rate.
- Source: ``src_mode`` cosmos | sersic; ``src_index`` uniform over the bank's rows (also in Sersic
  mode, where it supplies the colours) that lie behind the lens (``zphot >= z_l + min_source_dz``
  with ``src_redshift: own`` in deflector mode; no such galaxy: ``src_index`` and ``theta_e`` null,
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
- A paired control (``is_control``) per injected task: same target, config and replicate, every
  arc parameter null. ``pair_id`` is the injected task's ``task_id`` on both rows of a pair.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from udfs.config.provenance import config_hash
from udfs.io import storage
from udfs.io.datasets import DatasetError
from udfs.schemas.manifest import ARC_COLUMNS, MANIFEST_SCHEMA, SUMMARY_FILE, WHAT
from udfs.schemas.targets import DEFLECTOR_INPUT_COLUMNS, MANIFEST_INPUT_COLUMNS
from udfs.sources.bank import BankError, read_bank_info, read_bank_meta
from udfs.stamps.priors import COMMON_PARAMS, SERSIC_PARAMS, InjectionConfig, ManifestPlan

# Random stream of each sampled quantity: fixed forever (changing one changes every manifest).
STREAM = {"theta_e": 1, "lens_q": 2, "lens_phi": 3, "shear_gamma": 4, "shear_phi": 5, "src_r": 6,
          "src_angle": 7, "src_index": 8, "src_phi": 9, "src_mag_r": 10, "src_z": 11, "sersic_n": 12,
          "sersic_re_arcsec": 13, "sersic_q": 14, "sersic_phi": 15, "sigma_scatter": 16,
          "lens_q_scatter": 17, "lens_pa_scatter": 18}
#: bank meta columns stage 3 reads (small 1-D arrays; never the images)
SOURCE_COLUMNS = ("zphot", "mag_r")


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


def needs_bank_meta(plan: ManifestPlan) -> bool:
    """Whether some config draws from the galaxies' own properties or a deflector (needs ``--bank``)."""
    return any(c.lens_mode == "deflector" or c.src_redshift == "own" or c.src_brightness == "own"
               for c in plan.configs)


def needs_deflector_columns(plan: ManifestPlan) -> bool:
    return any(c.lens_mode == "deflector" for c in plan.configs)


def _normal(u: np.ndarray) -> np.ndarray:
    from scipy.special import ndtri

    return ndtri(np.clip(u, 1e-300, 1.0 - 2.0 ** -53))

def _bank_key(bank: BankSources) -> dict:
    key = {"bank_size": bank.size}
    if bank.complete:
        key["bank"] = bank_fingerprint(bank)
    return key


def config_hashes(plan: ManifestPlan, bank: BankSources) -> list[str]:
    """The per-config hash that enters each task's seed."""
    return [config_hash({"version": plan.version, **_bank_key(bank), "config": cfg.merged})
            for cfg in plan.configs]


def manifest_hash(plan: ManifestPlan, bank: BankSources) -> str:
    """Hash of everything that shapes the manifest: names its output folder."""
    return config_hash({"config": plan.raw, **_bank_key(bank)})


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
    from udfs.lensing.deflector import absolute_mag_r, faber_jackson_sigma, sis_theta_e, tractor_to_stamp

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


def build_tasks(targets: pd.DataFrame, plan: ManifestPlan, bank: BankSources, chashes: list[str],
                code_version: str) -> pd.DataFrame:
    """All tasks (and paired controls) for a batch of targets, in the schema :data:`MANIFEST_SCHEMA`."""
    parts: list[dict[str, np.ndarray]] = []
    n = len(targets)
    bank_size = bank.size
    tid = targets["target_id"].astype(str).to_numpy()
    base = {c: targets[c].to_numpy() for c in MANIFEST_INPUT_COLUMNS}
    hosts = ({c: targets[c].to_numpy() for c in DEFLECTOR_INPUT_COLUMNS}
             if needs_deflector_columns(plan) else None)
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
                          "seed": seeds, **sample_parameters(draws, cfg, bank, hosts)})
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


def bank_sources_of(plan: ManifestPlan, bank_uri: str | None, config_uri: str) -> tuple[BankSources, str]:
    """``(the bank's galaxies, where their count came from)``: with ``bank_uri`` its row count and,
    when a config needs them (:func:`needs_bank_meta`), each galaxy's ``zphot``, ``mag_r`` and
    ``sed_coeff`` (when the bank has it) and the bank's cosmology (images never read); else the
    config's ``bank_size``."""
    if bank_uri:
        try:
            info = read_bank_info(bank_uri)
            if info.size < 1:
                raise BankError("the bank holds no galaxies")
            if not needs_bank_meta(plan):
                return BankSources(size=info.size), bank_uri
            meta = read_bank_meta(bank_uri, SOURCE_COLUMNS)
            sed = read_bank_meta(bank_uri, ("sed_coeff",))["sed_coeff"] if "sed_coeff" in info.meta_columns else None
        except BankError as exc:
            raise BankError(f"--bank {bank_uri}: {exc}") from exc
        cosmology = json.loads(str(info.attrs.get("config", "{}"))).get("cosmology")
        if not cosmology:
            raise BankError(f"--bank {bank_uri}: its config names no cosmology")
        return BankSources(size=info.size, zphot=np.asarray(meta["zphot"], dtype=float),
                           mag_r=np.asarray(meta["mag_r"], dtype=float), sed_coeff=sed,
                           cosmology=str(cosmology)), bank_uri
    if needs_bank_meta(plan):
        raise DatasetError(f"{config_uri}: a config uses lens_mode deflector or the galaxies' own redshift or "
                           "brightness, so --bank PATH must give the source bank")
    if plan.bank_size is None:
        raise DatasetError(f"{config_uri}: bank_size: is null, so --bank PATH must give the source bank")
    return BankSources(size=plan.bank_size), f"{config_uri}: bank_size"


def bank_fingerprint(bank: BankSources) -> str | None:
    """Hash of the bank columns the draws read (None when only the size is used): a bank with other
    galaxies gives other tasks and another manifest folder."""
    if not bank.complete:
        return None
    h = hashlib.blake2b(digest_size=8)
    for arr in (bank.zphot, bank.mag_r, bank.sed_coeff):
        if arr is not None:
            h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
    h.update(str(bank.cosmology).encode())
    return h.hexdigest()


def check_targets(uri: str, n_rows: int, duplicate: tuple[str, int] | None, nulls: dict[str, int]) -> None:
    """Refuse targets whose ids repeat (seeds would repeat) or whose manifest columns hold nulls.

    ``duplicate``: the first repeated ``(target_id, count)`` or None; ``nulls``: null count per column.
    """
    if duplicate is not None:
        raise DatasetError(f"{uri}: column target_id: {duplicate[0]!r} occurs {duplicate[1]} times "
                           "(seeds would repeat)")
    bad = [c for c in nulls if nulls.get(c)]
    if bad:
        raise DatasetError(f"{uri}: column {bad[0]}: {nulls[bad[0]]} null values")


def check_location_free(location: str, fingerprint: str) -> None:
    """Refuse to write into a manifest folder that holds this config's manifest of other targets."""
    summary_uri = storage.join(location, SUMMARY_FILE)
    if storage.exists(summary_uri):
        previous = json.loads(storage.read_bytes(summary_uri))
        if previous.get("targets_fingerprint") != fingerprint:
            raise DatasetError(f"{location} already holds the manifest of this config for other targets "
                               f"({previous.get('targets')}); choose another --output")


def expected_rows(plan: ManifestPlan, n_targets: int) -> int:
    """Rows the manifest of ``n_targets`` targets must have: targets x configs x replicates (x 2)."""
    return n_targets * len(plan.configs) * plan.replicates * (2 if plan.paired_controls else 1)


def count_line(plan: ManifestPlan, n_targets: int) -> str:
    return (f"{n_targets} targets x {len(plan.configs)} configs x {plan.replicates} replicates"
            + (" x 2 (paired controls)" if plan.paired_controls else ""))


def manifest_report(plan: ManifestPlan, chashes: list[str], *, location: str, mhash: str, written: list[dict],
                    n_targets: int, targets: str, fingerprint: str, bank_size: int, bank_source: str,
                    code_version: str) -> dict:
    """The ``_manifest.json`` record; raises RuntimeError if the rows written do not add up."""
    n_rows = sum(r["rows"] for r in written)
    if n_rows != expected_rows(plan, n_targets):
        raise RuntimeError(f"manifest has {n_rows} rows, expected {expected_rows(plan, n_targets)} = "
                           + count_line(plan, n_targets))
    injected = n_targets * len(plan.configs) * plan.replicates
    return {
        "location": location, "manifest_hash": mhash, "rows": n_rows,
        "injected": injected, "controls": n_rows - injected,
        "targets": targets, "n_targets": n_targets, "targets_fingerprint": fingerprint,
        "replicates": plan.replicates, "paired_controls": plan.paired_controls,
        "configs": [{"name": c.name, "config_hash": h, "src_mode": c.src_mode}
                    for c, h in zip(plan.configs, chashes)],
        "bank_size": bank_size, "bank_size_from": bank_source, "version": plan.version,
        "code_version": code_version, "config": plan.raw, "files": [r["path"] for r in written],
    }


def _listing(uri: str) -> tuple[list[str], bool]:
    """``(sub-folders of uri, whether uri holds Parquet files itself)``, not recursing."""
    fs, path = storage.resolve(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    except OSError as exc:
        raise DatasetError(f"{uri}: cannot list {WHAT} ({exc})") from exc
    folders = sorted(storage.join(uri, i.base_name) for i in infos if i.type == pafs.FileType.Directory)
    return folders, any(i.type == pafs.FileType.File and i.path.endswith(".parquet") for i in infos)


def resolve_manifest(uri: str) -> str:
    """The manifest dataset that ``uri`` names, for the next stage to read.

    ``uri`` is either the manifest folder itself (it holds ``_manifest.json``, or Parquet files
    directly: a copy of the dataset alone) or a root whose one ``<hash>/_manifest.json`` gives the
    ``location``. A root holding several manifests is refused, naming them: they are never merged.
    """
    if storage.exists(storage.join(uri, SUMMARY_FILE)):
        return uri
    folders, has_files = _listing(uri)
    found = [d for d in folders if storage.exists(storage.join(d, SUMMARY_FILE))]
    if len(found) > 1:
        raise DatasetError(f"{uri}: holds {len(found)} manifests ({', '.join(found)}): "
                           "pass one of them as --manifest")
    if found:
        return json.loads(storage.read_bytes(storage.join(found[0], SUMMARY_FILE)))["location"]
    if has_files:
        return uri
    raise DatasetError(f"{uri}: no {SUMMARY_FILE} here or in a folder below it (expected {WHAT})")


def build_partition(batches, *, plan: ManifestPlan, bank: BankSources, chashes: list[str], code_version: str):
    """The stage-3 Spark task body (``mapInPandas``): target batches -> their tasks."""
    for pdf in batches:
        yield build_tasks(pdf, plan, bank, chashes, code_version)
