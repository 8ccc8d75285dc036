"""The stage-3 manifest dataset, defined once: one row per injection task or paired control.

Written by ``jobs.build_manifest`` (rows from :func:`udfs.stamps.manifest.build_tasks`) to
``<root>/<manifest_hash>/`` beside ``_manifest.json`` (its ``location``, counts and provenance),
read by ``jobs.inject_stamps`` and the tests. Not partitioned; files ``part-<bucket>.parquet``,
bucketed by the target's brick as the cutouts are (:data:`udfs.schemas.cutouts.BUCKET_KEY`), rows in
:data:`ROW_ORDER`.

Conventions (lenstronomy SIE + SHEAR; meanings in :mod:`udfs.stamps.manifest`): angles on the sky
in arcsec, position angles in rad, ra/dec in degrees, magnitudes AB. Arc parameters (``ARC_COLUMNS``)
are null on paired controls, Sersic parameters null on cosmos tasks and Sersic ablations.
"""
from __future__ import annotations

import pyarrow as pa

from udfs.survey.bands import SURVEY_BANDS

WHAT = "the stage-3 manifest (jobs.build_manifest)"
SUMMARY_FILE = "_manifest.json"
#: row order within a manifest file: the cutouts' order, then the task
ROW_ORDER = ("brickname", "target_id", "task_id")

_S, _D, _I, _L, _B = pa.string(), pa.float64(), pa.int32(), pa.int64(), pa.bool_()
_ARCSEC, _RAD, _ONE = "arcsec", "rad", "1"


def _field(name: str, typ: pa.DataType, unit: str = "") -> pa.Field:
    return pa.field(name, typ, metadata={"unit": unit} if unit else None)


def _task_fields() -> list[pa.Field]:
    """Identity of a task and the target it belongs to."""
    return [_field("task_id", _S), _field("target_id", _S), _field("ra", _D, "deg"),
            _field("dec", _D, "deg"), _field("brickname", _S), _field("split", _S),
            _field("is_control", _B), _field("pair_id", _S), _field("seed", _L),
            _field("config_hash", _S), _field("config_name", _S), _field("replicate", _I)]


def _arc_fields() -> list[pa.Field]:
    """The sampled lens and source parameters (null on controls)."""
    return [_field("theta_e", _D, _ARCSEC), _field("lens_q", _D, _ONE), _field("lens_phi", _D, _RAD),
            _field("lens_e1", _D, _ONE), _field("lens_e2", _D, _ONE),
            _field("shear_gamma", _D, _ONE), _field("shear_phi", _D, _RAD),
            _field("shear_g1", _D, _ONE), _field("shear_g2", _D, _ONE),
            _field("src_x", _D, _ARCSEC), _field("src_y", _D, _ARCSEC), _field("src_mode", _S),
            _field("src_index", _I), _field("src_phi", _D, _RAD), _field("src_mag_r", _D, "mag (AB)"),
            _field("src_z", _D, _ONE),
            _field("sersic_n", _D, _ONE), _field("sersic_re_arcsec", _D, _ARCSEC),
            _field("sersic_q", _D, _ONE), _field("sersic_phi", _D, _RAD),
            *deflector_fields()]


def deflector_fields() -> list[pa.Field]:
    """The deflector a ``lens_mode: deflector`` task derived from its host (null otherwise)."""
    return [_field("z_l", _D, _ONE), _field("zl_source", _S), _field("sigma_v", _D, "km/s"),
            _field("host_abs_mag_r", _D, "mag (AB)"), _field("light_q", _D, _ONE),
            _field("light_phi", _D, _RAD)]


def _tail_fields() -> list[pa.Field]:
    """The target's PSF (carried for stage 5) and provenance."""
    return [*[_field(f"psf_fwhm_{b}", _D, _ARCSEC) for b in SURVEY_BANDS],
            _field("bank_size", _I), _field("manifest_version", _S), _field("code_version", _S)]


MANIFEST_SCHEMA = pa.schema(_task_fields() + _arc_fields() + _tail_fields())
MANIFEST_COLUMNS = tuple(MANIFEST_SCHEMA.names)
ARC_COLUMNS = tuple(f.name for f in _arc_fields())
