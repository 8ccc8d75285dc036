"""Spark entry points, one per pipeline stage (thin: read, call udfs, write).

Importing this package chooses Arrow's memory pool for the process before pyarrow loads (Arrow
reads ``ARROW_DEFAULT_MEMORY_POOL`` once, at import): mimalloc, which keeps the large buffers of
pixel columns (~140 kB per stamp row) for reuse, where jemalloc, pyarrow's default on Linux, has
them faulted in afresh; stage 5's Parquet writes take half the time (``make bench``,
``io_share_of_bucket_work``). :func:`jobs.spark.get_spark` gives the executors' Python workers the
same pool. A value already in the environment is kept.
"""
import os

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "mimalloc")
