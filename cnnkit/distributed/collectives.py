"""Collective operations on NumPy arrays: every rank calls them, in the same order.

``all_reduce(array, op)`` combines the array of every rank element-wise and leaves the result in
every rank's array (in place); ``broadcast(array, src)`` copies rank ``src``'s array into the
others'; ``barrier()`` waits for every rank. With ``async_op=True`` the first two return a
:class:`Work` handle at once (a non-blocking MPI request) and the data is ready after
``handle.wait()``: DistributedDataParallel starts its gradient reductions this way while the rest
of backward runs. In a world of one process they return at once and leave the array as it is.

Waiting is done by polling the request from Python rather than in ``MPI_Wait``: MPICH's wait
spins on a core until the other ranks arrive (a rank that waits for a slower one would take a
core from it when ranks outnumber cores), and Python's signal handlers, Ctrl-C included, do not
run inside it.
"""
from __future__ import annotations

import time

import numpy as np

from . import process_group as pg

# "avg" is PyTorch's ReduceOp.AVG: the sum divided by the world size (floating arrays only).
REDUCE_OPS = ("sum", "avg", "max", "min", "prod")
_MPI_OPS = {"sum": "SUM", "avg": "SUM", "max": "MAX", "min": "MIN", "prod": "PROD"}

# A waiting rank polls for this long before it starts napping between polls: collectives
# between ranks in step usually finish within it, and a nap costs ~0.1 ms of latency.
SPIN_SECONDS = 0.002
NAP_SECONDS = 0.0002


class Work:
    """The handle of a non-blocking collective: ``wait()`` until it is done, ``is_completed()`` to ask."""

    __slots__ = ("_request", "_finish", "_done")

    def __init__(self, request=None, finish=None):
        self._request = request
        self._finish = finish  # called once when the request completes (e.g. divide for "avg")
        self._done = request is None
        if self._done and finish is not None:
            finish()

    def is_completed(self) -> bool:
        """Whether the operation is done; asking also lets MPI move it (and others) forward."""
        if not self._done and self._request.Test():
            self._complete()
        return self._done

    def wait(self) -> None:
        """Block until the operation is done (polling; see the module docstring)."""
        if self._done:
            return
        wait_for(self._request)
        self._complete()

    def _complete(self) -> None:
        self._done = True
        if self._finish is not None:
            self._finish()


def wait_for(request) -> None:
    """Poll an mpi4py request until it completes: spin briefly, then nap between polls."""
    start = time.perf_counter()
    while not request.Test():
        if time.perf_counter() - start > SPIN_SECONDS:
            time.sleep(NAP_SECONDS)


def _check_array(array, what: str) -> None:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{what} takes a NumPy array (in place), got {type(array).__name__}"
                        + ("; pass parameter.data or parameter.grad" if hasattr(array, "data") else ""))
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"{what} takes a floating or integer array, got dtype {array.dtype}")
    if not array.flags.c_contiguous or not array.flags.writeable:
        raise ValueError(f"{what} works in place on a C-contiguous, writeable array; got one that is "
                         f"{'not C-contiguous' if not array.flags.c_contiguous else 'read-only'} "
                         "(pass np.ascontiguousarray(a) and copy the result back)")


def all_reduce(array, op: str = "sum", async_op: bool = False):
    """Combine ``array`` over every rank, element-wise, in place.

    Args:
        array: a C-contiguous, writeable NumPy array of the same shape and dtype on every rank.
        op: ``"sum"``, ``"avg"`` (sum / world size; floating arrays), ``"max"``, ``"min"``, ``"prod"``.
        async_op: return a :class:`Work` handle at once instead of waiting.

    Returns ``None``, or the handle with ``async_op=True``.
    """
    _check_array(array, "all_reduce")
    key = op.lower() if isinstance(op, str) else op
    if key not in REDUCE_OPS:
        raise ValueError(f"all_reduce: op must be one of {', '.join(REDUCE_OPS)}, got {op!r}")
    if key == "avg" and not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"all_reduce: op='avg' needs a floating array, got dtype {array.dtype}")
    group = pg._require()
    finish = None
    if key == "avg" and group.size > 1:
        def finish():
            np.divide(array, group.size, out=array)
    if group.size == 1:
        work = Work()
    else:
        request = group.comm.Iallreduce(group.mpi.IN_PLACE, array, op=getattr(group.mpi, _MPI_OPS[key]))
        work = Work(request, finish)
    if async_op:
        return work
    work.wait()
    return None


def broadcast(array, src: int = 0, async_op: bool = False):
    """Copy rank ``src``'s ``array`` into every other rank's ``array`` (same shape and dtype), in place."""
    _check_array(array, "broadcast")
    group = pg._require()
    if isinstance(src, bool) or not isinstance(src, (int, np.integer)) or not 0 <= src < group.size:
        raise ValueError(f"broadcast: src must be a rank in 0..{group.size - 1}, got {src!r}")
    work = Work() if group.size == 1 else Work(group.comm.Ibcast(array, root=int(src)))
    if async_op:
        return work
    work.wait()
    return None


def barrier() -> None:
    """Return when every rank has called ``barrier()``."""
    group = pg._require()
    if group.size > 1:
        wait_for(group.comm.Ibarrier())


def all_gather_object(object_list: list, obj) -> None:
    """Fill ``object_list`` (one slot per rank) with every rank's ``obj`` (PyTorch's signature).

    For small Python objects such as random-generator states. They travel pickled between the
    ranks of this one job, which trust each other as much as they trust their own memory; nothing
    here reads a file.
    """
    group = pg._require()
    if not isinstance(object_list, list) or len(object_list) != group.size:
        raise ValueError(f"all_gather_object: object_list must be a list of length world size "
                         f"{group.size}, got {type(object_list).__name__} of length "
                         f"{len(object_list) if hasattr(object_list, '__len__') else '?'}")
    if group.size == 1:
        object_list[0] = obj
        return
    barrier()  # polite wait first: the pickled exchange below waits inside MPI
    object_list[:] = group.comm.allgather(obj)
