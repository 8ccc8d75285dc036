"""PSF-stack benchmark: the cost stage 4 pays per brick for the survey PSF, on the real testcase6 patch.

One brick's worth of targets (``N_TARGETS`` seeded positions inside the patch, where all 6 CCDs
cover) through :class:`udfs.survey.target_psf.BrickPSF` as stage 4 uses it (one per brick: the CCD
table, image headers and PSFEx models read once), g, r and z. Reported: the first target (which
pays the reads), each further target, and the bytes read. Baseline in the same run: the same
targets with ``--psf-model moffat`` (a Moffat of the target's PSFSIZE, no files).
"""
from __future__ import annotations

import time

import numpy as np

N_TARGETS = 20
CENTRE = (110.310, 23.918)


def _time(cfg, ccds: str, calib: str, targets) -> tuple[float, float, int]:
    from udfs.survey.target_psf import BrickPSF

    brick = BrickPSF(cfg, ccds, calib)
    fwhm = {"g": 1.4, "r": 1.3, "z": 1.2}
    t0 = time.perf_counter()
    brick.at(*targets[0], "grz", fwhm)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for ra, dec in targets[1:]:
        brick.at(ra, dec, "grz", fwhm)
    rest = (time.perf_counter() - t0) / (len(targets) - 1)
    return first, rest, sum(int(f.get("bytes", 0)) for f in brick.files_read())


def run() -> dict:
    from udfs.config.sample_data import data_root
    from udfs.survey.target_psf import PSFConfig

    patch = data_root() / "legacysurvey" / "dr9_ccds_testcase6"
    ccds, calib = str(patch / "survey-ccds-1.fits.gz"), str(patch / "calib")
    rng = np.random.default_rng(2)
    offsets = rng.uniform(-15, 15, (N_TARGETS, 2)) * 0.262 / 3600  # within +-15 px of the centre
    targets = [(CENTRE[0] + dx / np.cos(np.radians(CENTRE[1])), CENTRE[1] + dy) for dx, dy in offsets]
    _time(PSFConfig(), ccds, calib, targets[:2])  # imports and GalSim set-up, not counted
    first, rest, nbytes = _time(PSFConfig(), ccds, calib, targets)
    m_first, m_rest, _ = _time(PSFConfig(model="moffat"), ccds, calib, targets)
    return {
        "psf_stack_first_target_s": round(first, 3),
        "psf_stack_per_target_ms": round(rest * 1e3, 1),
        "psf_stack_bytes_read_per_brick": nbytes,
        "psf_stack_s_per_brick_of_100_targets": round(first + 99 * rest, 2),
        "psf_baseline_moffat_per_target_ms": round(m_rest * 1e3, 2),
        "psf_stack_vs_moffat_per_target": round(rest / m_rest, 1),
        "psf_stack_note": "real testcase6 patch, 6 CCDs (2 per band), grz, 3-band stack per target",
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run()))
