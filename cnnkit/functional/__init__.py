"""Array kernels: each ``*_forward`` returns ``(y, cache)`` and the matching ``*_backward(dy, cache, ...)``
returns the gradients. A kernel's result depends only on its arguments.

Ops with more than one implementation (convolution, pooling, batch norm, ReLU, linear, LRN, the
residual add) list their kernels in :mod:`.registry`; ``auto`` takes the fastest that accepts a
call. Each fast kernel's docstring names the readable loop in :mod:`cnnkit.testing.reference`
that the tests hold it equal to, and each states its memory rule (:mod:`.memory`) beside its code.

Process-wide resources the kernels share (not state of any computation): the thread pool and
the BLAS thread limits (:mod:`.parallel`), the scratch arena of reusable work buffers
(:mod:`.workspace`), the benchmark-mode choices (:mod:`.registry`) and the profiling marks
(:mod:`.instrument`). The backend setting lives in :mod:`cnnkit.backend`.
"""

from . import onednn  # noqa: E402,F401  (registers the oneDNN kernels; the library loads at first use)
