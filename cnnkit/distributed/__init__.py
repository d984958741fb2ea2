"""Several processes training one model: process groups over MPI (mpi4py), PyTorch's names.

Launch the same program N times with ``mpiexec -n N python train.py`` (or ``mpiexec -n N cnnkit
train ...``); in it::

    from cnnkit import distributed as dist
    dist.init_process_group()           # rank and size from the launch; world of 1 without mpiexec
    rank, world = dist.get_rank(), dist.get_world_size()
    dist.all_reduce(array, op="sum")    # in place, every rank gets the sum
    dist.broadcast(array, src=0)        # in place, every rank gets rank 0's values
    dist.barrier()
    dist.destroy_process_group()

``cnnkit.nn.parallel.DistributedDataParallel`` averages gradients over the ranks,
``cnnkit.nn.SyncBatchNorm`` normalises with the statistics of the global batch and
``cnnkit.data.DistributedSampler`` gives each rank its shard of a dataset. MPI comes from the
optional extra ``pip install 'cnnkit[mpi]'`` (mpi4py and MPICH, whose ``mpiexec`` lands in the
environment's ``bin/``); nothing here imports it unless the process was started by a launcher.
Each rank makes its MPI calls on one communication thread, so reductions started with
``async_op=True`` progress while the training thread computes.
"""
from .collectives import REDUCE_OPS, Work, all_gather_object, all_reduce, barrier, broadcast
from .process_group import (
    abort,
    destroy_process_group,
    get_rank,
    get_world_size,
    init_process_group,
    is_initialized,
    launcher_world_size,
    rank_or_zero,
    threads_per_rank,
    world_size_or_one,
)

__all__ = [
    "init_process_group", "destroy_process_group", "is_initialized", "get_rank", "get_world_size",
    "all_reduce", "broadcast", "barrier", "all_gather_object", "Work", "REDUCE_OPS", "abort",
    "launcher_world_size", "rank_or_zero", "world_size_or_one", "threads_per_rank",
]
