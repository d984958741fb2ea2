"""``DistributedDataParallel``: one model trained by several processes, each on its share of the batch.

Synchronous data parallelism: every rank holds the same weights, runs forward and backward on its
own ``B / N`` samples, and before the optimizer step every gradient is replaced by its average
over the ranks. Each rank's loss is a mean over its samples, so the average of the ranks'
gradients is the gradient of the mean over all ``B`` samples: the ranks then take exactly the
step one process would take with batch ``B`` (up to rounding), and stay identical.

How the averaging overlaps backward (as PyTorch's DDP does it):

* **Buckets.** The trainable parameters are grouped, in the order backward reaches them (the
  reverse of their definition order to start with, the order actually seen after the first
  backward), into buckets of about ``bucket_cap_mb`` (the first one smaller, 1 MB, so that
  communication starts early). One allreduce per bucket: few enough messages to amortise their
  latency, early enough to overlap.
* **Readiness.** Every layer writes its parameter gradients through ``Parameter.accumulate_grad``,
  which calls ``Parameter.on_grad``: DDP sets it during its ``backward`` and counts, per bucket,
  the gradients still to come. When a bucket is complete its gradients are copied into one flat
  buffer and a non-blocking allreduce starts, while the layers below are still in backward.
  Buckets start strictly in order, so every rank issues the same collectives in the same order.
* **The end of backward.** Buckets that never became complete (a parameter no loss depends on)
  start then, their missing gradients sent as zeros; DDP waits for all of them, divides by the
  world size and writes the averages back into ``.grad``. One extra number per parameter says
  whether any rank had a gradient for it, so a parameter that got none anywhere keeps
  ``grad is None`` everywhere, as in a single process.

The reductions run on the rank's communication thread (see :mod:`cnnkit.distributed.collectives`),
which sits inside MPI while the layers below compute their backward.

A parameter is complete when every module attribute holding it has written its gradient (cnnkit
layers write each parameter's gradient once per backward; shared weights are held by several
modules). Frozen parameters (``requires_grad=False``) are in no bucket. Gradient accumulation: inside
``with ddp.no_sync():`` backward only accumulates locally; the next backward outside it averages
the accumulated sums.
"""
from __future__ import annotations

import contextlib
import time
import zlib

import numpy as np

from .. import distributed as dist
from .module import Module, Parameter

__all__ = ["DistributedDataParallel", "broadcast_module_state"]

FIRST_BUCKET_MB = 1.0  # PyTorch's first bucket: communication starts after the last layers


def _unique_trainable(module: Module) -> list[Parameter]:
    seen, out = set(), []
    for p in module.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _holders(module: Module) -> dict[int, int]:
    """How many module attributes hold each parameter: its gradient writes per backward (at most)."""
    count: dict[int, int] = {}
    for m in module.modules():
        for value in vars(m).values():
            if isinstance(value, Parameter):
                count[id(value)] = count.get(id(value), 0) + 1
    return count


def _coalesced(arrays: list[np.ndarray], fn) -> None:
    """Run ``fn(flat)`` on the arrays packed into one buffer per dtype, then unpack in place."""
    by_dtype: dict = {}
    for a in arrays:
        by_dtype.setdefault(a.dtype, []).append(a)
    for group in by_dtype.values():
        flat = np.concatenate([a.ravel() for a in group])
        fn(flat)
        offset = 0
        for a in group:
            a[...] = flat[offset:offset + a.size].reshape(a.shape)
            offset += a.size


def broadcast_module_state(module: Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s parameters and buffers (one broadcast per dtype).

    Every rank must call it, with models of the same structure.
    """
    if dist.get_world_size() == 1:
        return
    arrays = [p.data for p in module.parameters()] + [b for b in module.buffers() if isinstance(b, np.ndarray)]
    _coalesced(arrays, lambda flat: dist.broadcast(flat, src))


def _check_same_structure(module: Module) -> None:
    """Raise on every rank if the ranks' models differ in parameter names, shapes or dtypes."""
    description = ";".join(f"{n}:{tuple(p.shape)}:{p.dtype}:{p.requires_grad}" for n, p in module.named_parameters())
    fingerprint = zlib.crc32(description.encode())
    low = np.array([fingerprint], dtype=np.int64)
    high = low.copy()
    dist.all_reduce(low, op="min")
    dist.all_reduce(high, op="max")
    if low[0] != high[0]:
        raise ValueError(
            "DistributedDataParallel: the ranks' models differ (parameter names, shapes, dtypes or "
            "requires_grad); build the same model on every rank"
        )


class _Bucket:
    """Parameters reduced together: one flat buffer, gradients first, then one flag per parameter."""

    def __init__(self, params: list[Parameter], writes: int):
        self.params = params
        self.writes = writes  # gradient writes that complete it in one backward
        self.total = sum(p.size for p in params)
        self.buffer = np.empty(self.total + len(params), dtype=params[0].dtype)
        self.work = None

    def pack(self) -> None:
        offset = 0
        for i, p in enumerate(self.params):
            part = self.buffer[offset:offset + p.size]
            if p.grad is None:
                part[...] = 0
                self.buffer[self.total + i] = 0
            else:
                part[...] = p.grad.ravel()
                self.buffer[self.total + i] = 1
            offset += p.size

    def unpack(self, world_size: int) -> None:
        """Write the averages into ``.grad``: the division and the copy in one pass."""
        offset = 0
        for i, p in enumerate(self.params):
            summed = self.buffer[offset:offset + p.size].reshape(p.shape)
            if self.buffer[self.total + i] == 0:  # no rank had a gradient for it
                p.grad = None
            elif p.grad is None:
                p.grad = summed / world_size
            else:
                np.divide(summed, world_size, out=p.grad)
            offset += p.size


def _make_buckets(params: list[Parameter], expected: dict[int, int], cap_bytes: float,
                  first_bytes: float) -> list[_Bucket]:
    """``expected``: the gradient writes per parameter (by id) in one backward."""
    buckets, current, size = [], [], 0

    def close():
        buckets.append(_Bucket(current, sum(expected[id(p)] for p in current)))

    for p in params:
        if current and (p.dtype != current[0].dtype or size >= (first_bytes if not buckets else cap_bytes)):
            close()
            current, size = [], 0
        current.append(p)
        size += p.data.nbytes
    if current:
        close()
    return buckets


class _Reduction:
    """The bookkeeping of one synchronising backward: which buckets are complete and in flight."""

    def __init__(self, ddp: "DistributedDataParallel"):
        self.ddp = ddp
        self.missing = [b.writes for b in ddp._buckets]
        self.next = 0  # the next bucket to start; buckets start in order
        self.in_backward = True
        self.started_in_backward = 0
        self.first_started = None  # when the first bucket started, if during backward
        # Until the order is learnt (the first backward): which parameters are complete, in order.
        self.arrivals = None if ddp._order_learned else dict.fromkeys(ddp._expected, 0)
        self.arrival_order: list[int] = []  # parameter indices, in the order they became complete

    def on_grad(self, p: Parameter) -> None:
        key = id(p)
        self.missing[self.ddp._bucket_of[key]] -= 1
        if self.arrivals is not None:
            self.arrivals[key] += 1
            if self.arrivals[key] == self.ddp._expected[key]:
                self.arrival_order.append(self.ddp._param_index[key])
        while self.next < len(self.ddp._buckets) and self.missing[self.next] <= 0:
            self.start(self.next)

    def start(self, index: int) -> None:
        bucket = self.ddp._buckets[index]
        bucket.pack()
        bucket.work = dist.all_reduce(bucket.buffer, op="sum", async_op=True)
        self.next = index + 1
        if self.in_backward:
            self.started_in_backward += 1
            if self.first_started is None:
                self.first_started = time.perf_counter()

    def finish(self) -> None:
        self.in_backward = False
        waited = time.perf_counter()
        if self.first_started is not None:  # backward time left to hide communication under
            self.ddp.comm_stats["overlap_window_s"] += waited - self.first_started
        while self.next < len(self.ddp._buckets):
            self.start(self.next)
        world = dist.get_world_size()
        for bucket in self.ddp._buckets:
            bucket.work.wait()
            bucket.work = None
            bucket.unpack(world)
        stats = self.ddp.comm_stats
        stats["wait_s"] += time.perf_counter() - waited
        stats["backwards"] += 1
        stats["buckets"] += len(self.ddp._buckets)
        stats["buckets_started_in_backward"] += self.started_in_backward


class DistributedDataParallel(Module):
    """Wrap ``module`` so that, after ``backward``, every ``.grad`` holds the average over the ranks.

    Construction broadcasts rank 0's parameters and buffers to every rank (so all start from
    the same weights) and checks that the ranks built the same model. ``forward`` in training
    mode first gives every rank rank 0's buffers (``broadcast_buffers``, e.g. BatchNorm's running
    statistics, as PyTorch does); ``backward`` runs the module's backward and averages the
    gradients in buckets that overlap with it (see the module docstring).

    Args:
        module: the model; every rank must build the same one.
        broadcast_buffers: sync buffers from rank 0 before each training-mode forward.
        bucket_cap_mb: the size of a gradient bucket in MiB (PyTorch's default, 25).

    The wrapped model is ``ddp.module`` (save its ``state_dict()``: the wrapper's keys carry a
    ``module.`` prefix, as in PyTorch). ``ddp.comm_stats`` counts synchronising backwards, the
    seconds spent waiting for the reductions after the module's backward returned (``wait_s``:
    the communication the overlap did not hide), the seconds of backward left after the first
    bucket started (``overlap_window_s``: the time there was to hide it) and how many buckets
    started during backward.
    """

    def __init__(self, module: Module, broadcast_buffers: bool = True, bucket_cap_mb: float = 25.0):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel wraps a cnnkit Module, got {type(module).__name__}")
        if not dist.is_initialized():
            raise RuntimeError("DistributedDataParallel needs a process group: call "
                               "cnnkit.distributed.init_process_group() first")
        if isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float)) or not bucket_cap_mb > 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be a positive number, got {bucket_cap_mb!r}")
        self.module = module
        self.broadcast_buffers = bool(broadcast_buffers)
        self.bucket_cap_mb = float(bucket_cap_mb)
        self.require_backward_grad_sync = True  # PyTorch's name; False inside no_sync()
        self.comm_stats = {"backwards": 0, "wait_s": 0.0, "overlap_window_s": 0.0, "buckets": 0,
                           "buckets_started_in_backward": 0}
        self._world = dist.get_world_size()
        if self._world > 1:
            _check_same_structure(module)
            broadcast_module_state(module)
        self._params = _unique_trainable(module)
        self._param_index = {id(p): i for i, p in enumerate(self._params)}
        holders = _holders(module)
        self._expected = {id(p): holders.get(id(p), 1) for p in self._params}
        self._order_learned = False
        self._rebucket(list(reversed(range(len(self._params)))))

    def _rebucket(self, order: list[int]) -> None:
        cap = self.bucket_cap_mb * 2**20
        self._buckets = _make_buckets([self._params[i] for i in order], self._expected, cap,
                                      min(cap, FIRST_BUCKET_MB * 2**20))
        self._bucket_of = {id(p): b for b, bucket in enumerate(self._buckets) for p in bucket.params}

    @property
    def bucket_sizes(self) -> list[int]:
        """The number of gradient values in each bucket, in the order they are reduced."""
        return [b.total for b in self._buckets]

    # -- forward / backward -------------------------------------------------------------------
    def forward(self, x):
        if self.training and self.broadcast_buffers and self._world > 1:
            buffers = [b for b in self.module.buffers() if isinstance(b, np.ndarray)]
            if buffers:
                _coalesced(buffers, lambda flat: dist.broadcast(flat, 0))
        return self.module(x)

    def backward(self, dy, input_grad: bool = True):
        if self._world == 1 or not self.require_backward_grad_sync or not self._params:
            return self.module.backward(dy, input_grad=input_grad)
        reduction = _Reduction(self)
        for p in self._params:
            p.on_grad = reduction.on_grad
        try:
            dx = self.module.backward(dy, input_grad=input_grad)
        finally:
            for p in self._params:
                p.on_grad = None
        reduction.finish()
        if not self._order_learned:
            self._learn_order(reduction.arrival_order)
        return dx

    def _learn_order(self, arrived: list[int]) -> None:
        """After the first backward, bucket the parameters in the order their gradients arrived.

        Rank 0's order is broadcast so that every rank builds the same buckets.
        """
        self._order_learned = True
        seen = set(arrived)
        rest = [i for i in reversed(range(len(self._params))) if i not in seen]
        order = np.array(arrived + rest, dtype=np.int64)
        dist.broadcast(order, 0)
        if order.tolist() != list(reversed(range(len(self._params)))):
            self._rebucket(order.tolist())

    @contextlib.contextmanager
    def no_sync(self):
        """Inside this context backward accumulates gradients locally, without communication;
        the first backward after it averages the accumulated gradients (gradient accumulation)."""
        previous = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = previous

    def output_shape(self, input_shape):
        return self.module.output_shape(input_shape)

    def onnx_export(self, ctx, x, prefix):
        return ctx.export(self.module, x, ctx.join(prefix, "module"))  # the wrapped network's inference graph

    def extra_repr(self) -> str:
        return f"world_size={self._world}, buckets={len(self._buckets)}"
