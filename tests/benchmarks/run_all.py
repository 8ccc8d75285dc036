"""``make bench``: run every benchmark, print each as it finishes, then one JSON line with all.

Figures are ratios against a baseline measured in the same run; absolute rates depend on the
machine. Each module in ``BENCHMARKS`` has ``run() -> dict``.
"""
from __future__ import annotations

import importlib
import json
import sys
import time

BENCHMARKS = ["tests.benchmarks.bench_render", "tests.benchmarks.bench_cutouts",
              "tests.benchmarks.bench_psf_stack", "tests.benchmarks.bench_bank", "tests.benchmarks.bench_pipeline",
              "tests.benchmarks.bench_scaling"]  # last: ~25 min (stages 3 and 5 at 10^3, 10^4, 10^5 tasks)


def main() -> int:
    merged: dict = {}
    for name in BENCHMARKS:
        t0 = time.perf_counter()
        result = importlib.import_module(name).run()
        print(f"{name} ({time.perf_counter() - t0:.0f} s): {json.dumps(result)}", flush=True)
        merged.update(result)
    print(json.dumps(merged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
