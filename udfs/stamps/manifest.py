"""Stage 3 logic: targets x configs x replicates -> injection tasks (+ paired controls).

Config: :mod:`udfs.stamps.priors` (``conf/injection_priors.yaml``). Columns:
:mod:`udfs.schemas.manifest`. Output: ``<root>/<manifest_hash>/`` with ``_manifest.json``
(:func:`resolve_manifest` finds it for the next stage).

Per task:

- ``seed`` (int64): BLAKE2b-64 of ``"<target_id>|<config_hash>|<replicate>"`` (controls append
  ``"|control"``). ``config_hash`` hashes the config's merged priors, its name, the manifest
  ``version`` and the bank size; ``replicates`` and ``paired_controls`` are left out, so adding
  replicates keeps the earlier tasks unchanged.
- Parameters: :mod:`udfs.stamps.task_draws` (pure functions of the seed; lens, source, deflector).
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
from udfs.schemas.targets import DEFLECTOR_INPUT_COLUMNS, MANIFEST_INPUT_COLUMNS
from udfs.sources.bank import BankError, read_bank_info, read_bank_meta
from udfs.stamps.priors import ManifestPlan
from udfs.stamps.task_draws import BankSources, sample_parameters

#: bank meta columns stage 3 reads (small 1-D arrays; never the images)
SOURCE_COLUMNS = ("zphot", "mag_r")


def needs_bank_meta(plan: ManifestPlan) -> bool:
    """Whether some config draws from the galaxies' own properties or a deflector (needs ``--bank``)."""
    return any(c.lens_mode == "deflector" or c.src_redshift == "own" or c.src_brightness == "own"
               for c in plan.configs)


def moves_sources(location: str) -> bool:
    """Whether the manifest at ``location`` (its ``_manifest.json``; False without one) has a config
    that moves bank galaxies to another redshift (``src_redshift: prior``, also what a manifest from
    before that key did): stage 5 then needs their SEDs."""
    summary = storage.join(location, SUMMARY_FILE)
    if not storage.exists(summary):
        return False
    raw = json.loads(storage.read_bytes(summary)).get("config") or {}
    default = (raw.get("defaults") or {}).get("src_redshift", "prior")
    return any(entry.get("src_redshift", default) == "prior" for entry in raw.get("configs") or [])


def needs_deflector_columns(plan: ManifestPlan) -> bool:
    return any(c.lens_mode == "deflector" for c in plan.configs)


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
            meta = read_bank_meta(bank_uri, SOURCE_COLUMNS + (("sed_coeff",) if "sed_coeff" in info.meta_columns else ()))
        except BankError as exc:
            raise BankError(f"--bank {bank_uri}: {exc}") from exc
        cosmology = json.loads(str(info.attrs.get("config", "{}"))).get("cosmology")
        if not cosmology:
            raise BankError(f"--bank {bank_uri}: its config names no cosmology")
        return BankSources(size=info.size, zphot=np.asarray(meta["zphot"], dtype=float),
                           mag_r=np.asarray(meta["mag_r"], dtype=float), sed_coeff=meta.get("sed_coeff"),
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
