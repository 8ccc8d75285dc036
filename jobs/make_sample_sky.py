"""Write a rendered stand-in sky, in the Legacy Survey coadd format, for the bricks of a targets table.

    python -m jobs.make_sample_sky --targets TARGETS --catalogs CAT [CAT ...] --output BASE
        [--bands grz] [--stamp-size 64] [--margin 64] [--seed 0] [--full-brick]
        [--psfex-g FILE --psfex-r FILE --psfex-z FILE] [--noise-texture COADD_IMAGE]

TARGETS: a Parquet dataset with brickname, ra, dec (e.g. stage 1's output). CAT: Tractor and/or
sweep catalogues (folders, globs, list files or files; earlier ones win for the same
brickname+objid, so list Tractor catalogues first). Every catalogue row falling on a written brick
is rendered from its Tractor model with noise at the catalogue depth (:mod:`udfs.survey.sample_sky`),
so a brick without a Tractor file is rendered from the sweep rows around its targets. Sources are
drawn with ``--psfex-<band>`` (a Legacy Survey PSFEx model; a band without one gets a Gaussian of the
catalogue PSF size); ``--noise-texture`` names a real coadd image (its ``-invvar-`` file beside it)
whose noise correlation is measured once (:mod:`udfs.survey.noise_texture`) and given to the
rendered noise. Writes
``BASE/coadd/<bri>/<brick>/legacysurvey-<brick>-*.fits.fz`` (one Spark task per brick) and
``BASE/sample_sky.json``. This is NOT real survey imaging: see the README.
"""
from __future__ import annotations

import argparse
import json
import posixpath
import sys

from jobs.cli import InputError, job_main
from udfs.io import storage
from udfs.io.datasets import open_dataset
from udfs.survey.bands import SURVEY_BANDS, check_bands
from udfs.survey.bricks import PIXSCALE_ARCSEC, brick_from_name
from udfs.survey.noise_texture import texture_of_coadd
from udfs.survey.psf import psfex_kernel
from udfs.survey.sample_sky import read_catalogs, render_partition
from udfs.survey.tractor_catalog import expand_inputs

TARGET_COLUMNS = ["brickname", "ra", "dec"]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="jobs.make_sample_sky", description=__doc__.split("\n")[0])
    p.add_argument("--targets", required=True, help="Parquet dataset with brickname, ra, dec")
    p.add_argument("--catalogs", nargs="+", required=True, help="Tractor/sweep catalogues (folders, globs, files)")
    p.add_argument("--output", required=True, help="base folder (local or s3://) for coadd/<bri>/<brick>/")
    p.add_argument("--bands", default=SURVEY_BANDS)
    p.add_argument("--stamp-size", type=int, default=64, help="stamps the section must hold (pixels)")
    p.add_argument("--margin", type=int, default=64, help="extra pixels around the stamps")
    p.add_argument("--seed", type=int, default=0, help="noise seed (with brick and band)")
    p.add_argument("--full-brick", action="store_true", help="write 3600x3600 bricks instead of sections")
    for b in SURVEY_BANDS:
        p.add_argument(f"--psfex-{b}", help=f"{b}-band PSFEx model the sources are drawn with")
    p.add_argument("--noise-texture", help="real coadd image-<band>.fits.fz whose noise texture to draw")
    args = p.parse_args(argv)
    problem = check_bands(args.bands, SURVEY_BANDS)
    if problem:
        raise InputError(f"--bands: {problem}")
    if args.stamp_size < 1 or args.margin < 0:
        raise InputError("--stamp-size must be >= 1 and --margin >= 0")
    return args


def _texture(image_uri: str | None) -> dict | None:
    """The real coadd's noise texture (``NoiseTexture.as_dict()`` and its ``source`` file)."""
    if image_uri is None:
        return None
    if "-image-" not in posixpath.basename(image_uri):
        raise InputError(f"--noise-texture {image_uri}: expected a coadd legacysurvey-<brick>-image-<band> file")
    invvar_uri = posixpath.join(posixpath.dirname(image_uri),
                                posixpath.basename(image_uri).replace("-image-", "-invvar-"))
    return {**texture_of_coadd(image_uri, invvar_uri).as_dict(), "source": posixpath.basename(image_uri)}


def _catalogs(specs: list[str]) -> list[str]:
    """The catalogue files, in the caller's order (earlier ones win duplicates)."""
    catalogs = []
    for spec in specs:
        catalogs += [u for u in expand_inputs([spec]) if u not in catalogs]
    return catalogs


@job_main
def main(argv=None) -> int:
    from jobs.spark import get_spark, read_parquet, write_json

    args = parse_args(argv)
    storage.check_writable(args.output, folder=True)  # before any input is read
    catalogs = _catalogs(args.catalogs)
    psfex = {b: getattr(args, f"psfex_{b}") for b in args.bands if getattr(args, f"psfex_{b}")}
    read_catalogs(catalogs, args.bands)  # fail early, on the driver, naming a bad file or column
    open_dataset(args.targets, "the targets dataset", TARGET_COLUMNS)
    spark = get_spark("make_sample_sky")
    rows = read_parquet(spark, args.targets).select(*TARGET_COLUMNS).toPandas()
    if rows.empty:
        raise InputError(f"{args.targets}: no targets")
    for name in sorted(rows["brickname"].unique()):
        brick_from_name(name)  # BrickError naming a bad brick name

    for uri in psfex.values():
        psfex_kernel(uri, None, None, PIXSCALE_ARCSEC)  # PSFError naming an unreadable model, on the driver
    opts = dict(bands=args.bands, stamp_size=args.stamp_size, margin=args.margin, seed=args.seed,
                full_brick=args.full_brick, texture=_texture(args.noise_texture),
                psfex=psfex)
    base = args.output
    df = spark.createDataFrame(rows).repartition(max(int(rows["brickname"].nunique()), 1), "brickname")
    # collect, then sort here: a Spark sort would sample, i.e. run the rendering tasks twice
    done = sorted(df.mapInPandas(lambda batches: render_partition(batches, catalogs, base, opts),
                                 "brickname string, summary string").collect(), key=lambda r: r["brickname"])
    summary = {"kind": "rendered stand-in sky (NOT real survey imaging)", "catalogs": catalogs,
               "options": opts, "bricks": [json.loads(r["summary"]) for r in done]}
    write_json(storage.join(base, "sample_sky.json"), summary)
    for b in summary["bricks"]:
        print(f"sample sky: brick {b['brickname']} section {b['section']} with {b['n_sources']} "
              f"catalogue sources, PSF {b['psf_source']}, noise neighbour correlation "
              f"{b['noise_neighbour_correlation']:.3f} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
