"""Pure array kernels without state. Each ``*_forward`` returns ``(y, cache)`` and the matching
``*_backward(dy, cache, ...)`` returns the gradients."""

from . import onednn  # noqa: E402,F401  (registers the oneDNN kernels; the library loads at first use)
