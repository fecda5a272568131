"""Loads the compiled extension spectral_ops._C and registers its fake and autograd kernels.

The schemas are defined in C++ (csrc/ops.cpp); this module adds, in Python:
- fake (meta) kernels, so the ops trace under torch.compile and pass opcheck;
- autograd for orthonormalize and alignment_loss, whose backwards are their own ops
  (orthonormalize_backward, alignment_loss_backward), dispatched by device like the forwards.
"""
from __future__ import annotations

import torch

try:
    from .. import _C  # noqa: F401  (runs the TORCH_LIBRARY registrations)

    LOADED = True
    LOAD_ERROR = ""
except ImportError as error:  # not built, or built against another torch
    LOADED = False
    LOAD_ERROR = str(error)

OP_NAMES = ("orthonormalize", "orthonormalize_backward", "ritz_step", "alignment_loss", "alignment_loss_backward")


def has_cuda_kernels() -> bool:
    """True if the extension was built with FORCE_CUDA=1 (CUDA kernels registered for every op)."""
    return LOADED and all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"spectral_ops::{name}", "CUDA") for name in OP_NAMES)


def _register() -> None:
    @torch.library.register_fake("spectral_ops::orthonormalize")
    def _(W):
        return torch.empty_like(W)

    @torch.library.register_fake("spectral_ops::orthonormalize_backward")
    def _(grad_Q, Q, W):
        return torch.empty_like(grad_Q)

    @torch.library.register_fake("spectral_ops::ritz_step")
    def _(Q, MQ, V_prev):
        B, k, _ = Q.shape
        return torch.empty_like(Q), Q.new_empty(B, k), Q.new_empty(B, k), torch.empty_like(Q)

    @torch.library.register_fake("spectral_ops::alignment_loss")
    def _(V, S, kind, weights):
        return V.new_empty(V.shape[0])

    @torch.library.register_fake("spectral_ops::alignment_loss_backward")
    def _(grad, V, S, kind, weights):
        return torch.empty_like(V), torch.empty_like(S)

    def orthonormalize_setup(ctx, inputs, output):
        (W,) = inputs
        ctx.save_for_backward(output, W)

    def orthonormalize_grad(ctx, grad_Q):
        Q, W = ctx.saved_tensors
        return torch.ops.spectral_ops.orthonormalize_backward(grad_Q, Q, W)

    torch.library.register_autograd("spectral_ops::orthonormalize", orthonormalize_grad,
                                    setup_context=orthonormalize_setup)

    def alignment_setup(ctx, inputs, output):
        V, S, kind, weights = inputs
        ctx.kind, ctx.weights = kind, weights
        ctx.save_for_backward(V, S)

    def alignment_grad(ctx, grad):
        V, S = ctx.saved_tensors
        grad_V, grad_S = torch.ops.spectral_ops.alignment_loss_backward(grad, V, S, ctx.kind, ctx.weights)
        return grad_V, grad_S, None, None

    torch.library.register_autograd("spectral_ops::alignment_loss", alignment_grad, setup_context=alignment_setup)


if LOADED:
    _register()
