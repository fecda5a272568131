"""The peer regularizers (see the package docstring).  Shapes: z [B, d]; G(z) [B, ...] with m
values per row.  Formula choices are ours where the papers leave room, and are stated per function.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..generator import batch_policy
from ..jacobian import unwrap
from ..lazy import LazyPenalty
from ..validation import check_callable, check_choice, check_int, check_number
from ..generator import validate_latents

_REDUCTIONS = ("max", "mean")


def _check(G, z, k, epsilon, reduction):
    check_callable("G", G)
    z = validate_latents(z)
    check_int("k (Rademacher samples, >= 2 for a variance)", k, 2)
    check_number("epsilon", epsilon, 0, low_open=True)
    check_choice("reduction", reduction, _REDUCTIONS)
    return z


def _rademacher(k: int, z: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """[k, B, d] of +-1 (drawn on the CPU so a CPU generator works for any device)."""
    x = torch.randint(0, 2, (k, *z.shape), generator=generator, dtype=torch.int8)
    return (2 * x - 1).to(device=z.device, dtype=z.dtype)


def _forward_rows(G: Callable, z: torch.Tensor) -> torch.Tensor:
    y = G(z)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"G must return a Tensor, got {type(y).__name__}")
    if y.shape[0] != z.shape[0]:
        raise ValueError(f"G changed the batch size: z has {z.shape[0]} rows, G(z) has {y.shape[0]}")
    return y.reshape(z.shape[0], -1)


def hessian_penalty(G: Callable, z: torch.Tensor, *, k: int = 2, epsilon: float = 0.1, reduction: str = "max",
                    G_z: torch.Tensor | None = None, generator: torch.Generator | None = None,
                    batchnorm: str = "error") -> torch.Tensor:
    """Hessian Penalty (Peebles et al. 2020).

    For Rademacher v (entries +-1), the second directional derivative
    D_v = v^T H v ~ (G(z + eps v) - 2 G(z) + G(z - eps v)) / eps^2 (per output value).  Its
    variance over v is 2 * sum_{i != j} H_ij^2 (per output value): zero iff the Hessian of that
    output is diagonal.  As in the paper's reference code: k Rademacher draws, the unbiased
    variance over them, then `reduction` over every output value of every row ("max", the paper's
    default; "mean" also offered).  The 2 k perturbed forwards run in one batched call.

    Args: z [B, d]; k >= 2 draws; epsilon the finite-difference step (the paper's 0.1); G_z an
    already computed G(z) to reuse (its graph is used as is); generator for the draws.
    Returns: scalar.
    """
    z = _check(G, z, k, epsilon, reduction)
    G = unwrap(G)
    B = z.shape[0]
    with batch_policy(G, batchnorm):
        x = epsilon * _rademacher(k, z, generator)                       # [k, B, d]
        zz = torch.cat([(z + x).reshape(k * B, -1), (z - x).reshape(k * B, -1)])
        y = _forward_rows(G, zz).reshape(2, k, B, -1)
        y0 = _forward_rows(G, z) if G_z is None else G_z.reshape(B, -1)
        second = (y[0] - 2 * y0 + y[1]) / (epsilon ** 2)                # [k, B, m]
        var = second.var(dim=0, unbiased=True)                            # [B, m]
    return var.max() if reduction == "max" else var.mean()


def orojar(G: Callable, z: torch.Tensor, *, k: int = 2, epsilon: float = 0.1, reduction: str = "max",
           G_z: torch.Tensor | None = None, generator: torch.Generator | None = None,
           batchnorm: str = "error") -> torch.Tensor:
    """Orthogonal Jacobian Regularization (Wei et al. 2021).

    For Rademacher v, ||J v||^2 = v^T (J^T J) v and Var_v(v^T A v) = 2 sum_{i != j} A_ij^2, so the
    variance of ||J v||^2 over v measures the off-diagonal of J^T J (the Jacobian columns' lack of
    orthogonality).  As in the paper's reference code: J v ~ (G(z + eps v) - G(z)) / eps (a
    forward difference that reuses G(z)), the population variance over the k draws per row, then
    `reduction` over rows ("max" as in the paper, or "mean").  One batched forward of k B rows.

    Args/returns as `hessian_penalty`.
    """
    z = _check(G, z, k, epsilon, reduction)
    G = unwrap(G)
    B = z.shape[0]
    with batch_policy(G, batchnorm):
        x = epsilon * _rademacher(k, z, generator)
        y = _forward_rows(G, (z + x).reshape(k * B, -1)).reshape(k, B, -1)
        y0 = _forward_rows(G, z) if G_z is None else G_z.reshape(B, -1)
        jv = (y - y0) / epsilon                                           # [k, B, m]
        quad = (jv * jv).sum(-1)                                          # [k, B]
        var = quad.var(dim=0, unbiased=False)                             # [B]
    return var.max() if reduction == "max" else var.mean()


def path_length(G: Callable, z: torch.Tensor, *, mean: torch.Tensor | float | None = None, decay: float = 0.01,
                noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                batchnorm: str = "error") -> torch.Tensor:
    """StyleGAN2 path-length penalty in z-space.

    With y ~ N(0, I) / sqrt(H W) (images [B, C, H, W]; / sqrt(m) for other outputs, our choice),
    a_b = ||J(z_b)^T y_b|| and penalty = mean_b (a_b - a_bar)^2, where a_bar is the running mean
    of a (StyleGAN2: a_bar <- a_bar + decay (mean_b a_b - a_bar)).  It is zero when every row has
    the same path length, i.e. when J^T y has a fixed norm (G locally an isometry up to one scale).

    Args:
        mean: the running mean a_bar: a 0-d tensor updated in place (as the module's buffer), a
            float (target only), or None (the detached batch mean: no state).  A NaN tensor means
            "not started" and is set to this batch's mean.
        noise: the y to use, shaped like G(z) (default: drawn as above).
    Returns: scalar.
    """
    check_callable("G", G)
    z = validate_latents(z)
    check_number("decay", decay, 0, 1)
    G = unwrap(G)
    with batch_policy(G, batchnorm), torch.enable_grad():
        zg = z.detach().requires_grad_(True)
        y = G(zg)
        if not isinstance(y, torch.Tensor) or y.shape[0] != z.shape[0]:
            raise ValueError("G must return a Tensor with one row per row of z")
        if noise is None:
            scale = math.sqrt(y.shape[-1] * y.shape[-2]) if y.dim() == 4 else math.sqrt(y[0].numel())
            noise = torch.randn(y.shape, generator=generator, dtype=torch.float32).to(y) / scale
        elif noise.shape != y.shape:
            raise ValueError(f"noise must have G(z)'s shape {tuple(y.shape)}, got {tuple(noise.shape)}")
        (g,) = torch.autograd.grad((y * noise.to(y.dtype)).sum(), zg, create_graph=True)
        lengths = g.float().pow(2).sum(-1).sqrt()                        # [B]
    batch_mean = lengths.detach().mean()
    if mean is None:
        target = batch_mean
    elif isinstance(mean, torch.Tensor):
        with torch.no_grad():
            if bool(torch.isnan(mean)):
                mean.copy_(batch_mean)
            else:
                mean.add_(decay * (batch_mean - mean))
        target = mean.detach().clone()
    else:
        target = torch.tensor(float(mean), device=lengths.device)
    return (lengths - target).pow(2).mean()


class PathLengthRegularizer(LazyPenalty):
    """The StyleGAN2 path-length penalty with its running mean (buffer `mean`, in state_dict).

    ``loss_G = loss_G + pl(G, z)``; `every` as in StyleGAN2's lazy regularization (scaled by
    `every`; a graph-free zero on skipped calls; spectral_ops.lazy).
    """

    def __init__(self, *, decay: float = 0.01, every: int = 1):
        super().__init__(every)
        self.decay = decay
        self.register_buffer("mean", torch.tensor(float("nan")))

    def penalty(self, G: Callable, z: torch.Tensor, step: int) -> torch.Tensor:
        return path_length(G, z, mean=self.mean, decay=self.decay)
