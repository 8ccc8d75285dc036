"""The pure helpers of tests/benchmarks/bench_scaling.py (sizes, replicates, EMR projection, ratios);
no timings are checked."""
from __future__ import annotations

import pytest

from emr.config import load_emr_config
from emr.follow import capacity_cost
from tests.benchmarks import bench_scaling as bs


def test_sizes_from_env(monkeypatch):
    monkeypatch.delenv(bs.SIZES_ENV, raising=False)
    assert bs.sizes_from_env() == (1_000, 10_000, 100_000)
    monkeypatch.setenv(bs.SIZES_ENV, "2000, 200,1e3")
    assert bs.sizes_from_env() == (200, 1000, 2000)
    monkeypatch.setenv(bs.SIZES_ENV, "0,10")
    with pytest.raises(ValueError):
        bs.sizes_from_env()


def test_replicates_for():
    assert bs.replicates_for(1_000, 318) == 3
    assert bs.replicates_for(100_000, 318) == 314
    assert bs.replicates_for(10, 318) == 1


def test_memory_and_executor_cores():
    cfg = load_emr_config()
    assert bs.memory_mb("6g") == 6144 and bs.memory_mb("512m") == 512
    # 8 vCPU / 24 GiB YARN nodes, 2-core executors of 6g + 1g: memory allows 3 executors (vCPUs 4)
    assert bs.executor_cores_per_node(cfg.fleets["core"].instance_types, cfg.spark) == 6


def test_emr_projection_uses_the_launchers_cost():
    cfg = load_emr_config()
    nodes = sum(cfg.fleets[r].on_demand + cfg.fleets[r].spot for r in ("core", "task"))
    p = bs.emr_projection(10.0, cfg, n_stamps=(1_000_000,), startup_s=600)
    assert p["emr_executor_cores"] == 6 * nodes
    wall = 600 + 1_000_000 / (10.0 * 6 * nodes)
    assert p["emr_projection_1e6_hours"] == pytest.approx(wall / 3600, abs=0.01)
    assert p["emr_projection_1e6_usd"] == pytest.approx(capacity_cost(cfg.fleets, cfg.pricing, wall)[0], abs=0.01)


def _size(stamps, s3, s5, rss):
    return {"stamps": stamps, "ok": stamps,
            "stage3": {"wall_s": s3, "driver_rss_mb": rss, "driver_python_mb": 1, "driver_jvm_mb": rss - 1},
            "stage5": {"wall_s": s5, "driver_rss_mb": rss, "driver_python_mb": 1, "driver_jvm_mb": rss - 1,
                       "worker_peak_mb": 7}}


def test_scaling_figures_ratios():
    # 10 s fixed start-up per run + 1 ms per stamp: time per stamp falls, the marginal cost is flat
    per_size = {n: _size(n, 5.0, 5.0 + n * 1e-3, 1000 + n // 1000) for n in (1_000, 10_000, 100_000)}
    f = bs.scaling_figures(per_size)
    assert f["scaling_sizes"] == [1_000, 10_000, 100_000]
    assert f["scaling_ms_per_stamp_1000"] == pytest.approx(11.0)
    assert f["scaling_time_per_stamp_ratio"] == pytest.approx(1.1 / 11.0, abs=1e-3)
    assert f["scaling_marginal_time_per_stamp_ratio"] == pytest.approx(1.0)
    assert f["scaling_marginal_ms_per_stamp_low"] == pytest.approx(1.0)
    assert f["scaling_driver_rss_mb_100000"] == 1100
    assert f["scaling_driver_rss_ratio"] == pytest.approx(1.099, abs=1e-3)
    assert "1000 tasks" in f["scaling_time_per_stamp_ratio_baseline"]
