"""The stage-1 targets dataset (``jobs.select_lrgs``; ``jobs.build_anchors`` writes the same columns).

One row per LRG lens host, the contract read by the manifest, cutout and injection stages. Units
and meanings are in each field's metadata (``unit``, ``doc``); the schema itself carries none.

- ``target_id`` = ``"<release>-<brickid>-<objid>"`` (unique within a Legacy Survey release);
- magnitudes: extinction-corrected AB, null when the flux is <= 0 (not detected);
- ``psf_fwhm_<band>`` always finite and > 0, ``psf_fwhm_source`` = ``"g=<m>,r=<m>,z=<m>"`` with m in
  psfsize | depth_ratio | nominal (:mod:`udfs.survey.psf_size`);
- shape: the Tractor model's ``shape_r, shape_e1, shape_e2`` (DR9+ ``SHAPE_*``; DR8 the DEV or EXP
  columns of its type, the dominant one for COMP; 0 for PSF), as on the sky;
- ``z_l``: the photo-z companion file's ``Z_PHOT_MEDIAN`` when given, else the red-sequence colour
  estimate of :func:`udfs.sources.red_galaxy.colour_redshift`; ``zl_source`` says which;
- ``healpix``: NESTED pixel at ``healpix_nside``; ``split``: train/val/test (or as configured), one
  label per cell (:mod:`udfs.targets.splits`).
"""
from __future__ import annotations

import pyarrow as pa

from udfs.survey.bands import SURVEY_BANDS

MAG_BANDS = (*SURVEY_BANDS, "w1")


def field(name: str, type_: pa.DataType, unit: str, doc: str) -> pa.Field:
    """A nullable field with ``unit`` ("" = dimensionless or not a quantity) and ``doc`` metadata."""
    return pa.field(name, type_, metadata={"unit": unit, "doc": doc})


def target_fields() -> list[pa.Field]:
    """The target columns, in file order."""
    b = SURVEY_BANDS
    return [
        field("target_id", pa.string(), "", "<release>-<brickid>-<objid>"),
        field("release", pa.int32(), "", "Legacy Survey RELEASE code"),
        field("brickid", pa.int32(), "", "BRICKID"),
        field("objid", pa.int32(), "", "OBJID within the brick"),
        field("brickname", pa.string(), "", "brick whose primary area holds the position"),
        field("ra", pa.float64(), "deg", "right ascension, ICRS"),
        field("dec", pa.float64(), "deg", "declination, ICRS"),
        field("type", pa.string(), "", "Tractor morphological TYPE"),
        field("shape_r", pa.float64(), "arcsec", "half-light radius of the Tractor model (0 for PSF)"),
        field("shape_e1", pa.float64(), "", "Tractor ellipticity e1 (|e| = (1-q)/(1+q); sky frame, see "
              "udfs.lensing.deflector.tractor_to_stamp)"),
        field("shape_e2", pa.float64(), "", "Tractor ellipticity e2"),
        field("shape_source", pa.string(), "", "where the shape came from: shape | shapedev | shapeexp | "
              "round (PSF) | assigned:<rule>"),
        field("z_l", pa.float64(), "", "lens (host) redshift"),
        field("zl_source", pa.string(), "", "pz_file:<file> | colour_estimate | <catalogue>:z_spec | "
              "<catalogue>:z_phot_mean | lenscat:zlens"),
        *[field(f"mag_{m}", pa.float64(), "mag",
                f"{m} extinction-corrected AB magnitude; null when the flux is <= 0") for m in MAG_BANDS],
        *[field(f"psf_fwhm_{x}", pa.float64(), "arcsec", f"{x} PSF FWHM") for x in b],
        field("psf_fwhm_source", pa.string(), "", "per band: psfsize | depth_ratio | nominal"),
        *[field(f"psfdepth_{x}", pa.float64(), "nanomaggy^-2",
                f"{x} PSFDEPTH: inverse variance of a point-source flux") for x in b],
        field("ebv", pa.float64(), "mag", "SFD E(B-V)"),
        field("maskbits", pa.int32(), "", "MASKBITS"),
        *[field(f"nobs_{x}", pa.int32(), "", f"{x} observations at the centre") for x in b],
        field("healpix", pa.int64(), "", "NESTED HEALPix pixel"),
        field("healpix_nside", pa.int32(), "", "HEALPix nside of healpix"),
        field("split", pa.string(), "", "split label of the HEALPix cell"),
        field("photsys", pa.string(), "", "S (DECam) or N (BASS/MzLS): which LRG constants applied"),
        field("data_release", pa.string(), "", "DR8 | DR9 | DR10"),
        field("source_file", pa.string(), "", "catalogue file (or list) the row came from"),
        field("cut_version", pa.string(), "", "selection version (config)"),
        field("config_hash", pa.string(), "", "hash of the selection config"),
        field("code_version", pa.string(), "", "git SHA of the code"),
    ]


TARGET_SCHEMA = pa.schema(target_fields())
TARGET_COLUMNS = tuple(TARGET_SCHEMA.names)
# What the stage-3 manifest reads from a targets dataset (every row must have them non-null).
MANIFEST_INPUT_COLUMNS = ("target_id", "ra", "dec", "brickname", "split",
                          *(f"psf_fwhm_{x}" for x in SURVEY_BANDS))
# What stage 3 also reads when a config derives the deflector from its host (lens_mode deflector).
DEFLECTOR_INPUT_COLUMNS = ("mag_r", "z_l", "zl_source", "shape_e1", "shape_e2")
# May be null in an LRG target row (an undetected band); every other column is always set.
NULLABLE_LRG_COLUMNS = tuple(f"mag_{m}" for m in MAG_BANDS)
