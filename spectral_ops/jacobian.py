"""Matrix-free products with the per-sample generator Jacobian J(z) = dG/dz.

`JacobianOperator` folds k vectors per sample into the batch, so that every product is ONE
generator call (or one backward pass) on B*k rows, and keeps a single forward graph for all
products.  Three ways to get J v:

- "double_backward": g(u) = J^T u with create_graph, then J v = d(g . v)/du.  Exact, reuses the
  forward graph, needs only reverse-mode AD.
- "forward": torch.func.jvp (forward-mode AD).  Exact, re-runs the forward on every call.
- "finite_difference": (G(z + eps v) - G(z - eps v)) / (2 eps).  Two graph-free forwards.

J^T u is always one backward pass through the kept forward graph.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Any, Callable, cast, overload

import torch

JVP_MODES = ("auto", "double_backward", "forward", "finite_difference")


@overload
def unwrap(G: torch.nn.Module) -> torch.nn.Module: ...


@overload
def unwrap(G: Callable) -> Callable: ...


@overload
def unwrap(G: object) -> object: ...


def unwrap(G: object) -> object:
    """The module inside DistributedDataParallel / DataParallel wrappers (extra passes use it)."""
    while isinstance(G, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        G = G.module
    return G


def name_rows(bad: torch.Tensor, message: str, rows: torch.Tensor | None = None) -> None:
    """Raise ValueError(message + " in rows [...]") if any entry of the bool vector `bad` is set;
    `rows` [len(bad)]: the rows of z that bad's entries stand for (default: 0, 1, ...)."""
    if bool(bad.any()):
        listed = (bad.nonzero().flatten() if rows is None else rows[bad.cpu()]).tolist()
        shown = ", ".join(map(str, listed[:10])) + (", ..." if len(listed) > 10 else "")
        raise ValueError(f"{message} in rows [{shown}]")


def check_output_rows(y: object) -> torch.Tensor:
    """G's output as a Tensor with a batch dimension, else TypeError / ValueError saying what G
    must return (the rule every entry point and peer uses)."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"G must return a Tensor, got {type(y).__name__}")
    if y.dim() == 0:
        raise ValueError(
            "G must return one output row per latent row (shape [N, ...]), but it returned a "
            "0-d tensor: return G's per-sample outputs, not a reduced scalar"
        )
    return y


_SHAPE_WORDS = ("size", "shape", "dimension")
PER_ROW_HINT = (
    "spectral_ops calls G on other row counts than z's (2-row probes, k vectors per latent folded into "
    "B*k rows): if G takes per-row arguments (class labels c with one row per latent), pass "
    "spectral_ops.conditioned(G, c) instead of closing over them (lambda x: G(x, c))"
)


def raise_per_row_hint(error: RuntimeError, rows: int, B: int) -> None:
    """Re-raise G's shape error on a batch of `rows` latent rows (z has B) as a ValueError that
    says why: spectral_ops calls G on other row counts than z's (2-row probes, k vectors folded
    into B*k rows), which a G closing over per-row tensors cannot follow.  Returns otherwise."""
    message = str(error)
    if rows == B or isinstance(error, torch.OutOfMemoryError) or not any(w in message.lower() for w in _SHAPE_WORDS):
        return
    raise ValueError(
        f"G failed on {rows} rows of latents (z has {B}) with a shape error: "
        f"{message.splitlines()[0][:200]}.  {PER_ROW_HINT}"
    ) from error


class FoldableGenerator(abc.ABC):
    """What `JacobianOperator` asks of a G beyond calling it, the protocol between this module and
    latents.py (whose `FlatGenerator`, what `conditioned` builds, implements it): a G with
    per-row arguments folds them with the latents (`fold_rows`) and hands torch.func transforms
    its module (`functional_view`).  Any other callable is run as it is."""

    @abc.abstractmethod
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """G on flat latents z [N, d]."""

    @abc.abstractmethod
    def fold_rows(self, k: int) -> "FoldableGenerator":
        """The same G for latents folded k times (each row repeated k times in place)."""

    @abc.abstractmethod
    def functional_view(self) -> Callable:
        """This call for torch.func transforms (see `functional_view`)."""


def _flat(y: torch.Tensor, n: int) -> torch.Tensor:
    return y.reshape(n, -1)


def functional_view(G: Callable) -> Callable:
    """G as torch.func transforms can run it: an nn.Module (also inside `conditioned`) through
    functional_call with its buffers cloned inside the call, so a forward that updates a buffer
    in place (a style generator's w_avg in training mode) runs and leaves G's buffers untouched.
    A lambda around a module runs as it is (such an update then makes forward mode unavailable)."""
    if isinstance(G, FoldableGenerator):  # spectral_ops.conditioned(G, ...): its own module inside
        return G.functional_view()
    if not isinstance(G, torch.nn.Module):
        return G
    return module_call(G)


def module_call(G: torch.nn.Module, *args, **kwargs) -> Callable:
    """x -> G(x, *args, **kwargs) through torch.func.functional_call, buffers cloned inside."""
    params, buffers = dict(G.named_parameters()), dict(G.named_buffers())

    def f(x):
        local = {name: b.clone() for name, b in buffers.items()}
        return torch.func.functional_call(G, {**params, **local}, (x, *args), kwargs)

    return f


def supports_forward_ad(G: Callable, z: torch.Tensor) -> bool:
    """Whether torch.func.jvp runs through G (checked on one row)."""
    try:
        with torch.no_grad():
            torch.func.jvp(functional_view(G), (z[:1].detach().clone(),), (torch.zeros_like(z[:1]),))
        return True
    except (RuntimeError, NotImplementedError, TypeError):
        return False


class JacobianOperator:
    """Products with J(z) and M(z) = J^T J for a batch z [B, d], with k vectors folded per sample.

    Vectors are given as [B, k, d] (latent side) or [B, k, m] (output side, m = prod of G's
    output shape per sample).  The forward graph on the folded batch z_rep [B*k, d] is built once
    in the constructor and reused by every product.

    Args:
        G: callable (N, d) -> (N, ...), no coupling across rows.
        z: [B, d] latent codes.
        k: vectors per sample (fold factor).
        mode: a JVP mode other than "auto" (see module docstring).
    Every product takes `create_graph`: True keeps it differentiable w.r.t. G's parameters
    (the regularizer's last products), False (the default) builds no parameter graph.
    """

    _functional: Callable | None  # functional_view(G_rows), built on the first shared-primal product

    def __init__(self, G: Callable, z: torch.Tensor, k: int, mode: str):
        if mode not in JVP_MODES[1:]:
            raise ValueError(f"jvp must be one of {JVP_MODES[1:]} here, got {mode!r}")
        self.G_rows, self.z = G, z.detach()  # one row per sample, for the shared-primal forward mode
        G = G.fold_rows(k) if isinstance(G, FoldableGenerator) else G  # per-row arguments follow the folded rows
        self.G, self.mode, self.k = G, mode, k
        self.B, self.d = z.shape
        self._shared_primal, self._functional = mode == "forward", None
        self.z_rep = z.detach().repeat_interleave(k, dim=0).requires_grad_(True)
        try:  # G gets a copy, not the leaf: a G that writes to its input (x.clamp_) works as G(z) does
            self.y = G(self.z_rep.clone())
        except RuntimeError as e:
            raise_per_row_hint(e, self.z_rep.shape[0], self.B)
            raise
        self.y = check_output_rows(self.y)
        if self.y.shape[0] != self.z_rep.shape[0]:
            raise ValueError(
                f"G changed the batch size: z has {self.B} rows (folded to {self.z_rep.shape[0]}), "
                f"G(z) has {self.y.shape[0]}.  {PER_ROW_HINT}"
            )
        if not self.y.requires_grad:
            raise ValueError("G's output does not depend on z through autograd (did G detach or run under no_grad?)")
        self.m = self.y[0].numel()
        name_rows(
            ~torch.isfinite(self.y.detach().reshape(self.B, -1)).all(dim=1), "G(z) has non-finite values (NaN or Inf)"
        )
        self._u: torch.Tensor | None = None  # dummy cotangent for the double-backward trick, created lazily

    # ---- shapes -------------------------------------------------------------------------------
    def _fold(self, V: torch.Tensor) -> torch.Tensor:
        return V.reshape(self.B * self.k, V.shape[-1]).to(self.y.dtype)

    def _unfold(self, X: torch.Tensor) -> torch.Tensor:
        return X.reshape(self.B, self.k, X.shape[-1])

    # ---- products -----------------------------------------------------------------------------
    def jvp(self, V: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """J v for each of the k vectors: [B, k, d] -> [B, k, m]."""
        v = self._fold(V)
        if self.mode == "double_backward":
            if self._u is None:
                self._u = torch.zeros_like(self.y, requires_grad=True)
                (self._g,) = torch.autograd.grad(self.y, self.z_rep, self._u, create_graph=True)
            (jv,) = torch.autograd.grad(self._g, self._u, v, retain_graph=True, create_graph=create_graph)
        elif self.mode == "forward":
            if self._shared_primal:
                shared = self._shared_primal_jvp(V.to(self.y.dtype))
                if shared is not None:
                    return shared
            with torch.enable_grad():
                # cast: without has_aux, jvp returns a pair (torch's stub also allows a triple)
                _, jv = cast(
                    "tuple[Any, Any]", torch.func.jvp(functional_view(self.G), (self.z_rep.detach().clone(),), (v,))
                )
        else:
            eps = self._fd_step()
            ctx = contextlib.nullcontext() if create_graph else torch.no_grad()
            with ctx:
                z0 = self.z_rep.detach()
                jv = (self.G(z0 + eps * v) - self.G(z0 - eps * v)) / (2 * eps)
        return self._unfold(_flat(jv, self.B * self.k))

    def _shared_primal_jvp(self, V: torch.Tensor) -> torch.Tensor | None:
        """Forward-mode J v with the primal run once per distinct latent: vmap over the k
        tangents of jvp(G, z [B, d]) (the folded batch repeats each latent k times, which for a
        style generator means k identical sets of per-sample weights).  None where vmap cannot
        batch G; the folded product is used from then on."""
        if self._functional is None:
            self._functional = functional_view(self.G_rows)
        f = self._functional
        try:
            with torch.enable_grad():
                jv = torch.func.vmap(lambda t: torch.func.jvp(f, (self.z.clone(),), (t,))[1], in_dims=1, out_dims=1)(V)
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            self._shared_primal = False
            return None
        return jv.reshape(self.B, self.k, -1)

    def vjp(self, U: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """J^T u: [B, k, m] -> [B, k, d], one backward pass through the kept forward graph."""
        u = U.reshape(self.y.shape).to(self.y.dtype)
        (g,) = torch.autograd.grad(self.y, self.z_rep, u, retain_graph=True, create_graph=create_graph)
        return self._unfold(g)

    def matvec(self, V: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """M v = J^T (J v): [B, k, d] -> [B, k, d]."""
        return self.vjp(self.jvp(V, create_graph), create_graph)

    def _fd_step(self) -> float:
        """Central-difference step: cube root of machine epsilon, scaled by the size of z."""
        eps = torch.finfo(self.y.dtype if self.y.dtype.is_floating_point else torch.float32).eps
        scale = max(1.0, float(self.z_rep.detach().abs().max()))
        return (eps ** (1.0 / 3.0)) * scale
