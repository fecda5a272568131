"""The peer regularizers (see the package docstring).  Shapes: z [B, d]; G(z) [B, ...] with m
values per row.  Formula choices are ours where the papers leave room, and are stated per function.

Every argument is checked as in spectral_ops.validation (the message names the argument; a wrong
type raises TypeError, a value out of range ValueError), and a non-finite G(z), or a penalty that
overflows, raises ValueError naming the rows of z: never a silent NaN.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..generator import batch_policy
from ..jacobian import check_output_rows, name_rows, unwrap
from ..lazy import LazyPenalty
from ..validation import check_callable, check_choice, check_int, check_number
from ..generator import validate_latents

_REDUCTIONS = ("max", "mean")


def _check_real(
    name: str, value: object, low: float | None = None, high: float | None = None, *, low_open: bool = False
) -> float:
    """check_number, with TypeError for a value that is not a real number (a str, a bool, a tensor)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number (int or float), got {type(value).__name__}")
    return check_number(name, value, low, high, low_open=low_open)


def _check_generator(generator: object) -> None:
    """None, or a CPU torch.Generator (the random draws are made on the CPU for any device)."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        raise ValueError(
            f"generator must be a CPU torch.Generator (the draws are made on the CPU and moved to "
            f"z's device), got one on {generator.device}"
        )


def _check(G, z, k, epsilon, reduction, generator):
    check_callable("G", G)
    z = validate_latents(z)
    check_int("k (Rademacher samples, >= 2 for a variance)", k, 2)
    _check_real("epsilon", epsilon, 0, low_open=True)
    check_choice("reduction", reduction, _REDUCTIONS)
    _check_generator(generator)
    return z


def _rademacher(k: int, z: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """[k, B, d] of +-1 (drawn on the CPU so a CPU generator works for any device)."""
    x = torch.randint(0, 2, (k, *z.shape), generator=generator, dtype=torch.int8)
    return (2 * x - 1).to(device=z.device, dtype=z.dtype)


def _steps(z: torch.Tensor, x: torch.Tensor, epsilon: float, signs: tuple[int, ...]) -> list[torch.Tensor]:
    """[z + s x for s in signs], each [k, B, d]; ValueError naming the rows of z where a step of
    x = epsilon v is lost in z's dtype (z + epsilon v == z where v is not 0: a zero difference,
    not a derivative).  v may have zero entries (a coordinate axis e_i): those are not steps."""
    out = [z + s * x for s in signs]
    stepped = x != 0
    lost = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
    for zz in out:
        lost |= ((zz == z) & stepped).any(-1).any(0)
    name_rows(lost, f"epsilon={epsilon!r} is below the resolution of z's {z.dtype} (z + epsilon v == z)")
    return out


def _forward_rows(G: Callable, z: torch.Tensor, B: int | None = None, what: str = "G(z)") -> torch.Tensor:
    """G(z) [N, ...] for z [N, d], checked: a tensor with one row per row of z and finite values,
    else ValueError naming the rows of the caller's z (B rows: z is N / B blocks of them, the
    perturbed copies; default: z itself)."""
    y = check_output_rows(G(z))
    if y.shape[0] != z.shape[0]:
        raise ValueError(f"G changed the batch size: z has {z.shape[0]} rows, G(z) has {y.shape[0]}")
    if y[0].numel() == 0:
        raise ValueError(f"G must return at least one value per row, got shape {tuple(y.shape)}")
    if not y.dtype.is_floating_point:
        raise TypeError(f"G must return a floating-point tensor, got {y.dtype}")
    flat = y.reshape(z.shape[0], -1)
    bad = ~torch.isfinite(flat.detach()).all(dim=1)  # [N]
    if B is not None:
        bad = bad.reshape(-1, B).any(dim=0)  # [B]: any copy of the row
    name_rows(bad, f"{what} has non-finite values (NaN or Inf)")
    return y


def _given_output(G_z: object, y: torch.Tensor, B: int) -> torch.Tensor:
    """G_z [B, ...] checked against the perturbed outputs y [N, ...] (same per-row shape), as [B, m]."""
    if not isinstance(G_z, torch.Tensor):
        raise TypeError(f"G_z must be a torch.Tensor (G(z)) or None, got {type(G_z).__name__}")
    if tuple(G_z.shape) != (B, *y.shape[1:]):
        raise ValueError(f"G_z must be G(z), shaped {(B, *y.shape[1:])}, got {tuple(G_z.shape)}")
    if not G_z.dtype.is_floating_point:
        raise TypeError(f"G_z must be a floating-point tensor, got {G_z.dtype}")
    if G_z.device != y.device:
        raise ValueError(f"G_z must be on G's output device {y.device}, got {G_z.device}")
    flat = G_z.reshape(B, -1)
    name_rows(~torch.isfinite(flat.detach()).all(dim=1), "G_z has non-finite values (NaN or Inf)")
    return flat


def _finite_penalty(per_row: torch.Tensor, dtype: torch.dtype) -> None:
    """ValueError naming the rows whose penalty terms ([B, ...]) overflowed although G(z) is finite."""
    name_rows(
        ~torch.isfinite(per_row.detach().reshape(per_row.shape[0], -1)).all(dim=1),
        f"the penalty is not finite ({dtype} overflow: G's outputs are too large for this epsilon)",
    )


def hessian_penalty(
    G: Callable,
    z: torch.Tensor,
    *,
    k: int = 2,
    epsilon: float = 0.1,
    reduction: str = "max",
    G_z: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    batchnorm: str = "error",
) -> torch.Tensor:
    """Hessian Penalty (Peebles et al. 2020).

    For Rademacher v (entries +-1), the second directional derivative
    D_v = v^T H v ~ (G(z + eps v) - 2 G(z) + G(z - eps v)) / eps^2 (per output value).  Its
    variance over v is 2 * sum_{i != j} H_ij^2 (per output value): zero iff the Hessian of that
    output is diagonal.  As in the paper's portable PyTorch code: k Rademacher draws, the unbiased
    variance over them (an unbiased estimate of 2 sum_{i != j} H_ij^2; the paper's ProGAN training
    code takes the population variance, (k-1)/k of this), then `reduction` over every output value
    of every row together ("max", the paper's default; "mean" also offered).  The value scales
    with the square of G's output range (docs/peers.md).  The 2 k perturbed forwards run in one
    batched call.

    Args: z [B, d]; k >= 2 draws; epsilon > 0 the finite-difference step (the paper's 0.1); G_z
    an already computed G(z) [B, ...] to reuse (its graph is used as is); generator (a CPU
    torch.Generator) for the draws.
    Returns: scalar.
    Raises: TypeError / ValueError naming a bad argument; ValueError naming the rows of z where
    G's output (or G_z) is not finite, where z + epsilon v == z in z's dtype, or where the
    penalty overflows.
    """
    z = _check(G, z, k, epsilon, reduction, generator)
    G = unwrap(G)
    B = z.shape[0]
    with batch_policy(G, batchnorm):
        x = epsilon * _rademacher(k, z, generator)  # [k, B, d]
        plus, minus = _steps(z, x, epsilon, (1, -1))
        zz = torch.cat([plus.reshape(k * B, -1), minus.reshape(k * B, -1)])
        y = _forward_rows(G, zz, B, "G(z +- epsilon v)")
        y0 = _forward_rows(G, z) if G_z is None else _given_output(G_z, y, B)
        y = y.reshape(2, k, B, -1)
        second = (y[0] - 2 * y0.reshape(B, -1) + y[1]) / (epsilon**2)  # [k, B, m]
        var = second.var(dim=0, unbiased=True)  # [B, m]
        _finite_penalty(var, y.dtype)
    return var.max() if reduction == "max" else var.mean()


def orojar(
    G: Callable,
    z: torch.Tensor,
    *,
    k: int = 2,
    epsilon: float = 0.1,
    reduction: str = "max",
    G_z: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    batchnorm: str = "error",
) -> torch.Tensor:
    """Orthogonal Jacobian Regularization (Wei et al. 2021).

    For Rademacher v, ||J v||^2 = v^T (J^T J) v and Var_v(v^T A v) = 2 sum_{i != j} A_ij^2, so the
    variance of ||J v||^2 over v measures the off-diagonal of J^T J (the Jacobian columns' lack of
    orthogonality).  As in the paper's ProGAN training code: J v ~ (G(z + eps v) - G(z)) / eps (a
    forward difference that reuses G(z)), ||J v||^2 summed over all of a row's output values, the
    population variance over the k draws per row (expectation (k-1)/k * 2 sum_{i != j} A_ij^2: at
    k = 2 the paper's sum_{i != j} (J_i^T J_j)^2; the portable orojar_pytorch.py takes the unbiased
    variance, k/(k-1) times this), then `reduction` over rows ("max" as in the paper, or "mean").
    The value scales with the fourth power of G's output range (docs/peers.md).  One batched
    forward of k B rows.

    Args/returns/raises as `hessian_penalty`.
    """
    z = _check(G, z, k, epsilon, reduction, generator)
    G = unwrap(G)
    B = z.shape[0]
    with batch_policy(G, batchnorm):
        x = epsilon * _rademacher(k, z, generator)
        (plus,) = _steps(z, x, epsilon, (1,))
        y = _forward_rows(G, plus.reshape(k * B, -1), B, "G(z + epsilon v)")
        y0 = _forward_rows(G, z) if G_z is None else _given_output(G_z, y, B)
        y = y.reshape(k, B, -1)
        jv = (y - y0.reshape(B, -1)) / epsilon  # [k, B, m]
        quad = (jv * jv).sum(-1)  # [k, B]
        var = quad.var(dim=0, unbiased=False)  # [B]
        _finite_penalty(var, y.dtype)
    return var.max() if reduction == "max" else var.mean()


def jacobian_l1(
    G: Callable,
    z: torch.Tensor,
    *,
    epsilon: float = 1e-3,
    reduction: str = "mean",
    G_z: torch.Tensor | None = None,
    batchnorm: str = "error",
) -> torch.Tensor:
    """Jacobian L1 penalty (Rhodes & Lee 2021, "Local Disentanglement in Variational
    Auto-Encoders Using Jacobian L1 Regularization").

    The L1 norm of G's whole Jacobian at each row, sum_{i, m} |dG_m / dz_i|: small when each
    output value moves with few latents (a sparse, axis-aligned Jacobian).  As in the paper's
    code (`jacobian_loss_function` and `compute_generator_jacobian_optimized`): the Jacobian
    J [d, B, m] by forward differences along each latent axis,
    J_i ~ (G(z + eps e_i) - G(z)) / eps with eps = 1e-3, z detached (only G's parameters are
    regularized; a given G_z keeps its own graph), the d perturbed copies and the unperturbed
    batch in one batched forward of (d + 1) B rows; then sum |J| over latents, output values and
    rows, divided by B.  That is `reduction="mean"` (the paper's): the mean over rows of the
    per-row L1 norm sum_{i, m} |J_{i, b, m}|; "max" (the max over rows of the same) is offered
    for symmetry with the other peers.  No randomness.  The value scales linearly with G's
    output range (the paper's decoder outputs images in [0, 1], as ours; on [-1, 1] images it
    would double; docs/peers.md).  Cost: one batched forward of (d + 1) B rows, or of d B rows
    when G_z is given.

    Args: z [B, d]; epsilon > 0 the forward-difference step (the paper's 1e-3); reduction "mean"
    or "max"; G_z an already computed G(z) [B, ...] to reuse (its graph is used as is); batchnorm
    "error" or "eval" (the BatchNorm policy of the other peers).
    Returns: scalar.
    Raises: TypeError / ValueError naming a bad argument; ValueError naming the rows of z where
    G's output (or G_z) is not finite, where z + epsilon e_i == z in z's dtype, or where the
    penalty overflows.
    """
    check_callable("G", G)
    z = validate_latents(z).detach()
    _check_real("epsilon", epsilon, 0, low_open=True)
    check_choice("reduction", reduction, _REDUCTIONS)
    G = unwrap(G)
    B, d = z.shape
    with batch_policy(G, batchnorm):
        x = epsilon * torch.eye(d, dtype=z.dtype, device=z.device)[:, None, :].expand(d, B, d)  # [d, B, d]
        (plus,) = _steps(z, x, epsilon, (1,))
        rows = plus.reshape(d * B, d)
        if G_z is None:  # one batched call: the d perturbed copies, then z itself
            y = _forward_rows(G, torch.cat([rows, z]), B, "G(z) or G(z + epsilon e_i)").reshape(d + 1, B, -1)
            y, y0 = y[:d], y[d]
        else:
            y = _forward_rows(G, rows, B, "G(z + epsilon e_i)")
            y0 = _given_output(G_z, y, B)
            y = y.reshape(d, B, -1)
        jac = (y - y0) / epsilon  # [d, B, m]
        per_row = jac.abs().sum(dim=(0, 2))  # [B]
        _finite_penalty(per_row, y.dtype)
    return per_row.max() if reduction == "max" else per_row.mean()


def _check_mean(mean: object, z: torch.Tensor) -> None:
    """path_length's running mean: None, a real number >= 0, or a 0-d floating tensor on z's
    device holding a value >= 0 or NaN ("not started")."""
    if mean is None:
        return
    if isinstance(mean, torch.Tensor):
        if mean.dim() != 0 or not mean.dtype.is_floating_point:
            raise ValueError(
                f"mean must be a 0-d floating-point tensor (the running mean, updated in place), "
                f"got shape {tuple(mean.shape)} {mean.dtype}"
            )
        if mean.device != z.device:
            raise ValueError(f"mean must be on z's device {z.device}, got {mean.device}")
        value = float(mean)
        if not (math.isnan(value) or (math.isfinite(value) and value >= 0)):
            raise ValueError(f"mean must hold a finite value >= 0, or NaN for 'not started', got {value!r}")
        return
    if not isinstance(mean, (int, float)) or isinstance(mean, bool):
        raise TypeError(f"mean must be a 0-d tensor, a real number or None, got {type(mean).__name__}")
    check_number("mean", mean, 0)


def _check_noise(noise: object, y: torch.Tensor) -> torch.Tensor | None:
    """path_length's noise: None, or a finite floating tensor shaped like G(z) (moved to G's device)."""
    if noise is None:
        return None
    if not isinstance(noise, torch.Tensor):
        raise TypeError(f"noise must be a torch.Tensor shaped like G(z) or None, got {type(noise).__name__}")
    if noise.shape != y.shape:
        raise ValueError(f"noise must have G(z)'s shape {tuple(y.shape)}, got {tuple(noise.shape)}")
    if not noise.dtype.is_floating_point:
        raise TypeError(f"noise must be a floating-point tensor, got {noise.dtype}")
    if noise.device.type == "meta":
        raise ValueError("noise is on the meta device: spectral_ops needs its values")
    noise = noise.to(device=y.device, dtype=y.dtype)
    name_rows(~torch.isfinite(noise.reshape(y.shape[0], -1)).all(dim=1), "noise has non-finite values")
    return noise


def path_length(
    G: Callable,
    z: torch.Tensor,
    *,
    mean: torch.Tensor | float | None = None,
    decay: float = 0.01,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    batchnorm: str = "error",
) -> torch.Tensor:
    """StyleGAN2 path-length penalty in z-space.

    With y ~ N(0, I) / sqrt(H W) (images [B, C, H, W]; / sqrt(m) for other outputs, our choice),
    a_b = ||J(z_b)^T y_b|| and penalty = mean_b (a_b - a_bar)^2, where a_bar is the running mean
    of a (StyleGAN2: a_bar <- a_bar + decay (mean_b a_b - a_bar)).  It is zero when every row has
    the same path length, i.e. when J^T y has a fixed norm (G locally an isometry up to one scale).

    Args:
        z: [B, d] latents.
        mean: the running mean a_bar: a 0-d floating tensor on z's device, updated in place (as
            the module's buffer), a real number >= 0 (target only), or None (the detached batch
            mean: no state).  A NaN tensor means "not started" and is set to this batch's mean.
        decay: in [0, 1], the running mean's update rate.
        noise: the y to use, a finite floating tensor shaped like G(z) (default: drawn as above).
        generator: a CPU torch.Generator for the drawn noise.
    Returns: scalar.
    Raises: TypeError / ValueError naming a bad argument; ValueError naming the rows of z where
    G(z) is not finite or the path length overflows.  A call that raises leaves `mean` as it was.
    """
    check_callable("G", G)
    z = validate_latents(z)
    _check_real("decay", decay, 0, 1)
    _check_mean(mean, z)
    _check_generator(generator)
    G = unwrap(G)
    with batch_policy(G, batchnorm), torch.enable_grad():
        zg = z.detach().requires_grad_(True)
        y = _forward_rows(G, zg)
        if not y.requires_grad:
            raise ValueError("G's output does not depend on z through autograd (did G detach or run under no_grad?)")
        noise = _check_noise(noise, y)
        if noise is None:
            scale = math.sqrt(y.shape[-1] * y.shape[-2]) if y.dim() == 4 else math.sqrt(y[0].numel())
            noise = torch.randn(y.shape, generator=generator, dtype=torch.float32).to(y) / scale
        (g,) = torch.autograd.grad((y * noise).sum(), zg, create_graph=True, allow_unused=True)
        if g is None:
            raise ValueError("G's output does not depend on z through autograd (did G detach z?)")
        lengths = g.float().pow(2).sum(-1).sqrt()  # [B]
        _finite_penalty(lengths[:, None], lengths.dtype)
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
    `every`; a graph-free zero on skipped calls; spectral_ops.lazy).  decay in [0, 1].
    """

    mean: torch.Tensor  # buffer, registered in __init__

    def __init__(self, *, decay: float = 0.01, every: int = 1):
        super().__init__(every)
        self.decay = _check_real("decay", decay, 0, 1)
        self.register_buffer("mean", torch.tensor(float("nan")))

    def penalty(self, G: Callable, z: torch.Tensor, step: int) -> torch.Tensor:
        return path_length(G, z, mean=self.mean, decay=self.decay)
