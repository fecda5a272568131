"""Loads the compiled extension spectral_ops._C and registers its fake and autograd kernels.

The schemas are defined in C++ (csrc/ops.cpp), with the autograd of orthonormalize and
alignment_loss (their backwards are their own ops, orthonormalize_backward and
alignment_loss_backward, dispatched by device like the forwards; registered in C++ because a
Python autograd registration costs about 100 us per call).  This module adds, in Python, the fake
(meta) kernels, so the ops trace under torch.compile and pass opcheck.
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


if LOADED:
    _register()
