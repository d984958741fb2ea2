"""Holding Ctrl-C while something must not be cut in half (a checkpoint write, a collective)."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


@contextmanager
def hold_interrupts():
    """Hold Ctrl-C (SIGINT) until the block has finished, then deliver it.

    A checkpoint write interrupted half-way would lose the checkpoint; under this, the write
    completes and the ``KeyboardInterrupt`` comes right after. Blocks may nest (the outermost
    delivers). Outside the main thread, where Python cannot install signal handlers, it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except (ValueError, OSError):  # no signals here (e.g. an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and callable(previous):
        previous(signal.SIGINT, None)  # default_int_handler raises KeyboardInterrupt; an outer hold records it
