"""Collective operations on NumPy arrays: every rank calls them, in the same order.

``all_reduce(array, op)`` combines the array of every rank element-wise and leaves the result in
every rank's array (in place); ``broadcast(array, src)`` copies rank ``src``'s array into the
others'; ``barrier()`` waits for every rank. With ``async_op=True`` the first two return a
:class:`Work` handle at once and the data is ready after ``handle.wait()``: DistributedDataParallel
starts its gradient reductions this way while the rest of backward runs. In a world of one
process they return at once and leave the array as it is.

Every MPI call runs on one communication thread per rank, in the order the operations were
asked for (PyTorch's MPI backend works the same way). A non-blocking MPI collective only moves
while some thread is inside MPI (measured with MPICH: a 1 MB ``Iallreduce`` left alone for 50 ms
had not progressed at all); the communication thread sits in the blocking call, with the GIL
released, while the training thread goes on computing. One thread in order also keeps every
rank's sequence of collectives identical, which MPI requires.
"""
from __future__ import annotations

import numpy as np

from . import process_group as pg

# "avg" is PyTorch's ReduceOp.AVG: the sum divided by the world size (floating arrays only).
REDUCE_OPS = ("sum", "avg", "max", "min", "prod")
_MPI_OPS = {"sum": "SUM", "avg": "SUM", "max": "MAX", "min": "MIN", "prod": "PROD"}


class Work:
    """The handle of an operation on the communication thread: ``wait()`` for it, or ask ``is_completed()``."""

    __slots__ = ("_future", "_finish", "_done")

    def __init__(self, future=None, finish=None):
        self._future = future
        self._finish = finish  # run once, on the waiting thread, when the operation is done
        self._done = False
        if future is None:
            self._complete()

    def is_completed(self) -> bool:
        """Whether the operation is done (``wait()`` still has to be called to finish it)."""
        return self._done or self._future.done()

    def wait(self):
        """Block until the operation is done; returns its result (``all_gather``'s list) or None.

        Interruptible: Ctrl-C raises ``KeyboardInterrupt`` here as anywhere else.
        """
        if self._done:
            return None
        result = self._future.result()  # re-raises an error of the MPI call
        self._complete()
        return result

    def _complete(self) -> None:
        self._done = True
        if self._finish is not None:
            self._finish()


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


def _run(group, async_op: bool, call, *args, finish=None):
    work = Work(group.worker.submit(call, *args), finish)
    if async_op:
        return work
    work.wait()
    return None


def all_reduce(array, op: str = "sum", async_op: bool = False):
    """Combine ``array`` over every rank, element-wise, in place.

    Args:
        array: a C-contiguous, writeable NumPy array of the same shape and dtype on every rank
            (not to be touched until the operation is done).
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
    if group.size == 1:
        return Work() if async_op else None
    finish = (lambda: np.divide(array, group.size, out=array)) if key == "avg" else None
    mpi = group.mpi
    return _run(group, async_op, group.comm.Allreduce, mpi.IN_PLACE, array, getattr(mpi, _MPI_OPS[key]),
                finish=finish)


def broadcast(array, src: int = 0, async_op: bool = False):
    """Copy rank ``src``'s ``array`` into every other rank's ``array`` (same shape and dtype), in place."""
    _check_array(array, "broadcast")
    group = pg._require()
    if isinstance(src, bool) or not isinstance(src, (int, np.integer)) or not 0 <= src < group.size:
        raise ValueError(f"broadcast: src must be a rank in 0..{group.size - 1}, got {src!r}")
    if group.size == 1:
        return Work() if async_op else None
    return _run(group, async_op, group.comm.Bcast, array, int(src))


def barrier() -> None:
    """Return when every rank has called ``barrier()``."""
    group = pg._require()
    if group.size > 1:
        _run(group, False, group.comm.Barrier)


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
    object_list[:] = Work(group.worker.submit(group.comm.allgather, obj)).wait()
