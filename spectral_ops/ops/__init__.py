"""Public fused ops.  Each call dispatches to the active backend (see `use_backend`).

Shapes: V, W, Q are [B, k, d] (k row vectors per sample); S, values are [B, k].
"""
from __future__ import annotations

import contextlib

import torch

from . import reference

_BACKENDS = ("auto", "cpp", "cuda", "triton", "reference")
_active = "auto"


def available_backends() -> list[str]:
    """Backends usable in this process (the compiled ones are added by the kernels issue)."""
    return ["reference"]


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager choosing the kernel backend: "auto", "cpp", "cuda", "triton" or "reference"."""
    global _active
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {name!r}")
    previous, _active = _active, name
    try:
        yield
    finally:
        _active = previous


def orthonormalize(W: torch.Tensor) -> torch.Tensor:
    """[B, k, d] -> [B, k, d] orthonormal rows (Gram-Schmidt order, positive R diagonal)."""
    return reference.orthonormalize(W)


def ritz_step(Q: torch.Tensor, MQ: torch.Tensor, V_prev: torch.Tensor | None = None):
    """Rayleigh-Ritz epilogue; returns (V [B,k,d], lam [B,k], res [B,k], Q_next [B,k,d])."""
    return reference.ritz_step(Q, MQ, V_prev)


def alignment_loss(V: torch.Tensor, S: torch.Tensor, kind: str = "l1", weights: str = "uniform") -> torch.Tensor:
    """[B, k, d], [B, k] -> [B] axis-alignment loss in [0, 1]."""
    return reference.alignment_loss(V, S, kind, weights)
