"""A limit on concurrent remote requests shared by every process of one machine.

Spark runs one Python worker process per core, so a thread semaphore cannot bound what an executor
asks of a shared server. Here a machine has ``n`` slot files ``slot-<i>`` under
``<tmp>/lensinj-remote-slots-<n>`` (``tmp``: ``$LENSINJ_SLOTS_DIR`` or the system temp folder); a
request holds one with ``fcntl.flock`` for its duration. Locks belong to open files, so threads and
processes alike exclude each other, and the kernel frees the lock of a process that dies. Every
process using the same ``n`` on a machine shares one pool (the folder is named by ``n``).

A waiter polls the slots (non-blocking locks, from a random slot, waits of 1 ms growing to 20 ms)
so a free slot is taken whichever one frees first.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import random
import tempfile
import time

POLL_FIRST_S, POLL_MAX_S = 0.001, 0.02


def slots_dir(n: int) -> str:
    """The folder of the machine's ``n``-slot pool."""
    root = os.environ.get("LENSINJ_SLOTS_DIR") or tempfile.gettempdir()
    return os.path.join(root, f"lensinj-remote-slots-{int(n)}")


@contextlib.contextmanager
def remote_slot(n: int | None):
    """Hold one of the machine's ``n`` request slots for the ``with`` block (``None``: no limit)."""
    if not n:
        yield
        return
    folder = slots_dir(n)
    os.makedirs(folder, exist_ok=True)
    start, wait = random.randrange(n), POLL_FIRST_S
    while True:
        for i in range(n):
            fd = os.open(os.path.join(folder, f"slot-{(start + i) % n}"), os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        time.sleep(wait)
        wait = min(wait * 2, POLL_MAX_S)
