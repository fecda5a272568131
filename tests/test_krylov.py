"""krylov.block_lanczos against eigh of explicit matrices with known spectra, and
jacobian_topk(method="krylov") on its single-vector path (batches of 16) against the explicit
Jacobian SVD."""
from __future__ import annotations

import pytest
import torch

from gen_families import dcgan, explicit_jacobian, families, oracle_svd
from spectral_ops import conditioned, jacobian_topk
from spectral_ops.krylov import block_lanczos, krylov_block

MODES = ["double_backward", "forward", "finite_difference"]
SPECTRA = {"gapped": lambda d: 0.7 ** torch.arange(d, dtype=torch.float64),
           "flat": lambda d: 1 - 0.01 * torch.arange(d, dtype=torch.float64)}  # sigma ratios 0.99


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
    assert (1 - cos).max() < 1e-15 / 0.01 ** 2
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
    assert torch.allclose(r.lam[0], s_fast[:k], rtol=1e-13) and torch.allclose(r.lam[1:], s_flat[:k].expand(2, k), rtol=1e-13)


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
    assert 4 in G.calls[G.calls.index(16) + 1:]  # a graph on the 4 running samples alone
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
    s = torch.cat([torch.tensor([1.0, 0.5, 0.25, 1e-4], dtype=torch.float64),
                   5e-5 * (1 - 0.01 * torch.arange(d - 4, dtype=torch.float64))])
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
    assert tight <= bound ** 2 + 1e-12 and tight < 1e-6 < loose, (tight, loose, bound)
