"""The stage-5 stamps dataset, defined once: columns, Arrow types, units, schema metadata.

Written by ``jobs.inject_stamps`` (rows from :func:`udfs.stamps.inject.inject_tasks`), read by
``jobs.validate_cosmos_injection``, :mod:`udfs.qa` and the tests. One row per task (injected or
paired control); a Parquet dataset partitioned by ``split=`` (the ``split`` column lives in the
folder name, not in the files).

Units (each field's ``unit`` metadata): angles on the sky in arcsec, position angles in rad, ra/dec
in degrees, magnitudes AB, fluxes and pixels in nanomaggies, inverse variances in nanomaggies^-2,
``gain_<band>`` in electrons per nanomaggy, ``psfdepth_<band>`` the point-source flux inverse
variance (nanomaggies^-2). Pixel columns are one fixed-size binary value per row, byte-stream split
(:mod:`udfs.io.pixel_codec`; each field's metadata gives its ``dtype`` and ``encoding``): ``image``,
``invvar`` float32 and ``arc`` float16 (the noiseless arc, a truth column: relative precision
2^-11, values below 6e-8 nanomaggies flushed to zero; the metrics are computed from it in float32
before it is stored) ``(band, y, x)`` row-major, ``maskbits`` int32 ``(y, x)``; their shapes and
the band order are in the schema metadata, so pyarrow and NumPy alone can read them
(:func:`udfs.stamps.pixels.column_pixels`). A failed row's pixels are null.
"""
from __future__ import annotations

import json

import pyarrow as pa

from udfs.io import pixel_codec
from udfs.schemas.manifest import deflector_fields
from udfs.survey.bands import SURVEY_BANDS

WHAT = "the stage-5 stamps dataset"
PARTITIONS = ["split"]
#: schema metadata keys every reader of the pixels needs
LAYOUT_KEYS = ("image_shape", "band_order", "pixel_scale_arcsec")

_S, _D, _I, _L, _B = pa.string(), pa.float64(), pa.int32(), pa.int64(), pa.bool_()
_ARCSEC, _RAD, _MAG, _NMGY, _IVAR, _ONE = "arcsec", "rad", "mag (AB)", "nanomaggies", "nanomaggies^-2", "1"


def identity_fields() -> list[tuple[str, pa.DataType, str]]:
    """(name, type, unit) of the columns that identify a task and its target."""
    return [("task_id", _S, ""), ("target_id", _S, ""), ("pair_id", _S, ""), ("is_control", _B, ""),
            ("replicate", _I, ""), ("seed", _L, ""), ("config_hash", _S, ""), ("config_name", _S, ""),
            ("split", _S, ""), ("ra", _D, "deg"), ("dec", _D, "deg"), ("brickname", _S, ""),
            ("dx_pix", _D, "pixel"), ("dy_pix", _D, "pixel")]


def truth_fields(bands: str = SURVEY_BANDS) -> list[tuple[str, pa.DataType, str]]:
    """(name, type, unit) of the injected arc's true parameters (null on controls)."""
    return ([("theta_e", _D, _ARCSEC), ("lens_e1", _D, _ONE), ("lens_e2", _D, _ONE),
             ("shear_g1", _D, _ONE), ("shear_g2", _D, _ONE), ("src_x", _D, _ARCSEC),
             ("src_y", _D, _ARCSEC), ("src_phi", _D, _RAD), ("src_mode", _S, ""), ("src_index", _I, ""),
             ("src_z", _D, _ONE), ("src_zphot", _D, _ONE), ("src_size_scale", _D, _ONE)]
            + [(f"src_mag_{b}", _D, _MAG) for b in bands]
            + [("sersic_n", _D, _ONE), ("sersic_re_arcsec", _D, _ARCSEC), ("sersic_q", _D, _ONE),
               ("sersic_phi", _D, _RAD), ("src_gini", _D, _ONE), ("src_m20", _D, _ONE),
               ("src_clumpiness", _D, _ONE), ("src_hlr_arcsec", _D, _ARCSEC)]
            + [(f.name, f.type, (f.metadata or {}).get(b"unit", b"").decode()) for f in deflector_fields()])


def condition_fields(bands: str = SURVEY_BANDS) -> list[tuple[str, pa.DataType, str]]:
    """(name, type, unit) of the observing conditions at the target (every row)."""
    return [(f"psf_fwhm_{b}", _D, _ARCSEC) for b in bands] + [(f"psfdepth_{b}", _D, _IVAR) for b in bands]


def psf_noise_fields(bands: str = SURVEY_BANDS) -> list[tuple[str, pa.DataType, str]]:
    """(name, type, unit) of how the arc's PSF and noise were made (every ok row): ``psf_source_<b>``
    (the cutout's ``psf_source``, or the stage-5 model that replaced it) and ``noise_corr_<b>`` (the
    cutout's measured neighbour-pixel noise correlation, given to the arc's shot noise with ``arc_noise_texture``)
    and on injected rows ``noise_kernel_sum_<b>``: the sum of the texture kernel the arc's shot noise
    was given (1 for white noise; null without arc noise), which scales the summed noise (flux accounting)."""
    return ([(f"psf_source_{b}", _S, "") for b in bands] + [(f"noise_corr_{b}", _D, _ONE) for b in bands]
            + [(f"noise_kernel_sum_{b}", _D, _ONE) for b in bands])


def metric_fields(bands: str = SURVEY_BANDS) -> list[tuple[str, pa.DataType, str]]:
    """(name, type, unit) of the arc metrics (:mod:`udfs.lensing.arc_metrics`; null on controls)."""
    return ([("magnification", _D, _ONE), ("n_images", _I, ""), ("core_flux_frac", _D, _ONE),
             ("arc_snr", _D, _ONE)]
            + [(f"arc_flux_{b}", _D, _NMGY) for b in bands] + [(f"arc_snr_{b}", _D, _ONE) for b in bands]
            + [(f"gain_{b}", _D, "electrons/nanomaggy") for b in bands])


STATUS_FIELDS = [("ok", _B, ""), ("fail_reason", _S, "")]
PIXEL_UNITS = {"image": _NMGY, "invvar": _IVAR, "arc": _NMGY, "maskbits": "bit mask"}
PIXEL_DTYPES = {"image": "<f4", "invvar": "<f4", "arc": "<f2", "maskbits": "<i4"}
PROVENANCE_FIELDS = [("code_version", _S, ""), ("injection_config_hash", _S, "")]


def _names(fields) -> list[str]:
    return [f[0] for f in fields]


IDENTITY = _names(identity_fields())
TRUTH = _names(truth_fields())
CONDITIONS = _names(condition_fields())
PSF_NOISE = _names(psf_noise_fields())
METRICS = _names(metric_fields())
STATUS = _names(STATUS_FIELDS)
PIXELS = list(PIXEL_UNITS)
FLOAT_PIXELS = ["image", "invvar", "arc"]
PROVENANCE = _names(PROVENANCE_FIELDS)


def scalar_fields(bands: str = SURVEY_BANDS) -> list[tuple[str, pa.DataType, str]]:
    """Every non-pixel column in file order, ``split`` included."""
    return identity_fields() + truth_fields(bands) + condition_fields(bands) + psf_noise_fields(bands) \
        + metric_fields(bands) + STATUS_FIELDS


def columns(bands: str = SURVEY_BANDS) -> list[str]:
    """Every column a stamp row carries, in file order (``split`` included: it becomes the folder)."""
    return _names(scalar_fields(bands)) + PIXELS + PROVENANCE


def _field(name: str, typ: pa.DataType, unit: str) -> pa.Field:
    return pa.field(name, typ, metadata={"unit": unit} if unit else None)


def _pixel_fields(n_bands: int, npix: int) -> list[pa.Field]:
    """``n_bands * npix^2`` values per row (``maskbits``: ``npix^2``) of :data:`PIXEL_DTYPES`."""
    size = {"image": n_bands * npix ** 2, "invvar": n_bands * npix ** 2, "arc": n_bands * npix ** 2,
            "maskbits": npix ** 2}
    return [pixel_codec.field(name, size[name], PIXEL_DTYPES[name], {"unit": PIXEL_UNITS[name]}) for name in PIXELS]


def layout_metadata(bands: str, npix: int) -> dict[str, str]:
    """The schema metadata describing pixel shapes, band order, units and the stamp frame."""
    nb = len(bands)
    return {
        "image_shape": json.dumps([nb, npix, npix]), "arc_shape": json.dumps([nb, npix, npix]),
        "maskbits_shape": json.dumps([npix, npix]), "band_order": bands,
        "pixel_layout": "image/invvar/arc: (band, y, x) row-major flattened; maskbits: (y, x); each a "
                        "fixed-size binary value, byte-stream split (field metadata: dtype, encoding)",
        "units": "image, arc: nanomaggies; invvar: 1/nanomaggies^2; angles rad; sizes arcsec",
        "frame": "x along columns, y along rows, arcsec; lens at the target, stamp pixel "
                 "((N-1)/2 + dx_pix, (N-1)/2 + dy_pix)",
    }


def stamp_schema(bands: str, npix: int, provenance: dict[str, str] | None = None) -> pa.Schema:
    """The Arrow schema of a stamps file (no ``split``: it is the partition folder).

    ``provenance``: extra schema metadata (``pixel_scale_arcsec``, ``code_version``, config hashes,
    ...) appended after :func:`layout_metadata`.
    """
    fields = [_field(*f) for f in scalar_fields(bands) if f[0] not in PARTITIONS]
    fields += _pixel_fields(len(bands), npix) + [_field(*f) for f in PROVENANCE_FIELDS]
    return pa.schema(fields, metadata={**layout_metadata(bands, npix), **(provenance or {})})
