"""The stand-in sky's inputs (``conf/demo_sky.yaml``): the real PSFEx model per band its sources are
drawn with and the real coadd image whose noise texture its noise gets (:mod:`udfs.survey.sample_sky`).

Every key is required, unknown keys are errors; ``{data_root}`` in a path is the sample-data folder
(:func:`udfs.config.sample_data.expand_data_root`); every file must exist.
"""
from __future__ import annotations

from dataclasses import dataclass

from udfs.config.checker import Checker, load_yaml
from udfs.config.sample_data import expand_data_root
from udfs.io import storage
from udfs.survey.bands import SURVEY_BANDS

KEYS = {"psfex_files", "noise_texture"}


@dataclass(frozen=True)
class SkyConfig:
    psfex_files: dict          # band -> PSFEx model file (a subset of grz; other bands: Gaussian)
    noise_texture: str         # a real coadd legacysurvey-<brick>-image-<band> file

    def argv(self) -> list[str]:
        """The ``jobs.make_sample_sky`` flags that draw the sky with these inputs."""
        return [*(a for b, f in self.psfex_files.items() for a in (f"--psfex-{b}", f)),
                "--noise-texture", self.noise_texture]


def load_sky_config(uri: str) -> SkyConfig:
    raw = load_yaml(uri)
    c = Checker(uri)
    c.unknown(raw, KEYS, "")
    files = c.mapping(raw, "psfex_files", "psfex_files")
    bad = sorted(set(files) - set(SURVEY_BANDS))
    if bad:
        raise c.fail(f"psfex_files.{bad[0]}", f"not a band of {SURVEY_BANDS!r}")
    psfex = {}
    for band in sorted(files, key=SURVEY_BANDS.index):
        psfex[band] = expand_data_root(c.string(files, band, f"psfex_files.{band}"))
        if not storage.exists(psfex[band]):
            raise c.fail(f"psfex_files.{band}", f"{psfex[band]}: file not found")
    texture = expand_data_root(c.string(raw, "noise_texture", "noise_texture"))
    if not storage.exists(texture):
        raise c.fail("noise_texture", f"{texture}: file not found")
    return SkyConfig(psfex_files=psfex, noise_texture=texture)
