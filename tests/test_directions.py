"""global_directions against the dense oracle: the mean of explicit J^T J over the same latents."""

from __future__ import annotations

import pytest
import torch

from spectral_ops.testing.families import DCGAN4D, explicit_jacobian, families
from spectral_ops import global_directions
from spectral_ops.directions import subspace_angle_deg

pytestmark = pytest.mark.usefixtures("one_thread")


def _oracle(G, z):
    J = explicit_jacobian(G, z)  # [N, m, d]
    M = (J.transpose(1, 2) @ J).mean(0)
    lam, U = torch.linalg.eigh(M)
    return lam.flip(0), U.flip(1).T, M


@pytest.mark.parametrize("name", ["mlp_tanh", "dcgan_convtranspose", "plain_function"])
def test_matches_the_mean_metric_oracle(name):
    G = families(12)[name]
    z = torch.randn(40, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lam, U, M = _oracle(G, z)
    k = 3
    assert (lam[1 : k + 1] / lam[:k]).max() < 0.95  # a gap: the directions are well defined
    out = global_directions(G, None, k, latents=z, batch_size=16, iters=200, tol=1e-9, trace_probes=None)
    assert bool(out.converged.all())
    cos = (out.directions * U[:k]).sum(-1).abs()
    assert cos.min() >= 1 - 1e-9, cos
    assert torch.allclose(out.values, lam[:k], rtol=1e-8)
    assert out.trace_exact and abs(out.trace / float(M.trace()) - 1) < 1e-10
    assert torch.allclose(out.explained, lam[:k].cumsum(0) / M.trace(), rtol=1e-8)


def test_hutchinson_trace_and_stability():
    G = families(12)["mlp_tanh"]
    z = torch.randn(64, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lam, U, M = _oracle(G, z)
    out = global_directions(G, None, 2, latents=z, iters=100, tol=1e-8, trace_probes=8)
    assert abs(out.trace / float(M.trace()) - 1) < 0.1
    sampled = global_directions(
        G, 256, 2, latent_dim=12, iters=100, tol=1e-8, dtype=torch.float64, stability=True, progress=True
    )
    assert sampled.stability_deg is not None and sampled.stability_deg < 10  # two sample sets agree
    assert subspace_angle_deg(sampled.directions, U[:2]) < 10


def test_4d_latents_and_bad_arguments():
    torch.manual_seed(0)
    G = DCGAN4D(nz=6).double().eval()
    out = global_directions(G, 32, 2, latent_dim=(6, 1, 1), dtype=torch.float64, iters=50)
    assert out.directions.shape == (2, 6)
    with pytest.raises(ValueError, match="exactly one of latent_dim"):
        global_directions(G, 32, 2)
    with pytest.raises(ValueError, match="n_samples"):
        global_directions(G, 0, 2, latent_dim=6)
    with pytest.raises(ValueError, match="k must satisfy"):
        global_directions(G, 8, 7, latent_dim=(6, 1, 1), dtype=torch.float64)
    with pytest.raises(ValueError, match="trace_probes"):
        global_directions(G, 8, 2, latent_dim=(6, 1, 1), trace_probes=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_float32_with_a_krylov_space_wider_than_the_latent(seed):
    """d=6, k=4 in float32 (the demo's shape): the block Krylov space (8 rows) exceeds the latent
    space.  Before: rows that were rounding noise got rescaled to 1e19 and eigh failed on inf."""
    from spectral_ops.lab.models import Generator

    torch.manual_seed(seed)
    G = Generator(latent_dim=6, size=32, width=8).eval()
    z = torch.randn(24, 6, generator=torch.Generator().manual_seed(seed))
    out = global_directions(G, None, 4, latents=z, batch_size=8, iters=30, tol=1e-5, trace_probes=None)
    lam, U, M = _oracle(G.double(), z.double())
    assert torch.allclose(out.values.double(), lam[:4], rtol=1e-4)
    assert abs(out.trace / float(M.trace()) - 1) < 1e-5 and float(out.explained[-1]) <= 1 + 1e-5


def _float64_eps_tol(d: int) -> float:
    """A sum of d rounded terms, each from a d-term dot product: d^2 float64 epsilons (with room)."""
    return 16 * d * d * torch.finfo(torch.float64).eps


@pytest.mark.parametrize("n", [1, 40])
def test_explained_is_the_whole_trace_at_k_equal_d(n):
    """k = d (d = 6), one sample or forty: explained[-1] is 1 to rounding and every share is the
    oracle's.  Before: the 8-probe Hutchinson trace was used even at d = 6, so the shares were
    1.154 (one sample) or 0.964 at k = d."""
    G = families(6)["mlp_tanh"]
    z = torch.randn(n, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lam, _, M = _oracle(G, z)
    out = global_directions(G, None, 6, latents=z, iters=50, tol=1e-10)
    assert out.trace_exact and out.trace_stderr is None and out.explained_stderr is None
    assert abs(out.trace / float(M.trace()) - 1) <= _float64_eps_tol(6)
    assert abs(float(out.explained[-1]) - 1) <= _float64_eps_tol(6) and float(out.explained.max()) <= 1
    # at k = d the Krylov space is all of R^d: the Ritz values are exact up to rounding
    assert torch.allclose(out.explained, lam.cumsum(0) / M.trace(), rtol=0, atol=_float64_eps_tol(6))


def test_small_latents_get_the_exact_trace_by_default():
    """d = 12 <= EXACT_TRACE_DIM with the default trace_probes=8: the trace is exact and the
    shares are the oracle's.  Before: an 8-probe estimate (trace_exact False, shares off by ~10%)."""
    from spectral_ops.directions import EXACT_TRACE_DIM

    G = families(12)["plain_function"]
    z = torch.randn(3, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    lam, _, M = _oracle(G, z)
    out = global_directions(G, None, 2, latents=z, iters=100, tol=1e-10)
    assert 12 <= EXACT_TRACE_DIM and out.trace_exact and out.trace_stderr is None
    assert abs(out.trace / float(M.trace()) - 1) <= _float64_eps_tol(12)
    assert torch.allclose(out.explained, lam[:2].cumsum(0) / M.trace(), rtol=1e-8)


def _hutchinson_stderr(G, z, probes: int) -> float:
    """The exact standard error of the mean over samples of `probes`-probe Rademacher estimates
    of ||J_n||_F^2: Var(v^T A v) = 2 (||A||_F^2 - sum_i A_ii^2) for A = J^T J."""
    J = explicit_jacobian(G, z)
    A = J.transpose(1, 2) @ J
    var = 2 * (A.pow(2).sum((1, 2)) - A.diagonal(dim1=1, dim2=2).pow(2).sum(1)) / probes
    return float(var.sum().sqrt()) / z.shape[0]


def test_the_hutchinson_trace_reports_its_standard_error():
    """d = 80 > EXACT_TRACE_DIM, 4 probes on 48 samples: the reported standard error is the
    estimator's (within its own sampling spread, about 8% here), the trace lies within 4 of them
    of the oracle's, and explained / explained_stderr are shares.  With one probe the spread
    across samples bounds the error from above; with one probe on one sample it is unknown (inf).
    Before: no error was reported (GlobalDirections had no trace_stderr)."""
    G = families(80)["mlp_tanh"]
    z = torch.randn(48, 80, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    lam, _, M = _oracle(G, z)
    out = global_directions(G, None, 2, latents=z, iters=100, tol=1e-9, trace_probes=4)
    truth = _hutchinson_stderr(G, z, 4)
    assert not out.trace_exact and 0.7 < out.trace_stderr / truth < 1.4
    assert abs(out.trace - float(M.trace())) < 4 * out.trace_stderr
    assert float(out.explained.min()) >= 0 and float(out.explained.max()) <= 1
    assert torch.allclose(out.explained_stderr, out.explained * out.trace_stderr / out.trace, rtol=1e-12)
    one = global_directions(G, None, 2, latents=z, iters=100, tol=1e-9, trace_probes=1)
    assert one.trace_stderr >= 0.7 * _hutchinson_stderr(G, z, 1)
    single = global_directions(G, None, 2, latents=z[:1], iters=100, tol=1e-9, trace_probes=1)
    assert single.trace_stderr == float("inf") and float(single.explained.max()) <= 1


def test_an_estimated_trace_below_the_top_eigenvalues_is_raised_to_them():
    """G(z) = z a (one output, a = (1, 2, 3, 4, 0, ...), d = 80): the trace is ||a||^2 = 30 and
    one Rademacher probe estimates (a . v)^2 in {0, 4, 16, 36, 64, 100}, below 30 for about half
    the seeds.  The trace reported is never below values.sum() and the share never above 1.
    Before: explained was 30 / 16, 30 / 4 or 30 / tiny (about 1e308)."""
    a = torch.zeros(80, 1, dtype=torch.float64)
    a[:4, 0] = torch.arange(1.0, 5.0, dtype=torch.float64)
    z = torch.randn(1, 80, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    raised = 0
    for seed in range(8):
        out = global_directions(lambda x: x @ a, None, 1, latents=z, iters=20, tol=1e-12, trace_probes=1, seed=seed)
        assert abs(float(out.values[0]) / 30 - 1) <= 64 * torch.finfo(torch.float64).eps
        assert out.trace >= float(out.values.sum()) and 0 < float(out.explained[0]) <= 1
        raised += out.trace == float(out.values.sum())
    assert raised >= 1  # the case this test is for did occur


@pytest.mark.parametrize("name, value", [("stability", "no"), ("stability", 1), ("progress", "no")])
def test_a_non_bool_flag_is_a_type_error(name, value):
    """Before: stability="no" was taken as True (and ran the second sample set)."""
    G = families(6)["plain_function"]
    with pytest.raises(TypeError, match=f"{name} must be a bool, got {type(value).__name__}"):
        global_directions(G, 4, 2, latent_dim=6, dtype=torch.float64, **{name: value})


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, -(2**70)])
def test_a_seed_a_generator_cannot_take_is_refused_naming_it(seed):
    """Before: "Overflow when unpacking long long" from inside torch."""
    G = families(6)["plain_function"]
    with pytest.raises(ValueError, match=r"seed must be an int in \[-2\*\*63, 2\*\*64 - 1\], got "):
        global_directions(G, 4, 2, latent_dim=6, dtype=torch.float64, seed=seed)


def test_the_largest_seed_works_with_stability():
    """seed = 2**64 - 1 is a valid torch seed; the independent set's seed + 1 wraps to 0.
    Before: "Overflow when unpacking long long" for the second sample set."""
    G = families(6)["plain_function"]
    out = global_directions(G, 8, 2, latent_dim=6, dtype=torch.float64, seed=2**64 - 1, stability=True)
    assert out.stability_deg is not None and 0 <= out.stability_deg <= 90


def test_meta_device_is_refused_naming_it():
    """Before: the message blamed `latents`, which the caller never passed."""
    with pytest.raises(ValueError, match="device is 'meta'"):
        global_directions(families(6)["plain_function"], 4, 2, latent_dim=6, device="meta")


@pytest.mark.parametrize("k", [7, 8])
def test_a_metric_with_a_null_space_gets_every_direction(k):
    """G(z) = z W with W the first two coordinate axes (d = 8, rank 2): the Krylov space cannot
    reach the whole null space, and the solve returned zero vectors with eigenvalue -0.69 as
    converged directions, so explained fell back to 0.31 at k = d.  The missing rows are now
    completed from the complement: orthonormal directions, eigenvalues [1, 1, 0, ...] (to
    rounding) and explained [0.5, 1, ..., 1].  Before: the zero rows and negative values."""
    W = torch.zeros(8, 2, dtype=torch.float64)
    W[0, 0] = W[1, 1] = 1.0
    z = torch.randn(5, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = global_directions(lambda x: x @ W, None, k, latents=z, iters=60, tol=1e-8)
    eps = torch.finfo(torch.float64).eps
    eye = torch.eye(k, dtype=torch.float64)
    assert (out.directions @ out.directions.T - eye).abs().max() <= 64 * eps
    expect = torch.zeros(k, dtype=torch.float64)
    expect[:2] = 1.0
    assert (out.values - expect).abs().max() <= 64 * eps and bool(out.converged.all())
    assert (out.directions[:2, 2:].abs().max()) <= 64 * eps  # the top two span the first two axes
    assert (out.explained - expect.cumsum(0) / 2).abs().max() <= 64 * eps


def test_any_scale_of_G_gives_the_same_directions_and_shares():
    """s * G has the directions and shares of G and the values s^2 times G's, in float32 from 1e-25 to
    1e20 (previous main: a scale probe of M X, which squares G's scale, gave explained 0 at 1e-25
    and an eigh failure at 1e20; values beyond float32's range are float64)."""
    G = families(6)["mlp_tanh"].float()
    z = torch.randn(32, 6, generator=torch.Generator().manual_seed(0))
    ref = global_directions(G, None, 3, latents=z, batch_size=16, iters=100, tol=1e-5)
    for s in (1e-25, 1e20):
        out = global_directions(lambda x: s * G(x), None, 3, latents=z, batch_size=16, iters=100, tol=1e-5)
        assert out.values.dtype == torch.float64
        torch.testing.assert_close(out.values / (s * s), ref.values, rtol=1e-5, atol=0)
        torch.testing.assert_close(out.explained, ref.explained, rtol=1e-5, atol=0)
        assert float((out.directions * ref.directions).sum(-1).abs().min()) >= 1 - 1e-5


# ---------------------------------------------------------------- global_alignment_penalty


def _global_oracle(G, z):
    """||offdiag(M_bar)||^2 / ||M_bar||^2 from explicit per-sample Jacobians (autograd, graph kept),
    M_bar = mean over rows with a nonzero Jacobian of J^T J / tr(J^T J) (trace detached)."""
    Js = [torch.autograd.functional.jacobian(lambda x: G(x[None]).reshape(-1), zi, create_graph=True) for zi in z]
    Ms = [J.T @ J for J in Js]
    Ms = [M / M.trace().detach() for M in Ms if float(M.trace()) > 0]
    M_bar = torch.stack(Ms).mean(0)
    off = M_bar - torch.diag(M_bar.diagonal())
    return off.pow(2).sum() / M_bar.pow(2).sum()


@pytest.mark.parametrize("jvp", ["double_backward", "forward"])
def test_global_alignment_penalty_matches_explicit_jacobian(jvp):
    """Value and parameter gradient against autograd through the explicit J^T J (float64)."""
    from spectral_ops.directions import global_alignment_penalty

    torch.manual_seed(0)
    G = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 9)).double()
    z = torch.randn(6, 5, dtype=torch.float64)
    value = global_alignment_penalty(G, z, jvp=jvp)
    grads = torch.autograd.grad(value, list(G.parameters())[:3])
    oracle = _global_oracle(G, z)
    expected = torch.autograd.grad(oracle, list(G.parameters())[:3])
    torch.testing.assert_close(value, oracle, rtol=1e-13, atol=0)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


def _rotated_linear(theta: float, scale: float = 1.0):
    """G(z) = W R z: W's columns orthogonal with norms 2, 1, 0.5; R a rotation by theta in the
    plane of latents 0 and 1."""
    W = torch.linalg.qr(torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))[0]
    W = W * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64) * scale
    c, s = torch.cos(torch.tensor(theta, dtype=torch.float64)), torch.sin(torch.tensor(theta, dtype=torch.float64))
    R = torch.eye(3, dtype=torch.float64)
    R[0, 0], R[0, 1], R[1, 0], R[1, 1] = c, -s, s, c
    A = W @ R
    return lambda z: z @ A.T


@pytest.mark.parametrize("scale", [1e-100, 1.0, 1e100])
def test_global_alignment_penalty_known_answer(scale):
    """Constant J = W R: the share is 2 ((4 - 1) sin(2 theta) / 2)^2 / (16 + 1 + 1/16) for a
    rotation theta in the plane of the two strongest latents, 0 on the axes, at any scale of G."""
    from spectral_ops.directions import global_alignment_penalty

    z = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert float(global_alignment_penalty(_rotated_linear(0.0, scale), z)) < 1e-30
    theta = 0.3
    expected = 2 * (1.5 * torch.sin(torch.tensor(2 * theta, dtype=torch.float64))) ** 2 / (16 + 1 + 1 / 16)
    torch.testing.assert_close(global_alignment_penalty(_rotated_linear(theta, scale), z), expected, rtol=1e-13, atol=0)


def test_global_alignment_penalty_skips_rows_g_ignores():
    """Rows whose Jacobian is zero do not count: the value is that of the other rows alone."""
    from spectral_ops.directions import global_alignment_penalty

    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 6).double()

    def G(z):
        return torch.tanh(lin(z)) * (z[:, :1] > 0).to(z.dtype)  # J = 0 where z_0 < 0

    z = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    z[:, 0] = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 0.3, -0.3], dtype=torch.float64)
    torch.testing.assert_close(
        global_alignment_penalty(G, z), global_alignment_penalty(G, z[z[:, 0] > 0]), rtol=1e-14, atol=0
    )
    ignored = global_alignment_penalty(G, z[z[:, 0] < 0])
    assert float(ignored) == 0.0
    (grad,) = torch.autograd.grad(ignored, lin.weight, allow_unused=True)
    assert grad is None or bool(torch.isfinite(grad).all())  # no 0/0 on the way back


def test_global_alignment_penalty_bad_input():
    from spectral_ops.directions import global_alignment_penalty

    G = torch.nn.Linear(3, 4)
    with pytest.raises(ValueError, match="z"):
        global_alignment_penalty(G, torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(TypeError, match="G must be callable"):
        global_alignment_penalty(3, torch.zeros(2, 3))
