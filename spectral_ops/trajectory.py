"""Curved latent trajectories that follow a right-singular vector field of the generator.

`trace_trajectory` integrates the ODE

    dz/dt = v(z),   v(z) = the tracked right-singular vector of J(z) = dG/dz, a unit vector,

so t is arc length in latent space (each step moves `step_size` in z).  A singular vector is only
defined up to sign and up to its rank among the singular values, so the field is made into a
smooth vector field by three rules:

- **Sign continuity.**  Each new vector takes the sign that agrees with the previous tangent
  (v_new . v_prev > 0), from step to step and inside every Runge-Kutta stage (each stage is
  aligned with the stage before it).
- **Tracking through crossings.**  The top-k vectors (k > direction, with a margin) are computed
  at every point, and the tracked one is the vector with the largest |cos| to the previous
  tangent, not the one at a fixed index.  When two singular values cross along the path, the
  index of the tracked vector changes (recorded in `Trajectory.tracked`) while the field stays
  the same.  `direction` picks the index only at the starting point.
- **Warm starts.**  Power iteration at every evaluation starts from the top-k vectors of the
  previous step, so a converged basis usually needs one or two iterations (each one generator
  pass on B*k rows).  With `topk_method="dense"` (exact; what `auto` picks for small latents)
  there is nothing to warm-start.

Integrators: "euler" (order 1, 1 evaluation per step), "heun" (order 2, 2 evaluations), "rk4"
(classic Runge-Kutta, order 4, 4 evaluations).  The orders hold for the exact field; a power
iteration stopped at `tol` adds an error of about tol per evaluation (use method "dense" or a
small tol where that matters).

`project="sphere"` keeps every row on the sphere of its *initial* radius ||z0_b|| (for Gaussian
latents this is close to sqrt(d), the shell where the prior's mass lies; the initial radius is
used so that a z0 on any shell stays there).  The field is replaced by its tangential component
v - (v . z_hat) z_hat, which moves at speed <= 1, and z is rescaled to the radius after every
step (a retraction).  Without projection the trajectory moves freely in R^d.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import ops
from .latents import check_autograd_available, flat_generator, flatten_latents
from .topk import METHODS, jacobian_topk
from .progress import progress_bar
from .validation import (
    check_bool,
    check_callable,
    check_choice,
    check_float_values,
    check_int,
    check_iters_tol,
    check_k,
    check_number,
    check_seed,
)

INTEGRATORS = ("euler", "heun", "rk4")
PROJECTIONS = (None, "sphere")


@dataclass
class Trajectory:
    """A batch of traced paths; T = number of points - 1 (steps, or 2*steps with both_ways).

    z: (T+1, B, d) the latent points; z[origin] is z0.
    values: (T+1, B, k) the top-k singular values of J at each point, descending.
    vectors: (T+1, B, k, d) the top-k right-singular vectors (orthonormal rows) at each point.
        Every row's sign agrees with the same row of the previous point; the tracked row is
        oriented along the path (pointing towards increasing time index).
    residuals: (T+1, B, k) power-iteration residuals (see `jacobian_topk`).
    tracked: (T+1, B) int64, the index into k of the tracked vector at each point.
    direction: the index tracked at z0.
    origin: the time index of z0 (0, or `steps` with both_ways).
    method, step_size, project: the integration settings used.
    evaluations: how many top-k computations were run (all batch rows together).
    iterations: total power iterations used over all evaluations (0 for the dense method).
    """

    z: torch.Tensor
    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    tracked: torch.Tensor
    direction: int
    origin: int
    method: str
    step_size: float
    project: str | None
    evaluations: int
    iterations: int

    @property
    def tangent(self) -> torch.Tensor:
        """(T+1, B, d) the tracked unit vector at each point, oriented along the path."""
        idx = self.tracked[..., None, None].expand(-1, -1, 1, self.vectors.shape[-1])
        return torch.gather(self.vectors, 2, idx).squeeze(2)

    @property
    def tracked_values(self) -> torch.Tensor:
        """(T+1, B) the singular value of the tracked vector at each point."""
        return torch.gather(self.values, 2, self.tracked[..., None]).squeeze(2)


class _Field:
    """The sign-continuous, crossing-tracked singular vector field of G, batched over rows."""

    def __init__(self, G, k, iters, tol, topk_method, jvp, seed, batchnorm, project, radius, warm_start=True):
        self.G, self.k, self.iters, self.tol = G, k, iters, tol
        self.warm_start = warm_start
        self.topk_method, self.jvp, self.seed, self.batchnorm = topk_method, jvp, seed, batchnorm
        self.project, self.radius = project, radius
        self.evaluations = 0
        self.iterations = 0

    def topk(self, z: torch.Tensor, init: torch.Tensor | None):
        self.evaluations += 1
        if not self.warm_start and self.evaluations > 1:
            init = None
        top = jacobian_topk(
            self.G,
            z.detach(),
            self.k,
            iters=self.iters,
            tol=self.tol,
            method=self.topk_method,
            jvp=self.jvp,
            init=init,
            seed=self.seed,
            batchnorm=self.batchnorm,
        )
        self.iterations += top.iterations
        if init is not None:  # signs follow init, whatever the method and its checks did
            top.vectors = top.vectors * ops.common.sign_align(top.vectors, init.to(top.vectors.dtype))[..., None]
        return top

    @staticmethod
    def match(V: torch.Tensor, ref: torch.Tensor):
        """The row of V [B,k,d] with the largest |cos| to ref [B,d], signed to agree with ref.

        Returns (v [B,d], index [B] int64, V with that row's sign set)."""
        cos = torch.einsum("bkd,bd->bk", V, ref.to(V.dtype))
        idx = cos.abs().argmax(dim=-1)
        rows = torch.arange(V.shape[0], device=V.device)
        c = cos[rows, idx]
        sign = torch.where(c < 0, -1.0, 1.0).to(V.dtype)
        v = V[rows, idx] * sign[:, None]
        V = V.clone()
        V[rows, idx] = v
        return v, idx, V

    def tangential(self, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The velocity actually integrated: v, or its component tangent to the sphere."""
        if self.project is None:
            return v
        zh = z / z.norm(dim=-1, keepdim=True)
        return v - (v * zh).sum(-1, keepdim=True) * zh

    def retract(self, z: torch.Tensor) -> torch.Tensor:
        if self.project is None:
            return z
        return z * (self.radius / z.norm(dim=-1, keepdim=True))

    def __call__(self, z: torch.Tensor, ref: torch.Tensor, init: torch.Tensor):
        """Velocity at z [B,d] aligned with ref [B,d]; also the top-k result and tracked index."""
        top = self.topk(z, init)
        v, idx, V = self.match(top.vectors, ref)
        return self.tangential(z, v.to(z.dtype)), v, idx, V, top


def _walk(field: _Field, z0, v0, V0, top0, idx0, steps, h, method, progress_desc):
    """Integrate from z0 with initial oriented tangent v0; returns lists of per-point records."""
    zs, Vs, vals, ress, idxs = [z0], [V0], [top0.values], [top0.residuals], [idx0]
    z, v, V = z0, v0, V0
    bar = progress_bar(steps, progress_desc) if progress_desc else None
    for _ in range(steps):
        f1 = field.tangential(z, v.to(z.dtype))
        if method == "euler":
            z_next = z + h * f1
        elif method == "heun":
            f2, _, _, _, _ = field(z + h * f1, v, V)
            z_next = z + 0.5 * h * (f1 + f2)
        else:  # rk4: each stage aligned with the previous stage's vector
            f2, u2, _, _, _ = field(z + 0.5 * h * f1, v, V)
            f3, u3, _, _, _ = field(z + 0.5 * h * f2, u2, V)
            f4, _, _, _, _ = field(z + h * f3, u3, V)
            z_next = z + (h / 6.0) * (f1 + 2.0 * f2 + 2.0 * f3 + f4)
        z_next = field.retract(z_next)
        _, v, idx, V, top = field(z_next, v, V)
        z = z_next
        zs.append(z)
        Vs.append(V)
        vals.append(top.values)
        ress.append(top.residuals)
        idxs.append(idx)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return zs, Vs, vals, ress, idxs


def _complete_init(init, B: int, k: int, d: int, z0: torch.Tensor, seed) -> torch.Tensor:
    """[j, d] or [B, j, d] with j <= k -> an orthonormal [B, k, d] basis whose first j rows span
    (and agree in sign with) the given rows; the rest are random."""
    if not isinstance(init, torch.Tensor):
        raise TypeError(f"init must be a torch.Tensor or None, got {type(init).__name__}")
    if init.dim() == 2:
        init = init.expand(B, *init.shape)
    if init.dim() != 3 or init.shape[0] != B or init.shape[2] != d or not 1 <= init.shape[1] <= k:
        raise ValueError(
            f"init must have shape (j, {d}) or ({B}, j, {d}) with 1 <= j <= k={k}, got {tuple(init.shape)}"
        )
    check_float_values("init", init)
    init = init.detach().to(z0.dtype)
    j = init.shape[1]
    if j < k:
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        extra = torch.randn(B, k - j, d, generator=gen, dtype=torch.float64).to(init)
        init = torch.cat([init, extra], dim=1)
    return ops.orthonormalize(init)


def _checked_arguments(G, z0, direction, steps, step_size, method, k, project, iters, tol, topk_method, seed, flags):
    """trace_trajectory's argument checks: (G on flat latents, z0 [B, d] detached, k, the
    sphere radius [B, 1] or None); flags: {name: value} of the bool arguments.  Raises naming the
    first bad argument."""
    check_callable("G", G)
    for name, value in flags.items():
        check_bool(name, value)
    check_autograd_available()
    z0, latent_shape = flatten_latents(z0, "z0")
    G = flat_generator(G, latent_shape)
    check_seed(seed)
    d = z0.shape[1]
    check_int("direction", direction, 0)
    if direction >= d:
        raise ValueError(f"direction must be < latent_dim={d}, got direction={direction}")
    k = check_k(min(direction + 2, d) if k is None else k, d)
    if direction >= k:
        raise ValueError(f"direction must be < k={k}, got direction={direction}")
    check_int("steps", steps, 1)
    check_number("step_size", step_size, 0, low_open=True)
    check_choice("method", method, INTEGRATORS)
    check_choice("project", project, PROJECTIONS)
    check_choice("topk_method", topk_method, METHODS)
    check_iters_tol(iters, tol)
    z0 = z0.detach()
    radius = None
    if project == "sphere":
        radius = z0.norm(dim=-1, keepdim=True)
        if bool((radius == 0).any()):
            rows = (radius.flatten() == 0).nonzero().flatten().tolist()
            raise ValueError(f"project='sphere' needs nonzero z0 rows; rows {rows[:10]} are zero")
    return G, z0, k, radius


def _reversed(walk, B: int):
    """A backward walk reversed in time, its tracked vectors oriented along increasing time, and
    its first point (z0, shared with the forward walk) dropped."""
    zs, Vs, vals, ress, idxs = walk
    rows = torch.arange(B, device=zs[0].device)
    flipped = []
    for V, idx in zip(Vs, idxs):
        V = V.clone()
        V[rows, idx] = -V[rows, idx]
        flipped.append(V)
    return zs[::-1][:-1], flipped[::-1][:-1], vals[::-1][:-1], ress[::-1][:-1], idxs[::-1][:-1]


def _walks(field: _Field, z0, init, direction: int, steps: int, h: float, method: str, both_ways: bool, progress: bool):
    """The step loops: the top-k at z0 (from init), the walk from z0 along the `direction`-th
    vector and, with both_ways, the walk against it, reversed in time before it.  Returns ((z,
    vectors, values, residuals, tracked), each stacked over time, the time index of z0)."""
    top0 = field.topk(z0, init)
    V0 = top0.vectors
    idx0 = torch.full((z0.shape[0],), direction, dtype=torch.long, device=z0.device)
    v0 = V0[:, direction]
    fwd = _walk(field, z0, v0, V0, top0, idx0, steps, h, method, "trajectory" if progress else None)
    parts, origin = [fwd], 0
    if both_ways:
        V0b = V0.clone()
        V0b[:, direction] = -v0
        bwd = _walk(field, z0, -v0, V0b, top0, idx0, steps, h, method, "trajectory (backward)" if progress else None)
        parts, origin = [_reversed(bwd, z0.shape[0]), fwd], steps
    return tuple(torch.stack([x for part in parts for x in part[i]], dim=0) for i in range(5)), origin


def trace_trajectory(
    G: Callable,
    z0: torch.Tensor,
    direction: int = 0,
    *,
    steps: int = 32,
    step_size: float = 0.1,
    method: str = "rk4",
    k: int | None = None,
    project: str | None = None,
    both_ways: bool = False,
    iters: int = 10,
    tol: float = 1e-5,
    topk_method: str = "auto",
    jvp: str = "auto",
    init: torch.Tensor | None = None,
    seed: int | None = None,
    batchnorm: str = "error",
    warm_start: bool = True,
    progress: bool = False,
) -> Trajectory:
    """Follow the `direction`-th right-singular vector field of J(z) = dG/dz from every row of z0.

    Args:
        G: callable (N, d) -> (N, ...) with no coupling between rows (as for `jacobian_topk`).
        z0: [B, d] starting latents (finite), or [B, ...]: the latent is the flattened trailing
            dims, and the result is flat (`traj.z.reshape(T + 1, B, *z0.shape[1:])` for G).
        direction: index (0 = largest singular value) of the vector followed, chosen at z0;
            afterwards the same vector is tracked through crossings (see module docstring).
        steps: integration steps per way (>= 1).
        step_size: latent distance per step (> 0); the field is a unit vector.
        method: "euler", "heun" or "rk4".
        k: how many top vectors to compute at each point; default min(direction + 2, d), one spare
            vector so a crossing with the next one down can be followed.  Must exceed direction.
        project: None or "sphere" (stay on the sphere of radius ||z0_b||; see module docstring).
        both_ways: also walk from z0 against the initial vector; the result then has 2*steps + 1
            points, time running from the far end of the backward walk through z0 (at index
            `steps`) to the end of the forward walk.
        iters, tol: power-iteration limits per evaluation (warm-started from the previous step).
        topk_method, jvp, seed, batchnorm: passed to `jacobian_topk` (seed: an int in
            [-2**63, 2**64 - 1] or None).
        init: optional [j, d] or [B, j, d] starting basis at z0, 1 <= j <= k (completed with random
            orthonormal rows): warm start, and the sign of each vector at z0 (so the direction
            walked first), for the dense method too.
        warm_start: start each power iteration from the previous step's vectors (default); False
            starts every evaluation from a random basis (for comparison; signs and crossings are
            still tracked through the matching rule).
        progress: show a progress bar over the steps.
        both_ways, warm_start and progress must be bools (TypeError otherwise).
    Returns:
        Trajectory with z (T+1, B, d), values (T+1, B, k), vectors (T+1, B, k, d),
        residuals (T+1, B, k), tracked (T+1, B).
    """
    flags = dict(both_ways=both_ways, warm_start=warm_start, progress=progress)
    G, z0, k, radius = _checked_arguments(
        G, z0, direction, steps, step_size, method, k, project, iters, tol, topk_method, seed, flags
    )
    B, d = z0.shape
    if init is not None:
        init = _complete_init(init, B, k, d, z0, seed)
    field = _Field(G, k, iters, tol, topk_method, jvp, seed, batchnorm, project, radius, warm_start)
    walked, origin = _walks(field, z0, init, direction, steps, float(step_size), method, both_ways, progress)
    z, vectors, values, residuals, tracked = walked
    return Trajectory(
        z=z,
        values=values,
        vectors=vectors,
        residuals=residuals,
        tracked=tracked,
        direction=direction,
        origin=origin,
        method=method,
        step_size=float(step_size),
        project=project,
        evaluations=field.evaluations,
        iterations=field.iterations,
    )


__all__ = ["Trajectory", "trace_trajectory", "INTEGRATORS"]
