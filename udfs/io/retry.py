"""The one retry policy of remote reads and writes (HTTP(S) range GETs, S3 objects).

Which failures are worth another attempt:

- transient: :class:`TransientError` (HTTP 5xx, 429, a truncated body: fewer bytes than asked),
  connection reset / refused / aborted, timeouts, and any other ``OSError`` of a remote read;
- permanent, never retried: ``FileNotFoundError`` (HTTP 403/404/410, no such object) and
  :class:`PermanentError` (a server that ignores ``Range``, another 4xx).

Waits (seconds): attempt ``k`` (0-based) of a failure waits a uniform draw in
``[0, min(cap_s, base_s * 2**k)]`` ("full jitter", so workers that failed together do not retry
together); when the server sent ``Retry-After: S`` (seconds), the wait is at least ``S``
(at most ``retry_after_cap_s``). ``retries`` is the number of retries per failed request, so a
request is tried at most ``retries + 1`` times.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

_RNG = random.Random()  # seeded from the OS: workers draw different jitter


class TransientError(OSError):
    """A remote failure worth retrying; ``retry_after`` is the server's Retry-After in seconds."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(OSError):
    """A remote failure that another attempt would not fix (e.g. a server ignoring Range)."""


def is_transient(exc: BaseException) -> bool:
    """True for failures worth another attempt (see the module docstring)."""
    if isinstance(exc, (FileNotFoundError, PermanentError)):
        return False
    return isinstance(exc, OSError)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds; None if absent or an HTTP date."""
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with capped, fully jittered exponential backoff (seconds)."""

    retries: int = 4                  # retries per failed request (attempts = retries + 1)
    base_s: float = 0.25              # cap of the first wait; doubles per attempt
    cap_s: float = 8.0                # no backoff wait exceeds this
    retry_after_cap_s: float = 60.0   # a server's Retry-After is honoured up to this

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """The wait after failed attempt ``attempt`` (0-based), at least ``retry_after`` if given."""
        wait = (rng or _RNG).uniform(0.0, min(self.cap_s, self.base_s * 2 ** attempt))
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.retry_after_cap_s))
        return wait

    def call(self, fn, *, reset=None, rng: random.Random | None = None, sleep=time.sleep):
        """``fn()``, retried on transient failures; the last failure (or a permanent one) is raised
        with ``attempts`` set on it. ``reset()`` runs before each retry (e.g. reopen a handle)."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised unless transient
                if not is_transient(exc) or attempt == self.retries:
                    try:
                        exc.attempts = attempt + 1
                    except AttributeError:
                        pass
                    raise
                sleep(self.delay(attempt, getattr(exc, "retry_after", None), rng))
                if reset is not None:
                    reset()
        raise AssertionError("unreachable")
