"""Inject one lensed arc into one cutout FITS file.

    python -m jobs.cosmos_lens_injector --source BANK.h5 --cutout CUTOUT.fits --output OUT.fits \\
        --theta-e 1.5 [--lens-e1 --lens-e2 --shear-g1 --shear-g2 --src-x --src-y --src-phi ...]

Frame: x along the FITS column index, y along the row index, arcsec from the lens centre, which
is the stamp's geometric centre ((N-1)/2, 0-based) unless --ra/--dec place it via the WCS. The
output has the input's layout with the injected image, ``ARC_<BAND>`` HDUs (noiseless arc), and
every parameter, metric, the seed and code version in the header. Bad input (parameters, files,
bank rows) exits with status 2 and one line naming it.

PSF per band: ``--psfex-<b>`` (a PSFEx model file, at ``--psfex-pos`` or its fit centre), else a
Moffat (default; ``--moffat-beta`` 3.1, the median of fits to real DECam PSFEx models) or, only when
asked, a Gaussian of the band's FWHM. The arc's shot noise gets the cutout's own noise texture per
band, measured from its source-free pixels (``--noise-texture measured``, default; header
``NOISECR<B>`` and ``NOISESR<B>``), or is white (``--noise-texture white``).
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from jobs.cli import InputError, job_main
from udfs.config.provenance import code_version
from udfs.io import storage
from udfs.lensing.arc_metrics import CORE_RADIUS_ARCSEC
from udfs.lensing.arcs import Sources, inject, render_arcs
from udfs.lensing.lens_model import Lens
from udfs.sources.bank import read_bank
from udfs.stamps.fits_io import lens_centre_offset, read_cutout, write_injected
from udfs.survey.bands import SURVEY_BANDS
from udfs.survey.noise_texture import cutout_texture, neighbour_correlation
from udfs.survey.psf import psf_kernel, psfex_kernel
from udfs.survey.target_psf import DEFAULT_MOFFAT_BETA

BANDS = SURVEY_BANDS
DEFAULT_MAG_R = 23.0       # unlensed source r magnitude when not given
DEFAULT_PSF_FWHM = 1.3     # arcsec, ~ the DR10 median seeing, when no FWHM is given


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.cosmos_lens_injector", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="source bank HDF5 (local or s3://)")
    p.add_argument("--cutout", required=True, help="cutout FITS: viewer cube or IMAGE_<B> HDUs")
    p.add_argument("--output", required=True, help="output FITS (local or s3://)")
    p.add_argument("--theta-e", type=float, required=True, help="Einstein radius, arcsec (> 0)")
    p.add_argument("--lens-e1", type=float, default=0.0)
    p.add_argument("--lens-e2", type=float, default=0.0)
    p.add_argument("--shear-g1", type=float, default=0.0)
    p.add_argument("--shear-g2", type=float, default=0.0)
    p.add_argument("--ra", type=float, help="lens centre RA, deg (with --dec; default: stamp centre)")
    p.add_argument("--dec", type=float)
    p.add_argument("--src-x", type=float, default=0.1, help="source x, arcsec from the lens centre")
    p.add_argument("--src-y", type=float, default=0.1, help="source y, arcsec from the lens centre")
    p.add_argument("--src-phi", type=float, default=0.0,
                   help="counter-clockwise rotation of the source, radians")
    p.add_argument("--src-index", type=int, help="bank row (default: drawn from --seed)")
    p.add_argument("--src-mode", choices=("cosmos", "sersic"), default="cosmos")
    p.add_argument("--sersic-n", type=float, help="sersic mode: index (default: the bank's twin)")
    p.add_argument("--sersic-re", type=float, help="sersic mode: half-light radius, arcsec")
    p.add_argument("--sersic-q", type=float, help="sersic mode: axis ratio")
    for b in BANDS:
        p.add_argument(f"--src-mag-{b}", type=float,
                       help=f"unlensed AB magnitude in {b}" + (f" (default {DEFAULT_MAG_R})" if b == "r"
                                                              else " (default: r + the bank's colour)"))
    p.add_argument("--psf-model", choices=("moffat", "gaussian"), default="moffat",
                   help="PSF of bands without --psfex-<b> (default moffat)")
    p.add_argument("--moffat-beta", type=float, default=DEFAULT_MOFFAT_BETA,
                   help=f"Moffat beta (default {DEFAULT_MOFFAT_BETA})")
    p.add_argument("--noise-texture", choices=("measured", "white"), default="measured",
                   help="arc shot noise with the cutout's measured noise texture (default) or white")
    p.add_argument("--psf-fwhm", type=float, help=f"all bands, arcsec (default {DEFAULT_PSF_FWHM})")
    for b in BANDS:
        p.add_argument(f"--psf-fwhm-{b}", type=float, help=f"{b}-band FWHM, arcsec")
        p.add_argument(f"--psfex-{b}", help=f"{b}-band PSFEx model file (overrides the FWHM)")
    p.add_argument("--psfex-pos", type=float, nargs=2, metavar=("X", "Y"),
                   help="CCD pixel at which PSFEx models are evaluated (default: their POLZERO)")
    p.add_argument("--supersampling", type=int, default=8, help="sub-pixels per axis (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed for the source draw and noise")
    p.add_argument("--no-noise", action="store_true", help="add the noiseless arc")
    return p


class UsageError(InputError):
    """A command-line value that cannot work (the message names the flag)."""


def _check(args) -> None:
    if not (math.isfinite(args.theta_e) and args.theta_e > 0):
        raise UsageError(f"--theta-e must be > 0 arcsec, got {args.theta_e}")
    if (args.ra is None) != (args.dec is None):
        raise UsageError("--ra and --dec go together")
    if args.supersampling < 1:
        raise UsageError("--supersampling must be >= 1")


def _magnitudes(args, bank, index: int) -> dict[str, float]:
    mags = {b: getattr(args, f"src_mag_{b}") for b in BANDS}
    if mags["r"] is None:
        mags["r"] = DEFAULT_MAG_R
    for band, colour, sign in (("g", "g_r", +1.0), ("z", "r_z", -1.0)):
        if mags[band] is None:
            if colour not in bank.meta:
                raise UsageError(f"the bank has no '{colour}' colour: give --src-mag-{band}")
            mags[band] = mags["r"] + sign * float(bank.meta[colour][index])
    return mags


def _sersic(args, bank, index: int) -> tuple[float, float, float, float]:
    twin = {"n": ("sersic_n", args.sersic_n), "re": ("sersic_hlr_arcsec", args.sersic_re),
            "q": ("sersic_q", args.sersic_q)}
    out = {}
    for key, (column, given) in twin.items():
        if given is None and column not in bank.meta:
            raise UsageError(f"sersic mode: the bank has no '{column}': give --sersic-{key}")
        out[key] = float(given) if given is not None else float(bank.meta[column][index])
    twin_phi = float(bank.meta["sersic_phi_rad"][index]) if "sersic_phi_rad" in bank.meta else 0.0
    return out["n"], out["re"], out["q"], twin_phi + args.src_phi


def _kernels(args, pixel_scale: float) -> tuple[list[np.ndarray], dict]:
    kernels, cards = [], {"PSFMODEL": (args.psf_model, "PSF model (unless PSFEX_<B>)")}
    if args.psf_model == "moffat":
        cards["PSFBETA"] = (args.moffat_beta, "Moffat beta")
    for b in BANDS:
        psfex = getattr(args, f"psfex_{b}")
        if psfex:
            x, y = args.psfex_pos if args.psfex_pos else (None, None)
            kernels.append(psfex_kernel(psfex, x, y, pixel_scale))
            cards[f"PSFEX_{b.upper()}"] = (psfex.rsplit("/", 1)[-1][:60], "PSFEx model")
            continue
        fwhm = getattr(args, f"psf_fwhm_{b}") or args.psf_fwhm
        if fwhm is None:
            print(f"note: no PSF FWHM for band {b}: using the default {DEFAULT_PSF_FWHM} arcsec "
                  "(recorded in the header)", file=sys.stderr)
            fwhm = DEFAULT_PSF_FWHM
        kernels.append(psf_kernel(args.psf_model, fwhm, pixel_scale, args.moffat_beta))
        cards[f"PSFFWHM{b.upper()}"] = (fwhm, f"{b} PSF FWHM, arcsec")
    return kernels, cards


def _texture(args, cutout) -> tuple[np.ndarray | None, dict]:
    """Noise kernels ``(1, band, 3, 3)`` measured on the cutout (or None: white) and header cards."""
    if args.noise_texture == "white":
        return None, {"NOISETEX": ("white", "arc shot-noise texture")}
    kernels, cards = [], {"NOISETEX": ("measured", "arc shot noise: cutout's texture")}
    for k, b in enumerate(BANDS):
        rho, kernel, source = cutout_texture(cutout.image[k], cutout.invvar[k])
        kernels.append(kernel)
        corr = neighbour_correlation(rho) if np.isfinite(rho).all() else float("nan")
        cards[f"NOISECR{b.upper()}"] = (_finite(corr), f"{b} neighbour noise correlation")
        cards[f"NOISESR{b.upper()}"] = (source[:60], f"{b} noise texture source")
    return np.stack(kernels)[None], cards


def _finite(value: float):
    """FITS headers hold no NaN: unknown values are written as the string 'NaN'."""
    return float(value) if math.isfinite(value) else "NaN"


def _source(args, bank, index: int, cx: float, cy: float) -> tuple[Sources, dict, tuple]:
    """The unlensed source: ``(Sources of one row, magnitudes by band, (n, R_e, q, phi))``."""
    mags = _magnitudes(args, bank, index)
    if args.src_mode == "sersic":
        n, re, q, phi = _sersic(args, bank, index)
    else:
        n = re = q = np.nan
        phi = args.src_phi
    sources = Sources(mode=np.array([args.src_mode]), x=np.array([cx + args.src_x]),
                      y=np.array([cy + args.src_y]), phi=np.array([phi]),
                      mag=np.array([[mags[b] for b in BANDS]]), index=np.array([index]),
                      sersic_n=np.array([n]), sersic_re=np.array([re]), sersic_q=np.array([q]))
    return sources, mags, (n, re, q, phi)


def run(args) -> dict:
    _check(args)
    bank = read_bank(args.source)
    cutout = read_cutout(args.cutout, BANDS)
    rng = np.random.default_rng(args.seed)
    index = bank.check_index(args.src_index if args.src_index is not None else rng.integers(len(bank)))
    cx, cy = lens_centre_offset(cutout, args.ra, args.dec) if args.ra is not None else (0.0, 0.0)
    lens = Lens.make(args.theta_e, args.lens_e1, args.lens_e2, cx, cy, args.shear_g1, args.shear_g2)
    sources, mags, sersic = _source(args, bank, index, cx, cy)
    kernels, psf_cards = _kernels(args, cutout.pixel_scale)
    rendered = render_arcs(lens, sources, [kernels], cutout.npix, cutout.pixel_scale, bank,
                           args.supersampling)
    noise = not args.no_noise
    if noise and cutout.invvar is None:
        raise UsageError(f"{args.cutout}: no invvar, so the arc's noise cannot be estimated: "
                         "give a cutout with invvar or --no-noise")
    invvar = cutout.invvar if cutout.invvar is not None else np.full_like(cutout.image, np.nan)
    texture, noise_cards = _texture(args, cutout) if noise else (None, {})
    injected, _, metrics = inject(cutout.image[None], invvar[None], rendered, lens, BANDS,
                                  cutout.pixel_scale, [args.seed], noise=noise, noise_kernels=texture)
    if cutout.invvar is None:  # no invvar: the SNR is unknown, not zero
        for key in ["arc_snr"] + [f"arc_snr_{b}" for b in BANDS]:
            metrics[key] = np.array([np.nan])
    cards = _cards(args, cx, cy, index, mags, sersic, {**psf_cards, **noise_cards}, noise,
                   {k: v[0] for k, v in metrics.items()})
    write_injected(cutout, args.output, injected[0], rendered.arcs[0], cards)
    return {k: v[0] for k, v in cards.items()}


def _cards(args, cx: float, cy: float, index: int, mags: dict, sersic: tuple, psf_cards: dict,
           noise: bool, metrics: dict) -> dict:
    """FITS header cards ``{KEY: (value, comment)}``: parameters, metrics and provenance."""
    n, re, q, phi = sersic
    cards = {
        "THETA_E": (args.theta_e, "SIE Einstein radius, arcsec (lenstronomy)"),
        "LENS_E1": (args.lens_e1, "SIE e1"), "LENS_E2": (args.lens_e2, "SIE e2"),
        "SHEAR_G1": (args.shear_g1, "external shear gamma1"),
        "SHEAR_G2": (args.shear_g2, "external shear gamma2"),
        "LENS_X": (cx, "lens centre x from stamp centre, arcsec"),
        "LENS_Y": (cy, "lens centre y from stamp centre, arcsec"),
        "SRC_X": (args.src_x, "source x from lens centre, arcsec"),
        "SRC_Y": (args.src_y, "source y from lens centre, arcsec"),
        "SRC_PHI": (float(phi), "source rotation, rad, counter-clockwise"),
        "SRCMODE": (args.src_mode, "cosmos | sersic"), "SRC_IDX": (int(index), "bank row"),
        **{f"SRCMAG_{b.upper()}": (mags[b], f"unlensed source {b} AB mag") for b in BANDS},
        **psf_cards,
        "SUPERSMP": (args.supersampling, "sub-pixels per axis"),
        "SEED": (args.seed, "random seed"), "NOISE": (noise, "arc Poisson noise added"),
        "MAGNIF": (float(metrics["magnification"]), "total magnification"),
        "NIMAGES": (int(metrics["n_images"]), "images of the source centre"),
        "ARCSNR": (_finite(metrics["arc_snr"]), "matched-filter arc SNR, bands combined"),
        "COREFRAC": (float(metrics["core_flux_frac"]), "arc flux fraction within CORERAD"),
        "CORERAD": (CORE_RADIUS_ARCSEC, "core radius, arcsec"),
        "CODEVER": (code_version()[:60], "git SHA"),
    }
    if args.src_mode == "sersic":
        cards.update({"SERSIC_N": (n, "Sersic index"), "SERSICRE": (re, "R_e, arcsec"),
                      "SERSIC_Q": (q, "Sersic axis ratio")})
    for b in BANDS:
        cards[f"ARCFLUX{b.upper()}"] = (float(metrics[f"arc_flux_{b}"]), f"arc {b} flux, nmgy")
        cards[f"ARCSNR_{b.upper()}"] = (_finite(metrics[f"arc_snr_{b}"]), f"arc {b} SNR")
        if noise:
            cards[f"GAIN_{b.upper()}"] = (float(metrics[f"gain_{b}"]), "e-/nmgy estimate")
    return cards


@job_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    storage.check_writable(args.output, folder=False)  # before any input is read
    cards = run(args)
    print(f"wrote {args.output}: theta_E={cards['THETA_E']}\" magnification={cards['MAGNIF']:.3f} "
          f"n_images={cards['NIMAGES']} arc_snr={cards['ARCSNR']} "
          f"arc_flux_r={cards['ARCFLUXR']:.3f} nmgy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
