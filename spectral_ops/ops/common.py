"""The helpers every backend of the fused ops, and the library around them, share.

The loss and weight kinds (their single definition), the compute dtype and the rank tolerance,
the max-abs scale (`max_abs_scale`), finiteness per sample, the relative residual
||M v - lam v|| / lam_1 (`relative_residual`), ritz_step's input and output handling
(`ritz_inputs`, `ritz_outputs`: the same on the reference and the Triton backend) and the sign
convention (`sign_align`).  reference.py, the pure-torch test oracle, keeps only the ops' maths.
"""

from __future__ import annotations

import torch

from .constants import RANK_TOLERANCE_FLOAT32, RANK_TOLERANCE_FLOAT64

# The alignment_loss variants, defined here only.  A kind's position is its integer code in the
# kernels (csrc/common/alignment.h's LossKind and WeightKind; the Triton LOSS_CODES and WEIGHT_CODES
# are built from these tuples); tests/test_constants.py checks the C++ side against them.
LOSS_KINDS = ("l1", "assigned", "offdiag")
WEIGHT_KINDS = ("uniform", "singular")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the small dense work runs in: float64 stays, everything else becomes float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rank_tolerance(dtype: torch.dtype) -> float:
    """Relative norm below which a Gram-Schmidt residual counts as linearly dependent (constants.def)."""
    return RANK_TOLERANCE_FLOAT64 if dtype == torch.float64 else RANK_TOLERANCE_FLOAT32


def finite_samples(*tensors: torch.Tensor) -> torch.Tensor:
    """[B] bool: True where sample b of every [B, ...] tensor is finite (no NaN, no Inf)."""
    ok = torch.isfinite(tensors[0]).flatten(1).all(1)
    for t in tensors[1:]:
        ok = ok & torch.isfinite(t).flatten(1).all(1)
    return ok


def nan_where(bad: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """t with the samples where bad ([B] bool) is True set to NaN."""
    return torch.where(bad.view(-1, *([1] * (t.dim() - 1))), torch.full_like(t, float("nan")), t)


def max_abs_scale(x: torch.Tensor, dims, dtype: torch.dtype | None = None) -> torch.Tensor:
    """max |x| over dims (kept, detached, in `dtype` if given), 1 where it is not > 0 (zero, or
    NaN): the divisor that brings x to [-1, 1].  Per sample of a [B, ...] tensor: dims 1, 2, ...
    (the one rule of the ops, the solvers' products and the dense method's Jacobian)."""
    top = x.detach().abs().amax(dim=dims, keepdim=True)
    top = top if dtype is None else top.to(dtype)
    return torch.where(top > 0, top, torch.ones_like(top))


def relative_residual(MV: torch.Tensor, V: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """[B, k] ||M v_i - lam_i v_i|| / lam_1 for the pairs V [B, k, d], MV = M V, lam [B, k]
    descending (`residual_over_top`)."""
    return residual_over_top((MV - lam[..., None] * V).norm(dim=-1), lam)


def residual_over_top(norms: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Residual norms ||M v_i - lam_i v_i|| [B, k] relative to lam_1 = lam[:, 0]: 0 where lam_1 is
    not > 0 (M = 0: every vector is exact), never a division by zero.  The one rule of every
    Python residual (the reference, the Triton backend, krylov, the dense method, the finite
    differences' check); the C++ kernels apply the same rule, `relative_residual` in csrc/common/ritz.h."""
    top = lam[:, :1]
    return torch.where(top > 0, norms / top.clamp_min(torch.finfo(norms.dtype).tiny), torch.zeros_like(norms))


def sign_align(V: torch.Tensor, V_prev: torch.Tensor | None) -> torch.Tensor:
    """Per-row signs [B, k] (+1/-1) that apply the sign convention.

    With V_prev: the sign that makes v_i . v_prev_i >= 0.  Without (or where that product is NaN,
    as for a NaN in V_prev): the sign that makes the largest-magnitude component of v_i positive
    (lowest index on ties).
    """
    idx = V.abs().argmax(dim=-1, keepdim=True)
    lead = torch.gather(V, -1, idx).squeeze(-1)
    signs = torch.where(lead < 0, -1.0, 1.0).to(V.dtype)
    if V_prev is not None:
        dots = (V * V_prev.to(V.dtype)).sum(-1)
        signs = torch.where(torch.isnan(dots), signs, torch.where(dots < 0, -1.0, 1.0).to(V.dtype))
    return signs


def ritz_inputs(Q: torch.Tensor, MQ: torch.Tensor):
    """The inputs ritz_step works on (the reference's and the Triton backend's).

    Returns (finite [B] bool, Q, MQ / s, s [B, 1]) in the compute dtype, with s = max |MQ[b]|
    (1 where MQ[b] == 0) and the non-finite samples replaced by zeros (their outputs become NaN).
    """
    ct = compute_dtype(Q.dtype)
    Q, MQ = Q.to(ct), MQ.to(ct)
    finite = finite_samples(Q, MQ)
    keep = finite[:, None, None]
    Q = torch.where(keep, Q, torch.zeros_like(Q))
    MQ = torch.where(keep, MQ, torch.zeros_like(MQ))
    scale = max_abs_scale(MQ, (1, 2))
    return finite, Q, MQ / scale, scale[:, :, 0]


def ritz_outputs(finite: torch.Tensor, scale: torch.Tensor, V, lam, res, Q_next, out_dtype: torch.dtype):
    """ritz_step's outputs from the scaled work: lam times the scale, NaN on non-finite samples."""
    lam = lam * scale
    return tuple(nan_where(~finite, t).to(out_dtype) for t in (V, lam, res, Q_next))
