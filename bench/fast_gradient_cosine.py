"""How close is grad="fast" to the exact gradient at realistic latent sizes?

Run:  python bench/fast_gradient_cosine.py      (from the repository root; prints one line per case)

Float64 tanh MLPs with latent 64 and 128 (untrained), 4 latents, k = 4, converged vectors
(iters=100, tol=1e-12): the cosine and the norm ratio of spectral_penalty's parameter gradient to
autograd through torch.linalg.eigh of the explicit J^T J (tests/test_regularizer.oracle), for
grad="fast" and grad="implicit" (CG to 1e-12), losses offdiag and l1 with uniform weights.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from spectral_ops import spectral_penalty
from test_regularizer import oracle

CASES = [("MLP 64-128-256 tanh", 64), ("MLP 128-128-256 tanh", 128)]


def main() -> None:
    torch.set_num_threads(1)
    for name, d in CASES:
        torch.manual_seed(0)
        G = nn.Sequential(nn.Linear(d, 128), nn.Tanh(), nn.Linear(128, 256)).double()
        z = torch.randn(4, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        params = list(G.parameters())
        for loss in ("offdiag", "l1"):
            _, g_true = oracle(G, z, 4, loss, "uniform")
            row = []
            for grad in ("fast", "implicit"):
                value = spectral_penalty(
                    G, z, k=4, loss=loss, grad=grad, iters=100, tol=1e-12, cg_iters=100, cg_tol=1e-12
                )
                grads = torch.autograd.grad(value, params, allow_unused=True)
                g = torch.cat([(torch.zeros_like(p) if x is None else x).reshape(-1) for x, p in zip(grads, params)])
                cos = float(g @ g_true / (g.norm() * g_true.norm()))
                row.append(f"{grad}: cosine {cos:.4f}, norm ratio {float(g.norm() / g_true.norm()):.3f}")
            print(f"{name}, {loss}: " + "; ".join(row))


if __name__ == "__main__":
    main()
