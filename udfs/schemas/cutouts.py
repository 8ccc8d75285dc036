"""The stage-4 cutouts dataset, defined once: columns, Arrow types, units, schema metadata.

Written by ``jobs.make_cutouts`` (rows from :func:`udfs.survey.coadd_cutouts.cut_brick`), read by
``jobs.inject_stamps`` and the tests. One row per target, bucketed by ``brickname`` (:data:`BUCKET_KEY`); not partitioned.

Pixel columns are fixed-size lists: ``image``, ``invvar`` float32 ``(band, y, x)`` row-major with
the band order of ``band_order``; ``maskbits`` int32 ``(y, x)``, one plane for all bands. Failed
rows (``ok`` false) hold lists of null items. Shapes, band order, units and the stamp geometry are
in the schema metadata (:func:`layout_metadata`), so pyarrow alone can read the pixels.

The target's PSF (:mod:`udfs.survey.target_psf`): ``psf`` float32 ``(band, K, K)`` flattened,
``K = psf_size`` per row (odd, centred, unit sum per band, sampled at coadd pixel centres),
``psf_source`` one string per band. The stamp's noise texture
(:mod:`udfs.survey.noise_texture`): ``noise_rho`` and ``noise_kernel`` float32 ``(band, 3, 3)``
(correlation at lags -1..1, NaN where not measured; kernel with unit squared sum, the identity
there), ``noise_source`` per band, ``noise_corr_<b>`` the neighbour correlation.
"""
from __future__ import annotations

import json

import pyarrow as pa

from udfs.io.datasets import DatasetError
from udfs.survey.bands import SURVEY_BANDS

WHAT = "the stage-4 cutouts dataset"
SUMMARY_FILE = "_summary.json"
#: what the cutout job reads from a targets dataset (plus ``psf_fwhm_<band>`` per requested band)
TARGET_INPUT_COLUMNS = ("target_id", "ra", "dec", "brickname", "split")
#: the columns stage 5 joins onto its tasks
READER_COLUMNS = ["target_id", "ok", "fail_reason", "dx_pix", "dy_pix", "image", "invvar", "maskbits",
                  "psf", "psf_size", "psf_source", "noise_kernel", "noise_corr_g", "noise_corr_r", "noise_corr_z"]
#: stages 3, 4 and 5 bucket their rows by the target's brick (co-located: bucket b of the manifest
#: holds the tasks of bucket b's cutouts), so stage 5 merges them file by file, with no shuffle
BUCKET_KEY = ("brickname",)
#: row order within a cutouts file
ROW_ORDER = ("brickname", "target_id")
#: the 3 x 3 noise-texture window per band
TEXTURE_SIZE = 3
#: schema metadata keys every reader of the pixels needs
LAYOUT_KEYS = ("image_shape", "band_order")
#: the per-row columns the job's ``_summary.json`` is computed from
SUMMARY_COLUMNS = ["target_id", "ok", "fail_reason", "bytes_read", "file_bytes", "brickname", "psf_source",
                   "psf_bytes_read", "psf_files", "noise_source", "noise_corr_g", "noise_corr_r", "noise_corr_z"]

_S, _D, _I, _L, _B = pa.string(), pa.float64(), pa.int32(), pa.int64(), pa.bool_()
_F, _STRS = pa.list_(pa.float32()), pa.list_(pa.string())
_PIX = "pixel"


def _field(name: str, typ: pa.DataType, unit: str = "") -> pa.Field:
    return pa.field(name, typ, metadata={"unit": unit} if unit else None)


def target_input_columns(bands: str) -> list[str]:
    """The targets columns a cutout run over ``bands`` needs."""
    return [*TARGET_INPUT_COLUMNS, *(f"psf_fwhm_{b}" for b in bands)]


def cutout_fields(n_bands: int, npix: int | None, target_id: pa.DataType = _S) -> list[pa.Field]:
    """The columns in file order. ``npix``: stamp side; None gives variable-size pixel lists (the
    rows as the Spark task yields them). ``target_id``: the type of the targets' id column."""
    def pixels(typ: pa.DataType, size: int) -> pa.DataType:
        return pa.list_(typ, size) if npix is not None else pa.list_(typ)

    plane = (npix or 0) ** 2
    return [
        _field("target_id", target_id), _field("ok", _B), _field("fail_reason", _S),
        _field("dx_pix", _D, _PIX), _field("dy_pix", _D, _PIX), _field("x_pix", _D, _PIX),
        _field("y_pix", _D, _PIX), _field("stamp_x0", _I, _PIX), _field("stamp_y0", _I, _PIX),
        _field("ra", _D, "deg"), _field("dec", _D, "deg"), _field("bands", _S),
        _field("image", pixels(pa.float32(), n_bands * plane), "nanomaggies"),
        _field("invvar", pixels(pa.float32(), n_bands * plane), "nanomaggies^-2"),
        _field("maskbits", pixels(pa.int32(), plane), "Legacy Survey MASKBITS"),
        _field("has_maskbits", _B), _field("good_frac", _D, "1"),
        _field("psf", _F, "1 (unit sum per band)"), _field("psf_size", _I, _PIX), _field("psf_source", _STRS),
        _field("psf_bytes_read", _L, "bytes"), _field("psf_files", _STRS),
        _field("noise_rho", pixels(pa.float32(), n_bands * TEXTURE_SIZE ** 2), "1"),
        _field("noise_kernel", pixels(pa.float32(), n_bands * TEXTURE_SIZE ** 2), "1"),
        _field("noise_source", _STRS), *[_field(f"noise_corr_{b}", _D, "1") for b in SURVEY_BANDS],
        *[_field(f"psf_fwhm_{b}", _D, "arcsec") for b in SURVEY_BANDS],
        _field("bytes_read", _L, "bytes"), _field("file_bytes", _L, "bytes"), _field("brickname", _S),
        _field("split", _S), _field("code_version", _S), _field("config_hash", _S),
    ]


COLUMNS = [f.name for f in cutout_fields(1, None)]


def layout_metadata(bands: str, npix: int) -> dict[str, str]:
    """The schema metadata describing pixel shapes, band order, units and the stamp geometry."""
    nb = len(bands)
    return {
        "image_shape": json.dumps([nb, npix, npix]), "invvar_shape": json.dumps([nb, npix, npix]),
        "maskbits_shape": json.dumps([npix, npix]), "band_order": bands,
        "pixel_layout": "image/invvar: (band, y, x) row-major flattened, band order = band_order; "
                        "maskbits: (y, x) row-major, one plane for all bands",
        "psf_shape": "(band, psf_size, psf_size) per row", "noise_texture_shape": json.dumps([nb, 3, 3]),
        "units": "image: nanomaggies; invvar: 1/nanomaggies^2; maskbits: Legacy Survey MASKBITS; "
                 "psf_fwhm_*: arcsec; dx_pix, dy_pix, x_pix, y_pix: pixels; psf: unit sum per band",
        "stamp_geometry": "target at stamp pixel ((N-1)/2 + dx_pix, (N-1)/2 + dy_pix), 0-based, x = column; "
                          "stamp pixel (0, 0) = brick pixel (stamp_x0, stamp_y0)",
    }


def cutout_schema(bands: str, npix: int, provenance: dict[str, str] | None = None,
                  target_id: pa.DataType = _S) -> pa.Schema:
    """The Arrow schema of a cutouts file: :func:`cutout_fields` with fixed-size pixel lists and
    :func:`layout_metadata` followed by ``provenance`` (code_version, config_hash, cutout_config)."""
    return pa.schema(cutout_fields(len(bands), npix, target_id),
                     metadata={**layout_metadata(bands, npix), **(provenance or {})})


def stamp_geometry(path: str, metadata: dict[str, str]) -> tuple[str, int]:
    """``(band order, stamp side N)`` from a cutouts file's schema metadata (``path`` names it in errors)."""
    if any(k not in metadata for k in LAYOUT_KEYS):
        raise DatasetError(f"{path}: not a cutouts dataset (missing {'/'.join(LAYOUT_KEYS)} metadata)")
    _, n, _ = json.loads(metadata["image_shape"])
    return metadata["band_order"], int(n)
