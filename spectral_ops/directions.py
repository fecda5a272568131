"""Global latent directions: the top-k eigenvectors of the average pull-back metric
E_z[J(z)^T J(z)], matrix-free and streaming.

The averaged operator is the mean of the per-sample products, M_bar X = (1/N) sum_n J_n^T J_n X,
so one product streams over the samples in batches (memory stays at one batch), and restarted
block Lanczos (`krylov.block_lanczos`) finds its top-k eigenvectors.  What the directions explain is reported
against the metric's trace, E ||J||_F^2, and how stable they are across two independent sample sets
as the largest principal angle between the two subspaces.

The trace is exact (d JVPs per sample) where that is cheap: d <= EXACT_TRACE_DIM, d <= the probes
asked for, or k = d (the solve has already spent at least d products per sample).  Above that it is
a Hutchinson estimate with Rademacher probes, reported with its standard error; as the metric is
positive semi-definite its trace is at least the sum of the top-k eigenvalues, so the estimate is
raised to that sum and the explained shares always lie in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from . import ops
from .generator import flatten_latents, prepared
from .jacobian import JacobianOperator
from .krylov import KRYLOV_SECOND_START, block_lanczos, krylov_block
from .progress import progress_bar
from .validation import check_bool, check_callable, check_int, check_iters_tol, check_k, check_seed, derived_seed

EXACT_TRACE_DIM = 64  # exact trace up to here: d JVPs a sample, at d = 64 about 0.7x a 26-product solve


@dataclass
class GlobalDirections:
    """Result of `global_directions`.

    directions: [k, d] orthonormal rows, the top-k eigenvectors of E[J^T J] (flat latent layout).
    values: [k] float64, its eigenvalues, descending (the mean squared output change per unit step;
        float64 at every input dtype, since they are squares of G's scale).
    trace: E ||J||_F^2 over the samples, the sum of all d eigenvalues (exact, or estimated:
        `trace_exact`; an estimate is never below values.sum(), the part the directions hold).
    trace_exact: whether `trace` was computed exactly (module docstring: when it is).
    explained: [k] cumulative share of the trace held by the first 1..k directions, in [0, 1]
        (1.0 to rounding at k = d).
    trace_stderr: the estimate's standard error over the probes (None when exact; inf when a
        single probe on a single sample leaves nothing to estimate it from).
    explained_stderr: [k] the standard error that `trace_stderr` gives `explained` (None when exact).
    residuals: [k] ||M v - lam v|| / lam_1 of the averaged operator; converged: [k] bool.
    products: averaged-operator passes used (each streams once over the samples, with p vectors
        each: 1 once a batch has 16 samples, `krylov.krylov_block`).
    stability_deg: largest principal angle (degrees) to the directions of an independent sample
        set of the same size (None unless asked for).
    """

    directions: torch.Tensor
    values: torch.Tensor
    trace: float
    trace_exact: bool
    explained: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    products: int
    n_samples: int
    stability_deg: float | None = None
    trace_stderr: float | None = None
    explained_stderr: torch.Tensor | None = None


def global_alignment_penalty(
    G: Callable, z: torch.Tensor, *, jvp: str = "auto", batchnorm: str = "error"
) -> torch.Tensor:
    """Off-diagonal share of the batch's mean normalised metric, a scalar in [0, 1).

    M_bar = (1/B) sum_b J_b^T J_b / tr(J_b^T J_b) over the rows of z [B, d] (each sample weighs
    alike; the per-sample trace is detached, as the regularizer's units are), and the penalty is
    ||offdiag(M_bar)||_F^2 / ||M_bar||_F^2: zero exactly when the eigenvectors of M_bar (the
    global directions of the batch) lie on the latent axes, given distinct eigenvalues.  The local
    penalty (`spectral_penalty`) sees one z at a time, so a pair of latents can mix two factors
    where their local sensitivities meet; the mean over z keeps the factors' average sensitivities
    apart, and mixing them shows here (docs/design.md, "global alignment").

    Cost: d JVPs per sample with the parameter graph kept (the columns of J, exact); meant for
    latent sizes where d products a sample are affordable.  G, jvp, batchnorm: as in
    `spectral_penalty`.  Rows whose Jacobian is zero do not count; with none left the value is 0.
    """
    with prepared(G, z, jvp=jvp, batchnorm=batchnorm) as (Gf, zf, mode):
        B, d = zf.shape
        eye = torch.eye(d, dtype=zf.dtype, device=zf.device).expand(B, d, d)
        J = JacobianOperator(Gf, zf, d, mode).jvp(eye, create_graph=True)  # [B, d, m]: row i = J e_i
    # per-sample units J / scale, then squared; rows with J = 0 weigh zero (a where, not a boolean
    # index: no host read of how many rows are left)
    scale = J.detach().abs().amax(dim=(1, 2))
    keep = scale > 0
    Jn = J / torch.where(keep, scale, torch.ones_like(scale))[:, None, None]
    M = Jn @ Jn.transpose(1, 2)  # [B, d, d]: J^T J per sample, in units of scale^2
    trace = M.diagonal(dim1=1, dim2=2).sum(-1).detach()
    weight = keep.to(M.dtype) / torch.where(keep, trace, torch.ones_like(trace))
    M_bar = (M * weight[:, None, None]).sum(0) / keep.sum().clamp_min(1)
    off = M_bar - torch.diag_embed(M_bar.diagonal())
    total = M_bar.pow(2).sum()
    return off.pow(2).sum() / torch.where(total > 0, total, torch.ones_like(total))


def subspace_angle_deg(A: torch.Tensor, B: torch.Tensor) -> float:
    """Largest principal angle, in degrees, between the row spaces of orthonormal A, B [k, d]."""
    s = torch.linalg.svdvals(A.double() @ B.double().T).clamp(max=1.0)
    return math.degrees(math.acos(float(s.min())))


def _mean_product(G, batches, mode, batchnorm, cdtype, c, bar):
    """X [1, p, d] -> mean_n J_n^T J_n X / c^2, streaming over the latent batches."""

    def product(X: torch.Tensor) -> torch.Tensor:
        total, n = torch.zeros_like(X), 0
        for zb in batches:
            with prepared(G, zb, jvp=mode, batchnorm=batchnorm) as (Gf, zf, m):
                op = JacobianOperator(Gf, zf, X.shape[1], m)
                JX = op.jvp(X.expand(zf.shape[0], -1, -1))
                total += op.vjp(JX.detach() / c).detach().to(cdtype).sum(0, keepdim=True) / c
            n += zf.shape[0]
            if bar is not None:
                bar.update(1)
        return total / n

    return product


def _scale(G, zb: torch.Tensor, X: torch.Tensor, mode: str, batchnorm: str) -> float:
    """max |J X| over the batch zb, X [1, p, d] (1.0 where it is zero): a first-order scale, which
    is representable wherever J is (max |M X| would square it)."""
    with prepared(G, zb, jvp=mode, batchnorm=batchnorm) as (Gf, zf, m):
        JX = JacobianOperator(Gf, zf, X.shape[1], m).jvp(X.expand(zf.shape[0], -1, -1))
    return float(JX.detach().abs().max()) or 1.0


def _trace(G, batches, mode, batchnorm, cdtype, c, probes, gen) -> tuple[float, float | None]:
    """(E ||J||_F^2 / c^2, its standard error / c^2): exactly with d JVPs per sample (probes None;
    error None), or by Hutchinson with `probes` Rademacher vectors per sample."""
    sums, spreads, n = [], [], 0  # per batch, on G's device: read back once at the end
    for zb in batches:
        with prepared(G, zb, jvp=mode, batchnorm=batchnorm) as (Gf, zf, m):
            B, d = zf.shape
            if probes is None:
                V = torch.eye(d, dtype=zf.dtype, device=zf.device).expand(B, d, d)
            else:
                V = (torch.randint(0, 2, (B, probes, d), generator=gen) * 2 - 1).to(zf)
            JV = JacobianOperator(Gf, zf, V.shape[1], m).jvp(V).detach().to(cdtype) / c
            sq = JV.pow(2).sum(-1)  # [B, probes]: v^T J^T J v, unbiased for ||J||_F^2 each
            sums.append(sq.sum() if probes is None else sq.mean(1).sum())
            if probes is not None and probes > 1:
                spreads.append(sq.double().var(1).sum() / probes)  # the variances of the samples' means
            elif probes == 1:
                spreads.append(sq[:, 0].double())  # the samples' estimates, for their spread across samples
        n += zf.shape[0]
    total = sum(torch.stack(sums).tolist())
    if probes is None:
        return total / n, None
    if probes == 1:
        # no within-sample spread to read: the spread across samples bounds it from above
        # (it adds the samples' own variation), so the error is not understated
        return total / n, (float(torch.cat(spreads).var()) / n) ** 0.5 if n > 1 else math.inf
    return total / n, float(torch.stack(spreads).sum()) ** 0.5 / n


def global_directions(
    G: Callable,
    n_samples: int,
    k: int,
    *,
    latent_dim: int | tuple | None = None,
    latents: torch.Tensor | None = None,
    batch_size: int = 64,
    iters: int = 50,
    tol: float = 1e-4,
    jvp: str = "auto",
    batchnorm: str = "error",
    seed: int = 0,
    trace_probes: int | None = 8,
    stability: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> GlobalDirections:
    """Top-k eigenvectors of E_z[J(z)^T J(z)] over z ~ N(0, I), matrix-free, streaming.

    Args:
        G: as for `jacobian_topk` (deterministic, rows independent; lambdas and
            `spectral_ops.conditioned` work).
        n_samples: how many latents to average over (N).
        k: how many directions, 1 <= k <= d.
        latent_dim: d, or G's latent shape (e.g. (nz, 1, 1)); or give `latents` [N, ...] instead.
        batch_size: latents per generator pass (memory is one batch of B*k rows).
        iters: the most work allowed, in averaged products of k vectors (a pass streams over all
            N samples once with p of them: at most iters*k/p passes).
        tol: stop when every residual of the averaged operator is below tol.
        trace_probes: Rademacher probes per sample for the Hutchinson trace, used only where
            d > max(EXACT_TRACE_DIM, trace_probes) and k < d; the trace is exact otherwise
            (d JVPs per sample).  None: always exact.
        stability: also run on an independent sample set and report the subspace angle (a bool).
        seed: seeds the latents, the start basis and the probes (an int in [-2**63, 2**64 - 1]).
        progress: show a progress bar (a bool).
    Returns:
        GlobalDirections (directions [k, d], values [k], explained [k], ...).
    """
    check_callable("G", G)
    check_seed(seed, allow_none=False)
    check_bool("stability", stability)
    check_bool("progress", progress)
    if (latent_dim is None) == (latents is None):
        raise ValueError("pass exactly one of latent_dim (to sample z ~ N(0, I)) and latents")
    for name, value in (("batch_size", batch_size),) + ((("n_samples", n_samples),) if latents is None else ()):
        check_int(name, value, 1)
    check_int("trace_probes", trace_probes, 1, allow_none=True)
    check_iters_tol(iters, tol)
    if latents is None:
        shape = (latent_dim,) if isinstance(latent_dim, int) and not isinstance(latent_dim, bool) else latent_dim
        if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 1 for s in shape):
            raise ValueError(f"latent_dim must be an int >= 1 or a tuple of them, got {latent_dim!r}")
        if torch.device(device).type == "meta":
            raise ValueError("device is 'meta': spectral_ops needs the latents' values (pass 'cpu' or 'cuda')")
        gen = torch.Generator().manual_seed(seed)
        latents = torch.randn(n_samples, *shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    elif n_samples is not None and n_samples != latents.shape[0]:
        raise ValueError(f"n_samples={n_samples} but latents has {latents.shape[0]} rows (pass n_samples=None)")
    flat, _ = flatten_latents(latents, "latents")
    d = flat.shape[1]
    k = check_k(k, d)
    exact = trace_probes is None or k == d or d <= max(EXACT_TRACE_DIM, trace_probes)
    result = _solve(
        G, latents, k, batch_size, iters, tol, jvp, batchnorm, seed, None if exact else trace_probes, progress
    )
    if stability:
        twin_seed = derived_seed(seed, 1)  # seed + 1, kept in the range a torch generator takes
        gen = torch.Generator().manual_seed(twin_seed)
        other = torch.randn(latents.shape, generator=gen, dtype=torch.float64).to(latents)
        twin = _solve(G, other, k, batch_size, iters, tol, jvp, batchnorm, twin_seed, False, progress)
        result.stability_deg = subspace_angle_deg(result.directions, twin.directions)
    return result


def _solve(G, latents, k, batch_size, iters, tol, jvp, batchnorm, seed, trace_probes, progress) -> GlobalDirections:
    """The directions of the samples `latents`; trace_probes: None (exact trace), an int
    (Hutchinson) or False (no trace: only the directions are wanted)."""
    N, cdtype = latents.shape[0], ops.compute_dtype(latents.dtype)
    batches = list(latents.split(batch_size))
    d = flatten_latents(latents[:1], "latents")[0].shape[1]
    with prepared(G, batches[0], jvp=jvp, batchnorm=batchnorm) as (_, _, mode):
        pass  # probe once, resolve jvp="auto"
    gen = torch.Generator().manual_seed(seed)
    p = krylov_block(len(batches[0]), k)  # a product streams over every sample: one vector each suffices
    X = ops.orthonormalize(
        torch.randn(1, k, d, generator=gen, dtype=torch.float64).to(device=latents.device, dtype=cdtype)
    )[:, :p]
    bar = None
    if progress:
        bar = progress_bar(-(-iters * k // p) * len(batches), "global directions")
    c = _scale(G, batches[0], X, mode, batchnorm)  # units where M_bar / c^2 is O(1)
    product = _mean_product(G, batches, mode, batchnorm, cdtype, c, bar)
    # converged pairs are checked against a second, random start (as jacobian_topk's krylov does)
    r = block_lanczos(lambda Q, rows: product(Q), X, product(X), k, p, iters * k, tol, second_start=KRYLOV_SECOND_START)
    assert r.settled is not None  # block_lanczos always reports it
    V, lam, res, products = r.V, r.lam, r.res, r.passes + 1
    if bar is not None:
        bar.close()
    # the shares are formed in the units of M_bar / c^2, where nothing overflows or underflows
    values = lam[0].double() * (c * c)  # float64: squares of G's scale overflow float32 beyond about 1e19
    trace, stderr, explained, explained_stderr = math.nan, None, values.new_full((k,), math.nan), None
    if trace_probes is not False:
        trace, stderr = _trace(G, batches, mode, batchnorm, cdtype, c, trace_probes, gen)
        if stderr is not None:
            trace = max(trace, float(lam[0].sum()))  # a PSD metric's trace is at least its top-k sum
        share = lam[0].cumsum(0) / max(trace, torch.finfo(cdtype).tiny)
        explained = share.clamp(0.0, 1.0)  # rounding only, where the trace is exact
        if stderr is not None:
            explained_stderr = explained * (stderr / max(trace, torch.finfo(cdtype).tiny))
            stderr *= c * c
        trace *= c * c
    return GlobalDirections(
        directions=V[0] * ops.common.sign_align(V, None)[0, :, None],
        values=values,
        trace=trace,
        trace_exact=trace_probes is None,
        explained=explained,
        residuals=res[0],
        converged=(res[0] < tol) & r.settled[0],
        products=products,
        n_samples=N,
        trace_stderr=stderr,
        explained_stderr=explained_stderr,
    )


__all__ = ["global_directions", "GlobalDirections", "subspace_angle_deg"]
