"""Pure array kernels without state. Each ``*_forward`` returns ``(y, cache)`` and the matching
``*_backward(dy, cache, ...)`` returns the gradients."""
