"""Stage 5 transform: manifest tasks joined with their cutouts -> training stamps (pure pandas).

:func:`inject_buckets` is the Spark task body (``mapInPandas``, one co-located bucket per id,
:mod:`udfs.stamps.inject_bucket`); it calls :func:`inject_tasks` on each batch, which returns a new
frame with the columns of :mod:`udfs.schemas.stamps`. Per row:

- the cutout failed (``cutout_ok`` false): the stamp fails with ``fail_reason = 'cutout:<reason>'``,
  for injected and control rows alike, pixels null (never zeros);
- a parameter the row needs is invalid (PSF FWHM <= 0 or NaN, bank index out of range, ...): the
  row fails with a reason naming it. PSF checks apply to controls too, so failure rates do not
  depend on the label;
- controls: the cutout as it is, ``arc`` all zeros, arc metrics null;
- injected: the lensed arc (SIE + shear, bank source or Sersic, the target's PSF per band) plus
  its own Poisson noise added to the cutout; truth, metrics and the noiseless arc recorded.

PSF (``psf_model``): ``cutout`` (the default) convolves with the PSF stage 4 stored for the target
(``psf``: the survey's CCD PSFEx stack or its recorded fallback, :mod:`udfs.survey.target_psf`);
``gaussian``/``moffat`` (the target's PSFSIZE) and ``psfex`` (fixed files) are explicit options.
Each row records ``psf_source_<b>``. Arc shot noise: Poisson, then given the cutout's measured
noise texture (``noise_kernel``, with ``arc_noise_texture``) as the coadd's resampling gives it
to every photon; each row records the cutout's neighbour correlation ``noise_corr_<b>``.

Colours: r is the task's ``src_mag_r`` (unlensed, at ``src_z``). A task whose ``src_z`` equals
the bank row's ``zphot`` (the source "as it is") takes the bank row's colours,
``src_mag_g = src_mag_r + g_r`` and ``src_mag_z = src_mag_r - r_z``; a task that moves the source
(``src_z != zphot``) takes the colours of the row's SED at ``src_z``
(:func:`udfs.sources.sed.magnitudes_at` of ``sed_coeff``, shifted so that r = ``src_mag_r``: K-corrected
colours), and refuses a bank without ``sed_coeff`` (:data:`SED_COLUMN`). Magnitudes are as
observed (no further extinction). With ``rescale_to_src_z`` the bank image's
angular size is scaled by ``D_A(zphot) / D_A(src_z)`` (:mod:`udfs.sources.cosmology`), recorded as
``src_size_scale``. Sersic tasks with null Sersic parameters take the bank row's Sersic twin.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from udfs.config.checker import Checker, load_yaml
from udfs.config.provenance import REPO_ROOT
from udfs.config.sample_data import expand_data_root
from udfs.io import storage
from udfs.lensing.arc_metrics import CORE_RADIUS_ARCSEC
from udfs.lensing.arcs import Sources, inject, render_arcs
from udfs.lensing.lens_model import Lens
from udfs.schemas import stamps as schema
from udfs.sources.bank import BankError, SourceBank
from udfs.sources.cosmology import angular_size_ratio
from udfs.sources.sed import magnitudes_at
from udfs.stamps.half_float import from_float16, to_float16
from udfs.survey.bands import SURVEY_BANDS, check_bands
from udfs.survey.psf import psf_kernel, psfex_kernel
from udfs.survey.target_psf import DEFAULT_MOFFAT_BETA

PSF_MODELS = ("cutout", "gaussian", "moffat", "psfex")

DEFAULT_CONFIG = str(REPO_ROOT / "conf" / "injection.yaml")
#: bank meta columns the injection reads (colours, photo-z, Sersic twin, morphology)
BANK_COLUMNS = ("g_r", "r_z", "zphot", "sersic_n", "sersic_hlr_arcsec", "sersic_q", "sersic_phi_rad",
                "gini", "m20", "clumpiness", "hlr_arcsec")
#: bank meta column a task needs when it moves its source to ``src_z != zphot`` (its SED; banks
#: built before it existed lack it, and work for tasks at the bank's own zphot)
SED_COLUMN = "sed_coeff"


@dataclass(frozen=True)
class InjectionSettings:
    """``conf/injection.yaml``: how arcs are rendered and added."""
    bands: str = SURVEY_BANDS
    pixel_scale: float = 0.262          # arcsec / pixel of the cutouts
    supersampling: int = 8
    psf_model: str = "cutout"           # cutout | gaussian | moffat | psfex
    moffat_beta: float = DEFAULT_MOFFAT_BETA
    psfex_files: tuple = ()             # psfex: one PSFEx model per band, in band order
    arc_noise: bool = True
    arc_noise_texture: bool = True      # arc shot noise with the cutout's measured texture (else white)
    core_radius_arcsec: float = CORE_RADIUS_ARCSEC
    rescale_to_src_z: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


def load_settings(uri: str) -> InjectionSettings:
    raw = load_yaml(uri)
    c = Checker(uri)
    if "n_buckets" in raw:
        raise c.fail("n_buckets", "no longer a stage-5 setting: stamps take the buckets of the manifest "
                     "and cutouts (the priors' n_buckets); remove it")
    unknown = sorted(set(raw) - set(InjectionSettings.__dataclass_fields__))
    if unknown:
        raise c.fail(unknown[0], "unknown key")
    model = c.get(raw, "psf_model", "psf_model")
    if model not in PSF_MODELS:
        raise c.fail("psf_model", f"expected one of {', '.join(PSF_MODELS)}, got {model!r}")
    bands = c.get(raw, "bands", "bands")
    problem = check_bands(bands)
    if problem:
        raise c.fail("bands", problem)
    files = c.get(raw, "psfex_files", "psfex_files")
    if model == "psfex":
        if not isinstance(files, dict) or set(files) != set(bands):
            raise c.fail("psfex_files", f"psf_model psfex needs one PSFEx file per band {bands!r}, got {files!r}")
        files = {b: expand_data_root(str(files[b])) for b in bands}
        for b in bands:
            if not storage.exists(files[b]):
                raise c.fail(f"psfex_files.{b}", f"{files[b]}: file not found")
        files = tuple(files[b] for b in bands)
    elif files is not None:
        raise c.fail("psfex_files", f"only used with psf_model psfex (null otherwise), got {files!r}")
    else:
        files = ()
    return InjectionSettings(
        bands=bands, pixel_scale=c.number(raw, "pixel_scale", "pixel_scale", lo=0, lo_open=True),
        supersampling=c.integer(raw, "supersampling", "supersampling", lo=1, hi=32),
        psf_model=model, moffat_beta=c.number(raw, "moffat_beta", "moffat_beta", lo=1, lo_open=True),
        psfex_files=files,
        arc_noise=c.boolean(raw, "arc_noise", "arc_noise"),
        arc_noise_texture=c.boolean(raw, "arc_noise_texture", "arc_noise_texture"),
        core_radius_arcsec=c.number(raw, "core_radius_arcsec", "core_radius_arcsec", lo=0, lo_open=True),
        rescale_to_src_z=c.boolean(raw, "rescale_to_src_z", "rescale_to_src_z"))


def _kernels(settings: InjectionSettings, row: dict) -> tuple[list[np.ndarray], list[str]]:
    """PSF kernel and its source per band for one row: the cutout's stored PSF (cutout), the
    target's FWHM (gaussian/moffat), or the configured PSFEx models at their fit centre (psfex)."""
    nb = len(settings.bands)
    if settings.psf_model == "cutout":
        k = int(row["psf_size"])
        psf = np.asarray(row["psf"], dtype=np.float64).reshape(nb, k, k)
        return list(psf), [str(x) for x in row["psf_source"]]
    if settings.psf_model == "psfex":
        return ([psfex_kernel(f, None, None, settings.pixel_scale) for f in settings.psfex_files],
                [f"psfex_file:{f.rsplit('/', 1)[-1]}, stage 5; configured" for f in settings.psfex_files])
    kernels = [psf_kernel(settings.psf_model, row[f"psf_fwhm_{b}"], settings.pixel_scale, settings.moffat_beta)
               for b in settings.bands]
    beta = f",beta={settings.moffat_beta:g}" if settings.psf_model == "moffat" else ""
    return kernels, [f"{settings.psf_model}:fwhm=psfsize{beta}, stage 5; configured"] * nb


def _pixels(values, shape) -> np.ndarray:
    return np.stack([np.asarray(v, dtype=np.float32) for v in values]).reshape((-1,) + shape)


def inject_tasks(pdf: pd.DataFrame, bank: SourceBank, settings: InjectionSettings,
                 stamp_size: int, cosmology: str = "Planck18") -> pd.DataFrame:
    """Stamps for a batch of manifest rows joined with cutout columns (see module doc).

    Cutout columns arrive prefixed ``cutout_`` for ``ok``/``fail_reason``; pixel columns are
    ``image``, ``invvar`` (band-major flattened) and ``maskbits``. Returns a new frame (``pdf`` is
    left as it is) with every column of :mod:`udfs.schemas.stamps` but the provenance.
    """
    bands, n = settings.bands, stamp_size
    out = pdf.copy()
    filled = (schema.truth_fields(bands) + schema.condition_fields(bands) + schema.psf_noise_fields(bands)
              + schema.metric_fields(bands))
    for col, _, _ in filled:
        if col not in out:
            out[col] = None
    reasons = _fail_reasons(out, bank, bands)
    failed = np.array([x is not None for x in reasons], dtype=bool)
    out["ok"] = ~failed
    out["fail_reason"] = reasons
    for col in ("image", "invvar", "maskbits"):
        out.loc[failed, col] = None
    out["arc"] = None
    good = np.flatnonzero(~failed)
    if not len(good):
        return out
    images = _pixels(out["image"].to_numpy()[good], (len(bands), n, n))
    invvar = _pixels(out["invvar"].to_numpy()[good], (len(bands), n, n))
    psf_columns = [c for c in ("psf", "psf_size", "psf_source", *(f"psf_fwhm_{b}" for b in bands)) if c in out]
    made = [_kernels(settings, r) for r in out.iloc[good][psf_columns].to_dict("records")]
    kernels = [m[0] for m in made]
    for k, b in enumerate(bands):
        out.loc[out.index[good], f"psf_source_{b}"] = [m[1][k] for m in made]
    texture = None
    if settings.arc_noise_texture:
        texture = _pixels(out["noise_kernel"].to_numpy()[good], (len(bands), 3, 3)).astype(np.float64)
    for k, b in enumerate(bands):  # point-source depth implied by the cutout's invvar
        nea = np.array([1.0 / np.sum(kern[k] ** 2) for kern in kernels])
        out.loc[out.index[good], f"psfdepth_{b}"] = np.median(invvar[:, k], axis=(1, 2)) / nea
    arcs = np.zeros(images.shape, np.float16)  # stored as float16 (udfs.schemas.stamps)
    inj = np.flatnonzero(~out["is_control"].to_numpy(dtype=bool)[good])
    if len(inj):
        rows = out.iloc[good[inj]]
        arcs[inj], images[inj], truth = _inject(rows, images[inj], invvar[inj], [kernels[j] for j in inj],
                                                None if texture is None else texture[inj],
                                                bank, settings, n, cosmology)
        for col, values in truth.items():
            out.loc[rows.index, col] = values
    for col, pixels in (("image", images), ("arc", arcs)):
        values = [None] * len(out)
        for j, g in enumerate(good):
            values[g] = pixels[j].ravel()
        out[col] = pd.Series(values, dtype=object, index=out.index)
    return out


_ARC_PARAMETERS = ("theta_e", "lens_e1", "lens_e2", "shear_g1", "shear_g2", "src_x", "src_y", "src_phi",
                   "src_mag_r")


def _numbers(values: pd.Series) -> np.ndarray:
    """A column as float64, NaN where a value is missing or not a number."""
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _fail_reasons(out: pd.DataFrame, bank: SourceBank, bands: str) -> np.ndarray:
    """Per row: why its stamp fails, else None; the first that applies of: the cutout failed
    (``cutout:<reason>``), a PSF FWHM is not > 0 (``bad_psf:<band>``, controls too, so failure rates
    do not depend on the label), and for injected rows an arc parameter is invalid
    (``bad_parameter:<name>``: not finite, theta_e <= 0, an unknown src_mode, src_index outside
    the bank)."""
    reasons = np.full(len(out), None, dtype=object)
    open_ = np.ones(len(out), dtype=bool)

    def fail(bad: np.ndarray, reason) -> None:
        hit = open_ & bad
        reasons[hit] = reason if isinstance(reason, str) else reason[hit]
        open_[hit] = False

    ok = out["cutout_ok"].to_numpy(dtype=bool)
    fail(~ok, np.array(["cutout:" + str(r) for r in out["cutout_fail_reason"]], dtype=object))
    for b in bands:
        fwhm = _numbers(out[f"psf_fwhm_{b}"])
        fail(~(np.isfinite(fwhm) & (fwhm > 0)), f"bad_psf:{b}")
    open_ &= ~out["is_control"].to_numpy(dtype=bool)
    for name in _ARC_PARAMETERS:
        fail(~np.isfinite(_numbers(out[name])), f"bad_parameter:{name}")
    fail(~(_numbers(out["theta_e"]) > 0), "bad_parameter:theta_e")
    fail(~out["src_mode"].isin(["cosmos", "sersic"]).to_numpy(), "bad_parameter:src_mode")
    idx = _numbers(out["src_index"])
    fail(~((idx >= 0) & (idx < len(bank))), "bad_parameter:src_index")
    return reasons


def _sersic(rows: pd.DataFrame, meta: dict, idx: np.ndarray, size_scale: np.ndarray) -> dict:
    """Sersic parameters: the manifest's where given, else the bank row's twin (its size moved to
    src_z like the image, its angle turned with the image by src_phi)."""
    twin = {"sersic_n": meta["sersic_n"][idx], "sersic_q": meta["sersic_q"][idx],
            "sersic_re_arcsec": meta["sersic_hlr_arcsec"][idx] * size_scale,
            "sersic_phi": meta["sersic_phi_rad"][idx] + rows["src_phi"].to_numpy(float)}
    out = {}
    for col, twin_value in twin.items():
        given = _numbers(rows[col]) if col in rows else np.full(len(rows), np.nan)
        out[col] = np.where(np.isnan(given), twin_value, given)
    return out


def _source_mags(rows: pd.DataFrame, meta: dict, idx: np.ndarray, cosmology: str) -> dict[str, np.ndarray]:
    """Unlensed g, r, z per task: r = ``src_mag_r``; bank colours at the row's own zphot, the SED's
    colours at ``src_z`` for a moved source (see module doc)."""
    mag_r = rows["src_mag_r"].to_numpy(dtype=float)
    g_r, r_z = meta["g_r"][idx].astype(float), meta["r_z"][idx].astype(float)
    zphot = meta["zphot"][idx].astype(float)
    src_z = _numbers(rows["src_z"]) if "src_z" in rows else zphot
    moved = np.abs(src_z - zphot) > 1e-6 * (1.0 + zphot)    # float32 round trips are not moves
    if moved.any():
        if SED_COLUMN not in meta:
            first = (rows["task_id"] if "task_id" in rows else rows.index).to_numpy()[moved][0]
            raise BankError(f"bank meta lacks column {SED_COLUMN!r}: {int(moved.sum())} task(s) move their "
                            f"source to src_z != zphot (first: task {first}, "
                            f"src_z {src_z[moved][0]:g}, zphot {zphot[moved][0]:g}); rebuild the bank")
        at_z = magnitudes_at(np.asarray(meta[SED_COLUMN][idx[moved]], dtype=float), src_z[moved], cosmology)
        g_r[moved], r_z[moved] = at_z[:, 0] - at_z[:, 1], at_z[:, 1] - at_z[:, 2]
    return {"r": mag_r, "g": mag_r + g_r, "z": mag_r - r_z}


def _inject(rows: pd.DataFrame, images, invvar, kernels, texture, bank: SourceBank, settings, n, cosmology):
    """Render and add arcs for the injected ``rows``: ``(arcs (float16), injected images, truth and metrics)``,
    the last a dict of per-row arrays keyed by stamp column."""
    idx = rows["src_index"].to_numpy(dtype=np.int64)
    meta = bank.meta
    mags = _source_mags(rows, meta, idx, cosmology)
    sersic = (rows["src_mode"] == "sersic").to_numpy()
    size_scale = np.ones(len(rows))
    zphot = meta["zphot"][idx]
    if settings.rescale_to_src_z:
        size_scale = np.asarray(angular_size_ratio(zphot, rows["src_z"].to_numpy(dtype=float), cosmology),
                                dtype=float).reshape(-1)
    sers = _sersic(rows, meta, idx, size_scale)
    # the lens sits on the target: the cutout centre (N-1)/2 plus the target's sub-pixel offset
    cx = rows["dx_pix"].to_numpy(float) * settings.pixel_scale
    cy = rows["dy_pix"].to_numpy(float) * settings.pixel_scale
    lens = Lens.make(rows["theta_e"].to_numpy(float), rows["lens_e1"].to_numpy(float),
                     rows["lens_e2"].to_numpy(float), cx, cy, rows["shear_g1"].to_numpy(float),
                     rows["shear_g2"].to_numpy(float))
    sources = Sources(mode=rows["src_mode"].to_numpy(), x=cx + rows["src_x"].to_numpy(float),
                      y=cy + rows["src_y"].to_numpy(float),
                      phi=np.where(sersic, sers["sersic_phi"], rows["src_phi"].to_numpy(float)),
                      mag=np.stack([mags[b] for b in settings.bands], axis=1), index=idx,
                      sersic_n=sers["sersic_n"], sersic_re=sers["sersic_re_arcsec"],
                      sersic_q=sers["sersic_q"], size_scale=size_scale)
    rendered = render_arcs(lens, sources, kernels, n, settings.pixel_scale, bank, settings.supersampling)
    # the arc as stored (float16, udfs.schemas.stamps): its noise, metrics and truth follow the stored values
    arcs16 = to_float16(rendered.arcs)
    rendered = replace(rendered, arcs=from_float16(arcs16))
    seeds = rows["seed"].to_numpy(dtype=np.int64).astype(np.uint64)
    injected, _, metrics = inject(images, invvar, rendered, lens, settings.bands, settings.pixel_scale,
                                  seeds, noise=settings.arc_noise, core_radius=settings.core_radius_arcsec,
                                  noise_kernels=texture)
    truth = {f"src_mag_{b}": mags[b] for b in settings.bands}
    for k, b in enumerate(settings.bands):  # the texture kernel's sum scales the arc's summed noise
        ksum = np.ones(len(rows)) if texture is None else texture[:, k].sum(axis=(1, 2))
        truth[f"noise_kernel_sum_{b}"] = ksum if settings.arc_noise else np.full(len(rows), np.nan)
    truth.update(src_size_scale=size_scale, src_zphot=zphot)
    for col, bank_col in (("src_gini", "gini"), ("src_m20", "m20"), ("src_clumpiness", "clumpiness"),
                          ("src_hlr_arcsec", "hlr_arcsec")):
        truth[col] = meta[bank_col][idx] * (size_scale if col == "src_hlr_arcsec" else 1.0)
    for col in ("sersic_n", "sersic_re_arcsec", "sersic_q", "sersic_phi"):
        truth[col] = np.where(sersic, sers[col], np.nan)
    return arcs16, injected, {**truth, **metrics}


def inject_buckets(ids, buckets: list[tuple[int, str, str | None]], bank_uri: str, settings: InjectionSettings,
                   stamp_size: int, cosmology: str, provenance: dict[str, str], output: str, schema_ipc: bytes,
                   cutouts_ipc: bytes, skip_existing: bool):
    """The stage-5 Spark task body (``mapInPandas`` over a column ``id``): for each id ``i``, the
    stamp files of bucket ``buckets[i] = (bucket, manifest file, cutouts file or None)``
    (:func:`udfs.stamps.inject_bucket.inject_bucket`), stamp rows from :func:`inject_tasks` with
    ``provenance`` columns set on every row; yields one row per file (path, rows, status). The bank
    is loaded once per Python worker."""
    import pyarrow as pa

    from udfs.sources.bank import load_bank
    from udfs.stamps.inject_bucket import inject_bucket

    bank = load_bank(bank_uri)
    names = schema.columns(settings.bands)
    file_schema = pa.ipc.read_schema(pa.py_buffer(schema_ipc))
    cutouts_schema = pa.ipc.read_schema(pa.py_buffer(cutouts_ipc))

    def inject(pdf: pd.DataFrame) -> pd.DataFrame:
        return inject_tasks(pdf, bank, settings, stamp_size, cosmology).assign(**provenance)[names]

    for batch in ids:
        for i in batch["id"]:
            bucket, manifest_file, cutouts_file = buckets[int(i)]
            yield pd.DataFrame(inject_bucket(bucket, manifest_file, cutouts_file, output, inject=inject,
                                             file_schema_=file_schema, cutouts_schema=cutouts_schema,
                                             skip_existing=skip_existing),
                               columns=["path", "rows", "status"])
