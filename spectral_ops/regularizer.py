"""The spectral disentanglement regularizer: align the top-k right-singular vectors of J(z) with the
latent coordinate axes.

The vectors come from an inner solver (`solver="krylov"`, batched Lanczos from a warm-start
block, by default; or block power iteration) run to a residual `tol`; vectors G ignores
(sigma_i <= null_tol * sigma_1) drop out of the loss (docs/design.md).

Drop-in use in any PyTorch GAN loop::

    reg = spectral_ops.SpectralRegularizer(latent_dim)      # keep it with G (state_dict: warm start)
    ...
    loss_G = adversarial_loss(D(G(z)))
    loss_G = loss_G + 0.1 * reg(G, z)                        # one line (0.1: docs/experiment.md)
    loss_G.backward()

`spectral_penalty(G, z)` is the stateless function underneath.

How the gradient reaches G's parameters (``grad=``), with v_i the top-k eigenvectors of
M(z) = J^T J and lambda_i = sigma_i^2 their eigenvalues:

- ``"fast"`` (the default): the eigenvector derivative with the coupling inside the top-k
  block in closed form and the rest to first order.  With g_i = dL/dv_i it takes
  a_i = sum_{j<=k, j!=i} (g_i . v_j) / (lambda_i - lambda_j) v_j + (I - V^T V) g_i / lambda_i,
  i.e. (lambda_i I - M)^+ with the out-of-block eigenvalues dropped (exact when lambda_{k+1} << lambda_i),
  and backpropagates through sum_i (J a_i) . (J v_i).  J v_i comes from the last power
  iteration's J Q (V lies in span Q), so it adds one theta-differentiable JVP block (J a_i) and
  no CG.  Measured against the eigh oracle
  (float64, converged, k=2, 3 samples, tests/test_regularizer.py), cosine to the exact gradient,
  with the removed last_step in brackets:

  =========================  ==============  ==============  ==============
  generator                  l1              assigned        offdiag
  =========================  ==============  ==============  ==============
  MLP 5-16-12, tanh          0.951 (0.580)   0.960 (0.976)   0.978 (0.976)
  conv-transpose 4->1x8x8    0.809 (0.919)   0.838 (0.884)   0.988 (0.978)
  =========================  ==============  ==============  ==============

  On these generators the out-of-block part dominates the error, and both rules err by about
  as much.  The difference is inside the block, which decides alignment: on the known-answer
  generator fast aligns every factor and last_step ends below a random rotation.  With
  rank(J) = k (no out-of-block spectrum) fast equals the exact gradient (tests, 1e-6).
- ``"last_step"`` (removed): differentiating one power step v = M v*/||M v*|| weights the in-block
  coupling by 1/lambda_i instead of 1/(lambda_i - lambda_j).  Along a rotation of two top vectors
  its derivative is -(1-r)^2/(2r) times the exact one (r = lambda_2/lambda_1: the wrong sign) for
  l1 and assigned, so on the known-answer generator it ended less aligned than a random rotation.
  Passing it raises a ValueError that names its replacement.
- ``"implicit"``: exact at convergence.  With g_i = dL/dv_i, solve
  (lambda_i I - M) a_i = (I - v_i v_i^T) g_i, a_i orthogonal to v_i: the components along the
  other top-k vectors in closed form (g_i . v_j) / (lambda_i - lambda_j), the rest by conjugate
  gradients on the complement of the top-k span (where lambda_i I - M is positive definite when
  lambda_i > lambda_{k+1}), matrix-free with the folded operator and batched over samples and i.
  Then d/dtheta[a_i^T M v_i] = d/dtheta[(J a_i) . (J v_i)] with a_i, v_i held fixed: two
  theta-differentiable JVPs.  Matches autograd through torch.linalg.eigh of the explicit J^T J to
  a relative error below 1e-4 (tests).  Near-repeated eigenvalues inside the top-k block make the
  exact gradient unbounded; the closed-form coefficients use (x / (x^2 + delta^2)) with
  delta = sqrt(eps) * lambda_1, so nothing is ever NaN or infinite.

Singular values (both modes): sigma_i = ||J v_i|| with v_i held fixed, whose derivative is
d lambda_i / (2 sigma_i) by Hellmann-Feynman (exact at convergence).

Cost: about k * (iters + 1) JVP/VJP pairs on the folded batch (implicit: plus cg_iters products
and one more JVP), against one generator forward/backward for a plain step.  `SpectralRegularizer`
amortises it with ``every`` (lazy regularization), ``batch_fraction`` (a random subset of the rows)
and a warm-start basis; see its docstring for the measured overhead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import warnings

import torch

from . import ops
from .config import GRADS, RegularizerConfig
from .generator import prepared
from .latents import flatten_latents, select_rows
from .jacobian import JacobianOperator, name_rows
from .lazy import LazyPenalty
from .ops.common import LOSS_KINDS, WEIGHT_KINDS, compute_dtype
from .krylov import KRYLOV_SECOND_START, _ShrinkingProducts, block_lanczos, folded_start, krylov_block
from .power import checked_warm_start, power_iteration, zero_jacobian_axes
from .validation import check_callable, check_init, check_int, derived_seed

__all__ = [
    "spectral_penalty",
    "SpectralRegularizer",
    "RegularizerConfig",
    "LOSSES",
    "GRADS",
    "WEIGHTS",
    "default_basis",
]

LOSSES, WEIGHTS = LOSS_KINDS, WEIGHT_KINDS
# A computed call whose vectors end with a median worst residual above this warns (once).
RESIDUAL_WARNING = 0.05
# grad="implicit" solves to at most this many machine epsilons of the compute dtype.
IMPLICIT_TOL_EPS = 1000.0
_CONFIG_FIELDS = frozenset(RegularizerConfig.__dataclass_fields__)


def default_basis(
    k: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """A fixed random orthonormal basis [k, d] (the shared starting point of the power iteration).

    Every row of a batch starts from the same basis, so the result for a row does not depend on
    which other rows share its batch (identical under any sharding across processes).
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    W = torch.randn(1, k, d, generator=gen, dtype=torch.float64)
    # the pure-torch reference: a CPU computation that no backend choice (use_backend) redirects
    return ops.reference.orthonormalize(W)[0].to(device=device, dtype=dtype)


# ---- the computation ------------------------------------------------------------------------------
def _safe_norm(X: torch.Tensor) -> torch.Tensor:
    """||x|| over the last dim with a zero (not NaN) gradient at x = 0."""
    n2 = (X * X).sum(-1)
    pos = n2 > 0
    return torch.where(pos, torch.where(pos, n2, torch.ones_like(n2)).sqrt(), torch.zeros_like(n2))


def _power(op: JacobianOperator, Q0: torch.Tensor, V_prev, iters: int, tol: float, cdtype):
    """The shared block power iteration (`power.power_iteration`), with the last iteration's
    J Q keeping G's parameter graph so the loss can reuse it for J V.

    Returns V, lam (eigenvalues of J^T J / c^2), c [B] (the per-sample scale of J: the
    eigenvalues of J^T J are lam * c^2), res, Q_next and JV [B, k, m] (theta-differentiable
    J V, unscaled, or None when the iteration stopped early: then the caller computes it).
    """
    r = power_iteration(op, Q0, V_prev, iters, tol, cdtype, keep_last_graph=True)
    JV = None
    if r.graph_kept:
        # V lies in span(Q): V = U Q with U = V Q^T (k x k), so J V = U (J Q) -- no extra JVP.
        U = (r.V.to(cdtype) @ r.Q.to(cdtype).transpose(-1, -2)).detach()
        JV = U.to(r.JQ.dtype) @ r.JQ
    V, res, Q_next = r.V.to(cdtype), r.res.to(cdtype), r.Q_next.to(cdtype)
    lam = r.lam.to(cdtype)
    # J(z) == 0: deterministic coordinate axes (J V stays right: it is zero for any V)
    V, Q_next = zero_jacobian_axes(lam, V, Q_next)
    return V, lam.clamp_min(0), r.c.to(cdtype), res, Q_next, JV


def _krylov(
    G, z: torch.Tensor, Q0: torch.Tensor, V_prev, max_vectors: int, tol: float, null_tol: float, mode: str, cdtype
):
    """The top-k of J^T J by the batched Lanczos (`krylov.block_lanczos`) started from the block
    Q0 [B, k, d] (the warm-start basis, folded into krylov_block(B, k) start vectors).

    Returns V [B, k, d] (signs following V_prev, axes where J = 0), lam [B, k] (eigenvalues of
    J^T J / c^2, descending), c [B] (the per-sample scale of J) and res [B, k]
    (||M v - lam v|| / lam_1), with no parameter graph.
    """
    B, k, _ = Q0.shape
    p = krylov_block(B, k)
    X = ops.orthonormalize(folded_start(Q0, p))  # [B, p, d]: every warm-start vector, in p
    products = _ShrinkingProducts(G, z, p, mode, cdtype)
    MX = products(X, torch.arange(B, device=z.device))
    # block_lanczos runs its dense algebra outside autocast and G's passes under the caller's setting
    # pairs that pass are checked as the top k against a second, random start: the warm start can
    # span an invariant subspace that skips an eigenvector (two values crossed since the last call)
    r = block_lanczos(
        products,
        X,
        MX,
        k,
        p,
        max(max_vectors, p + KRYLOV_SECOND_START),
        tol,
        relative_floor=null_tol * null_tol,
        second_start=KRYLOV_SECOND_START,
    )
    V = r.V * ops.common.sign_align(r.V, V_prev)[..., None]
    (V,) = zero_jacobian_axes(r.lam, V)
    return V, r.lam.clamp_min(0), products.c, r.res


def _project_out(X: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Remove from every row x_i of X [B, k, d] its components along all k rows of V [B, k, d]."""
    return X - (X @ V.transpose(-1, -2)) @ V


def in_block_solve(V: torch.Tensor, lam: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The top-k block of (lambda_i I - M)^+ g_i: sum_{j != i} c_ij (g_i . v_j) v_j, [B, k, d].

    c_ij = x / (x^2 + delta^2) with x = lambda_i - lambda_j and delta = sqrt(eps) lambda_1: the
    exact 1/(lambda_i - lambda_j) away from ties, bounded (never NaN or inf) at ties.
    V: [B, k, d], lam: [B, k] descending, g: [B, k, d].
    """
    cdtype = V.dtype
    eps = torch.finfo(cdtype).eps
    delta = (eps**0.5) * lam[:, :1, None]  # [B, 1, 1]
    diff = lam[:, :, None] - lam[:, None, :]  # lambda_i - lambda_j
    k = V.shape[1]
    off = ~torch.eye(k, dtype=torch.bool, device=V.device)
    coef = torch.where(
        off, diff / (diff * diff + delta * delta).clamp_min(torch.finfo(cdtype).tiny), torch.zeros_like(diff)
    )
    return (coef * (g @ V.transpose(-1, -2))) @ V


def first_order_solve(V: torch.Tensor, lam: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """grad="fast": in-block exact, out-of-block (lambda_i I - M)^+ ~ 1/lambda_i.  [B, k, d]."""
    inv = torch.where(lam > 0, 1 / torch.where(lam > 0, lam, torch.ones_like(lam)), torch.zeros_like(lam))
    return in_block_solve(V, lam, g) + inv[..., None] * _project_out(g, V)


def scaled_matvec(op: JacobianOperator, X: torch.Tensor, c: torch.Tensor, cdtype) -> torch.Tensor:
    """M X / c^2 = J^T (J X / c) / c [B, k, d] for X [B, k, d] and the per-sample scale c [B]: no
    intermediate carries the square of G's scale, so nothing overflows or underflows."""
    cc = c[:, None, None]
    return op.vjp(op.jvp(X).detach().to(cdtype) / cc).detach().to(cdtype) / cc


def implicit_solve(
    op: JacobianOperator,
    V: torch.Tensor,
    lam: torch.Tensor,
    c: torch.Tensor,
    g: torch.Tensor,
    cg_iters: int,
    cg_tol: float,
) -> torch.Tensor:
    """a_i = (lambda_i I - M)^+ (I - v_i v_i^T) g_i for all samples and i at once, in the units
    of M / c^2.

    V: [B, k, d] top-k eigenvectors, lam: [B, k] eigenvalues of M / c^2 (descending), c: [B] the
    per-sample scale, g: [B, k, d].  Returns a: [B, k, d], orthogonal to v_i.  Top-k block in
    closed form (`in_block_solve`), the complement by CG (each CG step: one folded M-product, no
    parameter graph).
    """
    cdtype = V.dtype
    lam1 = lam[:, :1]
    a_top = in_block_solve(V, lam, g)

    b = _project_out(g, V)
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = (r * r).sum(-1)
    stop = (cg_tol**2) * rr
    # a curvature p^T (lam_i I - M) p below delta |p|^2 (delta = sqrt(eps) lam_1, the in-block rule's)
    # means no gap below lam_i: a tie with the spectrum outside the block (a cluster of weakly used
    # directions), where the eigenvector derivative is undefined and CG would divide by rounding
    delta = (torch.finfo(cdtype).eps ** 0.5) * lam1
    for _ in range(cg_iters):
        if bool((rr <= stop).all()):
            break
        Ap = lam[..., None] * p - _project_out(scaled_matvec(op, p, c, cdtype), V)
        pAp = (p * Ap).sum(-1)
        ok = (pAp > delta * (p * p).sum(-1)) & (rr > stop)  # no gap below lambda_i: stop that row
        alpha = torch.where(ok, rr / torch.where(ok, pAp, torch.ones_like(pAp)), torch.zeros_like(pAp))
        x = x + alpha[..., None] * p
        r = r - alpha[..., None] * Ap
        rr_new = (r * r).sum(-1)
        beta = torch.where(ok & (rr > 0), rr_new / torch.where(rr > 0, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = torch.where(ok[..., None], r + beta[..., None] * p, torch.zeros_like(p))
        rr = torch.where(ok, rr_new, torch.zeros_like(rr))
    a = a_top + x
    return torch.where((lam1 > 0)[..., None], a, torch.zeros_like(a))


def loss_values(S: torch.Tensor, loss: str, weights: str) -> torch.Tensor:
    """The singular values [B, k] the alignment op sees.

    For loss="offdiag" with weights="uniform", A = sum_i w_i v_i v_i^T with the fixed rank
    weights w_i = (k - i + 1) / k instead of s_i^2: A no longer depends on the spectrum, so the
    loss cannot be lowered by collapsing it, and the weights stay distinct, so A still tells the
    vectors apart (equal weights would make A a projector, blind to rotations inside the span).
    weights="geometric" takes w_i = 2^-(i-1) instead: the same independence of the spectrum with
    larger gaps between the top weights, so a mixed pair among the top vectors costs more
    (docs/design.md, "Polar codes").  weights="singular" keeps A = sum_i s_i^2 v_i v_i^T, the
    rank-k part of J^T J.
    """
    if loss != "offdiag" or weights == "singular":
        return S
    k = S.shape[-1]
    if weights == "geometric":
        rank = 0.5 ** torch.arange(k, dtype=S.dtype, device=S.device)
    else:
        rank = torch.arange(k, 0, -1, dtype=S.dtype, device=S.device) / k
    return rank.sqrt().expand_as(S)


def active_vectors(lam: torch.Tensor, null_tol: float) -> torch.Tensor:
    """[B, k] bool: the vectors whose singular value is above null_tol * sigma_1 (lam_i >
    null_tol^2 lam_1, lam_1 > 0).  The others span directions G (nearly) ignores: they are
    arbitrary, their in-block coupling 1/(lam_i - lam_j) is undefined and the out-of-block term
    divides by lam_i, so they drop out of the loss and its gradient (docs/design.md)."""
    lam1 = lam[:, :1]
    return (lam > (null_tol * null_tol) * lam1) & (lam1 > 0)


def masked_loss_inputs(S: torch.Tensor, active: torch.Tensor, loss: str, weights: str) -> tuple[torch.Tensor, str]:
    """(S, weights) for `ops.alignment_loss` such that inactive vectors weigh zero.

    offdiag: A = sum_i w_i v_i v_i^T over the active vectors (w_i from `loss_values`, zeroed).
    l1 / assigned: "singular" weights S_i / sum(S) with S_i zeroed where inactive; "uniform"
    becomes equal weights over the active vectors (the 0/1 mask as S, normalised by the op).
    """
    mask = active.to(S.dtype)
    if loss == "offdiag":  # the op reads offdiag's A from S alone: its weights argument is moot
        return loss_values(S, loss, weights) * mask, "singular" if weights == "singular" else "uniform"
    if weights == "uniform":
        return mask, "singular"
    return S * mask, "singular"


def _eigvec_gradient(
    op: JacobianOperator,
    V: torch.Tensor,
    lam: torch.Tensor,
    c: torch.Tensor,
    active: torch.Tensor,
    loss: str,
    weights: str,
    grad: str,
    cg_iters: int,
    cg_tol: float,
    cdtype,
    JV: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss at V, with the eigenvector derivative (grad "fast" or "implicit") on its backward.

    lam [B, k]: eigenvalues of M / c^2, with c [B] the per-sample scale of J (detached).  The
    whole computation runs in these units (J / c), where it is the same for any scale of G: the
    loss is scale-free in S, and v_i does not move when M is scaled, so the surrogate below is
    the exact one divided by nothing (docs/design.md, "Scale").
    active [B, k]: the vectors that enter the loss (`active_vectors`).
    JV: J V with a theta graph, if the power iteration already has it."""
    cc = c.detach()[:, None, None]
    if JV is None:
        JV = op.jvp(V, create_graph=True)  # differentiable in theta
    JV = JV.to(cdtype) / cc
    S = _safe_norm(JV)  # Hellmann-Feynman path for the values
    V_leaf = V.detach().requires_grad_(True)
    S_op, weights_op = masked_loss_inputs(S, active, loss, weights)
    value = ops.alignment_loss(V_leaf, S_op, loss, weights_op).to(cdtype).mean()
    (g,) = torch.autograd.grad(value, V_leaf, retain_graph=True)
    g = g.detach().to(cdtype)
    A = first_order_solve(V, lam, g) if grad == "fast" else implicit_solve(op, V, lam, c, g, cg_iters, cg_tol)
    JA = op.jvp(A, create_graph=True).to(cdtype) / cc
    surrogate = (JA * JV).sum()
    return value + (surrogate - surrogate.detach())


@dataclass
class PenaltyResult:
    """What one computed call of the regularizer saw, on its n rows.

    value: scalar penalty (theta-differentiable); vectors [n, k, d] and values [n, k] (singular
    values, descending), detached; residuals [n, k] ||M v - lam v|| / lam_1; active [n, k] bool
    (the vectors that entered the loss, `active_vectors`); next_basis [n, k, d]: where the next
    call should start (the converged vectors, or one power step beyond V for solver="power");
    subnormal [n] bool: rows whose Jacobian scale is below the smallest normal number of G's
    output dtype, where the gradient (about 1 / scale at G's output) cannot be represented.
    """

    value: torch.Tensor
    vectors: torch.Tensor
    values: torch.Tensor
    residuals: torch.Tensor
    active: torch.Tensor
    next_basis: torch.Tensor
    subnormal: torch.Tensor


def solver_tolerance(config: RegularizerConfig, cdtype: torch.dtype) -> float:
    """The residual the inner solver stops at: `tol`, and for grad="implicit" (exact only at
    convergence) at most IMPLICIT_TOL_EPS machine epsilons of the compute dtype."""
    if config.grad == "implicit":
        return min(config.tol, IMPLICIT_TOL_EPS * torch.finfo(cdtype).eps)
    return config.tol


def _start(config: RegularizerConfig, init, B: int, d: int, cdtype, device):
    """(Q0 [B, k, d] orthonormal start, V_prev for the signs or None)."""
    if init is None:
        return default_basis(config.k, d, dtype=cdtype, device=device).expand(B, config.k, d), None
    init = init.detach().to(device=device, dtype=cdtype)
    if init.dim() == 2:
        init = init.expand(B, config.k, d)
    return ops.orthonormalize(init.contiguous()), init


def _penalty(G, z, config: RegularizerConfig, init) -> PenaltyResult:
    """z: [B, ...] (already validated); init: the start basis [k, d] or [B, k, d], or None."""
    c = config
    with prepared(G, z, jvp=c.jvp, batchnorm=c.batchnorm) as (G, z, mode):
        B, d = z.shape
        cdtype = compute_dtype(z.dtype)
        Q0, V_prev = _start(c, init, B, d, cdtype, z.device)
        if c.solver == "power":
            op = JacobianOperator(G, z, c.k, mode)
            V, lam, scale, res, Q_next, JV = _power(op, Q0, V_prev, c.iters, solver_tolerance(c, cdtype), cdtype)
            if V_prev is not None:  # a warm start: the pairs that pass are checked as the top k
                V_checked, lam, res, passes, _ = checked_warm_start(
                    G,
                    z,
                    V,
                    lam,
                    res,
                    scale,
                    c.iters * c.k,
                    solver_tolerance(c, cdtype),
                    mode,
                    cdtype,
                    relative_floor=c.null_tol * c.null_tol,
                )
                if passes:  # the check moved some rows: J V is computed anew
                    (V,) = zero_jacobian_axes(lam, V_checked)
                    lam, JV, Q_next = lam.clamp_min(0), None, V
        else:
            V, lam, scale, res = _krylov(
                G, z, Q0, V_prev, c.iters * c.k, solver_tolerance(c, cdtype), c.null_tol, mode, cdtype
            )
            op, JV, Q_next = JacobianOperator(G, z, c.k, mode), None, V  # the graph for J V and J a
        active = active_vectors(lam, c.null_tol)
        value = _eigvec_gradient(op, V, lam, scale, active, c.loss, c.weights, c.grad, c.cg_iters, c.cg_tol, cdtype, JV)
        subnormal = scale < torch.finfo(op.y.dtype).tiny
    return PenaltyResult(
        value, V.detach(), lam.sqrt() * scale[:, None], res.detach(), active, Q_next.detach(), subnormal
    )


def read_back(result: PenaltyResult, config: RegularizerConfig, warned: set, where: str) -> float:
    """The one host synchronisation of a computed call after its solver: whether the penalty and
    the next basis are finite, and the median over samples of the worst residual.  Raises on a
    non-finite result; warns once per `warned` set (per regularizer, or per process for
    `spectral_penalty`) when the vectors the loss saw are far from converged.  Returns that median."""
    worst = result.residuals.max(-1).values.median()
    finite = torch.isfinite(result.value) & torch.isfinite(result.next_basis).all()
    ok, subnormal, worst = torch.stack(
        [finite.to(worst.dtype), result.subnormal.any().to(worst.dtype), worst.to(worst.dtype)]
    ).tolist()
    if subnormal:
        try:
            name_rows(result.subnormal, "J(z) is below the smallest normal number of G's output dtype")
        except ValueError as exc:
            raise ValueError(
                f"{exc}: the penalty's gradient (about 1 / |J| at G's output) cannot be represented "
                f"there; rescale G's output or compute in float64"
            ) from None
    if not ok:
        name_rows(~torch.isfinite(result.next_basis).flatten(1).all(1), "the next warm-start basis is not finite")
        raise ValueError(f"the spectral penalty is not finite ({float(result.value)}): check G's outputs and scale")
    cdtype = result.vectors.dtype
    if config.grad == "implicit":
        limit, why = 100 * solver_tolerance(config, cdtype), "grad='implicit' is exact only at convergence"
    else:
        limit, why = RESIDUAL_WARNING, "the loss is not seeing the singular vectors"
    key = (where, config.grad)
    if worst > limit and key not in warned:
        warned.add(key)
        warnings.warn(
            f"{where}: the median worst residual ||Mv - lam v|| / lam_1 of the vectors the loss saw is "
            f"{worst:.3g} > {limit:.3g} ({why}); raise iters (now {config.iters}, a cap of "
            f"{config.iters}*k products per sample for solver='krylov')"
            + (" or use solver='krylov'" if config.solver == "power" else ""),
            UserWarning,
            stacklevel=3,
        )
    return worst


_PENALTY_WARNED: set = set()


_DEFAULTS = RegularizerConfig()


def spectral_penalty(
    G: Callable,
    z: torch.Tensor,
    *,
    k: int = _DEFAULTS.k,
    iters: int = _DEFAULTS.iters,
    loss: str = _DEFAULTS.loss,
    grad: str = _DEFAULTS.grad,
    jvp: str = _DEFAULTS.jvp,
    init: torch.Tensor | None = None,
    weights: str = _DEFAULTS.weights,
    batchnorm: str = _DEFAULTS.batchnorm,
    tol: float = _DEFAULTS.tol,
    cg_iters: int = _DEFAULTS.cg_iters,
    cg_tol: float = _DEFAULTS.cg_tol,
    solver: str = _DEFAULTS.solver,
    null_tol: float = _DEFAULTS.null_tol,
) -> torch.Tensor:
    """Axis-alignment penalty of the top-k right-singular vectors of J(z) = dG/dz, batch mean.

    Args:
        G: callable (N, d) -> (N, ...), deterministic, with no coupling between rows (nn.Module,
            DDP-wrapped module, lambda, partial, plain function, or `spectral_ops.conditioned(G,
            c, ...)` for extra arguments).  Gradients flow to G's parameters (not to z).
        z: [B, d] latent codes, or [B, ...] (the latent is the flattened trailing dims).
        k: vectors per sample, 1 <= k <= d.
        iters: the inner solver's cap: power iterations (each one generator pass on B*k rows),
            or for solver="krylov" at most iters*k products per sample (passes of B rows once
            B >= 16); it stops earlier once every residual is below tol.
        solver: "krylov" (batched Lanczos from init; the default: at latent sizes 64-512 and flat
            spectra it reaches tol where power iteration does not) or "power".
        loss: "l1", "assigned" or "offdiag" (docs/regularizer.md); values in [0, 1].
        grad: "fast" (in-block exact, out-of-block first order) or "implicit" (exact at
            convergence); module docstring.
        jvp: "auto", "double_backward", "forward" or "finite_difference".
        init: starting basis [k, d] or [B, k, d] (default: a fixed random basis shared by all rows).
        weights: "uniform" (independent of the spectrum: equal per-vector weights for l1 and
            assigned; fixed rank weights for offdiag, see `loss_values`), "singular"
            (proportional to the singular values; offdiag: A = sum s_i^2 v_i v_i^T) or, for
            offdiag only, "geometric" (rank weights 2^-(i-1); a candidate, not the default).
        batchnorm: "error" or "eval" for train-mode BatchNorm in G (see `guards.batch_policy`).
        tol: the inner solver stops once every residual ||M v - lam v|| / lam_1 is below tol
            (grad="implicit": at most 1000 machine epsilons, since it is exact only at
            convergence).  A call whose median worst residual ends above 0.05 (implicit: 10x its
            tolerance) warns once.
        null_tol: vectors with sigma_i <= null_tol * sigma_1 drop out of the loss and its
            gradient (directions G ignores: rank J < k).
        cg_iters, cg_tol: conjugate-gradient steps and relative tolerance for grad="implicit".
    Returns:
        scalar tensor (float32, or float64 for float64 z), differentiable w.r.t. G's parameters.
    """
    check_callable("G", G)
    B, d = flatten_latents(z)[0].shape
    config = RegularizerConfig(
        k=k,
        iters=iters,
        loss=loss,
        grad=grad,
        jvp=jvp,
        weights=weights,
        batchnorm=batchnorm,
        tol=tol,
        cg_iters=cg_iters,
        cg_tol=cg_tol,
        solver=solver,
        null_tol=null_tol,
    ).validate(d)
    if init is not None:
        init = check_init(init, B, k, d)
    result = _penalty(G, z, config, init)
    read_back(result, config, _PENALTY_WARNED, "spectral_penalty")
    return result.value


def _as_config(config: object) -> RegularizerConfig:
    """A RegularizerConfig from None (the defaults), a RegularizerConfig, or a mapping of its
    field names (``{"k": 2}``; an unknown name raises TypeError naming it)."""
    if config is None:
        return RegularizerConfig()
    if isinstance(config, RegularizerConfig):
        return config
    if isinstance(config, Mapping):
        names = [key for key in config if not isinstance(key, str)]
        if names:
            raise TypeError(f"config's keys must be field names (str), got {names[0]!r}")
        return RegularizerConfig().replace(**config)
    raise TypeError(
        f"config must be a RegularizerConfig, a mapping of its fields, or None, got {type(config).__name__}"
    )


def regularized_rows(batch_fraction: float, B: int) -> int:
    """How many of a batch's B rows a call regularizes: round(batch_fraction * B), at least 1."""
    return max(1, int(round(batch_fraction * B)))


class SpectralRegularizer(LazyPenalty):
    """Stateful spectral regularizer with lazy steps, a row subset and a warm-start basis.

    Drop-in: ``loss_G = loss_G + weight * reg(G, z)`` before ``loss_G.backward()`` (weight 0.1:
    docs/regularizer.md).

    Args:
        latent_dim: d, the latent size of G.
        config: a `RegularizerConfig` or a dict of its fields (default: its defaults); keyword
            options override its fields (``SpectralRegularizer(d, k=6)``), and the settings read back as attributes.
        k, solver, iters, tol, null_tol, loss, grad, jvp, weights, batchnorm, cg_iters, cg_tol: as in
            `spectral_penalty`.
        every: compute the penalty on one call in `every` (the first call computes) and scale it
            by `every` (lazy regularization, as StyleGAN2's path-length penalty); other calls
            return a graph-free zero.
        batch_fraction: regularize a random subset of round(batch_fraction * B) rows (at least 1).
        warm_start: start the inner solver from a running, sign-aligned mean basis [k, d]
            (buffer `basis`); otherwise from the fixed random basis it is initialised with.
        momentum: weight of the new batch mean in the running basis.
        seed: seeds the initial basis and the row subsets (which are the same on every process).
    Buffers (in state_dict): `step` (trainer iterations so far), `basis` [k, d].  A trainer with a
    separate regularization phase writes ``if reg.due(): reg(G, z).backward()``: `due()` counts
    the iterations it skips, so the phase runs on every `every`-th iteration (`will_compute` only
    reads the schedule).
    After each computed call, `last_latents` [n, ...] (the regularized rows of z), `last_vectors`
    [n, k, d], `last_values` [n, k] (singular values), `last_residuals` [n, k], `last_active`
    [n] (how many of the k vectors entered the loss: those above null_tol * sigma_1) and
    `last_worst_residual` (the median over rows of the worst residual) hold what the loss saw
    on its n rows (detached; not in state_dict), so a trainer can log convergence, the rank and
    the spectrum (sigma_{i+1}/sigma_i).  A call whose vectors end with a median worst residual
    above 0.05 warns once.

    Defaults (solver="krylov" from the warm-start basis to tol=1e-4, at most iters*k = 24
    products per sample; loss="offdiag" with spectrum-free rank weights, grad="fast", every=8,
    batch_fraction=0.25) pass the known-answer grid (spectral_ops.testing.known_answer,
    bench/bench_gate.py, tests/test_gate.py) and converge where users run it
    (bench/bench_convergence.py); the cost of a generator step against a plain one is in
    bench/bench_regularizer.py and docs/regularizer.md.

    Under DDP: call it with the DDP-wrapped G (the extra passes use G.module) and add it to the
    loss that the same backward() reduces: the penalty's parameter gradients reach the same
    gradient accumulators that DDP hooks, so they are averaged with the adversarial gradients,
    and the per-process batch mean becomes the global batch mean.  The running basis is
    all-reduced so every process keeps the same one.
    """

    # the last computed call's rows (None before the first)
    last_latents: torch.Tensor | None
    last_vectors: torch.Tensor | None
    last_values: torch.Tensor | None
    last_residuals: torch.Tensor | None
    last_active: torch.Tensor | None

    def __init__(self, latent_dim: int, config: RegularizerConfig | None = None, **options):
        super().__init__(every=1)  # the real `every` comes from the validated config below
        check_int("latent_dim", latent_dim, 1)
        config = _as_config(config).replace(**options).validate(latent_dim)
        self.latent_dim, self.config, self.every = latent_dim, config, config.every
        self.register_buffer("basis", default_basis(config.k, latent_dim, seed=config.seed, dtype=torch.float32))
        self.last_latents = self.last_vectors = self.last_values = self.last_residuals = self.last_active = None
        self.last_worst_residual: float | None = None
        self._warned: set = set()

    def __getattr__(self, name: str):
        """The settings read as attributes (reg.k, reg.loss, ...), from `config`."""
        config = self.__dict__.get("config")
        if config is not None and name in _CONFIG_FIELDS:
            return getattr(config, name)
        return super().__getattr__(name)

    def extra_repr(self) -> str:
        return (
            f"latent_dim={self.latent_dim}, k={self.k}, iters={self.iters}, loss={self.loss!r}, "
            f"grad={self.grad!r}, every={self.every}, batch_fraction={self.batch_fraction}, "
            f"warm_start={self.warm_start}, solver={self.solver!r}"
        )

    def _rows(self, B: int, step: int, device) -> torch.Tensor | None:
        n = regularized_rows(self.batch_fraction, B)
        if n >= B:
            return None
        # a seeded CPU generator: the same rows on every device and process; copied, not read back
        gen = torch.Generator(device="cpu").manual_seed(derived_seed(self.seed * 1_000_003, step))
        rows = torch.randperm(B, generator=gen)[:n].sort().values
        device = torch.device(device)
        return rows.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else rows.to(device)

    def check_call(self, G: Callable, z: torch.Tensor) -> None:
        """Shapes and types only, on every call; the values of z are checked on computed calls
        (reading them back would synchronise a skipped call with the device)."""
        check_callable("G", G)
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
        if not z.dtype.is_floating_point:
            raise TypeError(f"z must be a floating-point tensor, got {z.dtype}")
        if z.dim() < 2 or z.shape[0] == 0 or z[0].numel() != self.latent_dim:
            raise ValueError(
                f"z must be [batch, latent_dim={self.latent_dim}] (or [batch, ...] with "
                f"{self.latent_dim} values per row), got shape {tuple(z.shape)}"
            )

    def penalty(self, G: Callable, z: torch.Tensor, step: int) -> torch.Tensor:
        """The unscaled penalty on this step's rows (`forward` scales it by `every`).

        z: [B, latent_dim] or [B, ...] with prod(z.shape[1:]) = latent_dim (e.g. [B, nz, 1, 1]).
        A call that raises leaves the module's state (step, basis, last_*) unchanged.
        """
        rows = self._rows(z.shape[0], step, z.device)
        zs = z if rows is None else z.index_select(0, rows)
        Gs = G if rows is None else select_rows(G, rows)
        r = _penalty(Gs, zs, self.config, self.basis)
        self.last_worst_residual = read_back(r, self.config, self._warned, "SpectralRegularizer")
        self.last_latents, self.last_vectors, self.last_values = zs.detach(), r.vectors, r.values.detach()
        self.last_residuals, self.last_active = r.residuals, r.active.sum(-1)
        if self.warm_start and self.training:
            self._update_basis(r.next_basis, r.active)
        return r.value

    @torch.no_grad()
    def _update_basis(self, V: torch.Tensor, active: torch.Tensor) -> None:
        """basis_i <- orthonormalize((1 - momentum) basis_i + momentum * mean over samples of V_bi),
        V [n, k, d] sign-aligned with the basis, the mean over the samples where vector i is
        active [n, k] (a vector G ignores is arbitrary); a row no sample has active keeps its value."""
        weight = active.to(torch.float64)
        sums = (weight[..., None] * V.to(torch.float64)).sum(0)  # [k, d]
        total = torch.cat([sums.flatten(), weight.sum(0)])
        if (
            torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1
        ):
            torch.distributed.all_reduce(total)
        count = total[-self.k :, None]
        mean = (total[: -self.k].reshape(self.k, self.latent_dim) / count.clamp_min(1)).to(self.basis.device)
        old = self.basis.to(torch.float64)
        new = torch.where(count.to(old.device) > 0, (1 - self.momentum) * old + self.momentum * mean, old)
        self.basis.copy_(ops.orthonormalize(new[None])[0].to(self.basis.dtype))
