"""Measurement tools: disentanglement (MIG, MIG-sup, DCI over varying factors), per-dimension
activeness, axis alignment of the Jacobian's leading singular vectors, a factor predictor for
generated images, a Frechet-distance sample-quality statistic, and the reference (oracle and
rotated oracle) generators that give every table its ceiling and floor.

MIG and DCI use scikit-learn (the `eval` extra), imported only when they are called.
"""

from spectral_ops.lab.metrics.alignment import axis_alignment, chance_alignment
from spectral_ops.lab.metrics.disentanglement import (
    activeness,
    activeness_summary,
    dci,
    discretize,
    frechet_distance,
    mig,
    mig_sup,
    varying_mask,
)
from spectral_ops.lab.metrics.predictor import (
    FactorPredictor,
    PredictorConfig,
    default_cache_dir,
    fit_predictor,
    load_or_fit_predictor,
)
from spectral_ops.lab.metrics.reference_generators import OracleGenerator, oracle_generator
from spectral_ops.lab.metrics.trajectory import trajectory_purity

__all__ = [
    "mig",
    "mig_sup",
    "dci",
    "varying_mask",
    "discretize",
    "activeness",
    "activeness_summary",
    "frechet_distance",
    "axis_alignment",
    "chance_alignment",
    "OracleGenerator",
    "oracle_generator",
    "FactorPredictor",
    "PredictorConfig",
    "default_cache_dir",
    "fit_predictor",
    "load_or_fit_predictor",
    "trajectory_purity",
]
