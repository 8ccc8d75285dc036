"""What every job's command line shares: the exit-2 wrapper for bad input.

Every job's ``main(argv)`` is decorated with :func:`job_main`: a :class:`~udfs.io.errors.InputError`
(config, catalogue, dataset or stamp errors are subclasses) becomes one line ``error: <message>`` on
stderr and exit code 2; any other exception is a bug and propagates with its traceback.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from udfs.io.errors import InputError

__all__ = ["InputError", "job_main"]


def job_main(func: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a job's ``main(argv)``: return its code (``None`` means 0), or 2 on bad input."""
    @functools.wraps(func)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            rc = func(argv)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0 if rc is None else rc
    return wrapper
