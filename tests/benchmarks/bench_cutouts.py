"""Cutout benchmark: tile-section reads vs whole-file reads on the real coadd brick 0959p805.

200 targets at seeded random positions inside the brick's g-band coverage, 64x64 stamps of g image
and invvar (the brick has no r band and almost no z), read from local disk through
:func:`udfs.survey.coadd_cutouts.cut_brick` (one brick group, as in the Spark job). Baseline: read and
decompress both whole files, then slice the same stamps from memory. Reports bytes read per cutout
(the group's bytes split among the stamps that used them; also the first stamp's share) against the
whole files' size, and cutouts per second for both.

``cutout_bytes_frac``: bytes read per stamp (the mean of the rows' ``bytes_read``, which sum to the
bytes the group fetched: each tile once, a file's headers and the tile-table rows it needs shared)
over the two whole files' size. The 200 targets fall on the ~12% of the brick g covers, so tiles are
often shared; ``cutout_bytes_frac_25_targets`` is the same for the first 25 targets alone as their
own group (sparser: about 200 per fully covered brick), where sharing is rare.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS

N_TARGETS, STAMP, BRICK = 200, 64, "0959p805"


def run() -> dict:
    from udfs.survey.coadd_cutouts import CutoutConfig, cut_brick
    from udfs.config.sample_data import data_root

    folder = data_root() / "legacysurvey" / "dr6_coadd_0959p805"
    files = [folder / f"legacysurvey-{BRICK}-{k}-g.fits.fz" for k in ("image", "invvar")]
    wcs = WCS(fits.getheader(files[0], 1))
    rng = np.random.default_rng(5)
    x, y = rng.uniform(40, 840, N_TARGETS), rng.uniform(40, 1840, N_TARGETS)
    ra, dec = wcs.all_pix2world(x, y, 0)
    targets = pd.DataFrame({"target_id": np.arange(N_TARGETS), "ra": ra, "dec": dec, "psf_fwhm_g": 1.5})
    cfg = CutoutConfig(bands="g", layout="flat", require_maskbits=False, min_good_frac=0.0)

    t0 = time.perf_counter()
    out = cut_brick(str(folder), BRICK, targets, cfg)
    t_sections = time.perf_counter() - t0
    if not out["ok"].all():
        raise RuntimeError(f"bench_cutouts: unexpected failures {out['fail_reason'].value_counts().to_dict()}")

    t0 = time.perf_counter()
    whole = [fits.getdata(f, 1) for f in files]
    for x0, y0 in zip(out["stamp_x0"], out["stamp_y0"]):
        for arr in whole:
            np.ascontiguousarray(arr[y0:y0 + STAMP, x0:x0 + STAMP])
    t_whole = time.perf_counter() - t0

    size = sum(f.stat().st_size for f in files)
    per_stamp = float(out["bytes_read"].mean())
    sparse = cut_brick(str(folder), BRICK, targets.iloc[:25], cfg)
    return {
        "cutout_bytes_frac": round(per_stamp / size, 4),
        "cutout_bytes_frac_baseline": f"whole .fits.fz files (image+invvar) of brick {BRICK}",
        "cutout_bytes_frac_25_targets": round(float(sparse["bytes_read"].mean()) / size, 4),
        "cutout_bytes_per_stamp": round(per_stamp),
        "cutout_bytes_first_stamp": int(out["bytes_read"].iloc[0]),
        "cutout_bytes_per_stamp_after_first": round(float(out["bytes_read"].iloc[1:].mean())),
        "cutout_whole_file_bytes": int(size),
        "cutout_read_fraction_per_stamp": round(per_stamp / size, 4),  # alias of cutout_bytes_frac
        "cutouts_per_s_sections": round(N_TARGETS / t_sections, 1),
        "cutouts_per_s_whole_file": round(N_TARGETS / t_whole, 1),
    }


if __name__ == "__main__":
    print(run())
