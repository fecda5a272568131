"""Public fused ops.  Each call dispatches to the active backend (see `use_backend`).

Shapes: V, W, Q are [B, k, d] (k row vectors per sample, 1 <= k <= d); S, values are [B, k].

Backends (one `Backend` entry each in `_BACKENDS`):
- "cpp": the compiled CPU kernels (spectral_ops._C, built by `pip install --no-build-isolation -e .`),
  in a baseline and an AVX2 + FMA copy chosen at run time (`cpu_isa`, `use_cpu_isa`);
- "cuda": the compiled CUDA kernels (build with FORCE_CUDA=1), k <= MAX_CUDA_K (32);
- "triton": Triton kernels (`pip install triton`), on CUDA tensors, or on CPU tensors when
  TRITON_INTERPRET=1 was set before triton was imported;
- "reference": pure torch (reference.py), always available, differentiable by autograd.
"auto" picks cuda, then triton, then reference for CUDA tensors; cpp, then reference for CPU tensors.

Adding an op, in order: its schema (and C++ autograd) in csrc/ops.cpp; its per-sample maths in
csrc/common/<op>.h; the launchers in csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu; its fake kernel in
`_native.FAKE_KERNELS` (registered for the compiled op, reused by the Triton op); its pure-torch
version in reference.py; its Triton kernel in backends/triton/kernels.py and its triton_op in
backends/triton/ops.py (exported by backends/triton/__init__.py); the checked public wrapper
here, added to `OPS` (every backend's `implementation()` must then provide it); the tests in
tests/test_ops.py (reused by tests/test_ops_triton.py); its name in the OPS list of
.ci/build_cuda.sh.

Adding a backend, in order: its kernels (a module or namespace with one function per name in
`OPS`, taking the public op's positional arguments); one `Backend` entry in `_BACKENDS` below:
its name, `implementation` (imported lazily), `unavailable` (the reason it cannot run on a device,
with how to get it, or None), `auto_devices` (the device types "auto" tries it on, in table
order) and `max_k` if it has a limit; its row in docs/kernels.md's backend table; its tests.
Shared numeric limits (MAX_CUDA_K, the rank tolerances) live in constants.def only; the Python
helpers the backends share (compute dtype, loss kinds, ritz_step's input and output handling) in
common.py, apart from the pure-torch oracle (reference.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from typing import Callable

import torch

from . import _native, common, reference
from ._native import cpu_isa, cpu_isas, use_cpu_isa
from .common import LOSS_KINDS, WEIGHT_KINDS, compute_dtype
from .constants import MAX_CUDA_K

__all__ = [
    "orthonormalize",
    "ritz_step",
    "alignment_loss",
    "use_backend",
    "available_backends",
    "reference",
    "common",
    "cpu_isa",
    "cpu_isas",
    "use_cpu_isa",
    "BACKENDS",
    "LOSS_KINDS",
    "WEIGHT_KINDS",
    "compute_dtype",
    "MAX_CUDA_K",
    "unit_norm_tolerance",
]

OPS = ("orthonormalize", "ritz_step", "alignment_loss")  # what every backend's implementation() provides


@dataclasses.dataclass(frozen=True)
class Backend:
    """One kernel backend: where its ops are, where it runs, and its limits."""

    name: str
    implementation: Callable[[], object]  # -> an object with one attribute per name in OPS
    unavailable: Callable[[torch.device], str | None]  # None if it can run on the device, else why not
    auto_devices: tuple[str, ...]  # device types on which "auto" tries it (in _BACKENDS order)
    max_k: int | None = None  # the largest k it supports, None for any k <= d


def _triton_module():
    from .backends import triton as triton_kernels

    return triton_kernels


def _compiled_ops():
    return torch.ops.spectral_ops  # cpp and cuda: the dispatcher picks the kernel by device


def _cpp_unavailable(device: torch.device) -> str | None:
    if not _native.LOADED:
        return (
            "the compiled extension spectral_ops._C is not available "
            f"({_native.LOAD_ERROR}); build it with `pip install --no-build-isolation -e .`"
        )
    if device.type != "cpu":
        return f"backend 'cpp' runs on CPU tensors, got a {device.type} tensor"
    return None


def _cuda_unavailable(device: torch.device) -> str | None:
    if not _native.has_cuda_kernels():
        return (
            "spectral_ops._C has no CUDA kernels; rebuild with "
            "`FORCE_CUDA=1 pip install --no-build-isolation -e .` (needs nvcc and a CUDA build of torch)"
        )
    if device.type != "cuda":
        return f"backend 'cuda' runs on CUDA tensors, got a {device.type} tensor"
    return None


def _triton_unavailable(device: torch.device) -> str | None:
    triton_kernels = _triton_module()
    if not triton_kernels.AVAILABLE:
        return f"triton is not available ({triton_kernels.UNAVAILABLE_REASON}); `pip install triton`"
    if device.type == "cpu" and not triton_kernels.INTERPRET:
        return (
            "backend 'triton' needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before triton is imported"
        )
    if device.type not in ("cpu", "cuda"):
        return f"backend 'triton' runs on CUDA tensors, got a {device.type} tensor"
    return None


# The backends, in the order "auto" tries them and available_backends lists them.
_BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("cpp", _compiled_ops, _cpp_unavailable, auto_devices=("cpu",)),
        Backend("cuda", _compiled_ops, _cuda_unavailable, auto_devices=("cuda",), max_k=MAX_CUDA_K),
        Backend("triton", _triton_module, _triton_unavailable, auto_devices=("cuda",)),
        Backend("reference", lambda: reference, lambda device: None, auto_devices=("cpu", "cuda")),
    )
}
BACKENDS = ("auto",) + tuple(_BACKENDS)
_state = threading.local()


def _active() -> str:
    return getattr(_state, "backend", "auto")


def _backend(name: str) -> Backend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}") from None


def _backend_usable(name: str, device: torch.device) -> str | None:
    """None if `name` can run on `device`, else the reason (with how to get it)."""
    return _backend(name).unavailable(device)


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Backends usable in this process, for `device` ("cpu", "cuda") or for any device if None."""
    devices = (
        [torch.device(device)]
        if device is not None
        else [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    )
    return [name for name, backend in _BACKENDS.items() if any(backend.unavailable(dev) is None for dev in devices)]


@contextlib.contextmanager
def use_backend(name: str, *, cpu_isa: str | None = None):
    """Context manager choosing the kernel backend: "auto", "cpp", "cuda", "triton" or "reference".

    An explicit backend that cannot run is reported (RuntimeError, saying how to get it) at the
    first op call, where the tensors' device is known.  The choice is per thread.
    cpu_isa: also run the "cpp" kernels with this instruction set (see `use_cpu_isa`).
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    previous = _active()
    _state.backend = name
    try:
        if cpu_isa is None:
            yield
        else:
            with use_cpu_isa(cpu_isa):
                yield
    finally:
        _state.backend = previous


def _resolve(device: torch.device, k: int) -> str:
    """The name of the backend that runs an op on `device` with k vectors per sample."""
    name = _active()
    if name == "auto":
        device_type = "cuda" if device.type == "cuda" else "cpu"
        for backend in _BACKENDS.values():
            if (
                device_type in backend.auto_devices
                and (backend.max_k is None or k <= backend.max_k)
                and backend.unavailable(device) is None
            ):
                return backend.name
        return "reference"
    backend = _backend(name)
    reason = backend.unavailable(device)
    if reason is not None:
        raise RuntimeError(f"spectral_ops backend {name!r} is unavailable: {reason}")
    if backend.max_k is not None and k > backend.max_k:
        raise ValueError(
            f"the {name} backend supports k <= {backend.max_k}, got k={k}; use backend 'triton', 'reference' or 'auto'"
        )
    return name


def _implementation(device: torch.device, k: int):
    """The active backend's ops for `device` and k (see `_resolve`)."""
    return _BACKENDS[_resolve(device, k)].implementation()


def _check_has_values(t: torch.Tensor, name: str) -> None:
    """The ops read their inputs' values (rank rules, finiteness): a meta tensor has none."""
    if t.device.type == "meta":
        raise ValueError(f"{name} is on the meta device: spectral_ops needs its values")


def _check_rows(t, name: str) -> tuple[int, int, int]:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    _check_has_values(t, name)
    if t.dim() != 3:
        raise ValueError(f"{name} must be 3-D [B, k, d], got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    B, k, d = t.shape
    if not 1 <= k <= d:
        raise ValueError(f"{name} must have 1 <= k <= d, got k={k}, d={d}")
    return B, k, d


def _check_like(t, name: str, like: torch.Tensor, like_name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    _check_has_values(t, name)
    if t.shape != like.shape:
        raise ValueError(f"{name} must have the shape of {like_name} {tuple(like.shape)}, got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"{name} must be on {like.device}, got {t.device}")


def unit_norm_tolerance(dtype: torch.dtype) -> float:
    """Largest | ||v|| - 1 | alignment_loss accepts for a row of V: 1e-3, or 4 eps for half dtypes."""
    return max(1e-3, 4 * torch.finfo(dtype).eps)


def _check_alignment_values(V: torch.Tensor, S: torch.Tensor) -> None:
    """ValueError naming the argument unless S is finite and >= 0 and V's rows are finite unit vectors.

    Cheap: the row norms of V, the min and max of S and of those norms (NaN propagates through
    both), and one read-back of four numbers, which on CUDA tensors synchronizes the stream once
    per call.  Skipped while torch.compile traces (a data-dependent raise would break the graph).
    """
    if V.numel() == 0 or torch.compiler.is_compiling():
        return
    with torch.no_grad():
        ct = compute_dtype(V.dtype)
        norms = torch.linalg.vector_norm(V, dim=-1, dtype=ct)
        s_min, s_max = torch.aminmax(S)
        n_min, n_max = torch.aminmax(norms)
        s_min, s_max, n_min, n_max = torch.stack([s_min.to(ct), s_max.to(ct), n_min, n_max]).tolist()
        if not (s_min >= 0 and s_max < math.inf):
            bad = ~(torch.isfinite(S) & (S >= 0))
            b, i = bad.nonzero()[0].tolist()
            raise ValueError(f"S must be finite and >= 0 (singular values), got S[{b}, {i}] = {S[b, i].item()}")
        tol = unit_norm_tolerance(V.dtype)
        if not (abs(n_min - 1) <= tol and abs(n_max - 1) <= tol):
            finite = torch.isfinite(V).flatten(1).all(1)
            if not bool(finite.all()):
                rows = (~finite).nonzero().flatten().tolist()
                raise ValueError(f"V must be finite, got NaN or Inf in samples {rows[:10]}")
            b, i = ((norms - 1).abs() > tol).nonzero()[0].tolist()
            raise ValueError(
                f"V must have unit-norm rows (| ||v|| - 1 | <= {tol:g} for {V.dtype}), got "
                f"||V[{b}, {i}]|| = {norms[b, i].item():.6g}"
            )


def orthonormalize(W: torch.Tensor) -> torch.Tensor:
    """[B, k, d] -> [B, k, d] orthonormal rows (Gram-Schmidt order, positive R diagonal).

    Dependent or zero rows are replaced by the lowest coordinate axis far from the span of the
    previous rows.  Differentiable (the gradient is zero for replaced rows).  Scale-invariant:
    orthonormalize(c W) == orthonormalize(W) for any c > 0, and the rank rule is relative to each
    row's scale (only all-zero rows count as zero).  A sample with a NaN or Inf entry gives an
    all-NaN Q[b] and a zero gradient; the other samples are unaffected.
    """
    _, k, _ = _check_rows(W, "W")
    return _implementation(W.device, k).orthonormalize(W)


def ritz_step(Q: torch.Tensor, MQ: torch.Tensor, V_prev: torch.Tensor | None = None):
    """Rayleigh-Ritz epilogue; returns (V [B,k,d], lam [B,k], res [B,k], Q_next [B,k,d]).

    Q: [B, k, d] orthonormal rows; MQ = M Q; V_prev: optional [B, k, d] for sign continuity
    (a vector whose v . v_prev is NaN takes the sign rule without V_prev).  See reference.ritz_step.
    Not differentiable (used without a graph).
    Scale: ritz_step(Q, c MQ) gives c lam and the same V, res and Q_next for c > 0, as long as
    c MQ and c lam are finite.  Non-finite input: a sample whose Q or MQ holds NaN or Inf gets NaN
    in V, lam, res and Q_next (never a small residual, never an error); other samples are
    unaffected.  The same on every backend.
    """
    _, k, _ = _check_rows(Q, "Q")
    _check_like(MQ, "MQ", Q, "Q")
    if V_prev is not None:
        _check_like(V_prev, "V_prev", Q, "Q")
    return _implementation(Q.device, k).ritz_step(Q, MQ, V_prev)


def alignment_loss(V: torch.Tensor, S: torch.Tensor, kind: str = "l1", weights: str = "uniform") -> torch.Tensor:
    """[B, k, d], [B, k] -> [B] axis-alignment loss in [0, 1], differentiable wrt V and S.

    kind: "l1" | "assigned" | "offdiag"; weights: "uniform" | "singular" (see reference.py).
    Raises ValueError for S with NaN, Inf or negative entries, and for V with NaN or Inf or rows
    off the unit sphere (| ||v|| - 1 | > unit_norm_tolerance(V.dtype)); see _check_alignment_values.
    """
    B, k, _ = _check_rows(V, "V")
    if not isinstance(S, torch.Tensor):
        raise TypeError(f"S must be a torch.Tensor, got {type(S).__name__}")
    _check_has_values(S, "S")
    if tuple(S.shape) != (B, k):
        raise ValueError(f"S must be [B, k] = [{B}, {k}], got shape {tuple(S.shape)}")
    if not S.is_floating_point():
        raise TypeError(f"S must be a floating-point tensor, got {S.dtype}")
    if S.device != V.device:
        raise ValueError(f"S must be on {V.device}, got {S.device}")
    if kind not in LOSS_KINDS:
        raise ValueError(f"kind must be one of {LOSS_KINDS}, got {kind!r}")
    if weights not in WEIGHT_KINDS:
        raise ValueError(f"weights must be one of {WEIGHT_KINDS}, got {weights!r}")
    _check_alignment_values(V, S)
    return _implementation(V.device, k).alignment_loss(V, S, kind, weights)
