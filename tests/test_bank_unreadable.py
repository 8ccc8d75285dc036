"""A COSMOS image file truncated part-way: the galaxies it can no longer give are rejected as
``unreadable_image:<file>`` and counted, the others still make the bank (no traceback, exit 0)."""
import json
import os
import shutil

import galsim

from jobs import cosmos_source_loader
from udfs.sources.bank import read_bank, read_bank_info
from udfs.sources.bank_build import considered_rows
from udfs.sources.cosmos_catalog import open_catalog


def test_truncated_image_file_rejects_only_its_unreadable_galaxies(btk, tmp_path, capsys):
    src = tmp_path / "cosmos"
    shutil.copytree(btk, src)
    images = src / "real_galaxy_images_extension.fits"
    images.chmod(0o644)
    os.truncate(images, images.stat().st_size // 2)
    out = tmp_path / "bank.h5"
    assert cosmos_source_loader.main(["--cosmos-dir", str(src), "--output", str(out), "--max-galaxies", "40",
                                      "--seed", "1", "--workers", "2"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    info = read_bank_info(str(out))
    counts = json.loads(info.attrs["rejected_counts"])
    n_unreadable = counts["unreadable_image:real_galaxy_images_extension.fits"]
    assert info.size + sum(counts.values()) == 40  # every considered galaxy is selected or counted
    # the reference: the considered rows whose image GalSim itself cannot read from the truncated
    # file (the loader reads only those that pass the catalogue cuts first)
    cat = open_catalog(str(src))
    rgc = galsim.RealGalaxyCatalog(cat.file_name, dir=cat.directory)

    def readable(i):
        try:
            rgc.getGalImage(int(i))
            return True
        except (OSError, IndexError):
            return False
    unreadable = [i for i in considered_rows(cat, 40, 1) if not readable(i)]
    assert 0 < n_unreadable <= len(unreadable) < 40
    selected = read_bank(str(out)).meta["catalog_index"]
    assert info.size > 0 and all(readable(i) for i in selected)
