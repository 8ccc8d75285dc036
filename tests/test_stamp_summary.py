"""Stage 5's _summary.json read file by file: exact counts at any sample size, quantiles exact when
the dataset fits the sample and drawn from a deterministic uniform sample when it does not."""
import numpy as np

from tests.stamp_factory import make_rows, write_dataset
from udfs.io.datasets import read_columns
from udfs.schemas import stamps as schema
from udfs.stamps.summary import dataset_summary, summarise


def test_streamed_summary_equals_the_whole_dataset_summary_and_bounds_its_sample(tmp_path):
    uri = str(tmp_path / "stamps")
    write_dataset(uri, make_rows(40, seed=2, n_failed=3))
    cols = (["is_control", "ok", "fail_reason"] + [f[0] for f in schema.condition_fields("grz")]
            + [f[0] for f in schema.psf_noise_fields("grz")] + ["split"])
    whole = summarise(read_columns(uri, schema.WHAT, cols), "grz")
    assert dataset_summary(uri, "grz") == whole  # fits the sample: exact
    small = dataset_summary(uri, "grz", sample=10)
    assert small == dataset_summary(uri, "grz", sample=10)  # deterministic
    for key in ("n_stamps", "n_ok", "psf_source_counts"):
        assert small[key] == whole[key]
    for label in ("injected", "control"):
        for key in ("n", "n_ok", "failure_rate", "fail_reasons", "by_split"):
            assert small["by_label"][label][key] == whole["by_label"][label][key]
    # quantiles from 10 of the 40 rows per label: inside the range of the whole label's values
    df = read_columns(uri, schema.WHAT, cols)
    depth = df.loc[~df["is_control"], "psfdepth_r"].astype(float)
    lo, mid, hi = small["by_label"]["injected"]["quantiles_5_50_95"]["psfdepth_r"]
    assert depth.min() <= lo <= mid <= hi <= depth.max()
    assert small["by_label"]["injected"]["quantiles_5_50_95"] != whole["by_label"]["injected"]["quantiles_5_50_95"] \
        or np.ptp(depth) == 0
