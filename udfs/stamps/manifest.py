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

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from udfs.config.provenance import config_hash
from udfs.io import storage
from udfs.io.datasets import DatasetError
from udfs.schemas.manifest import ARC_COLUMNS, MANIFEST_SCHEMA, SUMMARY_FILE, WHAT
from udfs.schemas.targets import MANIFEST_INPUT_COLUMNS
from udfs.sources.bank import BankError, read_bank_info
from udfs.stamps.priors import COMMON_PARAMS, SERSIC_PARAMS, InjectionConfig, ManifestPlan

# Random stream of each sampled quantity: fixed forever (changing one changes every manifest).
STREAM = {"theta_e": 1, "lens_q": 2, "lens_phi": 3, "shear_gamma": 4, "shear_phi": 5, "src_r": 6,
          "src_angle": 7, "src_index": 8, "src_phi": 9, "src_mag_r": 10, "src_z": 11, "sersic_n": 12,
          "sersic_re_arcsec": 13, "sersic_q": 14, "sersic_phi": 15}

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
    base = {c: targets[c].to_numpy() for c in MANIFEST_INPUT_COLUMNS}
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


def bank_size_of(plan: ManifestPlan, bank_uri: str | None, config_uri: str) -> tuple[int, str]:
    """``(bank size, where it came from)``: the bank's row count (its images are not read) when
    ``bank_uri`` is given, else the config's ``bank_size``."""
    if bank_uri:
        try:
            size = read_bank_info(bank_uri).size
        except BankError as exc:
            raise BankError(f"--bank {bank_uri}: {exc}") from exc
        if size < 1:
            raise BankError(f"--bank {bank_uri}: the bank holds no galaxies")
        return size, bank_uri
    if plan.bank_size is None:
        raise DatasetError(f"{config_uri}: bank_size: is null, so --bank PATH must give the source bank")
    return plan.bank_size, f"{config_uri}: bank_size"


def check_targets(uri: str, n_rows: int, duplicate: tuple[str, int] | None, nulls: dict[str, int]) -> None:
    """Refuse targets whose ids repeat (seeds would repeat) or whose manifest columns hold nulls.

    ``duplicate``: the first repeated ``(target_id, count)`` or None; ``nulls``: null count per column.
    """
    if duplicate is not None:
        raise DatasetError(f"{uri}: column target_id: {duplicate[0]!r} occurs {duplicate[1]} times "
                           "(seeds would repeat)")
    bad = [c for c in MANIFEST_INPUT_COLUMNS if nulls.get(c)]
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


def build_partition(batches, *, plan: ManifestPlan, bank_size: int, chashes: list[str], code_version: str):
    """The stage-3 Spark task body (``mapInPandas``): target batches -> their tasks."""
    for pdf in batches:
        yield build_tasks(pdf, plan, bank_size, chashes, code_version)
