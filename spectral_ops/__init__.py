"""spectral_ops: matrix-free top-k Jacobian singular vectors and the spectral regularizer."""
from .power import TopK, jacobian_topk
from .trajectory import Trajectory, trace_trajectory

__all__ = ["TopK", "jacobian_topk", "Trajectory", "trace_trajectory"]
__version__ = "0.1.0"
