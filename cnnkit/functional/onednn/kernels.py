"""The oneDNN kernels in cnnkit's registry: one :class:`~cnnkit.functional.registry.Kernel` per op.

Imported by :mod:`cnnkit.functional.onednn`; registering loads nothing (the library loads when a
kernel is first asked whether it can run). Every kernel here has priority 100, above the NumPy
kernels (0-10), so ``auto`` takes it wherever it does not decline or defer.
"""
from __future__ import annotations

from ... import backend
from .. import activation, add, conv, linear, norm, pool
from ..registry import Kernel
from . import conv as oconv
from . import eltwise as oelt
from . import linear as olin
from . import norm as onorm
from . import pool as opool

PRIORITY = 100
NAME = "onednn"


def _probe():
    from .library import unavailable_reason

    return unavailable_reason()


def register() -> None:
    backend.register_backend(NAME, _probe)
    conv.CONV2D.register(Kernel(
        NAME, NAME, PRIORITY, oconv.conv2d_forward, oconv.conv2d_backward, oconv.Conv2dOnednnCache,
        decline=oconv.conv2d_decline, memory=oconv.conv2d_memory,
        doc="oneDNN direct convolution (brgconv/jit) on channels-last data"))
    pool.MAX_POOL2D.register(Kernel(
        NAME, NAME, PRIORITY, opool.max_pool2d_forward, opool.max_pool2d_backward, opool.MaxPoolOnednnCache,
        decline=opool.max_pool2d_decline, memory=opool.max_pool2d_memory,
        doc="oneDNN max pooling; its workspace is the switches"))
    pool.AVG_POOL2D.register(Kernel(
        NAME, NAME, PRIORITY, opool.avg_pool2d_forward, opool.avg_pool2d_backward, opool.AvgPoolOnednnCache,
        decline=opool.avg_pool2d_decline, memory=opool.avg_pool2d_memory, doc="oneDNN average pooling"))
    norm.BATCH_NORM.register(Kernel(
        NAME, NAME, PRIORITY, onorm.batch_norm_forward, onorm.batch_norm_backward, onorm.BatchNormOnednnCache,
        decline=onorm.batch_norm_decline, memory=onorm.batch_norm_memory,
        doc="oneDNN batch normalisation; running statistics updated as the reference"))
    norm.LOCAL_RESPONSE_NORM.register(Kernel(
        NAME, NAME, PRIORITY, onorm.local_response_norm_forward, onorm.local_response_norm_backward,
        onorm.LrnOnednnCache, decline=onorm.local_response_norm_decline, memory=onorm.local_response_norm_memory,
        doc="oneDNN LRN across channels (odd sizes)"))
    activation.RELU.register(Kernel(
        NAME, NAME, PRIORITY, oelt.relu_forward, oelt.relu_backward, oelt.ReluOnednnCache,
        decline=oelt.relu_decline, defer=oelt.small_defer, memory=oelt.relu_memory, doc="oneDNN eltwise ReLU"))
    add.ADD.register(Kernel(
        NAME, NAME, PRIORITY, oelt.add_forward, oelt.add_backward, oelt.AddOnednnCache,
        decline=oelt.add_decline, defer=oelt.small_defer, memory=oelt.add_memory,
        doc="oneDNN binary add with a ReLU post-op"))
    linear.LINEAR.register(Kernel(
        NAME, NAME, PRIORITY, olin.linear_forward, olin.linear_backward, olin.LinearOnednnCache,
        decline=olin.linear_decline, defer=olin.linear_defer, memory=olin.linear_memory,
        doc="oneDNN matmul (brgemm), the weight's transpose read as a strided view"))


register()
