"""Reference generators that give every disentanglement table its ceiling and its floor.

- The ORACLE maps latent coordinate z_i to factor i of a procedural dataset: u_i = Phi(z_i) (the
  standard normal CDF) is uniform on (0, 1), the level is floor(u_i * levels_i), and the
  dataset's own renderer draws the image. With z ~ N(0, I) its images have exactly the
  dataset's distribution (uniform independent levels), and every factor has its own axis: the
  best any generator can score through the same predictor and metrics (the ceiling).
- The ROTATED oracle is the same map applied to R z, R a fixed random orthogonal d x d matrix
  (`entangling_rotation`: of 64 random draws from the seed, the one whose factor rows are the
  most spread over the latent axes, so that no factor stays close to one axis). R z ~ N(0, I)
  too, so the images have the same distribution, but every factor now depends on every latent
  coordinate: fully entangled (the floor).

Latent dimensions beyond the number of factors are ignored by the oracle (and mixed in by R for
the rotated one). Both are piecewise constant in z (integer levels), so Jacobian-based measures
(axis alignment) mean nothing for them; `piecewise_constant = True` tells evaluators so.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from spectral_ops.lab.data import DATASETS
from spectral_ops.validation import check_int, check_seed

__all__ = ["OracleGenerator", "entangling_rotation", "oracle_generator"]


def entangling_rotation(d: int, rows: int, *, seed: int = 0, candidates: int = 64) -> Tensor:
    """A fixed random orthogonal d x d matrix (float64) that entangles its first `rows` outputs
    with every input: of `candidates` Haar-random draws from `seed`, the one whose first `rows`
    rows have the smallest largest squared entry (no factor left close to one latent axis, which
    a single unlucky draw can do and which would lift the floor)."""
    g = torch.Generator().manual_seed(seed)
    best, best_score = None, float("inf")
    for _ in range(candidates):
        Q, Rr = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        Q = Q * torch.sign(torch.diagonal(Rr))[None, :]  # Haar-distributed
        score = float(Q[:rows].pow(2).max())
        if score < best_score:
            best, best_score = Q, score
    return best


class OracleGenerator(nn.Module):
    """z (N, latent_dim) -> images (N, 1, size, size) in [0, 1], factor i read from z_i (or (R z)_i).

    Attributes: latent_dim, dataset (name), size, rotated (bool), factor_names,
    piecewise_constant (True), and the buffer `rotation` (identity when not rotated)."""

    piecewise_constant = True

    def __init__(self, dataset: str, latent_dim: int, size: int = 32, *, rotated: bool = False, seed: int = 0):
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
        cls = DATASETS[dataset]
        K = len(cls.factor_sizes)
        check_int("latent_dim", latent_dim)
        if latent_dim < K:
            raise ValueError(
                f"latent_dim must be an int >= the number of factors of {dataset!r} ({K}), got {latent_dim!r}"
            )
        if size not in (32, 64):
            raise ValueError(f"size must be 32 or 64, got {size!r}")
        check_seed(seed, allow_none=False)
        self.dataset = dataset
        self.latent_dim = latent_dim
        self.size = size
        self.rotated = bool(rotated)
        self.factor_names = tuple(cls.factor_names)
        self._renderer = cls(1, size=size, seed=0)  # the dataset class's own renderer
        self.register_buffer("levels", torch.tensor(cls.factor_sizes, dtype=torch.float64), persistent=False)
        if rotated:
            Q = entangling_rotation(latent_dim, K, seed=seed)
        else:
            Q = torch.eye(latent_dim, dtype=torch.float64)
        self.register_buffer("rotation", Q)

    def factors(self, z: Tensor) -> Tensor:
        """Integer factor levels (N, K) int64 that the oracle renders for latents z (N, latent_dim)."""
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be a (N, {self.latent_dim}) tensor, got {getattr(z, 'shape', type(z))}")
        w = z.detach().double() @ self.rotation.T
        K = self.levels.shape[0]
        u = 0.5 * (1.0 + torch.erf(w[:, :K] / math.sqrt(2.0)))
        lv = torch.floor(u * self.levels)
        return torch.minimum(lv.clamp_min(0), self.levels - 1).long()

    @torch.no_grad()
    def forward(self, z: Tensor) -> Tensor:
        return self._renderer.render(self.factors(z)).to(device=z.device)

    def extra_repr(self) -> str:
        return f"dataset={self.dataset!r}, latent_dim={self.latent_dim}, size={self.size}, rotated={self.rotated}"


def oracle_generator(
    dataset: str, latent_dim: int, size: int = 32, rotated: bool = False, seed: int = 0
) -> OracleGenerator:
    """The oracle generator z_i -> factor i of `dataset` (see the module docstring); with
    rotated=True, the same oracle applied to R z, R a fixed random orthogonal matrix drawn from
    `seed` (`entangling_rotation`). Returns an nn.Module with a `latent_dim` attribute."""
    return OracleGenerator(dataset, latent_dim, size, rotated=rotated, seed=seed)
