"""``conf/bank.yaml``, the source-bank configuration (stage 2), as a typed frozen :class:`BankConfig`.

Every key is required and unknown keys are refused, so nothing is silently defaulted; errors are
:class:`~udfs.config.checker.ConfigError` naming the file and the dotted key
(``conf/bank.yaml: selection.mag_f814w_max: ...``). Units: magnitudes F814W AB, sizes arcsec,
``dr10_psfdepth_r`` nanomaggy^-2, ``stamp_size`` and ``dilate_pix`` bank pixels. ``photometry``
names the columns of an external catalogue given with ``--photometry`` (AB magnitudes per speclite
filter, photo-z, RA/Dec in degrees) and the cross-match radius (arcsec).
"""
from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass

from udfs.config.checker import Checker, ConfigError, load_yaml

EXCLUSION_LEVELS = ("none", "bad_stamp", "bad_fits", "marginal")


@dataclass(frozen=True)
class Selection:
    exclusion_level: str             # GalSim COSMOSCatalog exclusion level, one of EXCLUSION_LEVELS
    mag_f814w_min: float
    mag_f814w_max: float
    zphot_min: float
    zphot_max: float
    hlr_arcsec_min: float            # circular half-light radius on the bank image
    hlr_arcsec_max: float
    max_neighbour_flux_ratio: float  # reject a galaxy with a neighbour at least this bright


@dataclass(frozen=True)
class RenderConfig:
    pixel_scale_arcsec: float
    stamp_size: int                  # bank stamp side, pixels (even)
    target_psf_fwhm_arcsec: float    # Gaussian the galaxies are reconvolved with
    detect_nsigma: float             # footprint threshold, in drawn-noise sigmas
    dilate_pix: int
    original_smooth_sigma_pix: float
    original_detect_nsigma: float


@dataclass(frozen=True)
class Noise:
    dr10_psfdepth_r: float
    dr10_psf_fwhm_arcsec: float
    dr10_pixel_scale_arcsec: float
    reference_mag_r: float
    reference_magnification: float
    max_variance_ratio: float


@dataclass(frozen=True)
class Photometry:
    """An external photometric catalogue (``--photometry FILE``: FITS, CSV, TSV or Parquet)."""
    ra_column: str                   # degrees (ICRS/J2000)
    dec_column: str
    mag_columns: tuple               # ((speclite filter name, AB magnitude column), ...)
    zphot_column: str                # photometric redshift
    match_radius_arcsec: float       # nearest neighbour within this radius, else unmatched


@dataclass(frozen=True)
class Output:
    images_per_chunk: int
    gzip_level: int


@dataclass(frozen=True)
class BankConfig:
    selection: Selection
    render: RenderConfig
    noise: Noise
    output: Output
    photometry: Photometry
    cosmology: str                   # an astropy realisation, e.g. Planck18

    def as_dict(self) -> dict:
        """The plain mapping recorded in the bank's ``config`` attribute and hashed."""
        return asdict(self)


_SECTIONS = ("selection", "render", "noise", "output", "photometry")
_FILTER_NAME = re.compile(r"^[A-Za-z0-9_]+-[A-Za-z0-9_]+$")   # speclite <group>-<band>


def _selection(ck: Checker, raw: dict) -> Selection:
    s = ck.mapping(raw, "selection", "selection")
    ck.unknown(s, set(Selection.__dataclass_fields__), "selection")
    num = lambda name, **kw: ck.number(s, name, f"selection.{name}", **kw)  # noqa: E731
    sel = Selection(
        exclusion_level=ck.string(s, "exclusion_level", "selection.exclusion_level", choices=EXCLUSION_LEVELS),
        mag_f814w_min=num("mag_f814w_min"), mag_f814w_max=num("mag_f814w_max"),
        zphot_min=num("zphot_min", lo=0, lo_open=True), zphot_max=num("zphot_max", lo=0, lo_open=True),
        hlr_arcsec_min=num("hlr_arcsec_min", lo=0), hlr_arcsec_max=num("hlr_arcsec_max", lo=0, lo_open=True),
        max_neighbour_flux_ratio=num("max_neighbour_flux_ratio", lo=0, lo_open=True))
    for lo, hi in (("mag_f814w_min", "mag_f814w_max"), ("zphot_min", "zphot_max"),
                   ("hlr_arcsec_min", "hlr_arcsec_max")):
        a, b = getattr(sel, lo), getattr(sel, hi)
        if not a < b:
            raise ck.fail(f"selection.{lo}", f"({a}) must be < selection.{hi} ({b})")
    return sel


def _render(ck: Checker, raw: dict) -> RenderConfig:
    r = ck.mapping(raw, "render", "render")
    ck.unknown(r, set(RenderConfig.__dataclass_fields__), "render")
    pos = lambda name: ck.number(r, name, f"render.{name}", lo=0, lo_open=True)  # noqa: E731
    size = ck.integer(r, "stamp_size", "render.stamp_size", lo=16)
    if size % 2:
        raise ck.fail("render.stamp_size", f"must be even, got {size}")
    return RenderConfig(
        pixel_scale_arcsec=ck.number(r, "pixel_scale_arcsec", "render.pixel_scale_arcsec", lo=0.02, hi=0.05),
        stamp_size=size, target_psf_fwhm_arcsec=pos("target_psf_fwhm_arcsec"),
        detect_nsigma=pos("detect_nsigma"), dilate_pix=ck.integer(r, "dilate_pix", "render.dilate_pix", lo=0),
        original_smooth_sigma_pix=pos("original_smooth_sigma_pix"),
        original_detect_nsigma=pos("original_detect_nsigma"))


def _noise(ck: Checker, raw: dict) -> Noise:
    n = ck.mapping(raw, "noise", "noise")
    ck.unknown(n, set(Noise.__dataclass_fields__), "noise")
    pos = lambda name: ck.number(n, name, f"noise.{name}", lo=0, lo_open=True)  # noqa: E731
    return Noise(dr10_psfdepth_r=pos("dr10_psfdepth_r"), dr10_psf_fwhm_arcsec=pos("dr10_psf_fwhm_arcsec"),
                 dr10_pixel_scale_arcsec=pos("dr10_pixel_scale_arcsec"),
                 reference_mag_r=ck.number(n, "reference_mag_r", "noise.reference_mag_r"),
                 reference_magnification=ck.number(n, "reference_magnification",
                                                   "noise.reference_magnification", lo=1),
                 max_variance_ratio=pos("max_variance_ratio"))


def _photometry(ck: Checker, raw: dict) -> Photometry:
    p = ck.mapping(raw, "photometry", "photometry")
    ck.unknown(p, set(Photometry.__dataclass_fields__), "photometry")
    col = lambda name: ck.string(p, name, f"photometry.{name}")  # noqa: E731
    mags = ck.mapping(p, "mag_columns", "photometry.mag_columns")
    if not mags:
        raise ck.fail("photometry.mag_columns", "needs at least one {speclite filter: column} entry")
    for band, column in mags.items():
        if not isinstance(band, str) or not _FILTER_NAME.match(band):
            raise ck.fail(f"photometry.mag_columns.{band}", "keys are speclite filter names <group>-<band>, "
                                                            "e.g. hsc2017-g")
        if not isinstance(column, str) or not column:
            raise ck.fail(f"photometry.mag_columns.{band}", f"expected a column name, got {column!r}")
    return Photometry(ra_column=col("ra_column"), dec_column=col("dec_column"),
                      mag_columns=tuple((str(b), str(c)) for b, c in mags.items()),
                      zphot_column=col("zphot_column"),
                      match_radius_arcsec=ck.number(p, "match_radius_arcsec", "photometry.match_radius_arcsec",
                                                    lo=0, lo_open=True, hi=10))


def _cosmology(ck: Checker, raw: dict) -> str:
    from astropy.cosmology import realizations

    name = ck.string(raw, "cosmology", "cosmology")
    if name not in realizations.available:
        raise ck.fail("cosmology", f"unknown cosmology {name!r}; astropy provides "
                                   f"{', '.join(realizations.available)}")
    return name


def validate(raw: dict, source: str = "bank config") -> BankConfig:
    """Check a parsed ``conf/bank.yaml`` mapping; raise :class:`ConfigError` naming ``source`` and the key."""
    ck = Checker(source)
    ck.unknown(raw, set(_SECTIONS) | {"cosmology"}, "")
    o = ck.mapping(raw, "output", "output")
    ck.unknown(o, set(Output.__dataclass_fields__), "output")
    output = Output(images_per_chunk=ck.integer(o, "images_per_chunk", "output.images_per_chunk", lo=1),
                    gzip_level=ck.integer(o, "gzip_level", "output.gzip_level", lo=0, hi=9))
    return BankConfig(selection=_selection(ck, raw), render=_render(ck, raw), noise=_noise(ck, raw),
                      output=output, photometry=_photometry(ck, raw), cosmology=_cosmology(ck, raw))


def load(uri: str, overrides: dict[str, dict] | None = None) -> BankConfig:
    """Read ``uri`` (local or s3://), apply ``{section: {key: value}}`` overrides (None = keep), validate."""
    raw = copy.deepcopy(load_yaml(uri))
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None:
                if not isinstance(raw.get(section), dict):
                    raise ConfigError(f"{uri}: {section}: missing required key")
                raw[section][key] = value
    return validate(raw, source=uri)
