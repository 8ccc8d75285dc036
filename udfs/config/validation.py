"""Load and check ``conf/validation.yaml`` (stage 6 and its completeness/recall jobs) into frozen
dataclasses; errors (:class:`~udfs.config.checker.ConfigError`) name the file and the dotted key.
Pixel radii are in pixels from the stamp centre ``(N-1)/2``; AUC limits, rates and confidences in [0, 1]."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from udfs.config.checker import Checker, ConfigError, load_yaml


@dataclass(frozen=True)
class ReportConfig:
    quantiles: tuple[float, ...]
    gallery_pairs: int
    histogram_bins: int
    compare_median_shift: float
    compare_rate_diff: float


@dataclass(frozen=True)
class GateConfig:
    core_radius_pix: float
    annulus_pix: tuple[float, float]
    core_auc_max: float
    annulus_auc_max: float
    cv_folds: int
    regularization_c: float
    max_pairs: int
    seed: int
    min_pairs: int
    min_backgrounds: int
    n_permutations: int


@dataclass(frozen=True)
class FluxConfig:
    max_abs_sum_z: float
    max_chi2_dof: float
    zero_pixel_rounding_units: float
    max_fail_frac: float


@dataclass(frozen=True)
class CompletenessConfig:
    thresholds: tuple[float, ...]
    confidence: float
    bins: dict  # axis -> tuple of increasing edges
    heatmap: tuple[str, str]


@dataclass(frozen=True)
class RecallConfig:
    thresholds: tuple[float, ...]
    fprs: tuple[float, ...]
    min_negatives_per_fpr: float
    bootstrap_count: int
    bootstrap_seed: int
    confidence: float
    theta_e_bins: tuple[float, ...]
    histogram_bins: int


@dataclass(frozen=True)
class RealismConfig:
    k_sigma: float
    radius_arcsec: float
    core_psf_fwhm: float
    min_arc_pixels: int
    ring_width_pix: float
    max_injected: int
    nearest: int
    picture_rows: int
    probe_pix: int
    probe_folds: int
    probe_c: float
    probe_permutations: int
    probe_min_groups: int
    probe_confidence: float
    seed: int

    def measure_params(self) -> dict:
        """The keywords of :func:`udfs.qa.realism.measure_stamp`."""
        return {"k_sigma": self.k_sigma, "radius_arcsec": self.radius_arcsec, "core_psf_fwhm": self.core_psf_fwhm,
                "min_arc_pixels": self.min_arc_pixels, "ring_width_pix": self.ring_width_pix}


@dataclass(frozen=True)
class ValidationConfig:
    report: ReportConfig
    gates: GateConfig
    flux_accounting: FluxConfig
    completeness: CompletenessConfig
    recall: RecallConfig
    realism: RealismConfig

    def as_dict(self) -> dict:
        return asdict(self)


COMPLETENESS_AXES = ("theta_e", "arc_snr", "psf_fwhm_g", "psf_fwhm_r", "psf_fwhm_z",
                     "psfdepth_g", "psfdepth_r", "psfdepth_z", "magnification", "src_mag_r")


def _numbers(c: Checker, parent: dict, name: str, key: str, *, lo=None, hi=None, increasing=False,
             min_len=1) -> tuple[float, ...]:
    values = c.get(parent, name, key)
    if not isinstance(values, list) or len(values) < min_len:
        raise c.fail(key, f"expected a list of at least {min_len} number(s), got {values!r}")
    out = tuple(c.number({"v": v}, "v", f"{key}[{i}]", lo=lo, hi=hi) for i, v in enumerate(values))
    if increasing and any(b <= a for a, b in zip(out, out[1:])):
        raise c.fail(key, f"must be strictly increasing, got {list(out)}")
    return out


def _report(c: Checker, data: dict) -> ReportConfig:
    r = c.mapping(data, "report", "report")
    c.unknown(r, {"quantiles", "gallery_pairs", "histogram_bins", "compare_median_shift",
                  "compare_rate_diff"}, "report")
    return ReportConfig(
        quantiles=_numbers(c, r, "quantiles", "report.quantiles", lo=0, hi=1, increasing=True),
        gallery_pairs=c.integer(r, "gallery_pairs", "report.gallery_pairs", lo=1, hi=100),
        histogram_bins=c.integer(r, "histogram_bins", "report.histogram_bins", lo=2, hi=1000),
        compare_median_shift=c.number(r, "compare_median_shift", "report.compare_median_shift", lo=0),
        compare_rate_diff=c.number(r, "compare_rate_diff", "report.compare_rate_diff", lo=0, hi=1))


def _gates(c: Checker, data: dict) -> GateConfig:
    g = c.mapping(data, "gates", "gates")
    c.unknown(g, {"core_radius_pix", "annulus_pix", "core_auc_max", "annulus_auc_max", "cv_folds",
                  "regularization_c", "max_pairs", "seed", "min_pairs", "min_backgrounds",
                  "n_permutations"}, "gates")
    annulus = _numbers(c, g, "annulus_pix", "gates.annulus_pix", lo=0, increasing=True, min_len=2)
    if len(annulus) != 2:
        raise c.fail("gates.annulus_pix", f"expected [inner, outer], got {list(annulus)}")
    core = c.number(g, "core_radius_pix", "gates.core_radius_pix", lo=0, lo_open=True)
    if annulus[0] <= core:
        raise c.fail("gates.annulus_pix", f"inner radius {annulus[0]} must exceed core_radius_pix {core}")
    return GateConfig(
        core_radius_pix=core, annulus_pix=(annulus[0], annulus[1]),
        core_auc_max=c.number(g, "core_auc_max", "gates.core_auc_max", lo=0.5, hi=1),
        annulus_auc_max=c.number(g, "annulus_auc_max", "gates.annulus_auc_max", lo=0.5, hi=1),
        cv_folds=c.integer(g, "cv_folds", "gates.cv_folds", lo=2, hi=20),
        regularization_c=c.number(g, "regularization_c", "gates.regularization_c", lo=0, lo_open=True),
        max_pairs=c.integer(g, "max_pairs", "gates.max_pairs", lo=10),
        seed=c.integer(g, "seed", "gates.seed", lo=0),
        min_pairs=c.integer(g, "min_pairs", "gates.min_pairs", lo=4),
        min_backgrounds=c.integer(g, "min_backgrounds", "gates.min_backgrounds", lo=2),
        n_permutations=c.integer(g, "n_permutations", "gates.n_permutations", lo=0, hi=10000))


def _flux(c: Checker, data: dict) -> FluxConfig:
    f = c.mapping(data, "flux_accounting", "flux_accounting")
    c.unknown(f, {"max_abs_sum_z", "max_chi2_dof", "zero_pixel_rounding_units", "max_fail_frac"},
              "flux_accounting")
    return FluxConfig(
        max_abs_sum_z=c.number(f, "max_abs_sum_z", "flux_accounting.max_abs_sum_z", lo=0, lo_open=True),
        max_chi2_dof=c.number(f, "max_chi2_dof", "flux_accounting.max_chi2_dof", lo=1, lo_open=True),
        zero_pixel_rounding_units=c.number(f, "zero_pixel_rounding_units",
                                           "flux_accounting.zero_pixel_rounding_units", lo=0, lo_open=True),
        max_fail_frac=c.number(f, "max_fail_frac", "flux_accounting.max_fail_frac", lo=0, hi=1))


def _completeness(c: Checker, data: dict) -> CompletenessConfig:
    m = c.mapping(data, "completeness", "completeness")
    c.unknown(m, {"thresholds", "confidence", "bins", "heatmap"}, "completeness")
    bins_raw = c.mapping(m, "bins", "completeness.bins")
    if not bins_raw:
        raise c.fail("completeness.bins", "needs at least one axis")
    c.unknown(bins_raw, set(COMPLETENESS_AXES), "completeness.bins")
    bins = {k: _numbers(c, bins_raw, k, f"completeness.bins.{k}", increasing=True, min_len=2)
            for k in sorted(bins_raw)}
    heat = c.get(m, "heatmap", "completeness.heatmap")
    if not (isinstance(heat, list) and len(heat) == 2 and all(h in bins for h in heat) and heat[0] != heat[1]):
        raise c.fail("completeness.heatmap", f"expected two different axes from completeness.bins, got {heat!r}")
    return CompletenessConfig(
        thresholds=_numbers(c, m, "thresholds", "completeness.thresholds", increasing=True),
        confidence=c.number(m, "confidence", "completeness.confidence", lo=0, hi=1, lo_open=True),
        bins=bins, heatmap=(heat[0], heat[1]))


def _recall(c: Checker, data: dict) -> RecallConfig:
    e = c.mapping(data, "recall", "recall")
    c.unknown(e, {"thresholds", "fprs", "min_negatives_per_fpr", "bootstrap_count", "bootstrap_seed",
                  "confidence", "theta_e_bins", "histogram_bins"}, "recall")
    fprs = _numbers(c, e, "fprs", "recall.fprs", lo=0, hi=1)
    if any(x <= 0 for x in fprs):
        raise c.fail("recall.fprs", f"every FPR must be > 0, got {list(fprs)}")
    return RecallConfig(
        thresholds=_numbers(c, e, "thresholds", "recall.thresholds", increasing=True),
        fprs=fprs,
        min_negatives_per_fpr=c.number(e, "min_negatives_per_fpr", "recall.min_negatives_per_fpr",
                                       lo=0, lo_open=True),
        bootstrap_count=c.integer(e, "bootstrap_count", "recall.bootstrap_count", lo=10),
        bootstrap_seed=c.integer(e, "bootstrap_seed", "recall.bootstrap_seed", lo=0),
        confidence=c.number(e, "confidence", "recall.confidence", lo=0, hi=1, lo_open=True),
        theta_e_bins=_numbers(c, e, "theta_e_bins", "recall.theta_e_bins", lo=0, increasing=True, min_len=2),
        histogram_bins=c.integer(e, "histogram_bins", "recall.histogram_bins", lo=2, hi=1000))


REALISM_KEYS = {"k_sigma", "radius_arcsec", "core_psf_fwhm", "min_arc_pixels", "ring_width_pix", "max_injected",
                "nearest", "picture_rows", "probe_pix", "probe_folds", "probe_c", "probe_permutations",
                "probe_min_groups", "probe_confidence", "seed"}


def _realism(c: Checker, data: dict) -> RealismConfig:
    m = c.mapping(data, "realism", "realism")
    c.unknown(m, REALISM_KEYS, "realism")
    folds = c.integer(m, "probe_folds", "realism.probe_folds", lo=2, hi=20)
    min_groups = c.integer(m, "probe_min_groups", "realism.probe_min_groups", lo=2)
    return RealismConfig(
        k_sigma=c.number(m, "k_sigma", "realism.k_sigma", lo=0, lo_open=True),
        radius_arcsec=c.number(m, "radius_arcsec", "realism.radius_arcsec", lo=0, lo_open=True),
        core_psf_fwhm=c.number(m, "core_psf_fwhm", "realism.core_psf_fwhm", lo=0),
        min_arc_pixels=c.integer(m, "min_arc_pixels", "realism.min_arc_pixels", lo=1),
        ring_width_pix=c.number(m, "ring_width_pix", "realism.ring_width_pix", lo=0, lo_open=True),
        max_injected=c.integer(m, "max_injected", "realism.max_injected", lo=10),
        nearest=c.integer(m, "nearest", "realism.nearest", lo=1, hi=20),
        picture_rows=c.integer(m, "picture_rows", "realism.picture_rows", lo=1, hi=100),
        probe_pix=c.integer(m, "probe_pix", "realism.probe_pix", lo=1),
        probe_folds=folds,
        probe_c=c.number(m, "probe_c", "realism.probe_c", lo=0, lo_open=True),
        probe_permutations=c.integer(m, "probe_permutations", "realism.probe_permutations", lo=0),
        probe_min_groups=min_groups,
        probe_confidence=c.number(m, "probe_confidence", "realism.probe_confidence", lo=0, hi=1, lo_open=True),
        seed=c.integer(m, "seed", "realism.seed", lo=0))


def parse_config(data: dict, source: str) -> ValidationConfig:
    """Check the parsed ``conf/validation.yaml`` mapping ``data`` (``source`` names it in errors)."""
    c = Checker(source)
    c.unknown(data, {"report", "gates", "flux_accounting", "completeness", "recall", "realism"}, "")
    return ValidationConfig(report=_report(c, data), gates=_gates(c, data), flux_accounting=_flux(c, data),
                            completeness=_completeness(c, data), recall=_recall(c, data),
                            realism=_realism(c, data))


def load_config(uri: str) -> ValidationConfig:
    """Read and validate ``uri`` (local or s3://); :class:`ConfigError` names the key on error."""
    return parse_config(load_yaml(uri), uri)


__all__ = ["ConfigError", "ValidationConfig", "load_config", "parse_config"]
