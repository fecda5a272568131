"""Measurement tools: disentanglement (MIG, DCI), per-dimension activeness, a factor predictor
for generated images, and a Frechet-distance sample-quality statistic.

MIG and DCI use scikit-learn (the `eval` extra), imported only when they are called.
"""
from .disentanglement import activeness, activeness_summary, dci, discretize, frechet_distance, mig
from .predictor import FactorPredictor, PredictorConfig, default_cache_dir, fit_predictor, load_or_fit_predictor

__all__ = [
    "mig", "dci", "discretize", "activeness", "activeness_summary", "frechet_distance",
    "FactorPredictor", "PredictorConfig", "default_cache_dir", "fit_predictor", "load_or_fit_predictor",
]

# Trajectory metrics (trajectory_purity) are exported below.
from .trajectory import trajectory_purity  # noqa: E402,F401
