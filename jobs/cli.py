"""What every job's command line shares: the exit-2 wrapper for bad input.

Every job's ``main(argv)`` is decorated with :func:`job_main`: a :class:`~udfs.io.errors.InputError`
(config, catalogue, dataset or stamp errors are subclasses) becomes one line ``error: <message>`` on
stderr and exit code 2; any other exception is a bug and propagates with its traceback.

Bad input found inside a Spark task reaches the driver as a Spark exception whose text holds the
worker's Python traceback; when that traceback ends in an ``InputError`` subclass of this project, it
is reported the same way, as its own message (:func:`task_input_error`), never as a Java stack trace.
"""
from __future__ import annotations

import functools
import importlib
import re
import sys
from collections.abc import Callable

from udfs.io.errors import InputError

__all__ = ["InputError", "job_main", "task_input_error"]

# the last line(s) of a worker traceback: "udfs.io.datasets.DatasetError: <message>", up to a blank
# line or the JVM's "\tat ..." frames
_RAISED = re.compile(r"^((?:udfs|jobs)\.[\w.]+)\.(\w+): (.*?)(?=\n\s*\n|\n\tat |\Z)", re.M | re.S)


def task_input_error(exc: BaseException) -> str | None:
    """The message of the project's bad-input error raised in a Spark task, read from the Spark
    exception's text, or None when the task failed for another reason (a bug keeps its traceback)."""
    if type(exc).__module__.split(".")[0] not in ("py4j", "pyspark"):
        return None
    found = _RAISED.findall(str(exc))
    if not found:
        return None
    module, name, message = found[-1]
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return message.strip() if isinstance(cls, type) and issubclass(cls, InputError) else None


def job_main(func: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a job's ``main(argv)``: return its code (``None`` means 0), or 2 on bad input."""
    @functools.wraps(func)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            rc = func(argv)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            found = task_input_error(exc)
            if found is None:
                raise
            print(f"error: {found}", file=sys.stderr)
            return 2
        return 0 if rc is None else rc
    return wrapper
