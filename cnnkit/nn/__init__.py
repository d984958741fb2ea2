"""Layers, containers and losses with PyTorch's names and explicit forward/backward passes.

Each module lists what it exports in its ``__all__``, so a new layer is added in its own file
(its kernel in ``cnnkit.functional``, its tests) without an edit here.
"""
import sys as _sys

from . import init
from .activation import *  # noqa: F401,F403
from .containers import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .flatten import *  # noqa: F401,F403
from .fuse import *  # noqa: F401,F403
from .graph import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .module import *  # noqa: F401,F403
from .normalization import *  # noqa: F401,F403
from .pooling import *  # noqa: F401,F403
from .sync_batchnorm import *  # noqa: F401,F403
from . import parallel  # cnnkit.nn.parallel.DistributedDataParallel

_MODULES = ("module", "containers", "graph", "fuse", "conv", "linear", "flatten", "dropout", "activation", "loss",
            "normalization", "pooling", "sync_batchnorm")
__all__ = ["init", "parallel"] + [name for m in _MODULES for name in _sys.modules[f"{__name__}.{m}"].__all__]
