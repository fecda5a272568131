"""The known-answer gate (docs/regularizer.md, "The known-answer gate"):
a generator whose disentangled axes are known, then
rotated away, so that only the regularizer can bring them back.

G(z) = f(R z).  f renders each of F factors u_f as a smooth blob on its own ring of P pixels
(a von Mises bump centred at angle u_f), scaled so that ||d f / d u_f|| = s_f: the Jacobian of
f has orthogonal columns, and the right-singular vectors of J = F(Rz) R are the rows R_f of R,
with singular values s_f (up to the ring's sampling error, below 1e-6).  The remaining d - F
latent directions do nothing.  R = expm(A - A^T) R0 is learnable through A, and starts at a
random rotation R0.  With z ~ N(0, I), R z ~ N(0, I) for every R, so the distribution of G(z)
does not depend on R: no adversarial loss could move it, only the regularizer.

The right answer is R a signed permutation on the used factors.  Alignment of factor f is
max_j R_{fj}^2 (1 on an axis; about 0.43 for a random rotation at d = 8).

`GateGenerator` is the same construction shaped the way users' generators are (issue 19):
latents of 64-512 with directions G ignores, and sensitivities that vary across latent space.

- fewer used factors than the regularizer's k, the other d - F directions exactly unused
  (rank J = F < k: J^T J has an exact null space the top-k vectors reach into);
- the other d - F directions weakly used: a linear readout `weak * u_rest`, so each has singular
  value exactly `weak` (rank J = d, the tail tiny and exactly degenerate);
- sensitivities that vary with z: factor f's blob sits at angle phi_f(u_f) = u_f + (a / w) sin(w u_f
  + c_f), so d phi_f / d u_f = 1 + a cos(w u_f + c_f) and the singular value of row R_f is
  s_f (1 + a cos(w u_f + c_f)).  J stays diagonal in u = R z, so the right-singular vectors are
  still rows of R, but their order changes across latent space (`GateGenerator.spectrum`).

Its rotation is R = expm(A) R0 as before, with A = P - P^T and P nonzero only in its first F rows
(F d parameters: the tangent space of the frame of F rows the loss can see).  A has rank <= 2F, so
expm(A) = I + W phi(J W^T W) J W^T (`_low_rank_expm`) costs O(d F^2) instead of a d x d matrix_exp,
whose backward takes 50-65 ms per call at d = 256 on one CPU thread (a Cayley map's d x d solve
takes 5 ms, but Adam's lr 0.05 pushed it to where the map saturates: the ceiling failed at d = 256).
R stays exactly orthogonal and the distribution of G(z) independent of R.  `run_gate(...)`
optimises the rotation with Adam against a regularizer and reports the alignment reached.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "RotatedRenderer",
    "GateGenerator",
    "GateResult",
    "run_gate",
    "factor_alignment",
    "oracle_penalty",
    "DEFAULT_SENSITIVITIES",
    "GATE_RANKS",
    "GATE_PROFILES",
]

DEFAULT_SENSITIVITIES = (2.0, 1.0, 0.5, 0.25)

# The gate's generator shapes (bench/bench_gate.py, tests/test_gate.py): GateGenerator keyword
# arguments by rank (how the latent directions beyond the factors are used; k = 4 throughout) and
# by sensitivity profile.
GATE_RANKS = {
    "k=F": dict(sensitivities=DEFAULT_SENSITIVITIES),  # 4 factors, k = 4
    "unused": dict(sensitivities=(2.0, 1.0, 0.5)),  # rank J = 3 < k
    "weak": dict(sensitivities=(2.0, 1.0, 0.5), weak=0.01),
}  # the rest at sigma 0.01
GATE_PROFILES = {"constant": {}, "varying": dict(wobble=0.75, frequency=2.0)}


def _random_rotation(d: int, seed: int, dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(seed))
    Q, Rr = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(Rr))[None, :]
    if torch.det(Q) < 0:  # a proper rotation, reachable by expm of a skew matrix
        Q[:, 0] = -Q[:, 0]
    return Q.to(dtype)


def _checked_renderer(latent_dim, sensitivities, pixels: int) -> torch.Tensor:
    """The sensitivities as a float64 tensor [F], after checking the arguments both renderers share."""
    s = torch.as_tensor(sensitivities, dtype=torch.float64)
    if s.dim() != 1 or s.numel() < 1 or not bool((s > 0).all()):
        raise ValueError(f"sensitivities must be a non-empty list of positive numbers, got {sensitivities!r}")
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < s.numel():
        raise ValueError(f"latent_dim must be an int >= len(sensitivities) = {s.numel()}, got {latent_dim!r}")
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 16:
        raise ValueError(f"pixels must be an int >= 16, got {pixels!r}")
    return s


def _ring_scale(s: torch.Tensor, theta: torch.Tensor, kappa: float) -> torch.Tensor:
    """[F]: the factor by which a bump exp(kappa (cos(theta - phi) - 1)) on the ring `theta` is
    scaled so that ||d bump / d phi|| = s_f (the same for every phi up to the ring's sampling error)."""
    bump_grad = kappa * torch.sin(theta) * torch.exp(kappa * (torch.cos(theta) - 1))
    return s / bump_grad.norm()


class _Rings(nn.Module):
    """What both renderers hold: F factors drawn as von Mises blobs on rings of P pixels (`theta`),
    each scaled so that ||d f_f / d u_f|| = s_f (`scale`), and the starting rotation R0.

    s: the checked sensitivities [F] (float64, `_checked_renderer`); the other arguments as the
    renderers'."""

    theta: torch.Tensor  # buffers, registered in __init__
    scale: torch.Tensor
    R0: torch.Tensor

    def __init__(self, latent_dim: int, s: torch.Tensor, pixels: int, kappa: float, seed: int, dtype: torch.dtype):
        super().__init__()
        self.latent_dim, self.num_factors, self.kappa = latent_dim, s.numel(), float(kappa)
        theta = torch.arange(pixels, dtype=torch.float64) * (2 * math.pi / pixels)
        self.register_buffer("theta", theta.to(dtype))
        self.register_buffer("scale", _ring_scale(s, theta, kappa).to(dtype))
        self.register_buffer("R0", _random_rotation(latent_dim, seed, dtype))


class RotatedRenderer(_Rings):
    """G(z) = f(R z): (N, d) -> (N, F, P), F factors rendered as blobs on rings of P pixels.

    Args:
        latent_dim: d >= len(sensitivities).
        sensitivities: s_f, the singular values of J (distinct, so the axes are identifiable).
        pixels: P, ring length (>= 16).
        kappa: blob concentration (width ~ 1/sqrt(kappa) radians).
        seed: seed of the random starting rotation R0.
        dtype: parameter dtype.
    Parameters: `skew` [d, d] (R = expm(skew - skew^T) R0; zero at the start).
    """

    def __init__(
        self,
        latent_dim: int = 8,
        sensitivities=DEFAULT_SENSITIVITIES,
        *,
        pixels: int = 48,
        kappa: float = 4.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(latent_dim, _checked_renderer(latent_dim, sensitivities, pixels), pixels, kappa, seed, dtype)
        self.skew = nn.Parameter(torch.zeros(latent_dim, latent_dim, dtype=dtype))

    def rotation(self) -> torch.Tensor:
        """R [d, d], orthogonal."""
        return torch.linalg.matrix_exp(self.skew - self.skew.T) @ self.R0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = z @ self.rotation().T  # [N, d]; row f drives factor f
        u = u[:, : self.num_factors, None]  # [N, F, 1]
        bump = torch.exp(self.kappa * (torch.cos(self.theta - u) - 1))  # [N, F, P]
        return self.scale[None, :, None] * bump


def _low_rank_expm(E: torch.Tensor, S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """expm(A) for A = E S - S^T E^T (E [d, F], S [F, d]) as I + W M W^T, W = [E, S^T] [d, 2F].

    A = W J W^T with J = [[0, I], [-I, 0]], so expm(A) = I + W phi(J W^T W) J W^T with
    phi(X) = (e^X - I) / X, read off the top-right block of expm([[X, I], [0, 0]]) (4F x 4F).
    Returns (W, M = phi(J W^T W) J).
    """
    F = E.shape[1]
    W = torch.cat([E, S.T], 1)
    eye, zero = torch.eye(F, dtype=W.dtype, device=W.device), torch.zeros(F, F, dtype=W.dtype, device=W.device)
    J = torch.cat([torch.cat([zero, eye], 1), torch.cat([-eye, zero], 1)])
    X = J @ (W.T @ W)
    n = 2 * F
    big = torch.zeros(2 * n, 2 * n, dtype=W.dtype, device=W.device)
    big[:n, :n] = X
    big[:n, n:] = torch.eye(n, dtype=W.dtype, device=W.device)
    phi = torch.linalg.matrix_exp(big)[:n, n:]
    return W, phi @ J


class GateGenerator(_Rings):
    """G(z) = [f(u_1..u_F), weak * u_{F+1..d}] with u = R z: (N, d) -> (N, F P [+ d - F]).

    The known answer: J(z) = D(u) R with D's columns orthogonal, so J^T J = R^T diag(s(z)^2) R,
    s(z) = `spectrum(z)`: s_f (1 + a cos(w u_f + c_f)) for the F used factors (a = `wobble`),
    `weak` for the other d - F.  The right-singular vectors are the rows of R, and the regularizer
    is right when R is a signed permutation on the F used rows.

    Args:
        latent_dim: d >= len(sensitivities).
        sensitivities: s_f, the F used factors' singular values at wobble 0 (positive).
        weak: singular value of each of the d - F other directions, an absolute value like s_f
            (0: exactly unused, no readout; 0.01 = 1/50 of the weakest default factor 0.5 at F = 3).
        wobble: a in [0, 1): the factors' sensitivity varies as s_f (1 + a cos(w u_f + c_f)),
            never zero; with a > 0 the order of the factors by sensitivity changes across z.
        frequency: w, the wobble's frequency in u_f (u_f ~ N(0, 1)).
        pixels, kappa: ring length (>= 16) and blob concentration, as `RotatedRenderer`.
        seed: seed of the random starting rotation R0 (the same R0 as RotatedRenderer's seed).
        dtype: parameter dtype.
    Parameters: `skew` [F, d]; R = expm(P - P^T) R0 with P = [skew; 0], [d, d] (zero at the start).
    Phases: c_f = 2 pi f / F, so the factors' sensitivities peak at different u.
    """

    sens: torch.Tensor  # buffers, registered in __init__ (and _Rings')
    phase: torch.Tensor

    def __init__(
        self,
        latent_dim: int = 8,
        sensitivities=DEFAULT_SENSITIVITIES,
        *,
        weak: float = 0.0,
        wobble: float = 0.0,
        frequency: float = 2.0,
        pixels: int = 48,
        kappa: float = 4.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        s = _checked_renderer(latent_dim, sensitivities, pixels)
        if not isinstance(weak, (int, float)) or isinstance(weak, bool) or not 0 <= weak < float(s.min()):
            raise ValueError(f"weak must be a number in [0, min(sensitivities)), got {weak!r}")
        if not isinstance(wobble, (int, float)) or isinstance(wobble, bool) or not 0 <= wobble < 1:
            raise ValueError(f"wobble must be a number in [0, 1), got {wobble!r}")
        if not isinstance(frequency, (int, float)) or isinstance(frequency, bool) or not frequency > 0:
            raise ValueError(f"frequency must be a positive number, got {frequency!r}")
        super().__init__(latent_dim, s, pixels, kappa, seed, dtype)
        self.weak, self.wobble, self.frequency = float(weak), float(wobble), float(frequency)
        self.register_buffer("sens", s.to(dtype))
        self.register_buffer("phase", (2 * math.pi / s.numel()) * torch.arange(s.numel(), dtype=dtype))
        self.skew = nn.Parameter(torch.zeros(s.numel(), latent_dim, dtype=dtype))

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, factors={self.num_factors}, weak={self.weak}, wobble={self.wobble}"

    def _expm_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """expm(A) = I + W M W^T: W [d, 2F], M [2F, 2F] (`_low_rank_expm`)."""
        F = self.num_factors
        E = torch.zeros(self.latent_dim, F, dtype=self.skew.dtype, device=self.skew.device)
        E[:F] = torch.eye(F, dtype=E.dtype, device=E.device)
        return _low_rank_expm(E, self.skew)

    def rotation(self) -> torch.Tensor:
        """R = expm(A) R0 [d, d], orthogonal (to rounding)."""
        W, M = self._expm_factors()
        return self.R0 + W @ (M @ (W.T @ self.R0))

    def _rotate(self, z: torch.Tensor) -> torch.Tensor:
        """u = z R^T [N, d] in O(N d F) past z R0^T."""
        W, M = self._expm_factors()
        y = z @ self.R0.T
        return y + ((y @ W) @ M.T) @ W.T

    def _angle_rate(self, u: torch.Tensor) -> torch.Tensor:
        """d phi_f / d u_f = 1 + a cos(w u_f + c_f), [N, F] for u [N, F]."""
        return 1 + self.wobble * torch.cos(self.frequency * u + self.phase)

    def spectrum(self, z: torch.Tensor) -> torch.Tensor:
        """s(z) [N, d]: the singular value of J(z) along each row of R (not sorted): the used
        factors' s_f (1 + a cos(w u_f + c_f)), then `weak` (or 0) for the other d - F rows."""
        with torch.no_grad():
            u = self._rotate(z)
            used = self.sens * self._angle_rate(u[:, : self.num_factors])
            rest = used.new_full((z.shape[0], self.latent_dim - self.num_factors), self.weak)
            return torch.cat([used, rest], 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, d] -> [N, F * P] (weak = 0) or [N, F * P + d - F]."""
        F = self.num_factors
        u = self._rotate(z)  # [N, d]; row f drives factor f
        used = u[:, :F]
        if self.wobble:
            w = self.frequency
            used = used + (self.wobble / w) * (torch.sin(w * used + self.phase) - torch.sin(self.phase))
        bump = torch.exp(self.kappa * (torch.cos(self.theta - used[:, :, None]) - 1))  # [N, F, P]
        out = (self.scale[None, :, None] * bump).flatten(1)
        if self.weak and self.latent_dim > F:
            out = torch.cat([out, self.weak * u[:, F:]], 1)
        return out


def factor_alignment(G: "RotatedRenderer | GateGenerator") -> torch.Tensor:
    """[F]: max_j R_{fj}^2 for each used factor f (1 = the factor is driven by one latent axis)."""
    with torch.no_grad():
        return (G.rotation()[: G.num_factors] ** 2).max(dim=1).values


@dataclass
class GateResult:
    alignment: list[float]  # per factor, at the end
    min_alignment: float  # over the judged factors
    axes: list[int]  # the latent axis driving each factor at the end
    distinct_axes: bool  # the judged factors' axes are distinct
    calls: int  # regularizer calls (optimizer steps)
    computed_calls: int  # calls that ran the power iteration (every= skips the rest)
    seconds: float
    history: list[float] = field(default_factory=list)  # min alignment every 10 calls


def oracle_penalty(G: "RotatedRenderer | GateGenerator", z: torch.Tensor) -> torch.Tensor:
    """The ceiling: the offdiag alignment loss (uniform rank weights) on the known singular
    vectors, the used rows of R, with no estimation at all.  A scalar, differentiable in R."""
    from spectral_ops.ops import alignment_loss

    F = G.num_factors
    V = G.rotation()[:F][None]
    S = (torch.arange(F, 0, -1, dtype=V.dtype) / F).sqrt()[None]
    return alignment_loss(V, S, "offdiag", "uniform").mean()


def run_gate(
    reg,
    *,
    latent_dim: int = 8,
    sensitivities=DEFAULT_SENSITIVITIES,
    seed: int = 0,
    steps: int = 200,
    batch_size: int = 16,
    lr: float = 0.05,
    dtype: torch.dtype = torch.float32,
    target: float | None = None,
    judged: int | None = None,
    generator: dict | None = None,
) -> GateResult:
    """Optimise a generator's rotation with Adam on `reg(G, z)` alone.

    Args:
        reg: a callable (G, z) -> scalar loss, e.g. a SpectralRegularizer or
            ``lambda G, z: spectral_penalty(G, z, ...)``.
        generator: None (a RotatedRenderer(latent_dim, sensitivities)) or the keyword arguments
            of a GateGenerator (its `latent_dim` and `sensitivities` default to these arguments;
            `seed` and `dtype` are this function's).
        seed: seeds both the starting rotation and the latent batches.
        steps: optimizer steps (one regularizer call each).
        target: stop early once every judged factor's alignment is at least this.
        judged: how many leading (most sensitive) factors the result judges (default: all); a
            regularizer with k vectors can only align the top k.
    """
    G: RotatedRenderer | GateGenerator
    if generator is None:
        G = RotatedRenderer(latent_dim, sensitivities, seed=seed, dtype=dtype)
    else:
        G = GateGenerator(
            **{"latent_dim": latent_dim, "sensitivities": sensitivities, **generator}, seed=seed, dtype=dtype
        )
    latent_dim = G.latent_dim
    judged = G.num_factors if judged is None else int(judged)
    if not 1 <= judged <= G.num_factors:
        raise ValueError(f"judged must lie in [1, {G.num_factors}], got {judged!r}")
    opt = torch.optim.Adam(G.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(10_000 + seed)
    history, computed = [], 0
    t0 = time.perf_counter()
    step = 0
    for step in range(1, steps + 1):
        z = torch.randn(batch_size, latent_dim, generator=gen, dtype=dtype)
        loss = reg(G, z)
        opt.zero_grad(set_to_none=True)
        if loss.grad_fn is not None:  # a skipped lazy call returns a graph-free zero
            loss.backward()
            opt.step()
            computed += 1
        if step % 10 == 0 or step == steps:
            a = factor_alignment(G)[:judged]
            history.append(float(a.min()))
            if target is not None and float(a.min()) >= target:
                break
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        R = G.rotation()[: G.num_factors]
    best = (R**2).max(dim=1)
    axes = [int(i) for i in best.indices]
    return GateResult(
        [float(x) for x in best.values],
        float(best.values[:judged].min()),
        axes,
        len(set(axes[:judged])) == judged,
        step,
        computed,
        seconds,
        history,
    )
