"""Spectral regularizer: gradients against an explicit eigh oracle, cost controls, bad input."""

from __future__ import annotations


import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

import spectral_ops
from spectral_ops.ops import reference as R
from spectral_ops.regularizer import SpectralRegularizer, spectral_penalty

LOSSES = ("l1", "assigned", "offdiag")
WEIGHTS = ("uniform", "singular")
CONVERGED = dict(iters=300, tol=1e-13, cg_iters=60, cg_tol=1e-14)


def make_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 12)).double()


def make_conv(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 2 * 4 * 4), nn.Tanh(), nn.Unflatten(1, (2, 4, 4)), nn.ConvTranspose2d(2, 1, 4, 2, 1), nn.Tanh()
    ).double()


GENERATORS = {"mlp": (make_mlp, 5), "conv": (make_conv, 4)}


def _jtj(G, params, z):
    def one(x):
        return functional_call(G, params, (x[None],)).reshape(-1)

    J = vmap(jacrev(one))(z)  # [B, m, d]
    return J.transpose(1, 2) @ J


def _grads(value, G):
    params = list(G.parameters())
    gs = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(gs, params)])


def _loss_inputs(lam, loss, weights):
    """The singular values the loss sees: sqrt(lambda), or for offdiag with uniform weights the
    fixed rank weights w_i = (k - i + 1)/k (regularizer.loss_values, spectrum-free), written out here."""
    S = lam.clamp_min(0).sqrt()
    if loss == "offdiag" and weights == "uniform":
        k = S.shape[-1]
        S = torch.tensor([((k - i) / k) ** 0.5 for i in range(k)], dtype=S.dtype).expand_as(S)
    if weights == "geometric":  # offdiag only: rank weights 1, 1/2, 1/4, ...
        S = torch.tensor([0.5 ** (i / 2) for i in range(S.shape[-1])], dtype=S.dtype).expand_as(S)
    return S


def _eigh(G, params, z, k):
    M = _jtj(G, params, z)
    lam, U = torch.linalg.eigh(M)
    lam, V = lam.flip(-1), U.flip(-1).transpose(1, 2)  # all d, descending
    V = V * R.sign_align(V, None)[..., None]
    return M, lam, V


def oracle(G, z, k, loss, weights):
    """Autograd through eigh of the explicit J^T J (float64): the exact gradient."""
    M, lam, V = _eigh(G, dict(G.named_parameters()), z, k)
    op_weights = "uniform" if weights == "geometric" else weights  # the op reads offdiag's A from S
    value = R.alignment_loss(V[:, :k], _loss_inputs(lam[:, :k], loss, weights), loss, op_weights).mean()
    return value, _grads(value, G)


def fast_formula(G, z, k, loss, weights):
    """What grad="fast" must compute, from the explicit eigendecomposition: the loss at the
    (fixed) eigenvectors, values by Hellmann-Feynman, and the surrogate sum_i a_i^T M(theta) v_i
    with a_i = sum_{j<=k, j!=i} (g_i.v_j)/(lambda_i-lambda_j) v_j + (I - V V^T) g_i / lambda_i."""
    M, lam, Vall = _eigh(G, dict(G.named_parameters()), z, k)
    V, lam = Vall[:, :k].detach(), lam[:, :k].detach()
    V_leaf = V.clone().requires_grad_(True)
    lam_hf = (V @ M * V).sum(-1)  # v_i^T M(theta) v_i
    value = R.alignment_loss(V_leaf, _loss_inputs(lam_hf, loss, weights), loss, weights).mean()
    (g,) = torch.autograd.grad(value, V_leaf, retain_graph=True)
    A = torch.zeros_like(V)
    for b in range(V.shape[0]):
        for i in range(k):
            a = (g[b, i] - V[b].T @ (V[b] @ g[b, i])) / lam[b, i]
            for j in range(k):
                if j != i:
                    a = a + (g[b, i] @ V[b, j]) / (lam[b, i] - lam[b, j]) * V[b, j]
            A[b, i] = a
    surrogate = (A @ M * V).sum()
    return _grads(value + surrogate, G)


def last_step_formula(G, z, k, loss, weights):
    """The removed grad="last_step": the loss on v = M v*/||M v*||, v* fixed eigenvectors."""
    M, lam, V = _eigh(G, dict(G.named_parameters()), z, k)
    Vs = V[:, :k].detach()
    W = Vs @ M
    value = R.alignment_loss(
        W / W.norm(dim=-1, keepdim=True), _loss_inputs((W * Vs).sum(-1), loss, weights), loss, weights
    ).mean()
    return _grads(value, G)


def rel(a, b):
    return float((a - b).norm() / b.norm())


# ---- 1. gradients against the eigh oracle ---------------------------------------------------------
@pytest.mark.parametrize("gen", GENERATORS)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_implicit_matches_eigh_oracle(gen, loss, weights):
    make, d = GENERATORS[gen]
    G = make()
    z = torch.randn(3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    value_ref, g_ref = oracle(G, z, 2, loss, weights)
    value = spectral_penalty(G, z, k=2, loss=loss, weights=weights, grad="implicit", jvp="double_backward", **CONVERGED)
    assert abs(float(value.detach() - value_ref.detach())) <= 1e-10
    assert float(g_ref.norm()) > 1e-3  # a gradient worth comparing
    assert rel(_grads(value, G), g_ref) <= 1e-4


@pytest.mark.parametrize("gen", GENERATORS)
@pytest.mark.parametrize("k", [2, 3])
def test_geometric_rank_weights_match_eigh_oracle(gen, k):
    """offdiag with weights="geometric" (rank weights 2^-(i-1)): value and "implicit" gradient
    against autograd through eigh of the explicit J^T J."""
    make, d = GENERATORS[gen]
    G = make()
    z = torch.randn(3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    value_ref, g_ref = oracle(G, z, k, "offdiag", "geometric")
    value = spectral_penalty(G, z, k=k, weights="geometric", grad="implicit", jvp="double_backward", **CONVERGED)
    assert float(value) == pytest.approx(float(value_ref), rel=1e-10)
    assert rel(_grads(value, G), g_ref) <= 1e-4
    # the rank weights differ from the default's: the same G at k >= 3 gives another value
    if k >= 3:
        assert abs(float(value) - float(spectral_penalty(G, z, k=k, **CONVERGED))) > 1e-3 * float(value)


def test_geometric_fast_is_exact_without_out_of_block_spectrum():
    """rank J = k = 3 (at k = 2 the geometric weights 1, 1/2 equal the default's, so k = 3 is the
    smallest size where this test tells the two apart)."""
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 12)).double()
    z = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, g_ref = oracle(G, z, 3, "offdiag", "geometric")
    _, g_default = oracle(G, z, 3, "offdiag", "uniform")
    value = spectral_penalty(G, z, k=3, weights="geometric", jvp="double_backward", iters=300, tol=1e-13)
    assert float(g_ref.norm()) > 1e-3
    assert rel(g_default, g_ref) > 1e-2  # the weights matter to the gradient here
    assert rel(_grads(value, G), g_ref) <= 1e-6


def test_geometric_weights_are_offdiag_only():
    with pytest.raises(ValueError, match="weights='geometric'.*loss='offdiag' only, got loss='l1'"):
        spectral_ops.RegularizerConfig(loss="l1", weights="geometric")
    with pytest.raises(ValueError, match="weights must be one of"):
        spectral_penalty(lambda x: x, torch.randn(2, 3), k=2, weights="rank")


@pytest.mark.parametrize("jvp", ["forward", "finite_difference"])
@pytest.mark.parametrize("gen", GENERATORS)
def test_implicit_other_jvp_modes(jvp, gen):
    """create_graph=True keeps products theta-differentiable in every JVP mode."""
    make, d = GENERATORS[gen]
    G = make()
    z = torch.randn(3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, g_ref = oracle(G, z, 2, "l1", "singular")
    value = spectral_penalty(G, z, k=2, loss="l1", weights="singular", grad="implicit", jvp=jvp, **CONVERGED)
    assert rel(_grads(value, G), g_ref) <= 1e-4


def make_rank2(seed=0):
    """J(z) has rank 2 everywhere: with k = 2 there is no out-of-block spectrum."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 2), nn.Tanh(), nn.Linear(2, 12)).double()


@pytest.mark.parametrize("gen", GENERATORS)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_fast_is_its_formula(gen, loss, weights):
    make, d = GENERATORS[gen]
    G = make()
    z = torch.randn(3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    value = spectral_penalty(
        G, z, k=2, loss=loss, weights=weights, grad="fast", jvp="double_backward", iters=300, tol=1e-13
    )
    assert rel(_grads(value, G), fast_formula(G, z, 2, loss, weights)) <= 1e-6


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_fast_is_exact_without_out_of_block_spectrum(loss, weights):
    """Its only approximation is outside the top-k block: with rank(J) = k it is the gradient."""
    G = make_rank2()
    z = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, g_ref = oracle(G, z, 2, loss, weights)
    value = spectral_penalty(
        G, z, k=2, loss=loss, weights=weights, grad="fast", jvp="double_backward", iters=300, tol=1e-13
    )
    assert float(g_ref.norm()) > 1e-3
    assert rel(_grads(value, G), g_ref) <= 1e-6


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("gen", GENERATORS)
@pytest.mark.parametrize("loss", LOSSES)
def test_fast_against_the_oracle_and_the_removed_last_step(gen, loss):
    """fast's and the removed last_step's (from its formula) cosines to the exact gradient are the
    ones the regularizer's docs quote (neither is uniformly closer: last_step is above fast for mlp
    assigned and conv l1 / assigned)."""
    make, d = GENERATORS[gen]
    G = make()
    z = torch.randn(3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, g_true = oracle(G, z, 2, loss, "uniform")
    value = spectral_penalty(G, z, k=2, loss=loss, grad="fast", jvp="double_backward", iters=300, tol=1e-13)
    cos_fast = _cos(_grads(value, G), g_true)
    cos_last = _cos(last_step_formula(G, z, 2, loss, "uniform"), g_true)
    # The quoted numbers are these rounded to 3 decimals (half a unit: 5e-4; the largest offset
    # measured is 5.0e-4, conv l1 fast 0.8094974).  The cosines themselves move by 3e-13 between
    # iters=300 and 1000: the 1e-9 is that jitter with a wide margin, not a tolerance on the docs.
    assert abs(cos_fast - DOCUMENTED_FAST_COS[gen][loss]) <= 5e-4 + 1e-9, cos_fast
    assert abs(cos_last - DOCUMENTED_LAST_STEP_COS[gen][loss]) <= 5e-4 + 1e-9, cos_last


# cosine to the exact gradient, k=2, 3 samples (measured; copied into the regularizer's docstring).
# Re-measured: fast 0.9505383 0.9596795 0.9779861 (mlp), 0.8094974 0.8380287 0.9882917 (conv);
# last_step 0.5802883 0.9758268 0.9758744 (mlp), 0.9187633 0.8843862 0.9782578 (conv).
DOCUMENTED_FAST_COS = {
    "mlp": {"l1": 0.951, "assigned": 0.960, "offdiag": 0.978},
    "conv": {"l1": 0.809, "assigned": 0.838, "offdiag": 0.988},
}
DOCUMENTED_LAST_STEP_COS = {
    "mlp": {"l1": 0.580, "assigned": 0.976, "offdiag": 0.976},
    "conv": {"l1": 0.919, "assigned": 0.884, "offdiag": 0.978},
}


def test_the_documented_cosines_are_the_tested_ones():
    """The regularizer's docstring table must show the numbers the test above checks."""
    import spectral_ops.regularizer as module

    rows = {"mlp": "MLP 5-16-12, tanh", "conv": "conv-transpose 4->1x8x8"}
    for gen, label in rows.items():
        line = next(x for x in module.__doc__.splitlines() if x.strip().startswith(label))
        cells = [
            f"{DOCUMENTED_FAST_COS[gen][loss]:.3f} ({DOCUMENTED_LAST_STEP_COS[gen][loss]:.3f})"
            for loss in ("l1", "assigned", "offdiag")
        ]
        assert line.split()[-6:] == " ".join(cells).split(), (line, cells)


def test_last_step_is_removed_with_a_clear_error():
    G = make_mlp()
    z = torch.randn(2, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="grad='fast'"):
        spectral_penalty(G, z, k=2, grad="last_step")
    with pytest.raises(ValueError, match="wrong sign"):
        SpectralRegularizer(5, grad="last_step")


def test_gradcheck_implicit_wrt_parameter():
    G = make_mlp()
    z = torch.randn(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    params = {n: p.detach() for n, p in G.named_parameters()}

    def f(w):
        p = dict(params, **{"0.weight": w})
        Gf = lambda x: functional_call(G, p, (x,))
        return spectral_penalty(
            Gf, z, k=2, loss="l1", weights="singular", grad="implicit", jvp="double_backward", **CONVERGED
        )

    w = params["0.weight"].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (w,), eps=1e-6, atol=1e-7, rtol=1e-5)


# ---- never NaN -------------------------------------------------------------------------------------
@pytest.mark.parametrize("grad", ["fast", "implicit"])
@pytest.mark.parametrize("loss", LOSSES)
def test_zero_jacobian_gives_zero_penalty_and_finite_grads(grad, loss):
    G = nn.Linear(4, 6).double()
    with torch.no_grad():
        G.weight.zero_()
    z = torch.randn(3, 4, dtype=torch.float64)
    value = spectral_penalty(G, z, k=2, loss=loss, grad=grad)
    value.backward()
    assert torch.isfinite(value) and float(value) == 0.0
    assert torch.isfinite(G.weight.grad).all()


@pytest.mark.parametrize("grad", ["fast", "implicit"])
def test_repeated_singular_values_finite(grad):
    """J = 2 * (orthonormal columns): all singular values equal; the gradient stays finite."""
    G = nn.Linear(4, 6, bias=False).double()
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(6, 4, dtype=torch.float64))
        G.weight.copy_(2 * q)
    z = torch.randn(3, 4, dtype=torch.float64)
    for loss in LOSSES:
        G.zero_grad()
        value = spectral_penalty(G, z, k=3, loss=loss, grad=grad, iters=5)
        value.backward()
        assert torch.isfinite(value) and 0 <= float(value) <= 1
        assert torch.isfinite(G.weight.grad).all()


def test_axis_aligned_generator_has_zero_penalty():
    """G(z) = z * scales (diagonal J, distinct scales): singular vectors are the axes."""
    scales = torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    G = lambda x: torch.cat([x * scales, x[:, :1] * 0], dim=1)
    z = torch.randn(4, 4, dtype=torch.float64)
    for loss in LOSSES:
        assert float(spectral_penalty(G, z, k=3, loss=loss, iters=50, tol=1e-12)) <= 1e-10


SCALE_SETTINGS = [
    dict(),
    dict(loss="l1", weights="singular"),
    dict(loss="assigned", weights="singular"),
    dict(grad="implicit"),
    dict(solver="power", iters=30),
]


@pytest.mark.parametrize(
    "dtype, scales, value_tol, grad_tol",
    [
        (torch.float64, (1e-150, 1e-40, 1e-12, 1e12, 1e40, 1e150), 1e-13, 1e-9),
        (torch.float32, (1e-37, 1e-25, 1e-12, 1e12, 1e20, 1e37), 1e-6, 1e-3),
    ],
)
@pytest.mark.parametrize("setting", SCALE_SETTINGS, ids=lambda s: "-".join(map(str, s.values())) or "defaults")
def test_penalty_is_scale_free(dtype, scales, value_tol, grad_tol, setting):
    """The loss is scale-free, so spectral_penalty(s * G) and its gradient w.r.t. G's parameters
    equal those of G for every scale s whose J is representable.  On the previous main the
    eigenvalues were formed as lam * c^2 and the loss's J V and J a carried G's scale: 1e-25 * G
    gave 0.0 (1e-12 with singular weights) and 1e20 * G raised "not finite"."""
    G = make_mlp().to(dtype)
    z = torch.randn(8, 5, dtype=dtype, generator=torch.Generator().manual_seed(4))

    def run(s):
        value = spectral_penalty(lambda x: s * G(x), z, k=3, **setting)
        return value.detach(), _grads(value, G)

    ref_value, ref_grad = run(1.0)
    assert float(ref_value) > 0.05
    for s in scales:
        value, grad = run(s)
        assert abs(float(value - ref_value)) <= value_tol * float(ref_value), s
        assert float((grad - ref_grad).norm()) <= grad_tol * float(ref_grad.norm()), s


def test_a_subnormal_jacobian_is_refused_naming_the_rows():
    """At 1e-40 * G in float32, J is below float32's smallest normal number and the gradient that
    reaches G's output (about 1 / |J|) overflows: the call is refused, naming the rows, and the
    regularizer's state is unchanged (previous main: penalty 0 with a zero gradient)."""
    G = make_mlp().float()
    z = torch.randn(8, 5, generator=torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match=r"smallest normal number of G's output dtype in rows \[0, 1, 2"):
        spectral_penalty(lambda x: 1e-40 * G(x), z, k=3)
    reg = SpectralRegularizer(5, k=3, every=1)
    before = {name: t.clone() for name, t in reg.state_dict().items()}
    with pytest.raises(ValueError, match="smallest normal number"):
        reg(lambda x: 1e-40 * G(x), z)
    assert all(torch.equal(before[name], t) for name, t in reg.state_dict().items())
    # float64 carries the same scale exactly (its smallest normal number is 2e-308)
    G64 = make_mlp()
    value = spectral_penalty(lambda x: 1e-40 * G64(x), z.double(), k=3)
    assert torch.isfinite(value) and float(value) > 0.05


@pytest.mark.parametrize("solver", ["krylov", "power"])
def test_a_running_basis_that_skips_v3_still_gives_the_top_3(solver):
    """A regularizer whose running basis spans [v1, v2, v4] of a G with the same singular vectors at
    every z (what an aligned generator's basis is after lambda_3 and lambda_4 crossed) is an
    invariant subspace: the solver must still find v3, and the penalty and last_values be those of
    the top 3 (previous main: values [4, 3, 1.5] and the loss of [v1, v2, v4])."""
    from test_topk import _rotated_linear

    values = [4.0, 3.0, 2.0, 1.5, 1.0, 0.5]
    G, V = _rotated_linear(values)
    z = torch.randn(8, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reg = SpectralRegularizer(6, k=3, every=1, batch_fraction=1.0, solver=solver, iters=20)
    with torch.no_grad():
        reg.basis.copy_(V[[0, 1, 3]])
    value = reg(G, z)
    torch.testing.assert_close(
        reg.last_values, torch.tensor(values[:3], dtype=torch.float64).expand(8, 3), rtol=1e-6, atol=0
    )
    expected = spectral_penalty(G, z, k=3, iters=50, tol=1e-12, solver=solver)  # from the random start
    assert abs(float(value) - float(expected)) <= 1e-6 * float(expected)


def test_regularizer_values_follow_the_scale():
    """last_values are G's singular values at any scale (previous main: 0 at 1e-25 * G)."""
    G = make_mlp().float()
    z = torch.randn(8, 5, generator=torch.Generator().manual_seed(5))
    values = {}
    for s in (1.0, 1e-25, 1e25):
        reg = SpectralRegularizer(5, k=3, batch_fraction=1.0)
        reg(lambda x: s * G(x), z)
        values[s] = reg.last_values / s
    for s in (1e-25, 1e25):
        torch.testing.assert_close(values[s], values[1.0], rtol=1e-5, atol=0)


# ---- precision, batch coupling ----------------------------------------------------------------------
@pytest.mark.parametrize("grad", ["fast", "implicit"])
def test_autocast_bfloat16(grad):
    G = make_mlp().float()
    z = torch.randn(8, 5, generator=torch.Generator().manual_seed(3))
    ref = spectral_penalty(G, z, k=2, grad=grad, jvp="double_backward", iters=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = spectral_penalty(G, z, k=2, grad=grad, jvp="double_backward", iters=4)
    assert value.dtype == torch.float32
    value.backward()
    grads = [p.grad for p in G.parameters() if p.grad is not None]
    assert len(grads) == 3 and all(torch.isfinite(g).all() for g in grads)  # the last bias has no say in J
    assert abs(float(value - ref)) <= 0.05 * float(ref) + 1e-3


def test_batchnorm_policy():
    G = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 6))
    z = torch.randn(6, 4)
    with pytest.raises(ValueError, match="batchnorm"):
        spectral_penalty(G, z, k=2)
    value = spectral_penalty(G, z, k=2, batchnorm="eval")
    value.backward()
    assert G[1].training  # restored
    assert G[1].weight.grad is not None and torch.isfinite(G[1].weight.grad).all()
    G.eval()
    assert torch.isfinite(spectral_penalty(G, z, k=2))


# ---- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        (dict(k=0), ValueError, "k"),
        (dict(k=9), ValueError, "k"),
        (dict(k=2.0), TypeError, "k"),
        (dict(iters=0), ValueError, "iters"),
        (dict(loss="l2"), ValueError, "loss"),
        (dict(grad="exact"), ValueError, "grad"),
        (dict(weights="sv"), ValueError, "weights"),
        (dict(jvp="reverse"), ValueError, "jvp"),
        (dict(batchnorm="train"), ValueError, "batchnorm"),
        (dict(init=torch.randn(3, 5)), ValueError, "init"),
        (dict(init=[[1.0]]), TypeError, "init"),
        (dict(cg_iters=-1), ValueError, "cg_iters"),
        (dict(tol=float("nan")), ValueError, "tol"),
        (dict(solver="lanczos"), ValueError, "solver"),
        (dict(solver=None), ValueError, "solver"),
        (dict(null_tol=1.0), ValueError, "null_tol"),
        (dict(null_tol=-1e-3), ValueError, "null_tol"),
    ],
)
def test_bad_arguments(kwargs, exc, word):
    G = nn.Linear(8, 3)
    with pytest.raises(exc, match=word):
        spectral_penalty(G, torch.randn(4, 8), **kwargs)


def test_bad_latents_and_generator():
    G = nn.Linear(8, 3)
    with pytest.raises(ValueError, match="batch, latent"):
        spectral_penalty(G, torch.randn(8))
    z = torch.randn(4, 8)
    z[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[2\]"):
        spectral_penalty(G, z)
    with pytest.raises(TypeError, match="G"):
        spectral_penalty("G", torch.randn(4, 8))
    with pytest.raises(ValueError, match="batch size"):
        spectral_penalty(lambda x: G(x)[:1], torch.randn(4, 8), k=2)


@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        (dict(every=0), ValueError, "every"),
        (dict(every=1.5), TypeError, "every"),
        (dict(batch_fraction=0.0), ValueError, "batch_fraction"),
        (dict(batch_fraction=1.5), ValueError, "batch_fraction"),
        (dict(weights="x"), ValueError, "weights"),
        (dict(loss="x"), ValueError, "loss"),
        (dict(grad="x"), ValueError, "grad"),
        (dict(k=9), ValueError, "k"),
        (dict(warm_start="yes"), TypeError, "warm_start"),
        (dict(momentum=0), ValueError, "momentum"),
        (dict(config={"kk": 2}), TypeError, "kk"),
        (dict(config={1: 2}), TypeError, "config"),
        (dict(config=[("k", 2)]), TypeError, "config"),
        (dict(config={"k": 9}), ValueError, "k"),
        (dict(seed=2**64), ValueError, "seed"),
        (dict(seed=-(2**70)), ValueError, "seed"),
    ],
)
def test_module_bad_arguments(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        SpectralRegularizer(8, **kwargs)


def test_config_as_a_mapping():
    """SpectralRegularizer(d, config={"k": 2}) takes the dict's fields, and keyword options still
    override them (previous main: AttributeError 'dict' object has no attribute 'replace')."""
    reg = SpectralRegularizer(6, config={"k": 2, "every": 3}, every=5)
    assert (reg.k, reg.every, reg.loss) == (2, 5, spectral_ops.RegularizerConfig().loss)


def test_largest_seed_draws_rows():
    """The largest seed torch accepts still draws row subsets on every step (the per-step seed
    seed * 1_000_003 + step wraps instead of overflowing torch's generator: previous main raised
    "Overflow when unpacking long long"), and a seed whose per-step seed is in range draws the
    same rows as before."""
    G = make_mlp().float()
    z = torch.randn(16, 5, generator=torch.Generator().manual_seed(6))
    reg = SpectralRegularizer(5, k=2, every=1, seed=2**64 - 1)
    for _ in range(2):
        reg(G, z)
    assert reg.last_latents.shape == (4, 5)
    reg = SpectralRegularizer(5, k=2, every=1, seed=7)
    gen = torch.Generator().manual_seed(7 * 1_000_003 + 0)
    assert torch.equal(reg._rows(16, 0, "cpu"), torch.randperm(16, generator=gen)[:4].sort().values)


def test_module_bad_latent_width():
    reg = SpectralRegularizer(8)
    with pytest.raises(ValueError, match="latent_dim"):
        reg(nn.Linear(6, 3), torch.randn(4, 6))


# ---- the module: cost controls, state ------------------------------------------------------------------
def test_every_skips_without_graph_and_scales():
    G = make_mlp().float()
    z = torch.randn(8, 5, generator=torch.Generator().manual_seed(4))
    reg = SpectralRegularizer(5, k=2, iters=2, every=3, batch_fraction=1.0, warm_start=False)
    first = reg(G, z)
    assert first.requires_grad
    expected = 3 * spectral_penalty(G, z, k=2, iters=2, init=reg.basis)
    assert torch.allclose(first, expected, rtol=1e-5)
    for _ in range(2):
        skipped = reg(G, z)
        assert float(skipped) == 0.0 and skipped.grad_fn is None  # no graph, no cost
        skipped.backward()  # a separate regularization phase can call backward on it
    assert reg(G, z).requires_grad  # call 3 computes again
    assert int(reg.step) == 4


def test_batch_fraction_uses_a_subset():
    G = make_mlp().float()
    z = torch.randn(8, 5, generator=torch.Generator().manual_seed(5))
    reg = SpectralRegularizer(5, k=2, iters=2, every=1, batch_fraction=0.25, warm_start=False)
    rows = reg._rows(8, 0, z.device)
    assert rows.numel() == 2
    value = reg(G, z)
    assert torch.allclose(value, spectral_penalty(G, z[rows], k=2, iters=2, init=reg.basis), rtol=1e-6)


def test_warm_start_state_dict_round_trip_and_convergence():
    G = make_mlp().float()
    gen = torch.Generator().manual_seed(6)
    # iters=2: the Krylov space grows past the start block (with iters=1 the vectors, and so the
    # running basis, stay in the start block's span)
    reg = SpectralRegularizer(5, k=2, iters=2, every=1, batch_fraction=1.0, momentum=0.5)
    start = reg.basis.clone()
    for _ in range(10):
        reg(G, torch.randn(16, 5, generator=gen))
    assert "basis" in reg.state_dict() and "step" in reg.state_dict()
    assert not torch.allclose(reg.basis, start)
    assert torch.allclose(reg.basis @ reg.basis.T, torch.eye(2), atol=1e-5)
    other = SpectralRegularizer(5, k=2, iters=1, every=1, batch_fraction=1.0)
    other.load_state_dict(reg.state_dict())
    assert torch.equal(other.basis, reg.basis) and int(other.step) == 10
    # the learned basis is a better starting point than the fixed random one
    from spectral_ops.regularizer import RegularizerConfig, _penalty

    z = torch.randn(32, 5, generator=gen)
    res = {}
    for name, init in (("warm", reg.basis), ("cold", start)):
        # power, one iteration: the Ritz vectors of the start block itself, so the residual measures the start
        config = RegularizerConfig(k=2, iters=1, solver="power", loss="l1", tol=0.0, cg_iters=0, cg_tol=0.0)
        res[name] = float(_penalty(G, z, config, init).residuals.mean())
    assert res["warm"] < 0.5 * res["cold"], res


def test_exported():
    assert spectral_ops.spectral_penalty is spectral_penalty
    assert spectral_ops.SpectralRegularizer is SpectralRegularizer
    assert callable(spectral_ops.baselines.orojar)
    assert callable(spectral_ops.baselines.jacobian_l1)


# ---- 3. drop-in: a complete small GAN loop ---------------------------------------------------------------
def _train_gan(reg_on: bool, steps: int = 50):
    torch.manual_seed(0)
    d, m = 4, 16
    G = nn.Sequential(nn.Linear(d, 32), nn.LeakyReLU(0.2), nn.Linear(32, m))
    D = nn.Sequential(nn.Linear(m, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    mix = torch.randn(d, m, generator=torch.Generator().manual_seed(7))
    data = lambda n: torch.tanh(torch.randn(n, d) @ mix)  # toy dataset, 4 factors
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.5, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.99))
    reg = SpectralRegularizer(d, k=2, every=1, batch_fraction=1.0, iters=2, loss="l1")
    bce = nn.functional.binary_cross_entropy_with_logits
    for _ in range(steps):
        z = torch.randn(32, d)
        real, fake = data(32), G(z).detach()
        loss_d = bce(D(real), torch.ones(32, 1)) + bce(D(fake), torch.zeros(32, 1))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        z = torch.randn(32, d)
        loss_g = bce(D(G(z)), torch.ones(32, 1))
        if reg_on:
            loss_g = loss_g + 10.0 * reg(G, z)  # the one line
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
    z = torch.randn(256, d, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        return float(spectral_penalty(G, z, k=2, iters=30, loss="l1"))


def test_drop_in_gan_loop_reduces_alignment_loss():
    plain, regularized = _train_gan(False), _train_gan(True)
    assert regularized < 0.75 * plain, (plain, regularized)  # measured: 0.79 -> 0.49
