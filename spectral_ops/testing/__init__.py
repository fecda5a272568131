"""spectral_ops.testing: generators with known answers, for tests, benchmarks and the application.

Library wing (torch only, like the rest of `spectral_ops` outside `lab`):
- `known_answer`: the known-answer gate's generators, G(z) = f(Rz) with known disentangled axes
  rotated away (`RotatedRenderer`, `GateGenerator`), their oracle penalty and `run_gate`;
- `families`: small generator families as test subjects (MLPs, an untrained DCGAN, a plain
  function, a style-based and a 4-D-latent BatchNorm generator), latent scalings that give J^T J a
  spectral gap, and the explicit-Jacobian oracles (`explicit_jacobian`, `oracle_svd`).
"""

from spectral_ops.testing import families, known_answer

__all__ = ["families", "known_answer"]
