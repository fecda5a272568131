"""spectral_ops: matrix-free top-k Jacobian singular vectors and the spectral regularizer."""

from . import baselines
from ._version import __version__
from .config import RegularizerConfig
from .directions import GlobalDirections, global_directions
from .latents import conditioned
from .topk import TopK, jacobian_topk
from .regularizer import SpectralRegularizer, spectral_penalty
from .trajectory import Trajectory, trace_trajectory

__all__ = [
    "TopK",
    "jacobian_topk",
    "spectral_penalty",
    "SpectralRegularizer",
    "baselines",
    "Trajectory",
    "trace_trajectory",
    "conditioned",
    "global_directions",
    "GlobalDirections",
    "RegularizerConfig",
    "__version__",
]
