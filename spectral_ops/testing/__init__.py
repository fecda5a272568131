"""spectral_ops.testing: generators with known answers, for tests, benchmarks and the application.

Library wing (torch only, like the rest of `spectral_ops` outside `lab`):
- `known_answer`: the known-answer gate's generators, G(z) = f(Rz) with known disentangled axes
  rotated away (`RotatedRenderer`, `GateGenerator`), their oracle penalty and `run_gate`.
"""

from spectral_ops.testing import known_answer

__all__ = ["known_answer"]
