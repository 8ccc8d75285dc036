"""Real lens deflectors from published lens lists as stage-1 targets, with a Tractor-format catalogue
to render them in the sample sky (``jobs.build_lens_hosts``; config ``conf/lens_hosts.yaml``).

A lens list (Stein et al. 2021 tables: ``ra, dec, source_type, ebv, z_spec, z_phot_mean,
mag_g/r/z``, DR9 photometry) gives each deflector's real position, type, grz magnitudes (taken as
extinction-corrected AB, as the DR9 sweeps' dereddened magnitudes the tables were built from) and
redshift (``z_spec`` when > 0, else ``z_phot_mean``; ``zl_source = "<list>:z_spec"`` or
``"<list>:z_phot_mean"``). Rows without finite positive g, r, z fluxes or a redshift are skipped
(counted). ``n_hosts`` rows are kept, in the order of a BLAKE2b hash of ``"<list>|<row>"``
(deterministic, independent of the file order).

The lists give no shapes, so the light gets documented ones (``shape_source = "assigned:..."``):

- half-light radius from the early-type size-luminosity relation of Shen et al. (2003, MNRAS 343,
  978, eq. 14, SDSS r): ``log10(R_50 / kpc) = -0.4 a M_r + b``, ``a = 0.65``, ``b = -5.06``, with
  ``M_r`` the rest-frame absolute magnitude (:func:`udfs.sources.red_galaxy.absolute_mag_r`),
  turned into arcsec with the cosmology's angular-diameter distance;
- axis ratio from a normal distribution truncated to [low, high] (default 0.75 +- 0.15 in
  [0.3, 1], the peak and width of SDSS early-type axis ratios), position angle uniform; both from
  hashes of the row (reproducible);
- type: the list's; SER gets Sersic index ``sersic_n``; REX is round.

Catalogue columns (observed fluxes: the magnitudes re-reddened with ``ebv`` and the DECam
coefficients ``R = 3.214, 2.165, 1.211`` of Schlafly & Finkbeiner 2011 used by the Legacy Surveys)
and the depth and PSF size the sample sky needs (``PSFDEPTH``, ``GALDEPTH``, ``PSFSIZE`` from the
config: typical DECaLS values). ``target_id`` = ``"<list>:<row>"``; every target column of
:data:`udfs.schemas.targets.TARGET_SCHEMA` is set (PSF FWHM and depth the configured ones).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from udfs.config.checker import Checker, load_yaml
from udfs.config.sample_data import expand_data_root
from udfs.io import storage
from udfs.io.errors import InputError
from udfs.sources.red_galaxy import absolute_mag_r
from udfs.schemas.targets import TARGET_SCHEMA
from udfs.sources.cosmology import get_cosmology
from udfs.survey.bands import SURVEY_BANDS
from udfs.survey.bricks import brick_at
from udfs.targets.splits import assign_splits, healpix_cells

LIST_COLUMNS = ("ra", "dec", "source_type", "ebv", "z_spec", "z_phot_mean", "mag_g", "mag_r", "mag_z")
EXTINCTION_R = {"g": 3.214, "r": 2.165, "z": 1.211}
TYPES = ("DEV", "SER", "EXP", "REX")


class LensHostError(InputError):
    """A lens list or the hosts config is unusable (the message names the file and column)."""


@dataclass(frozen=True)
class LensList:
    name: str
    path: str


@dataclass(frozen=True)
class HostsConfig:
    lists: tuple[LensList, ...]
    n_hosts: int
    cosmology: str
    size_a: float
    size_b: float
    q_mean: float
    q_sigma: float
    q_low: float
    q_high: float
    sersic_n: float
    psf_fwhm: dict[str, float]            # arcsec
    psfdepth_mag: dict[str, float]        # 5-sigma point-source depth, AB
    split_config: str                     # the stage-1 selection config whose split rule applies
    cut_version: str
    raw: dict


def load_config(uri: str) -> HostsConfig:
    raw = load_yaml(uri)
    c = Checker(uri)
    c.unknown(raw, {"cut_version", "lists", "n_hosts", "cosmology", "size_luminosity", "axis_ratio",
                    "sersic_n", "psf_fwhm_arcsec", "psfdepth_5sigma_mag", "split_config"}, "")
    lists = c.get(raw, "lists", "lists")
    if not isinstance(lists, list) or not lists:
        raise c.fail("lists", "expected a non-empty list of {name, path}")
    parsed = []
    for i, entry in enumerate(lists):
        if not isinstance(entry, dict):
            raise c.fail(f"lists[{i}]", f"expected a mapping, got {entry!r}")
        c.unknown(entry, {"name", "path"}, f"lists[{i}]")
        parsed.append(LensList(c.string(entry, "name", f"lists[{i}].name"),
                               expand_data_root(c.string(entry, "path", f"lists[{i}].path"))))
    size = c.mapping(raw, "size_luminosity", "size_luminosity")
    c.unknown(size, {"a", "b"}, "size_luminosity")
    q = c.mapping(raw, "axis_ratio", "axis_ratio")
    c.unknown(q, {"mean", "sigma", "low", "high"}, "axis_ratio")
    bands = {key: c.per_band(raw, key, SURVEY_BANDS, lo=0, lo_open=True)
             for key in ("psf_fwhm_arcsec", "psfdepth_5sigma_mag")}
    cosmology = c.string(raw, "cosmology", "cosmology")
    try:
        get_cosmology(cosmology)
    except ValueError as exc:
        raise c.fail("cosmology", str(exc)) from exc
    q_low = c.number(q, "low", "axis_ratio.low", lo=0, lo_open=True, hi=1)
    q_high = c.number(q, "high", "axis_ratio.high", lo=0, lo_open=True, hi=1)
    if q_low >= q_high:
        raise c.fail("axis_ratio", f"low ({q_low}) must be below high ({q_high})")
    return HostsConfig(
        lists=tuple(parsed), n_hosts=c.integer(raw, "n_hosts", "n_hosts", lo=1), cosmology=cosmology,
        size_a=c.number(size, "a", "size_luminosity.a"), size_b=c.number(size, "b", "size_luminosity.b"),
        q_mean=c.number(q, "mean", "axis_ratio.mean", lo=0, hi=1),
        q_sigma=c.number(q, "sigma", "axis_ratio.sigma", lo=0, lo_open=True), q_low=q_low, q_high=q_high,
        sersic_n=c.number(raw, "sersic_n", "sersic_n", lo=0.3, hi=6.2),
        psf_fwhm=bands["psf_fwhm_arcsec"], psfdepth_mag=bands["psfdepth_5sigma_mag"],
        split_config=_repo_path(c.string(raw, "split_config", "split_config")),
        cut_version=c.string(raw, "cut_version", "cut_version"), raw=raw)


def _repo_path(path: str) -> str:
    """A config path: absolute or a URI as given, else relative to the repository root."""
    from pathlib import Path

    from udfs.config.provenance import REPO_ROOT

    return path if "://" in path or Path(path).is_absolute() else str(REPO_ROOT / path)


def read_list(entry: LensList) -> pd.DataFrame:
    """A lens list (TSV/CSV) with :data:`LIST_COLUMNS`; ``row`` = its 0-based data row."""
    if not storage.exists(entry.path):
        raise LensHostError(f"{entry.path}: lens list {entry.name!r} not found")
    import io

    sep = "\t" if entry.path.endswith(".tsv") else ","
    try:
        df = pd.read_csv(io.BytesIO(storage.read_bytes(entry.path)), sep=sep)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise LensHostError(f"{entry.path}: not a readable table ({exc})") from exc
    missing = [c for c in LIST_COLUMNS if c not in df.columns]
    if missing:
        raise LensHostError(f"{entry.path}: lens list lacks column {missing[0]!r}")
    return df[list(LIST_COLUMNS)].rename_axis("row").reset_index()


def _hash_u(keys, salt: str) -> np.ndarray:
    """Uniform [0, 1) per key from BLAKE2b (reproducible, order-free)."""
    out = [int.from_bytes(hashlib.blake2b(f"{salt}|{k}".encode(), digest_size=8).digest(), "big") / 2.0 ** 64
           for k in keys]
    return np.asarray(out, dtype=float)


def select_hosts(cfg: HostsConfig) -> tuple[pd.DataFrame, dict]:
    """The usable rows of every list, ``n_hosts`` of them by hash order; ``(rows, counts)``."""
    frames, counts = [], {}
    for entry in cfg.lists:
        df = read_list(entry)
        mags = df[["mag_g", "mag_r", "mag_z"]].to_numpy(float)
        z = np.where(df["z_spec"].to_numpy(float) > 0, df["z_spec"], df["z_phot_mean"]).astype(float)
        usable = (np.all(np.isfinite(mags) & (mags > 0) & (mags < 30), axis=1) & np.isfinite(z) & (z > 0)
                  & df["source_type"].isin(TYPES).to_numpy())
        counts[entry.name] = {"rows": int(len(df)), "usable": int(usable.sum())}
        df = df[usable].assign(list=entry.name, z_l=z[usable],
                               zl_source=np.where(df["z_spec"].to_numpy(float)[usable] > 0,
                                                  f"{entry.name}:z_spec", f"{entry.name}:z_phot_mean"))
        frames.append(df)
    rows = pd.concat(frames, ignore_index=True)
    rows["target_id"] = rows["list"] + ":" + rows["row"].astype(str)
    rows["_order"] = _hash_u(rows["target_id"], "order")
    rows = rows.sort_values(["_order", "target_id"]).head(cfg.n_hosts).drop(columns="_order")
    if len(rows) < cfg.n_hosts:
        raise LensHostError(f"the lists hold {len(rows)} usable deflectors, fewer than n_hosts {cfg.n_hosts}")
    return rows.reset_index(drop=True), counts


def assigned_shapes(rows: pd.DataFrame, cfg: HostsConfig) -> dict[str, np.ndarray]:
    """``shape_r`` (arcsec), ``shape_e1/e2`` (Tractor convention), ``shape_source`` of the rows."""
    from scipy.stats import truncnorm

    abs_mag = absolute_mag_r(rows["mag_r"].to_numpy(float), rows["z_l"].to_numpy(float), cfg.cosmology)
    r_kpc = 10.0 ** (-0.4 * cfg.size_a * abs_mag + cfg.size_b)
    da_kpc = get_cosmology(cfg.cosmology).angular_diameter_distance(rows["z_l"].to_numpy(float)).to("kpc").value
    r_arcsec = r_kpc / da_kpc * 180.0 / np.pi * 3600.0
    a, b = (cfg.q_low - cfg.q_mean) / cfg.q_sigma, (cfg.q_high - cfg.q_mean) / cfg.q_sigma
    q = truncnorm.ppf(_hash_u(rows["target_id"], "q"), a, b, loc=cfg.q_mean, scale=cfg.q_sigma)
    rex = (rows["source_type"] == "REX").to_numpy()
    q = np.where(rex, 1.0, q)
    e = (1.0 - q) / (1.0 + q)
    pa = np.pi * _hash_u(rows["target_id"], "pa")        # East of North
    rule = f"assigned:shen2003_size,q~N({cfg.q_mean:g},{cfg.q_sigma:g})[{cfg.q_low:g},{cfg.q_high:g}],pa~U"
    return {"shape_r": r_arcsec, "shape_e1": e * np.cos(2 * pa), "shape_e2": e * np.sin(2 * pa),
            "shape_source": np.full(len(rows), rule, dtype=object)}


def _depth_ivar(mag5: float) -> float:
    """PSFDEPTH (nanomaggy^-2) of a 5-sigma point-source depth in AB mag."""
    sigma = 10.0 ** (-0.4 * (mag5 - 22.5)) / 5.0
    return 1.0 / sigma ** 2


def host_tables(rows: pd.DataFrame, cfg: HostsConfig, *, chash: str, version: str) -> tuple[pd.DataFrame, dict]:
    """``(targets in TARGET_SCHEMA order, Tractor-format catalogue columns)`` of the selected rows."""
    from udfs.targets.lrg_cuts import load_config as load_selection

    sel = load_selection(cfg.split_config)
    n = len(rows)
    ra, dec = rows["ra"].to_numpy(float), rows["dec"].to_numpy(float)
    bricks = [brick_at(a, d) for a, d in zip(ra, dec)]
    shapes = assigned_shapes(rows, cfg)
    cells = healpix_cells(ra, dec, sel.healpix_nside)
    depth = {b: _depth_ivar(cfg.psfdepth_mag[b]) for b in SURVEY_BANDS}
    none = [None] * n
    targets = pd.DataFrame({
        "target_id": rows["target_id"].to_numpy(object), "release": none, "brickid": none,
        "objid": np.arange(n, dtype=np.int32), "brickname": [b.name for b in bricks], "ra": ra, "dec": dec,
        "type": rows["source_type"].to_numpy(object), **shapes,
        "z_l": rows["z_l"].to_numpy(float), "zl_source": rows["zl_source"].to_numpy(object),
        **{f"mag_{b}": rows[f"mag_{b}"].to_numpy(float) for b in SURVEY_BANDS}, "mag_w1": none,
        **{f"psf_fwhm_{b}": np.full(n, cfg.psf_fwhm[b]) for b in SURVEY_BANDS},
        "psf_fwhm_source": ",".join(f"{b}=nominal" for b in SURVEY_BANDS),
        **{f"psfdepth_{b}": np.full(n, depth[b]) for b in SURVEY_BANDS},
        "ebv": rows["ebv"].to_numpy(float), "maskbits": np.zeros(n, dtype=np.int32),
        **{f"nobs_{b}": none for b in SURVEY_BANDS},
        "healpix": cells, "healpix_nside": np.full(n, sel.healpix_nside, dtype=np.int32),
        "split": assign_splits(cells, sel.split_seed, sel.healpix_nside, sel.split_fractions).astype(object),
        "photsys": "S", "data_release": "DR9", "source_file": rows["list"].to_numpy(object),
        "cut_version": cfg.cut_version, "config_hash": chash, "code_version": version,
    })[TARGET_SCHEMA.names]
    ext = {b: 10.0 ** (-0.4 * EXTINCTION_R[b] * rows["ebv"].to_numpy(float)) for b in SURVEY_BANDS}
    catalog = {
        "BRICKNAME": np.array([b.name for b in bricks]), "OBJID": np.arange(n, dtype=np.int32),
        "TYPE": rows["source_type"].to_numpy(str), "RA": ra, "DEC": dec,
        **{f"FLUX_{b.upper()}": 10.0 ** (-0.4 * (rows[f"mag_{b}"].to_numpy(float) - 22.5)) * ext[b]
           for b in SURVEY_BANDS},
        **{f"PSFDEPTH_{b.upper()}": np.full(n, depth[b]) for b in SURVEY_BANDS},
        **{f"GALDEPTH_{b.upper()}": np.full(n, depth[b]) for b in SURVEY_BANDS},
        **{f"PSFSIZE_{b.upper()}": np.full(n, cfg.psf_fwhm[b]) for b in SURVEY_BANDS},
        "SHAPE_R": shapes["shape_r"], "SHAPE_E1": shapes["shape_e1"], "SHAPE_E2": shapes["shape_e2"],
        "SERSIC": np.where(rows["source_type"].to_numpy(str) == "SER", cfg.sersic_n, 0.0),
    }
    return targets, catalog


def catalog_fits(catalog: dict) -> bytes:
    """The catalogue as a FITS binary table (bytes), in the Tractor column naming."""
    import io

    from astropy.io import fits
    from astropy.table import Table

    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(Table(catalog))]).writeto(buf)
    return buf.getvalue()
