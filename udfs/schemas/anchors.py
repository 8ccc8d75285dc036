"""The anchors/negatives dataset (``jobs.build_anchors``): stage-1 target rows plus lenscat columns.

Split ``anchor`` (a lenscat entry) or ``negative`` (a hard-negative position). lenscat has no
photometry: release, magnitudes, depths, maskbits and nobs are null and the PSF FWHM is the
configured nominal value (``psf_fwhm_source = "g=nominal,..."``). ``target_id`` is
``lenscat:<catalog_row>:<name>`` or ``neg:<list>:<row>``.
"""
from __future__ import annotations

import pyarrow as pa

from udfs.schemas.targets import TARGET_SCHEMA, field

ANCHOR_EXTRA_FIELDS = [
    field("name", pa.string(), "", "lenscat name, or <list>:<row> for a negative"),
    field("zlens", pa.float64(), "", "lens redshift (lenscat), null when unknown"),
    field("lens_type", pa.string(), "", "lenscat type: galaxy | group | cluster"),
    field("grading", pa.string(), "", "lenscat grading: confident | probable"),
    field("ref", pa.string(), "", "lenscat reference(s), '|'-separated"),
    field("theta_e", pa.float64(), "arcsec", "Einstein radius where known"),
    field("catalog", pa.string(), "", "lenscat==<version> or the negatives list name"),
    field("catalog_row", pa.int64(), "", "row in the pinned lenscat catalogue"),
]
ANCHOR_SCHEMA = pa.schema(list(TARGET_SCHEMA) + ANCHOR_EXTRA_FIELDS)
ANCHOR_EXTRA = [f.name for f in ANCHOR_EXTRA_FIELDS]
# What jobs.evaluate_real_lenses reads.
EVALUATION_COLUMNS = ["target_id", "ra", "dec", "split", "name", "grading", "ref", "theta_e", "catalog",
                      "catalog_row"]
