"""Restarted block Lanczos for the top-k eigenpairs of a batch of symmetric PSD operators M_b.

Each step adds one block of p vectors per sample to a Krylov space with full
reorthogonalization, taking the block's product M Q directly (no product is ever derived from a
recurrence, so float32 products keep their accuracy), and Rayleigh-Ritz over the space decides
convergence.  p is small (1 for a batch of 16 or more samples: single-vector Lanczos needs the
fewest products) and the batch makes each pass wide; a sample leaves the batch as soon as its k
pairs have converged, so the passes shrink; a full space restarts from the Ritz vectors.

A Krylov space grown from one start holds almost nothing of an eigenvector the start is nearly
orthogonal to (and only one vector of a repeated eigenvalue per start vector): its k Ritz pairs
can pass the residual test while a missed eigenvalue lies among the top k.  With second_start,
a sample that passes takes a second, independent start (seeded draws made orthogonal to its
space) and is finished only when its top k pass again after that start's products
(`KrylovResult.settled`).

The solver's dense algebra runs in X's dtype with autocast off; `product` runs under the
caller's autocast setting (`caller_autocast`).

`jacobian_topk(method="krylov")` drives it on a generator's Jacobian (`_krylov_topk`), with the
scaled products of the samples still running (`_ShrinkingProducts`) and the second start's size
(`KRYLOV_SECOND_START`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from . import ops
from .latents import select_rows
from .jacobian import JacobianOperator
from .solver_common import Solved, _initial_basis, scaled_product

# Rayleigh-Ritz (an eigh of the n x n projected matrix per sample) costs about as much as a
# product once n reaches ~60 on a CPU, so convergence is checked every ~n/CHECK_SPACING steps,
# not after every step (at most n/CHECK_SPACING products past the converged point).
CHECK_SPACING = 10
# A step adds krylov_block(B, k) vectors per sample, so that a pass has at least KRYLOV_ROWS
# rows: on a CPU a DCGAN product costs 1.05 ms on one row and 0.192 ms per row on 16
# (bench/bench_topk.py, "batching ceiling").
KRYLOV_ROWS = 16
# Seed of the second start's draws: a stream of its own, so that it never repeats the caller's
# start (jacobian_topk draws that from its `seed`, 0 by default).
SECOND_START_SEED = 0x5EC0D
# krylov's check that its pairs are the top k (block_lanczos's second_start): a sample
# whose k pairs pass takes a second random start and this many vectors from it, then must pass
# again.  bench/bench_topk.py test_second_start_cost measures what it costs.
KRYLOV_SECOND_START = 4


@dataclass
class KrylovResult:
    """V [B, k, d] orthonormal Ritz vectors; lam [B, k] Ritz values, descending; res [B, k]
    residuals ||M v - lam v|| / lam_1; passes: calls of `product`; vectors [B]: products per
    sample (M applied to that many vectors); settled [B] bool: the pairs were checked as the
    top k (the space filled R^d, or the second start ran; all True when second_start is 0)."""

    V: torch.Tensor
    lam: torch.Tensor
    res: torch.Tensor
    passes: int
    vectors: torch.Tensor
    settled: torch.Tensor | None = field(default=None)


def krylov_block(B: int, k: int) -> int:
    """Vectors per sample in each step: 1 (single-vector Lanczos needs the fewest products) once
    the batch alone fills a pass of KRYLOV_ROWS rows, more for small batches."""
    return min(k, max(1, -(-KRYLOV_ROWS // B)))


def block_lanczos(
    product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    X: torch.Tensor,
    MX: torch.Tensor,
    k: int,
    block: int,
    max_vectors: int,
    tol: float,
    max_basis: int | None = None,
    relative_floor: float | None = None,
    second_start: int = 0,
) -> KrylovResult:
    """Top-k eigenpairs of M_b by restarted block Lanczos, batched over b.

    product(Q, rows): M Q for the samples `rows` (a LongTensor [b] of indices into 0..B-1, the
        samples still running), Q [b, block, d] orthonormal (zero rows allowed) -> [b, block, d];
        run under the caller's autocast setting, its result cast to X's dtype.
    X: [B, n0, d] orthonormal start, MX = M X [B, n0, d] (the caller's first product).
    block: vectors added per step (p); max_vectors: products per sample allowed, MX's included.
    max_basis: the space restarts from its top Ritz vectors when it would exceed this many
        vectors; default `default_max_basis(d, k)`.  At d it never restarts: once it holds d
        vectors it spans R^d (the last block may be partly zero) and Rayleigh-Ritz is exact
        (after a second start's lock, d nonzero vectors).
    relative_floor: None stops once every residual ||M v_i - lam_i v_i|| / lam_1 < tol.  A float f
        asks each vector for tol relative to its own value: residual / lam_1 < tol * max(lam_i /
        lam_1, f), since a residual of tol lam_1 moves a vector with a small lam_i by about
        tol lam_1 / gap_i (the regularizer's weakest vectors; f is its null threshold).
    second_start: 0 stops at the first check where the k pairs pass.  n > 0: a sample whose pairs
        pass while its space is more than n vectors short of R^d locks them (`_lock_and_restart`),
        takes `block` seeded random directions orthogonal to them as its next block and Lanczos
        steps from there, n vectors in all, and stops at the first check after those where its
        top k pass again: an eigenvalue the first start missed and the second does not enters
        the top k with a large residual, and the sample runs on.  (A sample whose space fills
        R^d within n vectors runs on to it instead: exact.)  Samples that stop on the budget
        before the check have settled False.
    """
    device = X.device.type
    with caller_autocast(device) as run_product:
        return _block_lanczos(
            lambda Q, rows: run_product(product, Q, rows).to(X.dtype),
            X,
            MX,
            k,
            block,
            max_vectors,
            tol,
            max_basis,
            relative_floor,
            second_start,
        )


@contextlib.contextmanager
def caller_autocast(device_type: str) -> Iterator[Callable]:
    """The one autocast rule of the Krylov solvers: inside the block autocast is off (the small
    dense algebra, eigh and orthogonalization, keeps its dtype: autocast would run its matmuls
    in bfloat16/float16), and the yielded `run(fn, *args)` calls fn (G's products) under the
    autocast setting the caller had on entry.  device_type: "cpu", "cuda", ... (a device with
    no autocast, e.g. "meta", runs both as they are)."""
    if not torch.amp.is_autocast_available(device_type):
        yield lambda fn, *args: fn(*args)
        return
    enabled, dtype = torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)

    def run(fn, *args):
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            return fn(*args)

    with torch.autocast(device_type, enabled=False):
        yield run


def _second_start(R: torch.Tensor | None, B: int, block: int, X: torch.Tensor) -> torch.Tensor:
    """The second start's draws [B, block, d] (SECOND_START_SEED), drawn once per solve, on the
    first sample that needs them: the same vectors on every device."""
    if R is None:
        gen = torch.Generator(device="cpu").manual_seed(SECOND_START_SEED)
        R = torch.randn(B, block, X.shape[2], generator=gen, dtype=torch.float64).to(device=X.device, dtype=X.dtype)
    return R


def residual_target(lam: torch.Tensor, tol: float, relative_floor: float | None = None) -> torch.Tensor | float:
    """The residual ||M v_i - lam_i v_i|| / lam_1 each pair must be below, for lam [b, k] descending:
    tol, or with relative_floor f, tol * max(lam_i / lam_1, f) (`block_lanczos`)."""
    if relative_floor is None:
        return tol
    return tol * (lam / lam[:, :1].clamp_min(torch.finfo(lam.dtype).tiny)).clamp_min(relative_floor)


def _block_lanczos(product, X, MX, k, block, max_vectors, tol, max_basis, relative_floor, second_start):
    B, n0, d = X.shape
    max_basis = default_max_basis(d, k) if max_basis is None else min(d, max_basis)
    keep = min(max_basis - block, max(k + block, (max_basis + k) // 2))  # thick restart: k pairs and more
    V_out = X.new_zeros(B, k, d)
    lam_out, res_out = X.new_zeros(B, k), X.new_full((B, k), float("inf"))
    vectors = torch.full((B,), n0, dtype=torch.long, device=X.device)
    settled_out = torch.ones(B, dtype=torch.bool, device=X.device)
    rows = torch.arange(B, device=X.device)  # indexed with masks on X's device
    # per running sample: vectors taken from the second start (-1: not started)
    taken = torch.full((B,), -1 if second_start else 0, dtype=torch.long, device=X.device)
    R = None
    K, MK, last = X, MX, MX
    H = _sym(K @ MK.transpose(-1, -2))
    passes, used, next_check = 0, n0, k
    while True:
        n = K.shape[1]
        spent = n >= k and used + block > max_vectors  # no room for another block
        restart = n + block > max_basis and max_basis < d  # a space that may fill R^d never restarts
        starting = 0
        if n >= next_check or n >= d or spent or restart:
            X_r, MX_r, lam, res = _rayleigh_ritz(K, MK, H, keep if restart else k)
            target = residual_target(lam[:, :k], tol, relative_floor)
            # a space of d nonzero rows is R^d: exact (a second start's lock leaves zero rows)
            spans = (K.abs().amax(-1) > 0).sum(1) >= d if n >= d else torch.zeros_like(taken, dtype=torch.bool)
            passed, checked = (res[:, :k] < target).all(-1), (taken >= second_start) | spans
            done = (passed & checked) | spans | spent
            # passed for the first time: the second start goes in next, unless the space fills R^d
            # (exact) within as many vectors as the second start would take
            new = passed & ~done & (taken < 0) & (n + second_start < d)
            # the convergence check: one host read-back per Rayleigh-Ritz
            finished, starting = torch.stack([done.sum(), new.sum()]).tolist()
            if finished:
                idx = rows[done]
                V_out[idx], lam_out[idx], res_out[idx] = X_r[done, :k], lam[done, :k], res[done, :k]
                settled_out[idx] = checked[done]
                if finished == len(rows):
                    return KrylovResult(V_out, lam_out, res_out, passes, vectors, settled_out)
                live = ~done
                rows, K, MK, H, last, X_r, MX_r, taken, new = (
                    t[live] for t in (rows, K, MK, H, last, X_r, MX_r, taken, new)
                )
            next_check = n + max(1, n // CHECK_SPACING)
        Q = _new_directions(last, K, block)
        if restart:  # keep the top Ritz vectors (M X follows by the same combination); Q is orthogonal to them
            K, MK = X_r, MX_r
            H = _sym(K @ MK.transpose(-1, -2))
            next_check = K.shape[1] + 1
        if starting:  # computed for every running sample, kept where it starts (no read-back)
            R = _second_start(R, B, block, X)
            K, MK, H, Q = _lock_and_restart(K, MK, H, Q, X_r[:, :k], MX_r[:, :k], new, R[rows])
            taken = torch.where(new, 0, taken)
            next_check = min(next_check, K.shape[1] + max(second_start, block))
        MQ = product(Q, rows)
        passes, used = passes + 1, used + block
        vectors[rows] = used
        taken = torch.where(taken >= 0, taken + block, taken) if second_start else taken
        H = _extend(H, K, MK, Q, MQ)
        K, MK, last = torch.cat([K, Q], 1), torch.cat([MK, MQ], 1), MQ


def _lock_and_restart(K, MK, H, Q, X, MX, new, R):
    """Where `new` [b]: the space K [b, n, d] becomes the k passed Ritz vectors X [b, k, d]
    (locked: their residuals are below tol, so M X ~ X diag(lam)), its other n - k rows zero, and
    the next block Q the second start's draws R [b, block, d] made orthogonal to X, so that
    Lanczos runs afresh on the rest of R^d (the first start's continuation is dropped: kept, its
    residual direction and the second start's would both need continuing after a restart).
    Returns (K, MK, H, Q) with the other samples' as they were."""
    pad = K.new_zeros(K.shape[0], K.shape[1] - X.shape[1], K.shape[2])
    K_lock, MK_lock = torch.cat([X, pad], 1), torch.cat([MX, pad], 1)
    H_lock = _sym(K_lock @ MK_lock.transpose(-1, -2))
    at = new[:, None, None]
    return (
        torch.where(at, K_lock, K),
        torch.where(at, MK_lock, MK),
        torch.where(at, H_lock, H),
        torch.where(at, _orthonormal_block(R, X), Q),
    )


def _new_directions(MQ: torch.Tensor, K: torch.Tensor, block: int) -> torch.Tensor:
    """The next block [b, block, d]: the dominant directions of the last block's product MQ that
    are new to the space K [b, n, d].  Where MQ adds none (K holds an invariant subspace), the
    coordinate axes that K leaves most of (1 - ||K e_j||^2 largest, at least (d - n) / d), made
    orthogonal to K, take their place, as Lanczos restarts on a breakdown; zero rows are left
    only where K is the whole space."""
    Q = _orthonormal_block(MQ, K)[:, -block:]
    # computed for every sample and kept where needed: no host read-back per step (K may have
    # zero rows, so n >= d does not mean K spans R^d)
    dead = Q.abs().amax(-1) == 0
    axes = (1 - (K * K).sum(1)).topk(block, dim=-1).indices  # [b, block]
    E = torch.nn.functional.one_hot(axes, K.shape[2]).to(Q)
    return torch.where(dead[..., None], _orthonormal_block(E, torch.cat([K, Q], 1)), Q)


def folded_start(X: torch.Tensor, p: int) -> torch.Tensor:
    """A start of p vectors [B, p, d] that holds the k >= p orthonormal start vectors X [B, k, d]:
    row j sums the vectors i with i % p == j (then orthonormalized by the caller).  Lanczos adds p
    vectors per step, and a start of more than p vectors stalls: the directions of M X beyond
    the first p never enter the space (measured on a flat spectrum, d = 100: 400 products
    against 26 to reach 1e-3)."""
    k = X.shape[1]
    fold = (torch.arange(k, device=X.device) % p == torch.arange(p, device=X.device)[:, None]).to(X.dtype)
    return (fold[None, :, :, None] * X[:, None]).sum(2)  # elementwise: no autocast matmul


def default_max_basis(d: int, k: int) -> int:
    """Vectors the Krylov space holds before it restarts: min(d, max(4k, k + 64)).  At d it never
    restarts, so it takes at most d + block - 1 products per sample (with a second start, up to
    d - k more: the locked space grows again to d nonzero vectors)."""
    return min(d, max(4 * k, k + 64))


def _extend(H: torch.Tensor, K: torch.Tensor, MK: torch.Tensor, Q: torch.Tensor, MQ: torch.Tensor) -> torch.Tensor:
    """The projected matrix of [K; Q] from that of K [b, n, n]: only the new rows are computed."""
    cross = 0.5 * (Q @ MK.transpose(-1, -2) + MQ @ K.transpose(-1, -2))  # [b, p, n]
    corner = _sym(Q @ MQ.transpose(-1, -2))
    return torch.cat([torch.cat([H, cross.transpose(-1, -2)], -1), torch.cat([cross, corner], -1)], -2)


def _orthonormal_block(Q: torch.Tensor, K: torch.Tensor | None) -> torch.Tensor:
    """The rows of Q [B, n, d] made orthogonal to the orthonormal rows of K [B, m, d] (twice, as
    CGS2) and orthonormal among themselves, ordered by how much of each direction was left
    (the most last); rows that add no new direction come back as zeros."""
    # The library's only orthonormalization besides the `ops.orthonormalize` op, which cannot do
    # this job: the op orthonormalizes a block on its own (no space K to project out) and replaces
    # a dependent row by a coordinate axis, where Lanczos needs dependent rows dropped as zeros
    # (`_new_directions` and `_rayleigh_ritz` read a zero row as "no new direction") and the rows
    # ordered by what was left, so that the last `block` rows are the most independent.
    tiny = torch.finfo(Q.dtype).tiny
    size = (Q * Q).sum(-1).amax(-1, keepdim=True)  # before projection: what is left must be more than rounding
    Q = Q * torch.where(size > 0, size, torch.ones_like(size)).rsqrt()[..., None]  # unit scale: no denormals
    size = (size > 0).to(Q.dtype)
    for rounds in range(2):
        if K is not None:
            Q = Q - (Q @ K.transpose(-1, -2)) @ K
            Q = Q - (Q @ K.transpose(-1, -2)) @ K
        if Q.shape[1] == 1:  # one row (a batch of 16+): its Gram matrix is its squared norm, no eigensolver
            e, rotated = (Q * Q).sum(-1), Q
        else:
            e, U = _small_eigh(Q @ Q.transpose(-1, -2))
            rotated = U.transpose(-1, -2) @ Q
        if rounds == 0:  # dependent rows (smallest e) come first
            live = (e > size * (100 * torch.finfo(Q.dtype).eps) ** 2) & (e > tiny)  # norm above 100 eps
        else:  # unit rows that lose half their norm to the second projection were rounding noise
            live = e > 0.25
        Q = torch.where(live, e.clamp_min(tiny).rsqrt(), torch.zeros_like(e))[..., None] * rotated
    return Q


def _rayleigh_ritz(K: torch.Tensor, MK: torch.Tensor, H: torch.Tensor, k: int):
    """Top-k Ritz pairs over the orthonormal (or zero) rows of K [B, n, d], with MK = M K and
    H = K M K^T: (X [B, k, d], M X, lam [B, k] descending, residuals / lam_1 [B, k])."""
    dead = (K.abs().amax(-1) == 0).to(K.dtype)  # zero rows: below any eigenvalue of M
    theta, C = _small_eigh(H - torch.diag_embed(dead))
    lam, C = theta.flip(-1)[:, :k], C.flip(-1)[..., :k].transpose(-1, -2)
    X, MX = C @ K, C @ MK
    return X, MX, lam, ops.common.relative_residual(MX, X, lam)


def _small_eigh(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.linalg.eigh of a batch of small symmetric matrices [b, n, n], on the CPU: on a GPU
    eigh synchronises and launches a solver per call (about 1 ms for n <= 68 on an H200, several
    products' worth), where a copy to the host and back is a few microseconds."""
    if A.device.type == "cpu":
        return torch.linalg.eigh(A)
    theta, C = torch.linalg.eigh(A.cpu())
    return theta.to(A.device, non_blocking=True), C.to(A.device, non_blocking=True)


def _sym(A: torch.Tensor) -> torch.Tensor:
    return 0.5 * (A + A.transpose(-1, -2))


class _ShrinkingProducts:
    """Scaled products M Q / c^2 for the samples still running: the forward graph is rebuilt on
    those samples once they are at most half the rows it was built on (a rebuild costs about one
    pass on them, so it pays for itself within two passes); until then the finished samples'
    rows carry zero vectors."""

    def __init__(self, G, z, p, mode, cdtype):
        self.G, self.z, self.p, self.mode, self.cdtype = G, z, p, mode, cdtype
        self.c = None
        self._build(torch.arange(z.shape[0], device=z.device))

    def _build(self, rows):
        self.rows = rows
        self.op = None  # free the old graph first
        self.op = JacobianOperator(select_rows(self.G, rows), self.z[rows], self.p, self.mode)

    def __call__(self, Q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Q [b, n, d] for the samples `rows` -> M Q / c^2 [b, n, d], in passes of p vectors."""
        if 2 * len(rows) <= len(self.rows):
            self._build(rows)
        at = torch.searchsorted(self.rows, rows)
        out = []
        for start in range(0, Q.shape[1], self.p):
            part = Q[:, start : start + self.p]
            W = Q.new_zeros(len(self.rows), self.p, Q.shape[2])
            W[at, : part.shape[1]] = part
            c = None if self.c is None else self.c[self.rows]
            MW, c = scaled_product(self.op, self.op.jvp(W), self.cdtype, c, self.rows)
            if self.c is None:
                self.c = c
            out.append(MW[at, : part.shape[1]])
        return torch.cat(out, 1)


def _krylov_topk(G, z, k, iters, tol, mode, init, seed) -> Solved:
    """Batched (block) Lanczos (`krylov.block_lanczos`) with every sample in one pass."""
    B, d = z.shape
    cdtype = ops.compute_dtype(z.dtype)
    p = krylov_block(B, k)
    X, V_prev = _initial_basis(init, B, k, d, cdtype, z.device, seed)
    X = (
        ops.orthonormalize(folded_start(X, p)) if init is not None else X[:, :p]
    )  # p start vectors (krylov.folded_start)
    products = _ShrinkingProducts(G, z, p, mode, cdtype)
    MX = products(X, torch.arange(B, device=z.device))
    r = block_lanczos(products, X, MX, k, p, max(iters * k, X.shape[1]), tol, second_start=KRYLOV_SECOND_START)
    V = r.V * ops.common.sign_align(r.V, V_prev)[..., None]
    passes = r.passes + -(-X.shape[1] // p)
    return Solved(V, r.lam, products.c, r.res, passes, r.settled)
