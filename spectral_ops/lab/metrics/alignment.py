"""Axis alignment of the generator's leading right-singular vectors: what the spectral
regularizer targets, measured directly.

For samples z_b, the top-k right-singular vectors v_1..v_k of J(z_b) = dG/dz (unit vectors in
R^d). Index i is on a coordinate axis when max_j v_ij^2 = 1; a uniformly random direction in R^d
scores about 2 ln(d) / d for large d (`chance_alignment(d)` gives the exact expectation by Monte
Carlo). The singular-value ratios sigma_{i+1} / sigma_i show a spectrum collapse (ratios near
0: only the first direction moves the output).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import Tensor

from spectral_ops.topk import jacobian_topk
from spectral_ops.validation import check_int

__all__ = ["axis_alignment", "chance_alignment"]


@functools.lru_cache(maxsize=64)
def chance_alignment(d: int, *, samples: int = 200_000, seed: int = 0) -> float:
    """E[max_j v_j^2] for v uniform on the unit sphere of R^d (Monte Carlo, seeded; error ~1e-3)."""
    check_int("d", d, 1)
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(samples, d, generator=g, dtype=torch.float64)
    v2 = v.pow(2)
    return float((v2.max(1).values / v2.sum(1)).mean())


def axis_alignment(
    G: Callable[[Tensor], Tensor], z: Tensor, k: int, *, method: str = "dense", iters: int = 200, tol: float = 1e-6
) -> dict:
    """How well the top-k right-singular vectors of dG/dz lie on coordinate axes.

    Args:
        G: generator, (N, d) -> (N, ...), no coupling between rows.
        z: (B, d) latent samples (B >= 1).
        k: number of leading singular vectors, 1 <= k <= d.
        method: "dense" (exact: full Jacobian + eigendecomposition; default) or "power" (run
            to `iters` iterations / `tol`, so the vectors are converged).

    Returns:
        {"per_index": [k floats], mean over samples of max_j v_ij^2 (1 = on an axis);
         "mean": their mean; "axis": [k ints], the axis argmax_j v_ij^2 that index i picks most
         often; "axis_share": [k floats], how often it picks that axis; "distinct_axes": bool;
         "sigma_ratios": [k-1 floats], mean over samples of sigma_{i+1} / sigma_i (0 where
         sigma_i = 0); "sigma": [k floats], mean singular values; "chance": E max_j v_j^2 for a
         random direction in R^d; "k", "d", "samples": ints}.
    """
    if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[0] < 1:
        raise ValueError(f"z must be a 2-D tensor (B, d) with B >= 1, got {getattr(z, 'shape', type(z))}")
    d = z.shape[1]
    check_int("k", k)
    if not 1 <= k <= d:
        raise ValueError(f"k must be an int with 1 <= k <= d={d}, got {k!r}")
    if method not in ("dense", "power"):
        raise ValueError(f"method must be 'dense' or 'power', got {method!r}")
    top = jacobian_topk(G, z, k, method=method, iters=iters, tol=tol)
    V = top.vectors.detach().double().cpu()  # (B, k, d)
    S = top.values.detach().double().cpu()  # (B, k)
    sq = V.pow(2)
    best, arg = sq.max(dim=2)  # (B, k)
    axes, shares = [], []
    for i in range(k):
        counts = torch.bincount(arg[:, i], minlength=d)
        axes.append(int(counts.argmax()))
        shares.append(float(counts.max()) / V.shape[0])
    if k > 1:
        prev, nxt = S[:, :-1], S[:, 1:]
        ratios = torch.where(prev > 0, nxt / prev.clamp_min(1e-300), torch.zeros_like(prev)).mean(0)
        ratios = [float(r) for r in ratios]
    else:
        ratios = []
    per = [float(v) for v in best.mean(0)]
    return {
        "per_index": per,
        "mean": float(sum(per) / k),
        "axis": axes,
        "axis_share": shares,
        "distinct_axes": len(set(axes)) == k,
        "sigma_ratios": ratios,
        "sigma": [float(v) for v in S.mean(0)],
        "chance": chance_alignment(d),
        "k": k,
        "d": d,
        "samples": int(V.shape[0]),
    }
