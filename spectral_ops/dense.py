"""The exact dense method of `jacobian_topk`: the full Jacobian by chunked JVPs, then eigh of
J^T J."""

from __future__ import annotations

import torch

from . import ops
from .latents import select_rows
from .jacobian import JacobianOperator, name_rows
from .solver_common import Solved, _initial_basis
from .validation import check_int


def _dense_chunk(B: int, d: int, m: int, itemsize: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return min(check_int("chunk_size", chunk_size, 1), d)
    budget = 256 * 2**20  # bytes of output tangents per chunk; activations scale alike
    return max(1, min(d, budget // max(1, B * m * itemsize)))


def _dense_topk(G, z, k, mode, chunk_size, init) -> Solved:
    """Exact: J^T [B, d, m] column block by column block with the JVP mode, then eigh of J^T J.
    The residuals ||M v - lam v|| / lam_1 are those of the eigh (on the computed M = J^T J); with
    finite differences the columns are approximate (topk.py adds the differences' estimated
    error)."""
    B, d = z.shape
    cdtype = ops.compute_dtype(z.dtype)
    with torch.no_grad():
        m = select_rows(G, slice(0, 1))(z[:1].detach()).numel()
    chunk = _dense_chunk(B, d, m, z.element_size(), chunk_size)
    eye = torch.eye(d, dtype=cdtype, device=z.device)
    Jt = torch.empty(B, d, m, dtype=cdtype, device=z.device)
    finite = torch.ones(B, dtype=torch.bool, device=z.device)
    for start in range(0, d, chunk):
        stop = min(d, start + chunk)
        op = JacobianOperator(G, z, stop - start, mode)
        Jt[:, start:stop] = op.jvp(eye[start:stop].expand(B, -1, -1)).detach().to(cdtype)
        finite &= torch.isfinite(Jt[:, start:stop]).flatten(1).all(1)
        del op
    name_rows(~finite, "J(z) is not finite (G's derivative is infinite or NaN)")
    c = ops.common.max_abs_scale(Jt, (1, 2))  # per-sample scale: J^T J / c^2 neither overflows nor underflows
    Jt = Jt / c
    c = c[:, 0, 0]
    Mfull = Jt @ Jt.transpose(1, 2)
    del Jt
    lam, U = torch.linalg.eigh(Mfull)
    lam, V = lam.flip(-1)[:, :k], U.flip(-1)[..., :k].transpose(1, 2).contiguous()
    V_prev = None if init is None else _initial_basis(init, B, k, d, cdtype, z.device, None)[1]
    V = V * ops.common.sign_align(V, V_prev)[..., None]
    MV = (Mfull @ V.transpose(1, 2)).transpose(1, 2)
    return Solved(V, lam, c, ops.common.relative_residual(MV, V, lam), 0)
