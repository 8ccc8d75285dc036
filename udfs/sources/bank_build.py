"""Build source-bank rows: selection, rendering, Sersic twin and morphology per galaxy (the
photometry columns, :data:`SED_COLUMNS`, are added on the driver by
:func:`udfs.sources.bank_photometry.sed_columns`), and serialise them in the layout of
:mod:`udfs.sources.bank`.

Rejection reasons are checked in this fixed order (the first failing one is recorded):
``galsim_exclusion``, ``mag_out_of_range``, ``bad_zphot`` (catalogue-level, :func:`catalogue_cuts`),
then per galaxy ``psf_wider_than_target``, ``no_detection``, ``truncated_by_stamp_edge``,
``neighbour``, ``exceeds_bank_stamp``, ``hlr_out_of_range``, ``hst_noise``, ``morphology_failed``, ``sersic_fit_failed``.
"""
from __future__ import annotations

import collections
import io
import json
import os

import galsim
import h5py
import numpy as np

from udfs.config.bank import BankConfig, Output, RenderConfig
from udfs.config.limits import SERSIC_N_RANGE
from udfs.sources import bank_noise, morphology
from udfs.sources.bank import Crops, untimed_group, write_crops
from udfs.sources.bank_render import footprint, half_light_radius, inspect_original, render
from udfs.sources.cosmos_catalog import CatalogError, CosmosCatalog, open_catalog, staged_directory

#: a row whose image or PSF file cannot be read is rejected as ``unreadable_image:<file>``
UNREADABLE = "unreadable_image"
REASONS = ("galsim_exclusion", "mag_out_of_range", "bad_zphot", "psf_wider_than_target", "no_detection",
           "truncated_by_stamp_edge", "neighbour", "exceeds_bank_stamp", "hlr_out_of_range", "hst_noise",
           "morphology_failed", "sersic_fit_failed")

# photometry columns (udfs.sources.bank_photometry) and their HDF5 dtypes; "S" = as wide as needed
SED_COLUMNS = {
    "zphot_source": "S", "phot_sep_arcsec": np.float64, "colour_source": "S24", "sed_coeff": np.float64,
    "mag_g": np.float64, "mag_r": np.float64, "mag_z": np.float64, "g_r": np.float64, "r_z": np.float64,
}
# meta columns and their HDF5 dtypes (strings are fixed-width ASCII); sed_coeff is (N, 4)
META_COLUMNS = {
    "ident": np.int64, "catalog_index": np.int64, "mag_f814w": np.float64, "zphot": np.float64,
    **SED_COLUMNS,
    "sersic_n": np.float64, "sersic_hlr_arcsec": np.float64, "sersic_q": np.float64,
    "sersic_phi_rad": np.float64, "sersic_source": "S16", "sersic_flag": np.int8,
    "sersic_psf_convolved": np.int8,
    "hlr_arcsec": np.float64, "gini": np.float64, "m20": np.float64, "clumpiness": np.float64,
    "asymmetry": np.float64, "concentration": np.float64, "morph_flag": np.int8,
    "twin_gini": np.float64, "twin_m20": np.float64, "twin_clumpiness": np.float64,
    "offset_x_pix": np.float64, "offset_y_pix": np.float64, "flux_hst": np.float64,
    "noise_sigma_unit": np.float64, "noise_var_dr10_unit": np.float64,
    "sel_neighbour_flux_ratio": np.float64, "sel_hst_psf_fwhm_arcsec": np.float64,
    "sel_noise_variance_ratio": np.float64,
}


def catalogue_cuts(cat: CosmosCatalog, cfg: BankConfig, zphot: np.ndarray | None = None) -> np.ndarray:
    """Reason index per catalogue row for the catalogue-level cuts (-1 = passes them); ``zphot``
    replaces the catalogue's photo-z (e.g. from ``--photometry``)."""
    sel = cfg.selection
    reason = np.full(len(cat), -1, dtype=int)
    keep = galsim_exclusion_mask(cat, sel.exclusion_level)
    mag = np.asarray(cat.main["MAG"], dtype=float)
    z = cat.zphot() if zphot is None else np.asarray(zphot, dtype=float)
    checks = [~keep, ~((mag >= sel.mag_f814w_min) & (mag <= sel.mag_f814w_max)),
              ~((z >= sel.zphot_min) & (z <= sel.zphot_max))]
    for k, failed in enumerate(checks):
        reason[(reason < 0) & failed] = k
    return reason


def galsim_exclusion_mask(cat: CosmosCatalog, level: str) -> np.ndarray:
    """Rows kept by GalSim's ``COSMOSCatalog(exclusion_level=level)`` (``none`` keeps all)."""
    if level == "none":
        return np.ones(len(cat), dtype=bool)
    if cat.params is None or "fit_status" not in cat.params.dtype.names:
        raise CatalogError(f"{cat.path}: exclusion_level={level!r} needs the _fits companion with "
                           "fit_status/sersicfit columns; use exclusion_level: none for this catalogue")
    if level in ("bad_stamp", "marginal") and cat.selection is None:
        raise CatalogError(f"{cat.path}: exclusion_level={level!r} needs "
                           f"real_galaxy_catalog_{cat.name}_selection.fits; use none or bad_fits")
    gcat = galsim.COSMOSCatalog(file_name=cat.file_name, dir=cat.directory, exclusion_level=level)
    keep = np.zeros(len(cat), dtype=bool)
    keep[gcat.orig_index] = True
    return keep


def galaxy_seed(seed: int, ident: int) -> int:
    """Per-galaxy seed for GalSim noise realisations (independent of partitioning)."""
    return int(np.random.SeedSequence([int(seed), int(ident)]).generate_state(1)[0])


def _catalogue_twin(cat: CosmosCatalog, index: int) -> dict | None:
    """Sersic twin from the _fits companion (GalSim's COSMOSCatalog conventions), None if not viable."""
    if not cat.has_sersic_fits or not bool(cat.params["viable_sersic"][index]):
        return None
    fit = cat.params["sersicfit"][index]
    return {"sersic_n": float(np.clip(fit[2], *SERSIC_N_RANGE)), "sersic_hlr_arcsec": float(cat.params["hlr"][index][0]),
            "sersic_q": float(fit[3]), "sersic_phi_rad": float(fit[7]) % np.pi, "sersic_flag": 0,
            "sersic_source": "catalogue_fits", "sersic_psf_convolved": 0}


def process_galaxy(cat: CosmosCatalog, rgc: galsim.RealGalaxyCatalog, index: int, cfg: BankConfig,
                   seed: int) -> tuple[str, dict | None, np.ndarray | None]:
    """``(status, meta_row, image)``: status ``selected`` or a rejection reason from :data:`REASONS`."""
    rc, sel = cfg.render, cfg.selection
    ident = int(cat.main["IDENT"][index])
    row = {"ident": ident, "catalog_index": int(index), "mag_f814w": float(cat.main["MAG"][index]),
           "zphot": float(cat.zphot()[index])}
    psf_fwhm = float(rgc.getPSFImage(index).calculateFWHM())
    row["sel_hst_psf_fwhm_arcsec"] = psf_fwhm
    if psf_fwhm >= rc.target_psf_fwhm_arcsec:
        return "psf_wider_than_target", row, None
    orig = inspect_original(rgc, index, rc)
    row["sel_neighbour_flux_ratio"] = orig.neighbour_flux_ratio
    if not orig.detected:
        return "no_detection", row, None
    if orig.touches_edge:
        return "truncated_by_stamp_edge", row, None
    if orig.neighbour_flux_ratio >= sel.max_neighbour_flux_ratio:
        return "neighbour", row, None
    rend = render(rgc, index, rc)
    if rend is None:
        return "no_detection", row, None
    if rend.touches_border:
        return "exceeds_bank_stamp", row, None
    scale = rc.pixel_scale_arcsec
    row.update(offset_x_pix=rend.offset[0], offset_y_pix=rend.offset[1], flux_hst=rend.flux_hst,
               noise_sigma_unit=rend.noise_sigma_unit, hlr_arcsec=half_light_radius(rend.image, scale))
    if not sel.hlr_arcsec_min <= row["hlr_arcsec"] <= sel.hlr_arcsec_max:
        return "hlr_out_of_range", row, None
    row["noise_var_dr10_unit"], row["sel_noise_variance_ratio"] = _noise_ratio(rend, cfg)
    if row["sel_noise_variance_ratio"] > cfg.noise.max_variance_ratio:
        return "hst_noise", row, None

    # Morphology on the bank image itself (footprint only, as injected); the twin gets the same
    # treatment below, so noise-induced clumpiness is shared by both.
    rng = galsim.BaseDeviate(galaxy_seed(seed, ident))
    morph = morphology.measure(rend.image, rend.mask, rend.noise_sigma_unit, scale)
    if morph["morph_flag"] >= 4 or not np.isfinite(morph["gini"]):
        return "morphology_failed", row, None
    twin = _catalogue_twin(cat, index)
    if twin is None:
        twin = {k: morph[k] for k in ("sersic_n", "sersic_hlr_arcsec", "sersic_q", "sersic_phi_rad", "sersic_flag")}
        twin["sersic_source"] = "statmorph_fit"
        twin["sersic_psf_convolved"] = 1
        if not twin_is_valid(twin, scale):
            row.update(twin)
            return "sersic_fit_failed", row, None
    row.update({k: morph[k] for k in ("gini", "m20", "clumpiness", "asymmetry", "concentration", "morph_flag")})
    row.update(twin)
    row.update(_twin_morphology(twin, rend, rc, rng))
    return "selected", row, rend.image.astype(np.float32)


def _noise_ratio(rend, cfg: BankConfig) -> tuple[float, float]:
    """``(variance per DR10 pixel of the unit-flux galaxy's HST noise, its ratio to the DR10 sky
    variance for the reference source)``."""
    nz = cfg.noise
    v_unit = bank_noise.unit_variance_per_dr10_pixel(rend.profile.noise, rend.flux_hst, cfg.render.pixel_scale_arcsec,
                                                     nz.dr10_psf_fwhm_arcsec, nz.dr10_pixel_scale_arcsec)
    sky = bank_noise.dr10_sky_sigma(nz.dr10_psfdepth_r, nz.dr10_psf_fwhm_arcsec, nz.dr10_pixel_scale_arcsec)
    return v_unit, float(bank_noise.variance_ratio(v_unit, nz.reference_mag_r, nz.reference_magnification, sky))


def twin_is_valid(twin: dict, pixel_scale: float) -> bool:
    """A fitted twin GalSim can draw: n in ``SERSIC_N_RANGE``, hlr of at least half a bank pixel and
    below 5", 0.05 <= q <= 1, statmorph's Sersic flag below 2 (bad)."""
    lo, hi = SERSIC_N_RANGE
    return bool(lo <= twin["sersic_n"] <= hi and 0.5 * pixel_scale <= twin["sersic_hlr_arcsec"] <= 5.0
                and 0.05 <= twin["sersic_q"] <= 1.0 and twin["sersic_flag"] < 2)


def twin_profile(twin: dict) -> galsim.GSObject:
    """Unit-flux Sersic twin (circularised hlr, sheared to axis ratio q at angle phi).

    With ``sersic_psf_convolved == 1`` (statmorph fits) the parameters describe the bank image,
    which already includes the target Gaussian PSF: draw the twin as is. With 0 (the catalogue's
    intrinsic fits) convolve it with the Gaussian of ``render.target_psf_fwhm_arcsec`` first.
    """
    n = float(np.clip(twin["sersic_n"], *SERSIC_N_RANGE))
    prof = galsim.Sersic(n=n, half_light_radius=twin["sersic_hlr_arcsec"], flux=1.0)
    q = float(np.clip(twin["sersic_q"], 0.05, 1.0))
    return prof.shear(q=q, beta=twin["sersic_phi_rad"] * galsim.radians) if q < 1.0 else prof


def _twin_morphology(twin: dict, rend, rc: RenderConfig, rng: galsim.BaseDeviate) -> dict:
    """Gini, M20, clumpiness of the Sersic twin drawn like the galaxy, with the same noise field."""
    prof = twin_profile(twin)
    if twin["sersic_psf_convolved"]:
        # the fit describes the pixelated bank image: sample it (an FFT of a bare high-n Sersic can
        # need > 10^4 pixels)
        method = "no_pixel"
    else:
        prof, method = galsim.Convolve(prof, galsim.Gaussian(fwhm=rc.target_psf_fwhm_arcsec)), "auto"
    image = prof.drawImage(nx=rc.stamp_size, ny=rc.stamp_size, scale=rc.pixel_scale_arcsec, method=method,
                           dtype=np.float64)
    image.addNoise(rend.profile.noise.withScaledVariance(1.0 / rend.flux_hst ** 2).copy(rng=rng))
    labels, central, _ = footprint(image.array, rend.noise_sigma_unit, rc.detect_nsigma)
    if central == 0:
        return {"twin_gini": np.nan, "twin_m20": np.nan, "twin_clumpiness": np.nan}
    from scipy import ndimage

    mask = ndimage.binary_dilation(labels == central, structure=np.ones((3, 3), bool), iterations=rc.dilate_pix)
    m = morphology.measure(np.where(mask, image.array, 0.0), mask, rend.noise_sigma_unit, rc.pixel_scale_arcsec,
                           fit_sersic=False)
    return {"twin_gini": m["gini"], "twin_m20": m["m20"], "twin_clumpiness": m["clumpiness"]}


def render_rows(cosmos_dir: str, indices: list[int], cfg: BankConfig, seed: int):
    """Spark task body: render the given catalogue rows of the catalogue at ``cosmos_dir`` (local or
    s3://, staged once per process); yields ``(index, status, meta_row_json, image_bytes | None)``."""
    cat = open_catalog(staged_directory(cosmos_dir))
    rgc = galsim.RealGalaxyCatalog(cat.file_name, dir=cat.directory)
    try:
        for index in indices:
            unreadable = _unreadable_file(rgc, index)
            if unreadable:
                status, row, image = f"{UNREADABLE}:{unreadable}", {"catalog_index": int(index)}, None
            else:
                status, row, image = process_galaxy(cat, rgc, index, cfg, seed)
            yield index, status, json.dumps(row), (image.tobytes() if image is not None else None)
    finally:
        rgc.close()


def _unreadable_file(rgc: galsim.RealGalaxyCatalog, index: int) -> str | None:
    """The name of the image or PSF file that row ``index`` cannot be read from (truncated or
    corrupt FITS: astropy raises OSError, or IndexError for an HDU past a truncated end), else None."""
    import warnings

    for read, files in ((rgc.getGalImage, rgc.gal_file_name), (rgc.getPSFImage, rgc.psf_file_name)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # astropy's "file may have been truncated"
                read(index)
        except (OSError, IndexError):
            return os.path.basename(str(files[index]))
    return None


def considered_rows(cat: CosmosCatalog, max_galaxies: int | None, seed: int) -> np.ndarray:
    """Catalogue rows to consider: all, or ``max_galaxies`` drawn with ``seed``, in catalogue order."""
    rows = np.arange(len(cat))
    if max_galaxies is not None and max_galaxies < len(cat):
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(cat), size=max_galaxies, replace=False))
    return rows


def assemble(results: list, pre_reasons: np.ndarray, cfg: BankConfig
             ) -> tuple[Crops, dict[str, np.ndarray], dict[str, int]]:
    """``(the selected images' footprint crops, meta columns but :data:`SED_COLUMNS`, rejected
    counts per reason)`` from the rendered ``results`` (sorted by index) and the catalogue-cut
    reasons of the considered rows."""
    counts = collections.Counter(REASONS[r] for r in pre_reasons if r >= 0)
    size = cfg.render.stamp_size
    images, metas = [], []
    for _, status, row_json, image in results:
        if status == "selected":
            metas.append(json.loads(row_json))
            images.append(image)
        else:
            counts[status] += 1
    meta = {name: np.array([m[name] for m in metas]) if metas else np.zeros(0)
            for name in META_COLUMNS if name not in SED_COLUMNS}
    crops = Crops.from_squares((np.frombuffer(b, dtype=np.float32).reshape(size, size) for b in images), size)
    unreadable = {k: int(v) for k, v in sorted(counts.items()) if k.startswith(UNREADABLE + ":")}
    return crops, meta, {**{k: int(counts.get(k, 0)) for k in REASONS}, **unreadable}


def write_bank(crops: Crops, meta: dict[str, np.ndarray], attrs: dict, output: Output) -> bytes:
    """Serialise to HDF5 bytes, deterministically (no timestamps, fixed chunking and gzip level):
    ``pixels`` in chunks of ``output.images_per_chunk`` whole squares' worth of pixels."""
    buf = io.BytesIO()
    with h5py.File(buf, "w", libver=("earliest", "v110"), track_order=False) as f:
        write_crops(f, crops, output.images_per_chunk * crops.size ** 2, output.gzip_level)
        grp = untimed_group(f, "meta")
        for name, dtype in META_COLUMNS.items():
            grp.create_dataset(name, data=np.asarray(meta[name]).astype(dtype), track_times=False)
        for key, value in attrs.items():
            f.attrs[key] = value if not isinstance(value, dict) else json.dumps(value, sort_keys=True)
    return buf.getvalue()
