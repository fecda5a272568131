"""spectral_ops: matrix-free top-k Jacobian singular vectors and the spectral regularizer."""
from .power import TopK, jacobian_topk

__all__ = ["TopK", "jacobian_topk"]
__version__ = "0.1.0"
