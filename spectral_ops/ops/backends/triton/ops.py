"""Triton backend: the fused ops as torch.library.triton_op ops in namespace spectral_ops_triton.

Each op converts its inputs to the compute dtype (float32, or float64), launches one program per
sample and casts back.  ritz_step does the k x k symmetric eigensolve with torch.linalg.eigh
outside the kernel, on the inputs of common.ritz_inputs (non-finite samples zeroed, MQ scaled);
the projection before it and the rotation, signs, residual norms and orthonormalization after it
run in Triton (the norms are made relative to lam_1 here, by common.residual_over_top).
"""

from __future__ import annotations

import torch
import triton
from torch.library import triton_op, wrap_triton

from spectral_ops.ops import _native
from spectral_ops.ops.common import compute_dtype, rank_tolerance, residual_over_top, ritz_inputs, ritz_outputs
from spectral_ops.ops.backends.triton import kernels

_NAMESPACE = "spectral_ops_triton"


def _launch_shape(k: int, d: int):
    block_k = max(2, triton.next_power_of_2(k))
    block_d = max(2, triton.next_power_of_2(d))
    warps = 8 if block_k * block_d >= 8192 else 4
    return block_k, block_d, warps


def _launch(kernel, shape: torch.Size, tensors: tuple[torch.Tensor, ...], *scalars, **constants) -> None:
    """kernel(*tensors, k, d, *scalars, **constants), one program per sample of a [B, k, d] batch
    (none when B = 0), with the block sizes and warps of a k x d sample (`_launch_shape`)."""
    B, k, d = shape
    block_k, block_d, warps = _launch_shape(k, d)
    if B:
        launch = wrap_triton(kernel)[(B,)]
        launch(*tensors, k, d, *scalars, **constants, BLOCK_K=block_k, BLOCK_D=block_d, num_warps=warps)


@triton_op(f"{_NAMESPACE}::orthonormalize", mutates_args=())
def _orthonormalize(W: torch.Tensor) -> torch.Tensor:
    ct = compute_dtype(W.dtype)
    Wc = W.to(ct).contiguous()
    Q = torch.empty_like(Wc)
    _launch(kernels.orthonormalize_kernel, Wc.shape, (Wc, Q), rank_tolerance(ct))
    return Q.to(W.dtype)


@triton_op(f"{_NAMESPACE}::orthonormalize_backward", mutates_args=())
def _orthonormalize_backward(grad_Q: torch.Tensor, Q: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    ct = compute_dtype(W.dtype)
    G, Qc, Wc = (t.to(ct).contiguous() for t in (grad_Q, Q, W))
    grad_W = torch.empty_like(Wc)
    _launch(kernels.orthonormalize_backward_kernel, Wc.shape, (G, Qc, Wc, grad_W), rank_tolerance(ct))
    return grad_W.to(grad_Q.dtype)


@triton_op(f"{_NAMESPACE}::ritz_step", mutates_args=())
def _ritz_step(
    Q: torch.Tensor, MQ: torch.Tensor, V_prev: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    ct = compute_dtype(Q.dtype)
    # Non-finite samples zeroed (their outputs become NaN), MQ divided by max |MQ[b]| (values
    # scaled back after): the same inputs as the reference (common.ritz_inputs).
    finite, Qc, MQc, scale = ritz_inputs(Q, MQ)
    Qc, MQc = Qc.contiguous(), MQc.contiguous()
    H = Qc @ MQc.transpose(-1, -2)
    evals, U = torch.linalg.eigh(0.5 * (H + H.transpose(-1, -2)))
    evals, U = evals.flip(-1).contiguous(), U.flip(-1).contiguous()
    prev = V_prev.to(ct).contiguous() if V_prev is not None else Qc  # Qc: an unused placeholder
    V, Q_next = torch.empty_like(Qc), torch.empty_like(Qc)
    res = Qc.new_empty(Qc.shape[:2])
    tensors = (Qc, MQc, U, evals, prev, V, res, Q_next)
    _launch(kernels.ritz_rotate_kernel, Qc.shape, tensors, rank_tolerance(ct), HAS_PREV=V_prev is not None)
    return ritz_outputs(finite, scale, V, evals, residual_over_top(res, evals), Q_next, Q.dtype)


def _loss_codes(kind: str, weights: str) -> dict[str, int]:
    """The alignment kernels' compile-time codes of the loss kind and the weights."""
    return dict(KIND=kernels.LOSS_CODES[kind], WEIGHTS=kernels.WEIGHT_CODES[weights])


@triton_op(f"{_NAMESPACE}::alignment_loss", mutates_args=())
def _alignment_loss(V: torch.Tensor, S: torch.Tensor, kind: str, weights: str) -> torch.Tensor:
    ct = compute_dtype(V.dtype)
    Vc, Sc = V.to(ct).contiguous(), S.to(ct).contiguous()
    loss = Vc.new_empty(Vc.shape[0])
    _launch(kernels.alignment_loss_kernel, Vc.shape, (Vc, Sc, loss), **_loss_codes(kind, weights))
    return loss.to(V.dtype)


@triton_op(f"{_NAMESPACE}::alignment_loss_backward", mutates_args=())
def _alignment_loss_backward(
    grad: torch.Tensor, V: torch.Tensor, S: torch.Tensor, kind: str, weights: str
) -> tuple[torch.Tensor, torch.Tensor]:
    ct = compute_dtype(V.dtype)
    g, Vc, Sc = grad.to(ct).contiguous(), V.to(ct).contiguous(), S.to(ct).contiguous()
    grad_V, grad_S = torch.empty_like(Vc), torch.empty_like(Sc)
    tensors = (g, Vc, Sc, grad_V, grad_S)
    _launch(kernels.alignment_loss_backward_kernel, Vc.shape, tensors, **_loss_codes(kind, weights))
    return grad_V.to(V.dtype), grad_S.to(S.dtype)


def _orthonormalize_setup(ctx, inputs, output):
    ctx.save_for_backward(output, inputs[0])


def _orthonormalize_grad(ctx, grad_Q):
    Q, W = ctx.saved_tensors
    return _orthonormalize_backward(grad_Q, Q, W)


def _alignment_setup(ctx, inputs, output):
    V, S, kind, weights = inputs
    ctx.kind, ctx.weights = kind, weights
    ctx.save_for_backward(V, S)


def _alignment_grad(ctx, grad):
    V, S = ctx.saved_tensors
    grad_V, grad_S = _alignment_loss_backward(grad, V, S, ctx.kind, ctx.weights)
    return grad_V, grad_S, None, None


# Explicit fake kernels, the compiled ops' own (_native.FAKE_KERNELS): shapes only, so tracing
# never launches a kernel (the interpreter could not run one on fake tensors).
for _op, _name in (
    (_orthonormalize, "orthonormalize"),
    (_orthonormalize_backward, "orthonormalize_backward"),
    (_ritz_step, "ritz_step"),
    (_alignment_loss, "alignment_loss"),
    (_alignment_loss_backward, "alignment_loss_backward"),
):
    _op.register_fake(_native.FAKE_KERNELS[_name])
del _op, _name

_orthonormalize.register_autograd(_orthonormalize_grad, setup_context=_orthonormalize_setup)
_alignment_loss.register_autograd(_alignment_grad, setup_context=_alignment_setup)

orthonormalize = _orthonormalize
alignment_loss = _alignment_loss


def ritz_step(Q: torch.Tensor, MQ: torch.Tensor, V_prev: torch.Tensor | None = None):
    """Not differentiable (like the compiled backends): the outputs never require grad."""
    return _ritz_step(Q.detach(), MQ.detach(), None if V_prev is None else V_prev.detach())
