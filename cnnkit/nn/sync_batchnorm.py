"""``SyncBatchNorm``: batch normalisation with the statistics of the global batch over all ranks.

Under DistributedDataParallel each rank sees ``B / N`` samples; a plain BatchNorm would normalise
with the mean and variance of that shard (noisier statistics, and a different model from one
process training on ``B``). SyncBatchNorm sums the per-channel statistics over the ranks, so its
output and gradients are those of one BatchNorm over the whole batch:

* forward: one allreduce of the per-channel sums and the sample count gives the global mean, a
  second one of the centred sums of squares the global (biased) variance (two passes, as the
  single-process kernel, rather than sums of squares that cancel badly);
* backward: the closed form ``dx = weight * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat))``
  needs two per-channel means over the global batch: one allreduce of ``sum(dy)`` and
  ``sum(dy * xc)``. ``dweight`` and ``dbias`` stay the rank's own sums; DDP averages them like
  every other gradient.

Each rank's ``dy`` is the gradient of its own mean loss, ``N`` times its share of the global
mean loss; ``dx`` is linear in ``dy``, so the factor ``N`` rides along to the parameter
gradients below and DDP's division by ``N`` removes it (as in PyTorch).

The kernels take the reduction as an argument (``all_reduce(array)``, in place, summing over the
ranks), so the same code runs with the identity in one process: that is what the tests check
against the single-process kernel, PyTorch and a numerical gradient.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import distributed as dist
from ..functional.norm import _as_ncl, _channel_dot, _channel_sum, update_running_stats
from .normalization import BatchNorm2d, _BatchNorm

__all__ = ["SyncBatchNorm"]  # what cnnkit.nn exports from here


def _sum_over_ranks(array) -> None:
    dist.all_reduce(array, op="sum")


class SyncCache(NamedTuple):
    centered: np.ndarray   # (N, C, L): x - global mean
    inv_std: np.ndarray    # (C,)
    weight: np.ndarray | None
    count: float           # values per channel in the global batch
    shape: tuple


def sync_batch_norm_forward(x, weight, bias, running_mean, running_var, momentum, eps, all_reduce):
    """Training-mode batch norm over the global batch; ``all_reduce(a)`` sums ``a`` over the ranks in place.

    Updates ``running_mean``/``running_var`` (when given) as PyTorch does, with the unbiased
    global variance. Returns ``(y, cache)``.

    Shape:
        x: (N, C, *) -> y: same; weight, bias, running_mean, running_var: (C,)
        statistics over every axis but 1 and over all ranks: m = sum over ranks of N * prod(x.shape[2:])
    """
    x3 = _as_ncl(x)
    channels = x3.shape[1]
    stats = np.empty(channels + 1, dtype=np.float64)
    stats[:channels] = _channel_sum(np, x3)
    stats[channels] = x3.shape[0] * x3.shape[2]
    all_reduce(stats)
    count = float(stats[channels])
    if count < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)} "
                         f"and {int(count)} value(s) per channel over all ranks")
    mean = stats[:channels] / count
    centered = x3 - mean.astype(x.dtype)[:, None]
    squares = _channel_dot(np, centered, centered).astype(np.float64)
    all_reduce(squares)
    var = squares / count  # biased: it normalises this batch
    update_running_stats(running_mean, running_var, mean, var, count, momentum)
    inv_std = (1 / np.sqrt(var + eps)).astype(x.dtype)
    scale = inv_std if weight is None else weight * inv_std
    y = centered * scale[:, None]
    if bias is not None:
        y += bias[:, None]
    return y.reshape(x.shape), SyncCache(centered, inv_std, weight, count, x.shape)


def sync_batch_norm_backward(dy, cache: SyncCache, all_reduce, need_dx=True, need_dweight=True, need_dbias=True):
    """Return ``(dx, dweight, dbias)`` (``None`` where not asked); ``dweight``/``dbias`` are this
    rank's sums, ``dx`` uses the global means of ``dy`` and ``dy * xhat``.

    Shape:
        dy: same as x -> dx: same as x; dweight, dbias: (C,)
    """
    centered, inv_std, weight, count, shape = cache
    dy3 = dy.reshape(centered.shape)
    channels = centered.shape[1]
    sum_dy = _channel_sum(np, dy3)
    sum_dy_xc = _channel_dot(np, dy3, centered)
    dweight = sum_dy_xc * inv_std if need_dweight else None
    dbias = sum_dy if need_dbias else None
    dx = None
    if need_dx:
        sums = np.concatenate([sum_dy, sum_dy_xc]).astype(np.float64)
        all_reduce(sums)
        mean_dy = (sums[:channels] / count).astype(dy.dtype)
        xc_coef = (inv_std.astype(np.float64) ** 2 * sums[channels:] / count).astype(dy.dtype)
        scale = inv_std if weight is None else weight * inv_std
        dx = dy3 - mean_dy[:, None]
        dx -= centered * xc_coef[:, None]  # xhat * mean(dy * xhat) = xc * inv_std^2 * mean(dy * xc)
        dx *= scale[:, None]
        dx = dx.reshape(shape)
    return dx, dweight, dbias


class SyncBatchNorm(BatchNorm2d):
    """Batch normalisation whose training-mode statistics span the batches of all ranks.

    Same arguments, parameters, buffers and state-dict keys as ``BatchNorm2d`` (so checkpoints
    load into the plain model); accepts ``(N, C)``, ``(N, C, L)`` and ``(N, C, H, W)`` inputs
    (PyTorch's ``SyncBatchNorm`` also takes 5-D ones). In eval mode, and in a world of one process, it *is* a
    BatchNorm. Every rank must run the same layers in the same order (each training forward and
    each backward with an input gradient is a collective). ``convert_sync_batchnorm(model)``
    replaces the BatchNorms of a model.

    Shape:
        input (N, C, *) -> output: same
    """

    _accepted_ndims = (2, 3, 4)
    _layouts = "(N, C), (N, C, L) or (N, C, H, W)"

    def forward(self, x):
        if not self.training or dist.world_size_or_one() == 1:
            return super().forward(x)
        self._check(x)
        factor = 0.0
        if self.track_running_stats:
            # cumulative average for momentum=None: the count is known before the statistics
            factor = 1.0 / (int(self.num_batches_tracked) + 1) if self.momentum is None else self.momentum
        y, cache = sync_batch_norm_forward(
            x, None if self.weight is None else self.weight.data, None if self.bias is None else self.bias.data,
            self.running_mean, self.running_var, factor, self.eps, _sum_over_ranks,
        )
        if self.track_running_stats:
            self.num_batches_tracked += 1
        self._save(cache)
        return y

    def backward(self, dy, input_grad: bool = True):
        if not isinstance(self._cache, SyncCache):
            return super().backward(dy, input_grad)
        cache = self._restore()
        dx, dweight, dbias = sync_batch_norm_backward(
            dy, cache, _sum_over_ranks, need_dx=input_grad,
            need_dweight=self._wants_grad("weight"), need_dbias=self._wants_grad("bias"),
        )
        self._accumulate_grads(weight=dweight, bias=dbias)
        return dx

    @classmethod
    def convert_sync_batchnorm(cls, module):
        """Replace every ``BatchNorm1d``/``BatchNorm2d`` in ``module`` by a ``SyncBatchNorm`` that
        shares its parameters and buffers (an optimizer built before keeps working); returns
        ``module`` (or the new layer when ``module`` itself is a BatchNorm), as PyTorch's does."""
        if isinstance(module, _BatchNorm):
            return module if isinstance(module, cls) else cls._from_batchnorm(module)
        for parent in list(module.modules()):
            for name, child in list(vars(parent).items()):
                if isinstance(child, _BatchNorm) and not isinstance(child, cls):
                    setattr(parent, name, cls._from_batchnorm(child))
        return module

    @classmethod
    def _from_batchnorm(cls, bn: _BatchNorm) -> "SyncBatchNorm":
        sync = cls.__new__(cls)
        sync.__dict__.update(vars(bn))  # the same Parameters, buffers, eps, momentum, flags
        sync._buffer_names = list(bn._buffer_names)
        sync._cache = None
        return sync
