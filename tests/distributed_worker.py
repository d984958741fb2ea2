"""What each rank runs in the multi-process tests (``mpiexec -n 2 python distributed_worker.py CASE``).

Not a test module itself: tests/test_distributed_mpi.py starts it under mpiexec and checks what
rank 0 prints (one JSON document per line, ``RESULT {...}``). Every case measures and reports;
the thresholds live in the tests.

* ``api``: the collectives, DistributedSampler's shards, SyncBatchNorm against one BatchNorm on the
  whole batch, and DDP against one process on the whole batch (float64 and float32, without
  BatchNorm and with SyncBatchNorm, one bucket and one bucket per parameter, no_sync, frozen and
  unused parameters).
* ``uncaught``: rank 1 raises outside any handler while rank 0 waits in a barrier.
* ``cli-fail``: ``cnnkit train`` where rank 1's eleventh training step (in epoch 2) raises.
* ``cli-nan``: ``cnnkit train`` where rank 1's weights turn to NaN, so its loss does.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from cnnkit import distributed as dist
from cnnkit import nn
from cnnkit.nn.parallel import DistributedDataParallel
from cnnkit.optim import SGD


def report(name, **values):
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps({"case": name, **values}), flush=True)


def gathered(array) -> list:
    """Every rank's copy of ``array`` (for checks: identical on all ranks?)."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, np.asarray(array))
    return out


# -- collectives ----------------------------------------------------------------------------------
def check_collectives():
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    a = np.array([rank + 1.0, 10.0 * rank], dtype=np.float64)
    dist.all_reduce(a)
    results["sum"] = a.tolist()
    for op in ("max", "min", "prod", "avg"):
        b = np.array([rank + 1.0, -rank - 2.0], dtype=np.float32)
        dist.all_reduce(b, op=op)
        results[op] = b.tolist()
    c = np.full(3, rank, dtype=np.int64)
    dist.broadcast(c, src=1)
    results["broadcast_from_1"] = c.tolist()
    d = np.arange(1000, dtype=np.float32) * (rank + 1)
    work = dist.all_reduce(d, async_op=True)
    work.wait()
    results["async_sum_ok"] = bool(np.array_equal(d, np.arange(1000, dtype=np.float32) * sum(range(1, world + 1))))
    # Started, then left alone: it must finish while this thread makes no MPI call at all.
    big = np.ones(1 << 18, dtype=np.float32)
    work = dist.all_reduce(big, async_op=True)
    deadline = time.perf_counter() + 10
    while not work.is_completed() and time.perf_counter() < deadline:
        time.sleep(0.01)
    results["progressed_alone"] = work.is_completed()
    work.wait()
    results["progressed_sum_ok"] = bool((big == world).all())
    dist.barrier()
    objs = [None] * world
    dist.all_gather_object(objs, {"rank": rank})
    results["gather"] = objs
    report("collectives", world=world, **results)


# -- DistributedSampler ---------------------------------------------------------------------------
def check_sampler():
    from cnnkit.data import DistributedSampler

    out = {}
    for n, drop_last in ((10, False), (11, False), (11, True)):
        sampler = DistributedSampler(n, shuffle=True, seed=3, drop_last=drop_last)
        epochs = []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            epochs.append([np.asarray(x).tolist() for x in gathered(sampler.indices())])
        out[f"{n}-{drop_last}"] = epochs
    report("sampler", shards=out)


# -- SyncBatchNorm against one BatchNorm on the whole batch --------------------------------------
def check_sync_batchnorm():
    rank, world = dist.get_rank(), dist.get_world_size()
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6 * world, 3, 5, 4)) * 3 + 1
    dy = rng.standard_normal(x.shape)
    weight, bias = rng.standard_normal(3), rng.standard_normal(3)

    def layer(cls):
        bn = cls(3, momentum=0.3, dtype=np.float64)
        bn.weight.data[...] = weight
        bn.bias.data[...] = bias
        return bn

    whole = layer(nn.BatchNorm2d)
    y_whole = whole(x)
    dx_whole = whole.backward(dy)
    sync = layer(nn.SyncBatchNorm)
    part = slice(6 * rank, 6 * (rank + 1))
    y = sync(x[part])
    # Each rank's dy is world x its share of the global mean loss's gradient (see sync_batchnorm.py).
    dx = sync.backward(dy[part] * world)
    dweight = sync.weight.grad.copy()
    dbias = sync.bias.grad.copy()
    dist.all_reduce(dweight, op="avg")
    dist.all_reduce(dbias, op="avg")
    errors = {
        "y": float(np.abs(y - y_whole[part]).max()),
        "dx": float(np.abs(dx / world - dx_whole[part]).max()),
        "dweight": float(np.abs(dweight - whole.weight.grad).max()),
        "dbias": float(np.abs(dbias - whole.bias.grad).max()),
        "running_mean": float(np.abs(sync.running_mean - whole.running_mean).max()),
        "running_var": float(np.abs(sync.running_var - whole.running_var).max()),
    }
    worst = np.array([max(errors.values())])
    dist.all_reduce(worst, op="max")
    report("sync_batchnorm", max_error=float(worst[0]), **errors)


# -- DDP against one process on the whole batch --------------------------------------------------
class Unused(nn.Module):
    """An identity layer with a parameter no loss depends on (it never gets a gradient)."""

    def __init__(self, dtype):
        super().__init__()
        self.weight = nn.Parameter(np.ones(3, dtype=dtype))

    def forward(self, x):
        return x

    def backward(self, dy, input_grad=True):
        return dy if input_grad else None


def tiny_convnet(dtype, batch_norm: bool, extras: bool = False):
    g = np.random.default_rng(0)
    layers = [nn.Conv2d(3, 4, 3, padding=1, generator=g)]
    layers += [nn.BatchNorm2d(4)] if batch_norm else []
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, generator=g)]
    layers += [nn.BatchNorm2d(6)] if batch_norm else []
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(6 * 2 * 2, 5, generator=g)]
    if extras:
        layers.insert(1, Unused(dtype))
    model = nn.Sequential(*layers).to(dtype)
    if extras:
        model[0].weight.requires_grad = False  # frozen: in no bucket, never updated
    return model


def train_steps(model, batches, steps: int, micro: int = 1):
    """SGD steps; each step accumulates ``micro`` micro-batches (DDP: all but the last in no_sync)."""
    lossf = nn.CrossEntropyLoss()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for step in range(steps):
        opt.zero_grad()
        for k in range(micro):
            x, y = batches[step * micro + k]
            lossf(model(x), y)
            last = k == micro - 1
            if isinstance(model, DistributedDataParallel) and not last:
                with model.no_sync():
                    model.backward(lossf.backward(), input_grad=False)
            else:
                model.backward(lossf.backward(), input_grad=False)
        opt.step()


def check_ddp(dtype, batch_norm: bool, bucket_cap_mb: float, micro: int = 1, extras: bool = False):
    rank, world = dist.get_rank(), dist.get_world_size()
    steps, per_rank = 3, 4
    rng = np.random.default_rng(11)
    batches = [(rng.standard_normal((per_rank * world, 3, 8, 8)).astype(dtype), rng.integers(0, 5, per_rank * world))
               for _ in range(steps * micro)]
    reference = tiny_convnet(dtype, batch_norm, extras)
    train_steps(reference, batches, steps, micro)

    model = tiny_convnet(dtype, batch_norm, extras)
    if rank > 0:  # DDP must broadcast rank 0's weights at construction
        for p in model.parameters():
            p.data += 1
    if batch_norm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = DistributedDataParallel(model, bucket_cap_mb=bucket_cap_mb)
    part = slice(per_rank * rank, per_rank * (rank + 1))
    train_steps(ddp, [(x[part], y[part]) for x, y in batches], steps, micro)

    ref_state, state = reference.state_dict(), model.state_dict()
    error = max(float(np.abs(np.asarray(state[k], np.float64) - np.asarray(ref_state[k], np.float64)).max())
                for k in ref_state)
    flat = np.concatenate([np.asarray(v, np.float64).ravel() for v in state.values()])
    low, high = flat.copy(), flat.copy()
    dist.all_reduce(low, op="min")
    dist.all_reduce(high, op="max")
    worst = np.array([error])
    dist.all_reduce(worst, op="max")
    report("ddp", dtype=np.dtype(dtype).name, batch_norm=batch_norm, bucket_cap_mb=bucket_cap_mb, micro=micro,
           extras=extras, max_error=float(worst[0]), ranks_differ_by=float((high - low).max()),
           buckets=len(ddp.bucket_sizes), stats=ddp.comm_stats,
           frozen_grad_is_none=model[0].weight.grad is None if extras else None,
           unused_grad_is_none=model[1].weight.grad is None if extras else None,
           frozen_unchanged=bool(np.array_equal(model[0].weight.data, reference[0].weight.data)) if extras else None)


def case_api():
    dist.init_process_group()
    check_collectives()
    check_sampler()
    check_sync_batchnorm()
    tiny = 1e-6  # MB: one bucket per parameter, so buckets start during backward
    for dtype in (np.float64, np.float32):
        for batch_norm in (False, True):
            check_ddp(dtype, batch_norm, bucket_cap_mb=25.0)
            check_ddp(dtype, batch_norm, bucket_cap_mb=tiny)
    check_ddp(np.float64, False, bucket_cap_mb=tiny, micro=2)
    check_ddp(np.float64, True, bucket_cap_mb=tiny, extras=True)
    dist.destroy_process_group()


def case_uncaught():
    dist.init_process_group()
    if dist.get_rank() == 1:
        time.sleep(0.5)
        print(f"FAILING AT {time.time()}", file=sys.stderr, flush=True)
        raise ValueError("rank 1 found bad data")
    dist.barrier()  # never completes: rank 1 is gone
    print("RESULT " + json.dumps({"case": "uncaught", "barrier_returned": True}), flush=True)


def case_cli_fail(out_dir: str):
    from cnnkit.cli import main
    from cnnkit.train.trainer import Trainer

    original = Trainer.train_step

    def failing_step(self, x, y):
        if self.rank == 1 and self.global_step == 10:  # epoch 2 (9 steps per epoch): after a checkpoint
            print(f"FAILING AT {time.time()}", file=sys.stderr, flush=True)
            raise ValueError("injected failure: bad batch on rank 1")
        return original(self, x, y)

    Trainer.train_step = failing_step
    return main(["train", "--epochs", "3", "--limit", "300", "--out", out_dir, "--no-progress", "--no-report"])


def case_cli_nan(out_dir: str):
    from cnnkit.cli import main
    from cnnkit.train.trainer import Trainer

    original = Trainer.train_step

    def poisoned_step(self, x, y):
        if self.rank == 1 and self.global_step == 3:
            print(f"FAILING AT {time.time()}", file=sys.stderr, flush=True)
            for p in self.model.parameters():
                p.data[...] = np.nan
        return original(self, x, y)

    Trainer.train_step = poisoned_step
    return main(["train", "--epochs", "2", "--limit", "300", "--out", out_dir, "--no-progress", "--no-report"])


if __name__ == "__main__":
    case = sys.argv[1]
    if case == "api":
        case_api()
    elif case == "uncaught":
        case_uncaught()
    elif case == "cli-fail":
        sys.exit(case_cli_fail(sys.argv[2]))
    elif case == "cli-nan":
        sys.exit(case_cli_nan(sys.argv[2]))
    else:
        sys.exit(f"unknown case {case!r}")
