"""``make bench``'s benchmarks (:mod:`tests.benchmarks.run_all`).

:mod:`jobs` is imported first so that the in-process baselines use the Arrow memory pool the jobs'
Spark workers use (set before pyarrow loads, see ``jobs/__init__.py``)."""
import jobs  # noqa: F401
