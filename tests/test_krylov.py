"""krylov.block_lanczos against eigh of explicit matrices with known spectra, and
jacobian_topk(method="krylov") on its single-vector path (batches of 16) against the explicit
Jacobian SVD; its check against a second start (converged means the top k) and autocast."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from spectral_ops.testing.families import dcgan, explicit_jacobian, families, oracle_svd
import spectral_ops
from spectral_ops import conditioned, jacobian_topk, topk
from spectral_ops.krylov import block_lanczos, krylov_block

MODES = ["double_backward", "forward", "finite_difference"]
SPECTRA = {
    "gapped": lambda d: 0.7 ** torch.arange(d, dtype=torch.float64),
    "flat": lambda d: 1 - 0.01 * torch.arange(d, dtype=torch.float64),
}  # sigma ratios 0.99


def _operators(B, d, spectrum, seed=0):
    """M [B, d, d] = U diag(s) U^T with random orthogonal U: (M, s [d] descending, U [B, d, d])."""
    gen = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(B, d, d, generator=gen, dtype=torch.float64))[0]
    s = SPECTRA[spectrum](d) if isinstance(spectrum, str) else spectrum
    return U @ torch.diag_embed(s.expand(B, d)) @ U.transpose(1, 2), s, U


def _start(B, p, d, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(B, d, p, generator=gen, dtype=torch.float64))[0].transpose(1, 2)


def _run(M, k, p, max_vectors=4000, tol=1e-10, max_basis=None, calls=None):
    def product(Q, rows):
        if calls is not None:
            calls.append(rows.clone())
        return Q @ M[rows]  # M symmetric: rows of Q M are M q

    X = _start(M.shape[0], p, M.shape[1])
    return block_lanczos(product, X, product(X, torch.arange(M.shape[0])), k, p, max_vectors, tol, max_basis)


@pytest.mark.parametrize("max_basis", [None, 14])  # 14 < the products needed: the space restarts
@pytest.mark.parametrize("p", [1, 2, 4])
@pytest.mark.parametrize("spectrum", list(SPECTRA))
def test_block_lanczos_matches_eigh(spectrum, p, max_basis):
    B, d, k = 5, 48, 4
    M, s, U = _operators(B, d, spectrum)
    r = _run(M, k, p, max_basis=max_basis)
    assert bool((r.res < 1e-10).all())
    true_res = (r.V @ M - r.lam[..., None] * r.V).norm(dim=-1) / s[0]
    assert (true_res - r.res).abs().max() < 1e-14  # the reported residuals are the true ones
    # residual 1e-10 with gaps of 0.01 or more: values off by <= res^2 / gap, vectors by res / gap
    assert torch.allclose(r.lam, s[:k].expand(B, k), rtol=1e-13, atol=0)
    cos = (r.V * U[..., :k].transpose(1, 2)).sum(-1).abs()
    assert (1 - cos).max() < 1e-15 / 0.01**2
    gram = r.V @ r.V.transpose(1, 2)
    assert torch.allclose(gram, torch.eye(k, dtype=gram.dtype).expand_as(gram), atol=1e-13)
    assert int(r.vectors.max()) == p * (r.passes + 1)
    if max_basis is not None:
        assert int(r.vectors.max()) > max_basis  # it did restart


def test_a_converged_sample_leaves_the_batch():
    """Sample 0 has a steep spectrum and converges first; from then on the products are asked
    for the other samples only, and every sample still matches its eigh."""
    d, k = 40, 3
    M_flat, s_flat, U_flat = _operators(2, d, "flat", seed=3)
    M_fast, s_fast, U_fast = _operators(1, d, 0.2 ** torch.arange(d, dtype=torch.float64), seed=4)
    M = torch.cat([M_fast, M_flat])
    calls = []
    r = _run(M, k, 1, calls=calls)
    assert bool((r.res < 1e-10).all())
    assert int(r.vectors[0]) < int(r.vectors[1]) == int(r.vectors[2])
    assert [c.tolist() for c in calls].count([1, 2]) == int(r.vectors[1]) - int(r.vectors[0])
    assert torch.allclose(r.lam[0], s_fast[:k], rtol=1e-13) and torch.allclose(
        r.lam[1:], s_flat[:k].expand(2, k), rtol=1e-13
    )


def test_budget_stops_with_interlaced_values():
    """With 6 products for k=4 on a flat spectrum nothing converges; the Ritz values are still
    below the true ones (Cauchy interlacing) and the residuals say so."""
    M, s, _ = _operators(3, 48, "flat")
    r = _run(M, 4, 1, max_vectors=6, tol=1e-4)
    assert int(r.vectors.max()) <= 6 and not bool((r.res < 1e-4).any())
    assert bool((r.lam <= s[:4] * (1 + 1e-12)).all())
    true_res = (r.V @ M - r.lam[..., None] * r.V).norm(dim=-1) / r.lam[:, :1]  # relative to the Ritz lam_1
    assert (true_res - r.res).abs().max() < 1e-14


def test_rank_deficient_and_zero_operators():
    """Rank 2 with k=4: the top two pairs are exact and the other two have value 0; M = 0: zeros."""
    d, k = 30, 4
    s = torch.zeros(d, dtype=torch.float64)
    s[:2] = torch.tensor([2.0, 1.0])
    M, _, U = _operators(2, d, s)
    M[1] = 0
    r = _run(M, k, 1)
    assert bool((r.res < 1e-10).all())
    assert torch.allclose(r.lam[0], torch.tensor([2.0, 1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-13)
    assert torch.equal(r.lam[1], torch.zeros(k, dtype=torch.float64))
    cos = (r.V[0, :2] * U[0, :, :2].T).sum(-1).abs()
    assert (1 - cos).max() < 1e-13
    gram = r.V[0] @ r.V[0].T
    assert torch.allclose(gram, torch.eye(k, dtype=gram.dtype), atol=1e-12)


def test_block_size_fills_a_pass():
    assert [krylov_block(B, 4) for B in (1, 2, 3, 4, 8, 15, 16, 64)] == [4, 4, 4, 4, 2, 2, 1, 1]
    assert krylov_block(1, 2) == 2 and krylov_block(1, 32) == 16


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(families(16)))
def test_single_vector_krylov_matches_svd(name, mode):
    """B=16: one vector per sample per pass (krylov_block(16, 3) = 1), every family and JVP mode."""
    G = families(16)[name]
    z = torch.randn(16, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    S, Vh = oracle_svd(G, z)
    top = jacobian_topk(G, z, 3, iters=200, tol=1e-7, method="krylov", jvp=mode)
    assert top.method == "krylov" and top.jvp == mode and bool(top.converged.all())
    fd = mode == "finite_difference"
    cos = (top.vectors * Vh[:, :3]).sum(-1).abs()
    assert (1 - cos).max() < (1e-6 if fd else 1e-8)
    assert torch.allclose(top.values, S[:, :3], rtol=1e-6 if fd else 1e-7, atol=0)


class _Rows(torch.nn.Module):
    """G(z, s) = net(z * s) with per-row scales s [N, d]; records the rows of every call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, z, s):
        self.calls.append(z.shape[0])
        return self.net(z * s)


def test_krylov_rebuilds_its_graph_on_the_samples_still_running():
    """12 of 16 samples have a steep spectrum (per-row scales through `conditioned`) and converge
    first: the forward graph is rebuilt on the 4 flat ones, and all 16 match their SVD."""
    torch.manual_seed(0)
    d, k = 24, 3
    G = _Rows(dcgan(d).double())
    z = torch.randn(16, d, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    s = torch.ones(16, d, dtype=torch.float64)
    s[:12] = 0.3 ** torch.arange(d, dtype=torch.float64)
    top = jacobian_topk(conditioned(G, s), z, k, iters=500, tol=1e-8, method="krylov", jvp="double_backward")
    assert bool(top.converged.all())
    assert 4 in G.calls[G.calls.index(16) + 1 :]  # a graph on the 4 running samples alone
    J = explicit_jacobian(lambda x: G.net(x), z * s) * s[:, None, :]  # d(net(z s))/dz = J_net(z s) diag(s)
    _, S, Vh = torch.linalg.svd(J, full_matrices=False)
    assert torch.allclose(top.values, S[:, :k], rtol=1e-9, atol=0)
    assert (1 - (top.vectors * Vh[:, :k]).sum(-1).abs()).max() < 1e-10


@pytest.mark.parametrize("p", [1, 3, 4])
def test_a_space_that_fills_the_latent_space_is_exact(p):
    """tol=0 never converges by residual: the space grows until it spans R^10 (the last block of
    3 or 4 partly zero), where Rayleigh-Ritz is exact."""
    M, s, U = _operators(2, 10, "flat")
    r = _run(M, 4, p, tol=0.0)
    assert torch.allclose(r.lam, s[:4].expand(2, 4), rtol=1e-13, atol=0)
    assert r.res.max() < 1e-14 and int(r.vectors.max()) <= 10 + p - 1


def test_warm_start_in_one_vector_passes():
    """B=16 (p=1) with init: the k start vectors go through k one-vector passes, the warm start
    needs fewer passes than a cold one, and the signs follow init."""
    G = families(16)["mlp_tanh"]
    z = torch.randn(16, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    cold = jacobian_topk(G, z, 3, iters=200, tol=1e-9, method="krylov")
    warm = jacobian_topk(G, z, 3, iters=200, tol=1e-9, method="krylov", init=-cold.vectors)
    assert bool(warm.converged.all()) and warm.iterations < cold.iterations
    assert ((warm.vectors * -cold.vectors).sum(-1) > 1 - 1e-8).all()


def test_errors_name_the_rows_of_z_after_the_batch_shrank():
    """Once the graph is rebuilt on samples 3, 7 and 9, a bad product of its second sample names
    row 7 of z, not row 1."""
    from spectral_ops.jacobian import name_rows

    with pytest.raises(ValueError, match=r"in rows \[7\]"):
        name_rows(torch.tensor([False, True, False]), "bad", torch.tensor([3, 7, 9]))
    with pytest.raises(ValueError, match=r"in rows \[1\]"):
        name_rows(torch.tensor([False, True, False]), "bad")


def test_relative_floor_resolves_weak_vectors():
    """A weak eigenvalue (lam_4 = 1e-4 lam_1 above a flat tail): the residual relative to lam_1
    stops with v_4 far off (tol 1e-4 allows an error of about tol / (lam_4 - lam_5) ~ 1); asked
    relative to each vector's own value (relative_floor, the regularizer's rule) it is resolved
    to the Davis-Kahan bound res / gap."""
    d, k = 40, 4
    s = torch.cat(
        [
            torch.tensor([1.0, 0.5, 0.25, 1e-4], dtype=torch.float64),
            5e-5 * (1 - 0.01 * torch.arange(d - 4, dtype=torch.float64)),
        ]
    )
    M, s, U = _operators(8, d, s)

    def error_of_v4(**options):
        def product(Q, rows):
            return Q @ M[rows]

        X = _start(8, 1, d)
        r = block_lanczos(product, X, product(X, torch.arange(8)), k, 1, 4000, 1e-4, **options)
        return float((1 - (r.V[:, 3] * U[:, :, 3]).sum(-1).abs()).max()), r

    loose, _ = error_of_v4()
    tight, r = error_of_v4(relative_floor=1e-6)
    gap = float(s[3] - s[4])
    bound = float((r.res[:, 3] * s[0]).max()) / gap  # sin(angle) <= res / gap: 1 - |cos| <= that squared
    assert tight <= bound**2 + 1e-12 and tight < 1e-6 < loose, (tight, loose, bound)


# ---------------------------------------------------------------- converged means the top k
def _tanh_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 12))


def _assert_top_k_or_unconverged(G, z, top, k, tol):
    """Every sample krylov reports converged holds the oracle's top k values (float64 explicit
    Jacobian): a Ritz value lies within its residual (tol lam_1) of an eigenvalue, plus the
    float32 rounding of the products (64 eps)."""
    S, _ = oracle_svd(copy.deepcopy(G).double() if isinstance(G, torch.nn.Module) else G, z.double())
    lam, true = top.values.double() ** 2, S[:, :k] ** 2
    err = ((lam - true).abs() / true[:, :1]).max(1).values
    wrong = (err > tol + 64 * torch.finfo(torch.float32).eps) & top.converged.all(1)
    assert not bool(wrong.any()), [(i, lam[i].tolist(), true[i].tolist()) for i in wrong.nonzero().flatten().tolist()]


def test_a_batch_of_3000_finds_every_top_eigenvalue():
    """A 6-10-12 tanh MLP, 3000 latents, k=3: on the previous main 3 samples (518, 1338, 2113)
    stopped holding lam = [0.5446, 0.2741, 0.0355] where the truth is [0.5446, 0.2741, 0.0382,
    0.0355]: the one start vector was nearly orthogonal to the third eigenvector, the three pairs
    it held had residuals below tol and converged was True.  Now each sample that passes is
    checked against a second start.  Fails on the previous main."""
    G = _tanh_mlp()
    torch.manual_seed(0)
    z = torch.randn(3000, 6)
    top = jacobian_topk(G, z, 3, method="krylov")
    assert top.method == "krylov" and bool(top.converged.all())
    _assert_top_k_or_unconverged(G, z, top, 3, 1e-4)


class _Repeated(torch.nn.Module):
    """G(x) = 100 tanh(0.01 A x), A [20, 13] with singular values in pairs (3, 3, 2.5, 2.5, ...,
    1, 1, 0.8, 0.5): J(z) has nearly repeated singular values, which one Krylov start resolves
    only one vector of (in exact arithmetic)."""

    def __init__(self, gen):
        super().__init__()
        s = torch.tensor([3, 3, 2.5, 2.5, 2, 2, 1.5, 1.5, 1.2, 1, 1, 0.8, 0.5])
        U = torch.linalg.qr(torch.randn(20, 13, generator=gen))[0]
        V = torch.linalg.qr(torch.randn(13, 13, generator=gen))[0]
        self.register_buffer("A", U @ torch.diag(s) @ V.T)

    def forward(self, x):
        return torch.tanh(0.01 * (x @ self.A.T.to(x.dtype))) * 100


def test_repeated_values_are_all_found():
    """d=13, k=12, B=16 with pairs of nearly equal singular values: on the previous main sample 8
    reported sigma_11 = 0.7998 (the 12th value) with converged True, skipping sigma_11 = 0.99987
    (the twin of sigma_10 = 0.99977).  Fails on the previous main."""
    gen = torch.Generator().manual_seed(2)
    G = _Repeated(gen)
    z = torch.randn(16, 13, generator=gen)
    top = jacobian_topk(G, z, 12, method="krylov", seed=2)
    assert bool(top.converged.all())
    _assert_top_k_or_unconverged(G, z, top, 12, 1e-4)


@pytest.mark.parametrize("missed", [1, 2, 3])
def test_a_start_orthogonal_to_a_top_eigenvector_is_caught(missed):
    """A start orthogonal to eigenvector `missed` of M (to rounding; gapped spectrum 0.7^i, d=48,
    k=4): Lanczos from it alone passes tol with that eigenvalue missing (second_start=0, the
    previous main's only behaviour); with the check against a second start (jacobian_topk's
    setting) the k values are the true top k.  Fails on the previous main (block_lanczos had no
    second_start)."""
    from spectral_ops.krylov import KRYLOV_SECOND_START

    d, k = 48, 4
    M, s, U = _operators(5, d, "gapped")
    x = _start(5, 1, d)[:, 0]
    u = U[..., missed]
    for _ in range(2):
        x = x - (x * u).sum(-1, keepdim=True) * u
    X = (x / x.norm(dim=-1, keepdim=True))[:, None]

    def product(Q, rows):
        return Q @ M[rows]

    alone = block_lanczos(product, X, product(X, torch.arange(5)), k, 1, 4000, 1e-8)
    assert bool((alone.res < 1e-8).all()) and not torch.allclose(alone.lam, s[:k].expand(5, k), rtol=1e-6)
    r = block_lanczos(product, X, product(X, torch.arange(5)), k, 1, 4000, 1e-8, second_start=KRYLOV_SECOND_START)
    assert bool(r.settled.all()) and bool((r.res < 1e-8).all())
    # residual 1e-8 with gaps of 0.09 lam_1 or more: values within res^2 / gap
    assert torch.allclose(r.lam, s[:k].expand(5, k), rtol=1e-13, atol=0)


def test_a_budget_spent_before_the_check_is_not_converged(monkeypatch):
    """A steep spectrum passes tol after a few vectors; a budget that ends before the second
    start's vectors leaves the pairs unsettled, and jacobian_topk reports them not converged
    (with a warning), whatever their residuals."""
    M, s, _ = _operators(2, 30, 0.1 ** torch.arange(30, dtype=torch.float64))
    X = _start(2, 1, 30)

    def product(Q, rows):
        return Q @ M[rows]

    free = block_lanczos(product, X, product(X, torch.arange(2)), 2, 1, 4000, 1e-4, second_start=4)
    short = block_lanczos(
        product, X, product(X, torch.arange(2)), 2, 1, int(free.vectors.max()) - 2, 1e-4, second_start=4
    )
    assert bool(free.settled.all()) and not bool(short.settled.any()) and bool((short.res < 1e-4).all())
    G = _tanh_mlp().double()
    z = torch.randn(16, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    monkeypatch.setattr(topk, "_warned", set())  # the warning is once per process: an earlier test may have had it
    with pytest.warns(UserWarning, match="second start"):
        top = jacobian_topk(G, z, 1, iters=5, tol=1e-2, method="krylov")
    assert not bool(top.converged.any()) and bool((top.residuals < 1e-2).any())


# ---------------------------------------------------------------- autocast
def test_krylov_under_autocast_matches_float32():
    """Under torch.autocast("cpu", bfloat16) G's passes run in bfloat16 and the solver's own
    algebra in float32: jacobian_topk (krylov and auto), global_directions and a krylov
    trajectory agree with the same calls without autocast to bfloat16 rounding of the products
    (values within 2 eps_bf16 of sigma_1; vectors within Davis-Kahan's 4 eps_bf16 / gap).  Fails
    on the previous main: "Index put requires the source and destination dtypes match" (the
    solver's matmuls ran in bfloat16)."""
    eps = torch.finfo(torch.bfloat16).eps
    G = _tanh_mlp()
    z = torch.randn(16, 6, generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the trajectory's unconverged warning (tol=1e-5 with bfloat16 products)
        plain = {m: jacobian_topk(G, z, 3, tol=1e-3, method=m) for m in ("krylov", "auto")}
        directions = spectral_ops.global_directions(G, 64, 3, latent_dim=6)
        path = spectral_ops.trace_trajectory(G, z[:2], steps=3, topk_method="krylov")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = {m: jacobian_topk(G, z, 3, tol=1e-2, method=m) for m in ("krylov", "auto")}
            directions_mixed = spectral_ops.global_directions(G, 64, 3, latent_dim=6)
            path_mixed = spectral_ops.trace_trajectory(G, z[:2], steps=3, topk_method="krylov")
    for m, top in mixed.items():
        ref = plain[m]
        assert top.values.dtype == top.vectors.dtype == torch.float32
        assert float(((top.values - ref.values).abs() / ref.values[:, :1]).max()) < 2 * eps
        lam = ref.values**2 / ref.values[:, :1] ** 2
        gap = (lam[:, :, None] - lam[:, None, :]).abs() + torch.eye(3) * 2  # the gap to the other values
        sin = (1 - (top.vectors * ref.vectors).sum(-1) ** 2).clamp_min(0).sqrt()
        assert bool((sin <= 4 * eps / gap.min(-1).values).all())
    assert float(((directions_mixed.values - directions.values).abs() / directions.values[0]).max()) < 2 * eps
    assert float((1 - (directions_mixed.directions * directions.directions).sum(-1).abs()).max()) < 4 * eps
    assert path_mixed.z.dtype == torch.float32
    assert float((path_mixed.z - path.z).abs().max()) < 2 * eps * 3 * 0.1  # 3 steps of 0.1, each off by <= 2 eps
