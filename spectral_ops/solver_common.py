"""What the three top-k solvers (power.py, krylov.py, dense.py) share, below all of them: the
seeded orthonormal start (`_initial_basis`), the scaled products M Q / c^2 (`scaled_product`)
and the raw answer each hands back to `jacobian_topk` (`Solved`), which topk.py turns into a
`TopK` (singular values, finite-difference error, converged flags, warnings).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import ops
from .jacobian import JacobianOperator, name_rows
from .validation import check_init


@dataclass
class Solved:
    """A solver's answer, in the units it ran in.

    V [B, k, d]: orthonormal vectors, sign-aligned; lam [B, k]: eigenvalues of M / c^2 with
    M = J^T J, descending; c [B]: the per-sample scale (the eigenvalues of M are lam * c^2);
    res [B, k]: residuals ||M v - lam v|| / lam_1 against the solver's operator; iterations:
    generator passes (0 for dense); settled [B] bool or None: False where the pairs were not
    checked as the top k (krylov, and power from a warm start), None where no check applies."""

    V: torch.Tensor
    lam: torch.Tensor
    c: torch.Tensor
    res: torch.Tensor
    iterations: int
    settled: torch.Tensor | None = None


def _initial_basis(init, B: int, k: int, d: int, dtype, device, seed) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Orthonormal starting basis [B, k, d], and the previous V used for sign continuity."""
    if init is None:
        gen = torch.Generator(device="cpu").manual_seed(0 if seed is None else int(seed))
        W = torch.randn(B, k, d, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
        return ops.orthonormalize(W), None
    init = check_init(init, B, k, d).detach().to(device=device, dtype=dtype)
    return ops.orthonormalize(init), init


def scaled_product(
    op: JacobianOperator, JQ: torch.Tensor, cdtype, c: torch.Tensor | None = None, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(M Q / c^2 [B, k, d], c [B]) with c = max |J Q| per sample (unless given): M Q in units
    that neither overflow nor underflow for any scale of G (the Gram of J^T J squares it).
    Raises naming the rows of z where the products are not finite (`rows`: the rows of z that
    op's samples are, when it was built on a subset)."""
    if c is None:  # an infinite c makes MQ non-finite: caught below
        c = ops.common.max_abs_scale(JQ, (1, 2), cdtype)[:, 0, 0]
    MQ = op.vjp(JQ.detach() / c.to(JQ.dtype)[:, None, None]).detach().to(cdtype) / c[:, None, None]
    # one host read-back per product (the rows must be named before the solver uses them)
    name_rows(
        ~torch.isfinite(MQ).flatten(1).all(1),
        "J(z) v or J(z)^T J(z) v is not finite (G's derivative is infinite or NaN)",
        rows,
    )
    return MQ, c
