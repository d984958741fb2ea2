"""Tools for checking layers: the numerical gradient check and the naive reference kernels."""
from .gradcheck import GradcheckError, gradcheck

__all__ = ["gradcheck", "GradcheckError"]
