"""The default process group: which rank this process is, how many there are, and how the job ends.

A run started by an MPI launcher (``mpiexec -n N ...``) is one of ``N`` processes ("ranks") that
run the same program on different data. ``init_process_group()`` reads the launch from the
environment the launcher sets (MPICH/Intel MPI/Slurm: ``PMI_SIZE``; Open MPI:
``OMPI_COMM_WORLD_SIZE``); only then is ``mpi4py`` imported, so a plain ``python train.py`` is a
world of one process and needs no MPI at all.

Three things follow from several ranks sharing a machine and a job:

* **Cores.** Each rank runs its kernels on ``cores / ranks on this machine`` threads (cnnkit's pool
  and BLAS), unless ``CNNKIT_NUM_THREADS`` says otherwise: two ranks of two threads each on a
  2-core machine would fight over the cores.
* **Failures.** MPI has no notion of one rank failing: the others wait in their next collective
  forever, and even a rank that exits normally blocks in ``MPI_Finalize``. So a rank that fails
  must end the job with ``MPI_Abort``; :func:`abort` does that after printing why, and an uncaught
  exception does it through ``sys.excepthook`` (installed here, as ``python -m mpi4py`` does).
* **Isolation.** cnnkit talks on its own duplicate of ``COMM_WORLD``, so a program's own MPI
  messages never mix with cnnkit's, and only from its communication thread (see
  :mod:`cnnkit.distributed.collectives`), one call at a time (``MPI_THREAD_SERIALIZED``).
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

# Environment variables in which MPI launchers announce the number of processes they started.
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


@dataclass
class _Group:
    rank: int
    size: int
    comm: object = None            # an mpi4py communicator; None for a world of one process
    mpi: object = None             # the mpi4py.MPI module when comm is set
    worker: ThreadPoolExecutor | None = None  # the one thread that makes MPI calls (size > 1)
    local_size: int = 1            # ranks on this machine
    threads: int | None = None     # the per-rank thread count this module set (None: untouched)
    blas_limits: object = None     # threadpoolctl's limiter, undone by destroy_process_group
    previous_excepthook: object = None


_group: _Group | None = None


def launcher_world_size() -> int | None:
    """The number of processes an MPI launcher started, from its environment (None: no launcher)."""
    for name in LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(name)
        if value:
            try:
                return int(value)
            except ValueError:
                raise RuntimeError(f"the MPI launcher set {name}={value!r}, which is not a process count") from None
    return None


def _import_mpi(launched: int | None):
    try:
        import mpi4py
    except ImportError:
        raise RuntimeError(
            f"started by an MPI launcher with {launched} processes, but mpi4py is not installed: "
            "pip install 'cnnkit[mpi]' (mpi4py and mpich) in this environment"
        ) from None
    if "mpi4py.MPI" not in sys.modules:
        # One thread at a time calls MPI (the communication thread, after set-up here).
        mpi4py.rc.thread_level = "serialized"
    from mpi4py import MPI

    return MPI


def init_process_group(backend: str = "mpi") -> None:
    """Join the job this process was launched in (PyTorch's name; ``backend="mpi"`` only).

    Under ``mpiexec -n N`` this initialises MPI through mpi4py and makes this process rank
    ``get_rank()`` of ``get_world_size() == N``; without a launcher (or with ``-n 1``) it makes a
    world of one process without touching MPI. Also sets this rank's thread count to
    ``cores / ranks on this machine`` (unless ``CNNKIT_NUM_THREADS`` is set) and, with more than one
    rank, makes an uncaught exception end every rank (see the module docstring).
    """
    global _group
    if backend != "mpi":
        raise ValueError(f"init_process_group: cnnkit supports backend='mpi' only, got {backend!r}")
    if _group is not None:
        raise RuntimeError("init_process_group: the process group is already initialized "
                           "(call destroy_process_group() first)")
    launched = launcher_world_size()
    if (launched is None or launched <= 1) and "mpi4py.MPI" not in sys.modules:
        _group = _Group(rank=0, size=1)
        return
    MPI = _import_mpi(launched)
    if not MPI.Is_initialized():
        MPI.Init_thread(MPI.THREAD_SERIALIZED)
    if MPI.Query_thread() < MPI.THREAD_SERIALIZED:
        raise RuntimeError("MPI was initialised with thread support below MPI_THREAD_SERIALIZED (mpi4py.rc."
                           "thread_level); cnnkit's communication thread needs 'serialized' or 'multiple'")
    comm = MPI.COMM_WORLD.Dup()
    group = _Group(rank=comm.Get_rank(), size=comm.Get_size(), comm=comm, mpi=MPI)
    if launched is not None and launched != group.size:
        comm.Free()
        raise RuntimeError(f"the launcher started {launched} processes but MPI reports {group.size}: "
                           "mpi4py is probably built against a different MPI than the mpiexec used")
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    group.local_size = local.Get_size()
    local.Free()
    _set_threads(group)
    if group.size > 1:
        group.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnkit-mpi")
        group.previous_excepthook = sys.excepthook
        sys.excepthook = _abort_on_uncaught_exception
    _group = group


def _set_threads(group: _Group) -> None:
    """``cores / ranks on this machine`` threads for cnnkit's pool and for BLAS."""
    if os.environ.get("CNNKIT_NUM_THREADS") or group.local_size <= 1:
        return
    from ..functional import parallel

    group.threads = max(1, (os.cpu_count() or 1) // group.local_size)
    parallel.set_num_threads(group.threads)
    try:
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency
    except ImportError:  # pragma: no cover
        return
    group.blas_limits = threadpool_limits(limits=group.threads, user_api="blas")


def _abort_on_uncaught_exception(exc_type, exc, tb) -> None:
    group = _group
    previous = group.previous_excepthook if group is not None else None
    (previous or sys.__excepthook__)(exc_type, exc, tb)
    if group is not None and group.comm is not None:
        code = 130 if issubclass(exc_type, KeyboardInterrupt) else 1
        abort(f"uncaught {exc_type.__name__} on rank {group.rank} of {group.size}", code)


def is_initialized() -> bool:
    """Whether ``init_process_group`` has run (and ``destroy_process_group`` has not)."""
    return _group is not None


def _require() -> _Group:
    if _group is None:
        raise RuntimeError("the default process group is not initialized: call "
                           "cnnkit.distributed.init_process_group() first")
    return _group


def get_rank() -> int:
    """This process's rank, ``0 .. get_world_size() - 1`` (rank 0 prints and writes files)."""
    return _require().rank


def get_world_size() -> int:
    """The number of processes in the job (1 without an MPI launcher)."""
    return _require().size


def world_size_or_one() -> int:
    """``get_world_size()`` when a process group is initialized, else 1 (for code that works either way)."""
    return 1 if _group is None else _group.size


def rank_or_zero() -> int:
    """``get_rank()`` when a process group is initialized, else 0."""
    return 0 if _group is None else _group.rank


def threads_per_rank() -> int | None:
    """The thread count ``init_process_group`` gave this rank (None: it left the default)."""
    return None if _group is None else _group.threads


def destroy_process_group() -> None:
    """Leave the process group: undo the thread and exception-hook settings, free the communicator.

    MPI itself stays initialised (mpi4py finalises it at exit), so ``init_process_group`` may
    be called again in the same process.
    """
    global _group
    group, _group = _group, None
    if group is None:
        return
    if group.threads is not None:
        from ..functional import parallel

        parallel.set_num_threads(None)
        if group.blas_limits is not None:
            group.blas_limits.restore_original_limits()
    if group.previous_excepthook is not None and sys.excepthook is _abort_on_uncaught_exception:
        sys.excepthook = group.previous_excepthook
    if group.worker is not None:
        group.worker.shutdown(wait=True)
    if group.comm is not None:
        group.comm.Free()


def abort(message: str, exit_code: int = 1) -> None:
    """Print ``message`` and end every rank of the job now (``MPI_Abort``); never returns.

    For a rank that cannot go on: the other ranks are killed by the launcher within about a
    second instead of waiting forever in their next collective. In a world of one process it
    just exits.
    """
    group = _group
    ranks = f"; stopping all {group.size} ranks" if group is not None and group.size > 1 else ""
    print(f"cnnkit: {message}{ranks}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    if group is not None and group.comm is not None:
        group.comm.Abort(exit_code)
    os._exit(exit_code)  # pragma: no cover - Abort does not return
