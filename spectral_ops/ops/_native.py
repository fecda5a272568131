"""Loads the compiled extension spectral_ops._C and registers its fake and autograd kernels.

The schemas are defined in C++ (csrc/ops.cpp), with the autograd of orthonormalize and
alignment_loss (their backwards are their own ops, orthonormalize_backward and
alignment_loss_backward, dispatched by device like the forwards; alignment_loss_forward returns the
loss with the statistics its backward reuses; registered in C++ because a
Python autograd registration costs about 100 us per call).  This module adds, in Python, the fake
(meta) kernels, so the ops trace under torch.compile and pass opcheck.
"""

from __future__ import annotations

import contextlib

import torch

from .common import compute_dtype

try:
    from .. import _C  # type: ignore[attr-defined]  # compiled extension, no stubs; runs the TORCH_LIBRARY registrations

    LOADED = True
    LOAD_ERROR = ""
except ImportError as error:  # not built, or built against another torch
    LOADED = False
    LOAD_ERROR = str(error)

OP_NAMES = (
    "orthonormalize",
    "orthonormalize_backward",
    "ritz_step",
    "alignment_loss",
    "alignment_loss_forward",
    "alignment_loss_backward",
)


_HAS_CUDA_KERNELS: bool | None = None


def has_cuda_kernels() -> bool:
    """True if the extension was built with FORCE_CUDA=1 (CUDA kernels registered for every op).
    Asked of the dispatcher once and kept: torch.compile cannot trace that query (a graph break
    under fullgraph=True, seen on a GPU), but it reads the kept bool."""
    global _HAS_CUDA_KERNELS
    if _HAS_CUDA_KERNELS is None:
        _HAS_CUDA_KERNELS = LOADED and all(
            torch._C._dispatch_has_kernel_for_dispatch_key(f"spectral_ops::{name}", "CUDA") for name in OP_NAMES
        )
    return _HAS_CUDA_KERNELS


CPU_ISAS = ("baseline", "avx2")


def saved_width(kind: str, k: int, d: int) -> int:
    """Columns of the statistics alignment_loss_forward saves per sample (csrc/common/alignment.h):
    k per-vector losses for l1 and assigned; fro2, diag2, the k x k Gram matrix and diag(A) (d)
    for offdiag."""
    return 2 + k * k + d if kind == "offdiag" else k


def _require_loaded(what: str) -> None:
    if not LOADED:
        raise RuntimeError(
            f"{what} needs the compiled extension spectral_ops._C, which failed to load "
            f"({LOAD_ERROR}); rebuild with `pip install --no-build-isolation -e .`"
        )


def cpu_isa() -> str:
    """The instruction set the "cpp" kernels run with now: "avx2" (AVX2 + FMA) or "baseline".

    The extension holds both copies of every CPU kernel and picks AVX2 when the CPU has it.
    """
    _require_loaded("cpu_isa()")
    return _C.cpu_isa()


def cpu_isas() -> list[str]:
    """The instruction sets the "cpp" kernels can run with on this CPU."""
    _require_loaded("cpu_isas()")
    return ["baseline", "avx2"] if _C.cpu_has_avx2() else ["baseline"]


@contextlib.contextmanager
def use_cpu_isa(name: str):
    """Context manager running the "cpp" kernels with instruction set `name` ("baseline" or "avx2").

    For tests and benchmarks; the setting is process-wide, not per thread.
    """
    if name not in CPU_ISAS:
        raise ValueError(f"cpu isa must be one of {CPU_ISAS}, got {name!r}")
    previous = cpu_isa()
    _C.set_cpu_isa(name)  # ValueError if this CPU lacks it
    try:
        yield
    finally:
        _C.set_cpu_isa(previous)


def _fake_orthonormalize(W):
    return torch.empty_like(W)


def _fake_orthonormalize_backward(grad_Q, Q, W):
    return torch.empty_like(grad_Q)


def _fake_ritz_step(Q, MQ, V_prev):
    B, k, _ = Q.shape
    return torch.empty_like(Q), Q.new_empty(B, k), Q.new_empty(B, k), torch.empty_like(Q)


def _fake_alignment_loss(V, S, kind, weights):
    return V.new_empty(V.shape[0])


def _fake_alignment_loss_forward(V, S, kind, weights):
    B, k, d = V.shape
    return V.new_empty(B), V.new_empty((B, saved_width(kind, k, d)), dtype=compute_dtype(V.dtype))


def _fake_alignment_loss_backward(grad, V, S, *saved_kind_weights):
    # (saved, kind, weights) for the compiled op; (kind, weights) for the Triton op, which
    # recomputes the statistics instead of saving them.
    return torch.empty_like(V), torch.empty_like(S)


# Op name -> its fake (meta) kernel: output shapes and dtypes only, so tracing never launches a
# kernel.  Registered here for the compiled ops, and reused by the Triton ops of the same name
# (backends/triton/ops.py).
FAKE_KERNELS = {
    "orthonormalize": _fake_orthonormalize,
    "orthonormalize_backward": _fake_orthonormalize_backward,
    "ritz_step": _fake_ritz_step,
    "alignment_loss": _fake_alignment_loss,
    "alignment_loss_forward": _fake_alignment_loss_forward,
    "alignment_loss_backward": _fake_alignment_loss_backward,
}
assert set(FAKE_KERNELS) == set(OP_NAMES)


def _register() -> None:
    for name in OP_NAMES:
        torch.library.register_fake(f"spectral_ops::{name}")(FAKE_KERNELS[name])


if LOADED:
    _register()


has_cuda_kernels()  # asked once, at import, outside any torch.compile trace
