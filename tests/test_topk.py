"""jacobian_topk against an explicit Jacobian SVD, plus its contracts and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spectral_ops.testing.families import dcgan, explicit_jacobian, families, oracle_svd
from spectral_ops import jacobian_topk
from spectral_ops.jacobian import JacobianOperator

D, B, K = 8, 3, 3
MODES = ["double_backward", "forward", "finite_difference"]


def _z(B=B, d=D, seed=1, dtype=torch.float64):
    return torch.randn(B, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _assert_matches_oracle(top, S, Vh, k, cos_min=0.999, rel=1e-3):
    cos = (top.vectors * Vh[:, :k]).sum(-1).abs()
    assert cos.min() >= cos_min, f"min |cos| {cos.min():.6f}"
    assert torch.allclose(top.values, S[:, :k], rtol=rel, atol=0), (top.values, S[:, :k])
    gram = top.vectors @ top.vectors.transpose(1, 2)
    assert torch.allclose(gram, torch.eye(k, dtype=gram.dtype).expand_as(gram), atol=1e-10)


@pytest.mark.parametrize("name", list(families(D)))
@pytest.mark.parametrize("method", ["power", "dense"])
def test_gapped_families_match_svd(name, method):
    G = families(D)[name]
    z = _z()
    S, Vh = oracle_svd(G, z)
    top = jacobian_topk(G, z, K, iters=400, tol=1e-7, method=method)
    assert top.method == method
    assert bool(top.converged.all())
    # the eigenvectors are well conditioned (gap) so the match is far tighter than the 1e-3 asked for
    _assert_matches_oracle(top, S, Vh, K, cos_min=1 - 1e-8, rel=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_jvp_modes_match_the_svd(mode):
    """Every JVP mode against the explicit Jacobian's SVD (not against another mode).  Measured:
    values 2.2e-13 (both exact modes) and 4.8e-12 (central differences) relative, 1 - |cos|
    4.5e-13 (all three); the bounds leave 4.6x, 4.2x and 4.4x.  The central-difference bound
    needs no LeakyReLU kink within its step of these latents: for seed 3 there is one, and its
    values are 7.6e-4 off (the exact modes 9e-14)."""
    G = families(D)["dcgan_convtranspose"]
    z = _z()
    S, Vh = oracle_svd(G, z)
    top = jacobian_topk(G, z, K, iters=400, tol=1e-7, jvp=mode, method="power")
    assert top.jvp == mode
    rel = 1e-12 if mode != "finite_difference" else 2e-11
    assert torch.allclose(top.values, S[:, :K], rtol=rel, atol=0)
    assert (1 - (top.vectors * Vh[:, :K]).sum(-1).abs()).max() < 2e-12


def test_operator_products_match_explicit_jacobian():
    G = families(D)["mlp_tanh"]
    z = _z()
    J = explicit_jacobian(G, z)  # [B, m, d]
    V = torch.randn(B, 2, D, dtype=torch.float64)
    for mode in MODES:
        op = JacobianOperator(G, z, 2, mode)
        JV = torch.einsum("bmd,bkd->bkm", J, V)
        tol = 1e-12 if mode != "finite_difference" else 1e-7
        assert torch.allclose(op.jvp(V), JV, atol=tol * float(JV.abs().max()))
        MV = torch.einsum("bmd,bkm->bkd", J, JV)
        assert torch.allclose(op.matvec(V), MV, atol=tol * float(MV.abs().max()))


def test_flat_spectrum_untrained_dcgan_subspace_and_ritz_values():
    """Untrained DCGAN: a flat spectrum.  Individual vectors are ill-determined, so we check
    what the maths guarantees: Ritz values never exceed the true ones (Cauchy interlacing), every
    Ritz value lies within its residual of a true eigenvalue, and after 60 iterations the captured
    energy is >= 99.5% of the optimum, with each singular value within 2%."""
    torch.manual_seed(3)
    G = dcgan(16).double()
    z = _z(4, 16, seed=5)
    S, Vh = oracle_svd(G, z)
    assert (S[:, 3] / S[:, 0]).min() > 0.5  # flat indeed
    top = jacobian_topk(G, z, 4, iters=60, tol=0.0, method="power")
    lam, lam_true = top.values**2, S**2
    assert (lam <= lam_true[:, :4] * (1 + 1e-10)).all()
    # Bauer-Fike for symmetric M: some eigenvalue within ||r|| = residual * lambda_1
    dist = (lam[..., None] - lam_true[:, None, :]).abs().min(-1).values
    assert (dist <= top.residuals * lam[:, :1] * (1 + 1e-8) + 1e-12).all()
    captured = lam.sum(-1) / lam_true[:, :4].sum(-1)
    assert captured.min() >= 0.995, captured
    assert torch.allclose(top.values, S[:, :4], rtol=0.02)
    # The subspace, by Davis-Kahan: ||sin Theta||_F <= ||R||_F / delta with delta the gap between
    # the smallest Ritz value and lambda_{k+1}.  1 - overlap = ||sin Theta||_F^2 / k.
    overlap = (Vh[:, :4] @ top.vectors.transpose(1, 2)).pow(2).sum((1, 2)) / 4
    R = (top.residuals * lam[:, :1]).pow(2).sum(-1).sqrt()
    delta = lam[:, 3] - lam_true[:, 4]
    assert (delta > 0).all()
    assert (1 - overlap <= (R / delta) ** 2 / 4 + 1e-10).all(), (overlap, R / delta)
    gapped = delta / lam[:, 0] > 0.05
    assert gapped.any() and (overlap[gapped] >= 0.99).all(), (overlap, delta / lam[:, 0])


def test_one_generator_call_per_iteration_on_folded_batch():
    G = families(D)["mlp_tanh"]
    rows = []

    def counted(z):
        rows.append(z.shape[0])
        return G(z)

    z = _z()
    jacobian_topk(counted, z, K, iters=5, tol=0.0, jvp="double_backward", method="power")
    assert rows == [2, 2, 2, B * K]  # the first call probes G once (three 2-row forwards)
    rows.clear()
    jacobian_topk(counted, z, K, iters=5, tol=0.0, jvp="double_backward", method="power")
    assert rows == [B * K]  # one forward graph, reused by all 5 iterations
    jacobian_topk(counted, z, K, iters=1, jvp="finite_difference", method="power")  # probe this mode
    rows.clear()
    jacobian_topk(counted, z, K, iters=5, tol=0.0, jvp="finite_difference", method="power")
    # the graph + two graph-free forwards per iteration, then the check of the differences' error
    # on the result (topk._fd_residuals: a graph and four forwards, at the step and half of it)
    assert rows == [B * K] * (1 + 2 * 5 + 1 + 4)


def test_deterministic_for_seed_and_warm_start():
    G = families(D)["dcgan_convtranspose"]
    z = _z()
    a = jacobian_topk(G, z, K, iters=3, tol=0.0, seed=7, method="power")
    b = jacobian_topk(G, z, K, iters=3, tol=0.0, seed=7, method="power")
    c = jacobian_topk(G, z, K, iters=3, tol=0.0, seed=8, method="power")
    assert torch.equal(a.vectors, b.vectors) and torch.equal(a.values, b.values)
    assert not torch.equal(a.vectors, c.vectors)
    converged = jacobian_topk(G, z, K, iters=400, tol=1e-8, method="power")
    flipped = converged.vectors * torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)[:, None]
    warm = jacobian_topk(G, z, K, iters=400, tol=1e-8, method="power", init=flipped)
    # one power iteration, then the check against a second start (k and KRYLOV_SECOND_START products)
    assert warm.iterations < converged.iterations and bool(warm.converged.all())
    # signs follow the previous vectors, not the largest-component rule
    assert ((warm.vectors * flipped).sum(-1) > 0.999).all()
    # a shared [k, d] init broadcasts
    shared = jacobian_topk(G, z, K, iters=2, tol=0.0, method="power", init=converged.vectors[0])
    assert shared.vectors.shape == (B, K, D)


def test_sign_convention_largest_component_positive():
    G = families(D)["sigmoid_image_mlp"]
    top = jacobian_topk(G, _z(), K, iters=50, method="power")
    idx = top.vectors.abs().argmax(-1, keepdim=True)
    assert (torch.gather(top.vectors, -1, idx) > 0).all()


@pytest.mark.parametrize("method", ["power", "krylov", "dense"])
def test_zero_jacobian_gives_zero_values_and_axes(method):
    def G(z):
        return torch.zeros(z.shape[0], 5, dtype=z.dtype) + 0 * z.sum(-1, keepdim=True)

    top = jacobian_topk(G, _z(), K, method=method, jvp="double_backward")
    assert torch.equal(top.values, torch.zeros(B, K, dtype=torch.float64))
    assert torch.equal(top.vectors, torch.eye(D, dtype=torch.float64)[:K].expand(B, K, D))
    assert bool(top.converged.all())


@pytest.mark.parametrize("method", ["power", "krylov", "dense"])
def test_repeated_singular_values_orthonormal(method):
    Q, _ = torch.linalg.qr(torch.randn(D, D, dtype=torch.float64))

    def G(z):  # J = 2 Q: every singular value is 2
        return 2 * z @ Q.T

    top = jacobian_topk(G, _z(), K, method=method)
    assert torch.allclose(top.values, torch.full((B, K), 2.0, dtype=torch.float64), rtol=1e-12)
    gram = top.vectors @ top.vectors.transpose(1, 2)
    assert torch.allclose(gram, torch.eye(K, dtype=torch.float64).expand_as(gram), atol=1e-12)
    assert torch.isfinite(top.residuals).all() and bool(top.converged.all())


# ---- method="krylov" (block LOBPCG) ----------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(families(16)))
def test_krylov_matches_svd_on_gapped_families(name, mode):
    """d=16, k=3: the 3k-dimensional search space is smaller than the latent space, so the
    answer is not a by-product of spanning everything."""
    G = families(16)[name]
    z = _z(d=16)
    S, Vh = oracle_svd(G, z)
    top = jacobian_topk(G, z, K, iters=200, tol=1e-7, method="krylov", jvp=mode)
    assert top.method == "krylov" and top.jvp == mode and bool(top.converged.all())
    fd = mode == "finite_difference"
    _assert_matches_oracle(top, S, Vh, K, cos_min=1 - (1e-6 if fd else 1e-8), rel=1e-6 if fd else 1e-7)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", [4, 8])
def test_krylov_on_a_flat_spectrum_needs_a_fraction_of_the_power_products(k, mode):
    """Untrained DCGAN at d=32 (sigma_{i+1}/sigma_i ~ 0.96): krylov reaches tol with at most a
    third of the generator passes of power iteration, and its values are at least as accurate."""
    torch.manual_seed(0)
    G = dcgan(32).double()
    z = _z(4, 32, seed=2)
    S, Vh = oracle_svd(G, z)
    assert (S[:, k] / S[:, k - 1]).min() > 0.8  # flat indeed
    power = jacobian_topk(G, z, k, iters=3000, tol=1e-4, method="power")
    krylov = jacobian_topk(G, z, k, iters=3000, tol=1e-4, method="krylov", jvp=mode)
    assert bool(power.converged.all()) and bool(krylov.converged.all())
    assert 3 * krylov.iterations <= power.iterations, (krylov.iterations, power.iterations)
    err = lambda t: float((t.values / S[:, :k] - 1).abs().max())
    assert err(krylov) <= max(err(power), 1e-7), (err(krylov), err(power))
    lam, lam_true = krylov.values**2, S**2  # Bauer-Fike, as for power
    dist = (lam[..., None] - lam_true[:, None, :]).abs().min(-1).values
    assert (dist <= krylov.residuals * lam[:, :1] * (1 + 1e-8) + 1e-12).all()


def test_krylov_warm_start_signs_and_determinism():
    G = families(16)["mlp_tanh"]
    z = _z(d=16)
    a = jacobian_topk(G, z, K, iters=200, tol=1e-9, method="krylov", seed=3)
    b = jacobian_topk(G, z, K, iters=200, tol=1e-9, method="krylov", seed=3)
    assert torch.equal(a.vectors, b.vectors)
    warm = jacobian_topk(G, z, K, iters=200, tol=1e-9, method="krylov", init=-a.vectors)
    assert warm.iterations < a.iterations
    assert ((warm.vectors * -a.vectors).sum(-1) > 1 - 1e-8).all()  # signs follow init


@pytest.mark.parametrize("seed", range(1, 9))
@pytest.mark.parametrize("method", ["power", "krylov"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_generators(dtype, method, seed):
    G64 = families(D)["mlp_tanh"]
    z = _z(seed=seed)
    S, Vh = oracle_svd(G64, z)
    G = G64.to(dtype)
    eps = torch.finfo(dtype).eps
    # Stop where the residual's own error term (about tol^2 in the values) is below the rounding
    # bound checked next; tol=1e-3 left float32 values 3.7e-6 off, at the 30-eps bound itself.
    tol = min(1e-3, eps**0.5 / 10)
    top = jacobian_topk(G, z.to(dtype), K, iters=200, tol=tol, method=method)
    assert top.vectors.dtype == torch.float32  # the small dense work runs in float32
    # Measured, max over the 8 seeds and both methods (power / krylov): values within 0.71 / 0.61
    # eps (float16), 0.43 / 0.33 eps (bfloat16), 3.4 / 9.6 eps (float32); 1 - |cos| 2.1e-4 / 1.0e-5
    # (float16), 1.4e-4 / 2.1e-4 (bfloat16), 1.5e-7 / 1.1e-6 (float32).  One seed alone varies 20x
    # in 1 - |cos| (float16 power: 6e-6 to 2.1e-4), hence the seeds.  The bounds leave 2.8-3.5x.
    value_rtol, cos_gap = {
        torch.float16: (2 * eps, 6e-4),
        torch.bfloat16: (1.5 * eps, 6e-4),
        torch.float32: (30 * eps, 3.5e-6),
    }[dtype]
    assert torch.allclose(top.values.double(), S[:, :K], rtol=value_rtol, atol=0)
    cos = (top.vectors.double() * Vh[:, :K]).sum(-1).abs()
    assert (1 - cos).max() <= cos_gap


def test_auto_method_follows_cost_model(monkeypatch):
    # auto times G's products (cost.measure_costs); costs as timed on a quiet CPU for dcgan(8)
    # in float64 stand in for them, so that the choice does not follow the machine's load (at
    # B=16, d=8 krylov and dense tie: 40 ms each)
    from spectral_ops import cost, topk

    costs = cost.ProductCosts(
        build=(1.24e-4, 3.8e-5),
        first_jvp=(2.0e-4, 6.9e-5),
        product=(1.28e-4, 6.4e-5),
        matmul_flop=2.5e-10,
        eigh=1.3e-5,
        step=3.7e-4,
    )
    monkeypatch.setattr(topk, "measure_costs", lambda G, z, mode: costs)
    G = families(D)["mlp_tanh"]
    assert jacobian_topk(G, _z(), K, method="auto").method == "dense"  # d=8: dense is cheaper
    big = nn.Sequential(nn.Linear(512, 64), nn.Tanh(), nn.Linear(64, 256))
    top = jacobian_topk(big, torch.randn(2, 512), 4, iters=2, method="auto")
    assert top.method == "krylov"  # never worse than power at the same iteration budget
    # a batch of 16 fills krylov's one-vector passes: it wins from d=8 (bench sweep), while one
    # latent alone leaves it the fixed cost of a pass per vector, and dense wins
    torch.manual_seed(0)
    conv = dcgan(8).double()
    assert jacobian_topk(conv, torch.randn(16, 8, dtype=torch.float64), 4, method="auto").method == "krylov"
    assert jacobian_topk(conv, torch.randn(1, 8, dtype=torch.float64), 4, method="auto").method == "dense"


def test_dense_chunking_is_exact():
    G = families(D)["dcgan_convtranspose"]
    z = _z()
    a = jacobian_topk(G, z, K, method="dense", chunk_size=3)
    b = jacobian_topk(G, z, K, method="dense", chunk_size=D)
    assert torch.allclose(a.values, b.values, rtol=1e-12)
    assert torch.allclose(a.vectors, b.vectors, atol=1e-10)


class _NoDoubleBackward(torch.autograd.Function):
    """tanh whose backward detaches its incoming gradient (as hand-written custom ops often do):
    its double backward runs but silently yields J v = 0."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g.detach() * (1 - y**2) + 0 * g


class _NoForwardAD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


def test_auto_jvp_never_silently_wrong():
    lin = nn.Linear(D, 20).double()

    def G(z):
        return _NoDoubleBackward.apply(lin(z))

    z = _z()
    S, Vh = oracle_svd(lambda x: torch.tanh(lin(x)), z)  # the same maths, oracle-friendly
    top = jacobian_topk(G, z, K, iters=400, tol=1e-9, method="power", jvp="auto")
    assert top.jvp == "finite_difference"  # double backward is silently zero, no forward AD
    _assert_matches_oracle(top, S, Vh, K, rel=1e-6)
    with pytest.raises(ValueError, match="forward-mode AD"):
        jacobian_topk(G, z, K, jvp="forward")


def test_ddp_wrapped_generator_is_unwrapped(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        G = families(D)["mlp_tanh"]
        ddp = nn.parallel.DistributedDataParallel(G)
        z = _z()
        a = jacobian_topk(ddp, z, K, iters=10, method="power")
        b = jacobian_topk(G, z, K, iters=10, method="power")
        assert torch.equal(a.vectors, b.vectors)
    finally:
        dist.destroy_process_group()


def test_batchnorm_policy():
    G = nn.Sequential(nn.Linear(D, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 12)).double()
    G.train()
    z = _z(6)
    with pytest.raises(ValueError, match="batchnorm='eval'"):
        jacobian_topk(G, z, K)
    top = jacobian_topk(G, z, K, batchnorm="eval", method="dense")
    assert G[1].training  # mode restored
    G.eval()
    ref = jacobian_topk(G, z, K, method="dense")
    assert torch.allclose(top.values, ref.values, rtol=1e-12)
    with pytest.raises(ValueError, match="batchnorm"):
        jacobian_topk(G, z, K, batchnorm="train")


def _linear():
    return nn.Linear(D, 10).double()


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(z=torch.randn(D, dtype=torch.float64)), ValueError, r"z must have shape \[batch, latent"),
        (dict(z=[[0.0] * D]), TypeError, "z must be a torch.Tensor"),
        (dict(z=torch.ones(B, D, dtype=torch.long)), TypeError, "floating-point"),
        (dict(k=0), ValueError, "k must satisfy"),
        (dict(k=D + 1), ValueError, "k must satisfy"),
        (dict(k=2.0), TypeError, "k must be an int"),
        (dict(method="svd"), ValueError, "method must be one of"),
        (dict(method="krylov", iters=0), ValueError, "iters must be"),
        (dict(method="krylov", init=torch.randn(2, D, dtype=torch.float64)), ValueError, "init must have shape"),
        (dict(jvp="reverse"), ValueError, "jvp must be one of"),
        (dict(iters=0), ValueError, "iters must be"),
        (dict(tol=-1.0), ValueError, "tol must be"),
        (dict(init=torch.randn(2, D, dtype=torch.float64)), ValueError, "init must have shape"),
        (dict(chunk_size=0, method="dense"), ValueError, "chunk_size"),
    ],
)
def test_bad_inputs(kwargs, exc, match):
    args = dict(G=_linear(), z=_z(), k=K)
    args.update(kwargs)
    G, z, k = args.pop("G"), args.pop("z"), args.pop("k")
    with pytest.raises(exc, match=match):
        jacobian_topk(G, z, k, **args)


def test_non_finite_rows_are_named():
    z = _z(5)
    z[1, 0] = math.nan
    z[3, 2] = math.inf
    with pytest.raises(ValueError, match=r"rows \[1, 3\]"):
        jacobian_topk(_linear(), z, K)


def test_forward_mode_unsupported_is_a_clear_error():
    def G(z):
        return _NoForwardAD.apply(z)

    with pytest.raises(ValueError, match="forward-mode AD"):
        jacobian_topk(G, _z(), K, jvp="forward")
    # auto picks an exact mode that works
    assert jacobian_topk(G, _z(), K, method="power").jvp == "double_backward"


def test_batch_size_mismatch_and_non_callable():
    def G(z):
        return z[:1] * 2

    with pytest.raises(ValueError, match="batch size"):
        jacobian_topk(G, _z(), K, jvp="double_backward", method="power")
    with pytest.raises(TypeError, match="G must be callable"):
        jacobian_topk(3, _z(), K)


def test_auto_keeps_an_exact_mode_where_central_differences_are_inaccurate():
    """A leaky-ReLU generator whose kinks sit near the probe: the central difference is the
    inaccurate one there.  Before: auto compared the exact modes with it alone, rejected both and
    silently ran finite differences (a float32 residual floor near 1e-3)."""
    from spectral_ops.lab.models import Generator

    torch.manual_seed(0)
    G = Generator(latent_dim=6, size=32, width=8).eval()
    z = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    assert jacobian_topk(G, z, 2, iters=2).jvp == "double_backward"


def _rotated_linear(values, seed=0):
    """G(z) = U diag(values) V^T z (float64), the same singular vectors V [d, d] at every z."""
    gen = torch.Generator().manual_seed(seed)
    d = len(values)
    U = torch.linalg.qr(torch.randn(d + 3, d, generator=gen, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0].T
    A = U @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ V
    return (lambda x: x @ A.T), V


@pytest.mark.parametrize("method", ["power", "krylov", "auto"])
@pytest.mark.parametrize("noise", [0.0, 1e-3])
def test_a_warm_start_spanning_an_invariant_subspace_that_skips_v3(method, noise):
    """init = [v1, v2, v4] (up to noise) is what a previous step's vectors are after lambda_3 and
    lambda_4 crossed: it is an invariant subspace, so the iteration converges to it with small
    residuals.  The result must still be the top 3 (previous main, power and krylov from the exact
    subspace: values [4, 3, 1.5] reported converged)."""
    values = [4.0, 3.0, 2.0, 1.5, 1.0, 0.5]
    G, V = _rotated_linear(values)
    z = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    init = V[[0, 1, 3]] + noise * torch.randn(3, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    top = jacobian_topk(G, z, 3, method=method, init=init, iters=60, tol=1e-10)
    assert bool(top.converged.all())
    torch.testing.assert_close(
        top.values, torch.tensor(values[:3], dtype=torch.float64).expand(5, 3), rtol=1e-9, atol=0
    )
    assert float((top.vectors @ V[:3].T).abs().amax(-1).min()) >= 1 - 1e-9
