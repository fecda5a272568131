"""Peer regularizers: zero where the maths says so, positive otherwise, differentiable, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spectral_ops.baselines import PathLengthRegularizer, hessian_penalty, jacobian_l1, orojar, path_length
from spectral_ops.baselines.peers import _rademacher


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


class Additive(nn.Module):
    """G(z) = sum_i f_i(z_i) per output: a diagonal Hessian for every output value."""

    def __init__(self, d=4, m=6):
        super().__init__()
        self.a = nn.Parameter(torch.randn(d, m, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(d, m, dtype=torch.float64))

    def forward(self, z):
        return (torch.tanh(z[:, :, None] * self.a) * self.b).sum(1)


def _mixing(d=4, m=6):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, m)).double()


def test_hessian_penalty_zero_for_additive_generator_positive_otherwise():
    z = torch.randn(5, 4, dtype=torch.float64, generator=_gen(1))
    G = Additive()
    zero = hessian_penalty(G, z, k=4, generator=_gen(2))
    assert float(zero) <= 1e-20
    mixed = hessian_penalty(_mixing(), z, k=4, generator=_gen(2))
    assert float(mixed) > 1e-3
    mixed.backward()


def test_hessian_penalty_estimates_off_diagonal_hessian():
    """E Var_v(v^T H v) = 2 sum_{i!=j} H_ij^2 for G(z) = z0 * z1 (H_01 = 1): 2 * 2 = 4."""
    G = lambda z: (z[:, 0] * z[:, 1])[:, None]
    z = torch.randn(2000, 2, dtype=torch.float64, generator=_gen(3))
    value = hessian_penalty(G, z, k=2, reduction="mean", generator=_gen(4))
    assert abs(float(value) - 4.0) < 0.4  # 2000 samples of a (0 or 8) variable: sd ~ 0.09


def test_orojar_zero_for_orthogonal_columns_positive_otherwise():
    torch.manual_seed(0)
    G = nn.Linear(4, 7, bias=False).double()
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(7, 4, dtype=torch.float64))
        G.weight.copy_(q * torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64))  # orthogonal, unequal norms
    z = torch.randn(5, 4, dtype=torch.float64, generator=_gen(1))
    assert float(orojar(G, z, k=4, generator=_gen(2))) <= 1e-20
    with torch.no_grad():
        G.weight[:, 1] += 0.5 * G.weight[:, 0]  # columns 0 and 1 no longer orthogonal
    value = orojar(G, z, k=4, generator=_gen(2))
    assert float(value) > 1e-2
    value.backward()
    assert G.weight.grad.abs().sum() > 0


def test_orojar_estimates_off_diagonal_of_jtj():
    """Linear G: Var_v(v^T A v) with population variance over k=2 draws has mean sum_{i!=j} A_ij^2."""
    W = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)  # A = W^T W = [[1, 1], [1, 2]]
    G = lambda z: z @ W.T
    z = torch.zeros(4000, 2, dtype=torch.float64)
    value = orojar(G, z, k=2, reduction="mean", generator=_gen(5))
    assert abs(float(value) - 2.0) < 0.2  # sum_{i!=j} A_ij^2 = 2


def test_path_length_zero_for_equal_lengths_positive_otherwise():
    torch.manual_seed(0)
    G = nn.Linear(4, 6).double()
    z = torch.randn(5, 4, dtype=torch.float64, generator=_gen(1))
    noise = torch.randn(1, 6, dtype=torch.float64).expand(5, 6)  # same y for every row; J constant
    assert float(path_length(G, z, noise=noise)) <= 1e-24
    value = path_length(_mixing(m=6), z, noise=noise)
    assert float(value) > 1e-6
    value.backward()


def test_path_length_module_running_mean_and_state():
    G = _mixing()
    pl = PathLengthRegularizer(decay=0.5, every=2)
    z = torch.randn(8, 4, dtype=torch.float64, generator=_gen(1))
    first = pl(G, z)
    assert first.requires_grad and torch.isfinite(pl.mean)
    m0 = float(pl.mean)
    skipped = pl(G, z)
    assert float(skipped) == 0 and skipped.grad_fn is None
    pl(G, z)
    assert float(pl.mean) != m0
    other = PathLengthRegularizer()
    other.load_state_dict(pl.state_dict())
    assert float(other.mean) == float(pl.mean) and int(other.step) == 3


@pytest.mark.parametrize("fn", [hessian_penalty, orojar, jacobian_l1])
@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        (dict(epsilon=0), ValueError, "epsilon"),
        (dict(epsilon=-1e-3), ValueError, "epsilon"),
        (dict(reduction="sum"), ValueError, "reduction"),
        (dict(batchnorm="x"), ValueError, "batchnorm"),
    ],
)
def test_bad_arguments(fn, kwargs, exc, word):
    with pytest.raises(exc, match=word):
        fn(nn.Linear(4, 3), torch.randn(2, 4), **kwargs)


@pytest.mark.parametrize("fn", [hessian_penalty, orojar])  # jacobian_l1 draws nothing: no k
@pytest.mark.parametrize("kwargs, exc", [(dict(k=1), ValueError), (dict(k=2.0), TypeError)])
def test_bad_draw_count(fn, kwargs, exc):
    with pytest.raises(exc, match="k"):
        fn(nn.Linear(4, 3), torch.randn(2, 4), **kwargs)


@pytest.mark.parametrize("fn", [hessian_penalty, orojar, jacobian_l1, path_length])
def test_bad_latents(fn):
    with pytest.raises(ValueError, match="2-D"):
        fn(nn.Linear(4, 3), torch.randn(4))
    z = torch.randn(3, 4)
    z[1, 0] = float("inf")
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        fn(nn.Linear(4, 3), z)
    with pytest.raises(TypeError, match="G"):
        fn(3, torch.randn(2, 4))


# ---- non-finite outputs and bad arguments: named, never a NaN or a deep torch error ----------
def _log_first(z):
    """G(z) = log(z_0 + 5) * w: NaN exactly in the rows with z_0 < -5 (and their perturbed copies)."""
    return torch.log(z[:, :1] + 5) * torch.linspace(0.5, 1.5, 3, dtype=z.dtype)


@pytest.mark.parametrize("fn", [hessian_penalty, orojar, jacobian_l1, path_length])
def test_non_finite_generator_output_names_the_rows(fn):
    """Before: each peer returned NaN with no error."""
    z = 0.5 * torch.randn(5, 4, dtype=torch.float64, generator=_gen(1))
    z[2, 0] = -20.0
    z[4, 0] = -30.0
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or Inf\) in rows \[2, 4\]"):
        fn(_log_first, z)
    # G finite at z but not at z - epsilon v: the perturbed forwards are checked too
    z = 0.5 * torch.rand(3, 4, dtype=torch.float64, generator=_gen(2)) + 1.0
    z[1, 0] = 0.05
    with pytest.raises(ValueError, match=r"G\(z \+- epsilon v\) has non-finite values .* in rows \[1\]"):
        hessian_penalty(lambda x: torch.log(x[:, :1]) * torch.ones(3, dtype=x.dtype), z)


def test_jacobian_l1_checks_the_perturbed_rows_too():
    """G(z) = log(-z_0): finite at z_0 = -5e-4, NaN at z_0 + 1e-3 = 5e-4 (row 1 only); named with
    or without G_z (G_z finite: the perturbed copies are what is not)."""
    G = lambda x: torch.log(-x[:, :1]) * torch.ones(3, dtype=x.dtype)
    z = -0.5 - torch.rand(3, 4, dtype=torch.float64, generator=_gen(2))
    z[1, 0] = -5e-4
    with pytest.raises(ValueError, match=r"G\(z\) or G\(z \+ epsilon e_i\) has non-finite values .* in rows \[1\]"):
        jacobian_l1(G, z)
    with pytest.raises(ValueError, match=r"G\(z \+ epsilon e_i\) has non-finite values .* in rows \[1\]"):
        jacobian_l1(G, z, G_z=G(z))
    assert float(jacobian_l1(G, z, epsilon=1e-4)) > 0  # a step that stays on the domain


def _overflowing(z):
    """1e30 z_0 z_1 (1, 1, 1): finite in float32, with an off-diagonal Hessian of 1e30."""
    return 1e30 * z[:, :1] * z[:, 1:2] * torch.ones(3, dtype=z.dtype)


def _overflowing_l1(z):
    """1e38 z_0 (8 values): finite in float32 for |z_0| < 3.4, each Jacobian entry 1e38, and the
    sum of |J| over a row's 8 values 8e38, past float32's 3.4e38."""
    return 1e38 * z[:, :1] * torch.ones(8, dtype=z.dtype)


@pytest.mark.parametrize("fn", [hessian_penalty, orojar, jacobian_l1, path_length])
def test_an_overflowing_penalty_names_the_rows(fn):
    """Before: an Inf penalty from finite float32 outputs, with no error."""
    z = torch.randn(3, 4, generator=_gen(1))
    assert float(z[:, 0].abs().max()) < 3
    if fn is jacobian_l1:  # a Jacobian of 1e30 sums to 6e30 over _overflowing's row: no overflow there
        call = lambda: jacobian_l1(_overflowing_l1, z)
    else:
        extra = {} if fn is path_length else dict(k=8)  # 8 draws: v_0 v_1 takes both signs in each row
        call = lambda: fn(_overflowing, z, generator=_gen(2), **extra)
    with pytest.raises(ValueError, match=r"penalty is not finite .*float32.* in rows \[0, 1, 2\]"):
        call()


def test_an_epsilon_lost_in_z_dtype_is_refused():
    """Before: float32 z with epsilon=1e-10 (below float32's resolution at |z| ~ 1) gave a penalty
    of exactly 0 (z + epsilon v == z) with no error."""
    z = torch.randn(3, 4, generator=_gen(1))
    G = _mixing().float()
    for fn in (hessian_penalty, orojar, jacobian_l1):
        with pytest.raises(
            ValueError, match=r"epsilon=1e-10 is below the resolution of z's torch.float32 .*rows \[0, 1, 2\]"
        ):
            fn(G, z, epsilon=1e-10)
    # at float64 resolution the same epsilon is a step
    assert float(orojar(G.double(), z.double(), epsilon=1e-10)) > 0
    assert float(jacobian_l1(G.double(), z.double(), epsilon=1e-10)) > 0


def test_jacobian_l1_refuses_only_the_rows_where_a_step_is_lost():
    """Each copy moves one coordinate: the others stay equal to z and are not lost steps.  A row
    with |z_3| = 1e5 (float32 spacing there 0.0078) loses the step 1e-3 along e_3: that row only."""
    z = torch.randn(4, 4, generator=_gen(1))
    G = _mixing().float()
    assert float(jacobian_l1(G, z)) > 0
    z[2, 3] = 1e5
    with pytest.raises(ValueError, match=r"epsilon=0.001 is below the resolution .* in rows \[2\]$"):
        jacobian_l1(G, z)


def _G43(z):
    return torch.tanh(z @ torch.ones(4, 3, dtype=z.dtype))


@pytest.mark.parametrize(
    "fn, kwargs, exc, match",
    [
        (
            hessian_penalty,
            dict(G_z=torch.zeros(2, 4)),
            ValueError,
            r"G_z must be G\(z\), shaped \(2, 3\), got \(2, 4\)",
        ),
        (orojar, dict(G_z=torch.zeros(3)), ValueError, r"G_z must be G\(z\), shaped \(2, 3\), got \(3,\)"),
        (orojar, dict(G_z=[[0.0] * 3] * 2), TypeError, "G_z must be a torch.Tensor"),
        (
            hessian_penalty,
            dict(G_z=torch.full((2, 3), float("nan"))),
            ValueError,
            r"G_z has non-finite .*rows \[0, 1\]",
        ),
        (hessian_penalty, dict(epsilon="0.1"), TypeError, "epsilon must be a real number"),
        (orojar, dict(epsilon=True), TypeError, "epsilon must be a real number"),
        (orojar, dict(generator=5), TypeError, "generator must be a torch.Generator or None, got int"),
        (jacobian_l1, dict(G_z=torch.zeros(2, 4)), ValueError, r"G_z must be G\(z\), shaped \(2, 3\), got \(2, 4\)"),
        (jacobian_l1, dict(G_z=[[0.0] * 3] * 2), TypeError, "G_z must be a torch.Tensor"),
        (jacobian_l1, dict(G_z=torch.zeros(2, 3, dtype=torch.long)), TypeError, "G_z must be a floating-point"),
        (jacobian_l1, dict(G_z=torch.full((2, 3), float("inf"))), ValueError, r"G_z has non-finite .*rows \[0, 1\]"),
        (jacobian_l1, dict(epsilon="1e-3"), TypeError, "epsilon must be a real number"),
        (jacobian_l1, dict(epsilon=True), TypeError, "epsilon must be a real number"),
        (jacobian_l1, dict(epsilon=float("nan")), ValueError, "epsilon"),
        (jacobian_l1, dict(reduction=None), ValueError, "reduction"),
        (path_length, dict(generator="seed"), TypeError, "generator must be a torch.Generator or None, got str"),
        (path_length, dict(noise=[1.0]), TypeError, "noise must be a torch.Tensor shaped like G"),
        (path_length, dict(noise=torch.ones(2, 3, dtype=torch.long)), TypeError, "noise must be a floating-point"),
        (
            path_length,
            dict(noise=torch.tensor([[1.0, float("inf"), 0.0], [0.0, 1.0, 0.0]])),
            ValueError,
            r"noise has non-finite values in rows \[0\]",
        ),
        (path_length, dict(mean="a"), TypeError, "mean must be a 0-d tensor, a real number or None, got str"),
        (path_length, dict(mean=True), TypeError, "mean must be a 0-d tensor, a real number or None, got bool"),
        (path_length, dict(mean=float("nan")), ValueError, "mean must be a finite number >= 0, got nan"),
        (
            path_length,
            dict(mean=torch.zeros(3)),
            ValueError,
            r"mean must be a 0-d floating-point tensor .*got shape \(3,\)",
        ),
        (path_length, dict(mean=torch.tensor(float("inf"))), ValueError, "mean must hold a finite value >= 0"),
        (path_length, dict(decay="0.1"), TypeError, "decay must be a real number"),
    ],
)
def test_bad_peer_arguments_are_named(fn, kwargs, exc, match):
    """Before: each ended in a deep torch error (G_z: a broadcast RuntimeError; noise=[1.0]: an
    AttributeError; mean=zeros(3): 'Boolean value of Tensor with more than one value'), in
    ValueError where the type is wrong (mean="a": could not convert string to float; epsilon="0.1",
    decay="0.1"; generator=5: torch's "invalid combination of arguments"), or in no error at all
    (mean=True taken as 1.0; mean=nan, an Inf mean tensor, a NaN G_z or noise: a non-finite penalty;
    an integer noise silently converted)."""
    z = torch.randn(2, 4, generator=_gen(1))
    with pytest.raises(exc, match=match):
        fn(_G43, z, **kwargs)


@pytest.mark.parametrize("fn", [hessian_penalty, orojar, jacobian_l1, path_length])
def test_a_generator_returning_a_scalar_or_no_z_dependence_is_named(fn):
    """Before: a G returning a 0-d tensor raised IndexError ('tuple index out of range') in every
    peer; path_length on a G detached from z raised autograd's 'does not require grad'."""
    z = torch.randn(2, 4, generator=_gen(1))
    with pytest.raises(ValueError, match="0-d tensor"):
        fn(lambda x: _G43(x).sum(), z)
    with pytest.raises(TypeError, match="floating-point"):
        fn(lambda x: (x > 0).long(), z)
    if fn is path_length:
        with pytest.raises(ValueError, match="does not depend on z"):
            fn(lambda x: _G43(x.detach()), z)
        with pytest.raises(ValueError, match="decay"):
            PathLengthRegularizer(decay=1.5)


# ---- the papers' formulas, exactly, on generators with a known answer (float64) ---------------
# Hessian Penalty (Peebles et al. 2020, eq. 5 and the reference code): per output value y_m,
# Var_v(v^T H_m v) over Rademacher v, which is 2 sum_{i != j} (H_m)_ij^2, estimated by the unbiased
# variance over k draws of the central second difference, then max over every value of the batch.
# OroJaR (Wei et al. 2021): sum_{i != j} (J_i^T J_j)^2 per row, estimated by the variance over k
# draws of ||J v||^2 (population variance, as the ProGAN training code: expectation
# (k-1)/k * 2 sum_{i != j}), then max over rows.
_D, _M = 3, 4  # latent size, output values


def _quadratic_forms(seed=0):
    """A [M, d, d] (not symmetric): G(z) = (z^T A_m z)_m has the constant Hessians A_m + A_m^T,
    and the central second difference of a quadratic is exact."""
    return torch.randn(_M, _D, _D, dtype=torch.float64, generator=_gen(seed))


def _quadratic(A):
    return lambda z: torch.einsum("bi,mij,bj->bm", z, A, z)


def _offdiag_sq(S):
    """sum_{i != j} S_ij^2 over the last two axes."""
    return S.pow(2).sum((-2, -1)) - torch.diagonal(S, dim1=-2, dim2=-1).pow(2).sum(-1)


def _all_rademacher(d):
    """The 2^d Rademacher vectors [2^d, d], equally likely."""
    return torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=torch.float64)] * d).reshape(-1, d)


def _exact_moments(Q, k, unbiased):
    """Q [V, M]: a quadratic form's value at each of the V equally likely v.  The per-row statistic
    R = mean_m Var_k(Q_m) over k independent draws: its exact mean and variance, by enumerating
    the V^k draws."""
    V = Q.shape[0]
    idx = torch.cartesian_prod(*[torch.arange(V)] * k).reshape(-1, k)  # [V^k, k]
    R = Q[idx].var(dim=1, unbiased=unbiased).mean(-1)  # [V^k]
    return float(R.mean()), float(R.var(unbiased=False))


@pytest.mark.parametrize("k", [2, 3])
def test_hessian_penalty_expectation_is_the_papers_closed_form(k):
    """mean over rows and values of hessian_penalty == mean_m 2 sum_{i!=j} (H_m)_ij^2, to 4
    standard errors of the mean over 3000 rows (exact moments by enumeration)."""
    A = _quadratic_forms(1)
    H = A + A.transpose(1, 2)
    paper = float((2 * _offdiag_sq(H)).mean())
    V = _all_rademacher(_D)
    mean, var = _exact_moments(torch.einsum("vi,mij,vj->vm", V, H, V), k, unbiased=True)
    assert mean == pytest.approx(paper, rel=1e-12)  # the estimator is unbiased for the paper's value
    B = 3000
    z = torch.randn(B, _D, dtype=torch.float64, generator=_gen(2))
    value = float(hessian_penalty(_quadratic(A), z, k=k, reduction="mean", generator=_gen(3)))
    assert abs(value - paper) < 4 * math.sqrt(var / B)


@pytest.mark.parametrize("k", [2, 4])
def test_orojar_expectation_is_the_papers_closed_form(k):
    """Linear G(z) = W z (J = W, forward differences exact): mean over rows of orojar ==
    (k-1)/k * 2 sum_{i!=j} (W^T W)_ij^2 (at k = 2: the paper's sum_{i!=j} (J_i^T J_j)^2), to 4
    standard errors over 3000 rows."""
    W = torch.randn(7, _D, dtype=torch.float64, generator=_gen(4))
    C = W.T @ W
    paper = float(_offdiag_sq(C))
    V = _all_rademacher(_D)
    mean, var = _exact_moments(torch.einsum("vi,ij,vj->v", V, C, V)[:, None], k, unbiased=False)
    assert mean == pytest.approx((k - 1) / k * 2 * paper, rel=1e-12)
    B = 3000
    z = torch.randn(B, _D, dtype=torch.float64, generator=_gen(5))
    value = float(orojar(lambda x: x @ W.T, z, k=k, reduction="mean", generator=_gen(6)))
    assert abs(value - (k - 1) / k * 2 * paper) < 4 * math.sqrt(var / B)


def _draws(k, z, seed):
    """The Rademacher vectors the peers draw with generator seed `seed` ([k, B, d])."""
    return _rademacher(k, z, _gen(seed))


def test_hessian_penalty_equals_the_reference_estimator_on_the_same_draws():
    """With the same draws, hessian_penalty is the reference code's estimator written out with
    exact Hessians: D_v = v^T H_m v per draw, unbiased variance over the k draws, max over every
    value of the batch (not per row).  G(z) = (z^T A_m z, z_0^2 z_1): the cubic's Hessian varies
    with z and its central difference is still exact (no fourth derivative)."""
    A = _quadratic_forms(7)
    G = lambda z: torch.cat([_quadratic(A)(z), (z[:, 0] ** 2 * z[:, 1])[:, None]], 1)
    z = torch.randn(6, _D, dtype=torch.float64, generator=_gen(8))
    k = 3
    v = _draws(k, z, 9)  # [k, B, d]
    Hq = (A + A.transpose(1, 2))[None].expand(z.shape[0], -1, -1, -1)  # [B, M, d, d]
    Hc = torch.zeros(z.shape[0], 1, _D, _D, dtype=torch.float64)
    Hc[:, 0, 0, 0] = 2 * z[:, 1]
    Hc[:, 0, 0, 1] = Hc[:, 0, 1, 0] = 2 * z[:, 0]
    H = torch.cat([Hq, Hc], 1)  # [B, M + 1, d, d]
    second = torch.einsum("kbi,bmij,kbj->kbm", v, H, v)
    var = second.var(dim=0, unbiased=True)  # [B, M + 1]
    for reduction, expected in (("max", var.max()), ("mean", var.mean())):
        value = hessian_penalty(G, z, k=k, reduction=reduction, generator=_gen(9))
        assert float(value) == pytest.approx(float(expected), rel=1e-10)
    # the cubic's closed form 16 z_0^2 (the reference code's own check) is the mean of its column
    assert float((2 * _offdiag_sq(Hc[:, 0])).sub(16 * z[:, 0] ** 2).abs().max()) < 1e-12


def test_orojar_equals_the_reference_estimator_on_the_same_draws():
    """With the same draws, orojar is the reference estimator written out with the exact Jacobian:
    ||W v||^2 per draw and row, population variance over the k draws, max (or mean) over rows."""
    W = torch.randn(5, _D, dtype=torch.float64, generator=_gen(10))
    z = torch.randn(6, _D, dtype=torch.float64, generator=_gen(11))
    k = 3
    v = _draws(k, z, 12)
    quad = (v @ W.T).pow(2).sum(-1)  # [k, B]
    var = quad.var(dim=0, unbiased=False)  # [B]
    for reduction, expected in (("max", var.max()), ("mean", var.mean())):
        value = orojar(lambda x: x @ W.T, z, k=k, reduction=reduction, generator=_gen(12))
        assert float(value) == pytest.approx(float(expected), rel=1e-10)


def test_peer_scale_under_an_output_affine_map():
    """The output range enters squared (Hessian Penalty), to the fourth power (OroJaR) or linearly
    (Jacobian L1): for images in [0, 1] and [-1, 1] (y -> 2 y - 1), the values differ by exactly 4,
    16 and 2."""
    A = _quadratic_forms(13)
    G = _quadratic(A)
    z = torch.randn(8, _D, dtype=torch.float64, generator=_gen(14))
    for fn, power in ((hessian_penalty, 2), (orojar, 4)):
        ours = fn(G, z, k=2, generator=_gen(15))
        wide = fn(lambda x: 2 * G(x) - 1, z, k=2, generator=_gen(15))
        assert float(wide) == pytest.approx(2**power * float(ours), rel=1e-9)
    ours, wide = jacobian_l1(G, z), jacobian_l1(lambda x: 2 * G(x) - 1, z)  # linear in the range
    assert float(wide) == pytest.approx(2 * float(ours), rel=1e-9)


# ---- Jacobian L1 (Rhodes & Lee 2021): the paper's code's formula against exact Jacobians ---------------
# sum_{i, m, b} |J_{i, b, m}| / B with J_i = (G(z + eps e_i) - G(z)) / eps: the mean over rows of
# the per-row L1 norm of the whole Jacobian ("mean"), or its max over rows ("max").
_U = {torch.float64: torch.finfo(torch.float64).eps / 2, torch.float32: torch.finfo(torch.float32).eps / 2}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_jacobian_l1_is_sum_abs_w_for_a_linear_generator(dtype):
    """G(z) = z W^T: J = W at every row, and a forward difference of a linear map is exact, so
    both reductions equal sum |W| up to rounding.  Rounding: z + eps e_i is off by u |z_i|, and
    each G value by about (d + 2) u sum_j |W_mj| |z_j| (the product, then the subtraction); over
    the d copies and divided by eps that is at most d (d + 3) u max(1, |z|) sum |W| / eps
    (u: the unit roundoff of the dtype; 6e-12 relative in float64, 3e-3 in float32, at eps 1e-3)."""
    W = torch.randn(7, _D, dtype=torch.float64, generator=_gen(20))
    W[0, 0], W[1, 1] = -abs(float(W[0, 0])), abs(float(W[1, 1]))  # both signs, so |.| matters
    z = torch.randn(6, _D, dtype=torch.float64, generator=_gen(21))
    G = lambda x: x @ W.T.to(x.dtype)
    eps = 1e-3
    exact = float(W.abs().sum())
    tol = _D * (_D + 3) * _U[dtype] * max(1.0, float(z.abs().max())) / eps
    for reduction in ("mean", "max"):
        value = jacobian_l1(G, z.to(dtype), epsilon=eps, reduction=reduction)
        assert value.dtype == dtype and value.dim() == 0
        assert float(value) == pytest.approx(exact, rel=tol)
    assert tol < 1e-11 if dtype == torch.float64 else tol < 5e-3


def test_jacobian_l1_drops_neither_the_abs_nor_the_division_by_b():
    """G(z) = (z_0 - z_1, z_0 + z_1): J's entries 1, -1, 1, 1 (sum 2, sum |.| 4) at every row, so
    the value is 4 for any batch size: without the abs it would be 2, without the / B 4 B."""
    G = lambda x: torch.stack([x[:, 0] - x[:, 1], x[:, 0] + x[:, 1]], 1)
    for B in (1, 5):
        z = torch.randn(B, 2, dtype=torch.float64, generator=_gen(B))
        assert float(jacobian_l1(G, z)) == pytest.approx(4.0, rel=1e-11)


def test_jacobian_l1_matches_the_exact_jacobian_of_a_nonlinear_generator():
    """G(z) = tanh(z W^T): J_b = diag(1 - tanh^2(W z_b)) W.  The forward difference is off by at
    most eps / 2 max|tanh''| W_mi^2 per entry (max|tanh''| = 4 / (3 sqrt 3)), plus rounding,
    about 2 u / eps per entry; the |.| and the sums add at most those up.  In float64 at eps 1e-6:
    a bound near 1e-6 of the value, and the max over rows is held to the same bound."""
    W = torch.randn(5, _D, dtype=torch.float64, generator=_gen(22))
    z = torch.randn(9, _D, dtype=torch.float64, generator=_gen(23))
    eps = 1e-6
    G = lambda x: torch.tanh(x @ W.T)
    J = (1 - G(z).pow(2))[:, :, None] * W  # [B, m, d]
    per_row = J.abs().sum((1, 2))  # [B]
    bound = float(eps / 2 * (4 / (3 * math.sqrt(3))) * W.pow(2).sum() + 2 * _U[torch.float64] / eps * W.numel())
    for reduction, exact in (("mean", per_row.mean()), ("max", per_row.max())):
        value = float(jacobian_l1(G, z, epsilon=eps, reduction=reduction))
        assert abs(value - float(exact)) <= bound
    assert bound < 1e-5 * float(per_row.min())  # the bound is tight enough to mean something
    assert float(per_row.max()) > 1.05 * float(per_row.mean())  # the two reductions differ here


def test_jacobian_l1_gradient_is_the_exact_jacobians():
    """d/dtheta of the penalty (a small MLP, float64, eps 1e-7) against autograd's gradient of
    mean_b sum |J_b| with J_b the exact Jacobian (torch.func.jacrev, differentiated again).  The
    forward difference's gradient is off by O(eps) (the next Taylor term: 0.16 eps relative on this
    MLP, measured at eps 1e-5 to 1e-7) and by rounding, u |dG/dtheta| / eps ~ 1e-9 relative: held
    to eps = 1e-7 relative, the value too."""
    torch.manual_seed(3)
    G = nn.Sequential(nn.Linear(_D, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh()).double()
    params = dict(G.named_parameters())
    z = torch.randn(6, _D, dtype=torch.float64, generator=_gen(24))

    def exact_penalty(p):
        f = lambda x: torch.func.functional_call(G, p, (x[None],))[0]
        J = torch.vmap(torch.func.jacrev(f))(z)  # [B, m, d]
        return J.abs().sum((1, 2)).mean()

    ref = torch.autograd.grad(exact_penalty(params), list(params.values()))
    value = jacobian_l1(G, z, epsilon=1e-7)
    got = torch.autograd.grad(value, list(params.values()))
    assert float(value) == pytest.approx(float(exact_penalty(params)), rel=1e-7)
    flat = lambda gs: torch.cat([g.flatten() for g in gs])
    assert float((flat(got) - flat(ref)).norm() / flat(ref).norm()) < 1e-7


def test_jacobian_l1_reuses_g_z_and_calls_g_on_d_b_rows():
    """With G_z = G(z): the same value (bit for bit on the CPU here; held to 1e-12, the rounding of
    G(z) in a batch of another size divided by eps) and the same gradient, and G runs once on
    d B rows (without G_z: once on (d + 1) B rows)."""
    G = _mixing()
    calls = []

    def counted(x):
        calls.append(x.shape[0])
        return G(x)

    z = torch.randn(5, 4, dtype=torch.float64, generator=_gen(25))
    plain = jacobian_l1(counted, z)
    assert calls == [5 * 5]
    calls.clear()
    G_z = G(z)
    reused = jacobian_l1(counted, z, G_z=G_z)
    assert calls == [4 * 5]
    assert float(reused) == pytest.approx(float(plain), rel=1e-12)
    g_plain, g_reused = (torch.autograd.grad(v, list(G.parameters())) for v in (plain, reused))
    for a, b in zip(g_plain, g_reused):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)


def test_jacobian_l1_zero_for_a_generator_that_ignores_z_positive_otherwise():
    bias = nn.Parameter(torch.randn(6, dtype=torch.float64))
    z = torch.randn(5, 4, dtype=torch.float64, generator=_gen(26))
    for reduction in ("mean", "max"):
        assert float(jacobian_l1(lambda x: bias.expand(x.shape[0], 6) * 1.0, z, reduction=reduction)) == 0.0
    value = jacobian_l1(_mixing(), z)
    assert float(value) > 1e-3
    value.backward()


def test_jacobian_l1_sends_no_gradient_to_z():
    """As the paper's code: z is detached, only G's parameters are regularized."""
    G = _mixing()
    z = torch.randn(3, 4, dtype=torch.float64, generator=_gen(27)).requires_grad_(True)
    value = jacobian_l1(G, z)
    value.backward()
    assert z.grad is None and next(G.parameters()).grad is not None


# ---- shared: BatchNorm policy, DDP-wrapped generators ----------------------------------------------
def _peer_call(fn):
    """fn(G, z, **kw) with its draws fixed: the same Rademacher vectors, or the same noise, on every call."""
    if fn is jacobian_l1:
        return fn
    if fn is path_length:
        noise = torch.randn(6, 5, dtype=torch.float64, generator=_gen(31))
        return lambda G, z, **kw: fn(G, z, noise=noise, **kw)
    return lambda G, z, **kw: fn(G, z, k=2, generator=_gen(30), **kw)


@pytest.mark.parametrize("fn", [hessian_penalty, orojar, jacobian_l1, path_length])
def test_peer_batchnorm_policy(fn):
    """Train-mode BatchNorm is refused (rows of a batch interact), or run in eval mode meanwhile:
    then the value is G.eval()'s, and the layer is back in train mode with its running statistics
    untouched."""
    torch.manual_seed(4)
    G = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 5)).double()
    G[1].running_mean.normal_()
    G.train()
    z = torch.randn(6, 4, dtype=torch.float64, generator=_gen(32))
    call = _peer_call(fn)
    with pytest.raises(ValueError, match="batchnorm='eval'"):
        call(G, z)
    stats = G[1].running_mean.clone()
    value = call(G, z, batchnorm="eval")
    assert G[1].training and torch.equal(G[1].running_mean, stats)
    G.eval()
    assert float(value) == pytest.approx(float(call(G, z)), rel=1e-12)


@pytest.mark.parametrize("fn", [hessian_penalty, orojar, jacobian_l1, path_length])
def test_peer_unwraps_ddp(fn, tmp_path):
    """A DistributedDataParallel G: the passes run on G.module (the same value and gradient)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        G = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 5)).double()
        ddp = nn.parallel.DistributedDataParallel(G)
        z = torch.randn(6, 4, dtype=torch.float64, generator=_gen(33))
        call = _peer_call(fn)
        a, b = call(ddp, z), call(G, z)
        assert float(a) == float(b)
        # allow_unused: path length's J^T y does not depend on the last layer's bias
        ga, gb = (torch.autograd.grad(v, list(G.parameters()), allow_unused=True) for v in (a, b))
        assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(ga, gb))
    finally:
        dist.destroy_process_group()


# ---- the post-hoc direction finders of bench/bench_direction_finders.py (no checkpoint needed) -----
def test_direction_finders_smoke():
    """Each finder gives K unit directions in R^d on a small untrained generator; the MIG-like
    score over directions U is the project's MIG over the coordinates of z along U (unchanged
    by the rows' scale; the usual MIG for U = I)."""
    import numpy as np

    from bench import bench_direction_finders as bdf
    from spectral_ops.lab.metrics.disentanglement import mig
    from spectral_ops.lab.models import Generator

    torch.manual_seed(0)
    G = Generator(6, size=8, width=8).requires_grad_(False)
    d, K = 6, 3
    z = torch.randn(32, d, generator=_gen(1))
    found = {
        "global": bdf.find_global(G, d, K, 32, 0),
        "local": bdf.find_local_aggregated(G, z, K),
        "sefa": bdf.find_sefa(G, K),
        "ganspace": bdf.find_ganspace(G, d, K, 256, 0),
        "random": bdf.random_directions(d, K, 0),
    }
    for name, U in found.items():
        assert U.shape == (K, d), name
        assert torch.allclose(U.norm(dim=1), torch.ones(K), atol=1e-5), name
    R = found["random"].double()
    assert torch.allclose(R @ R.T, torch.eye(K, dtype=torch.float64), atol=1e-6)
    Z = torch.randn(400, d, generator=_gen(2))
    levels = torch.stack([(Z[:, 0] > 0).long(), (Z[:, 1] + Z[:, 2] > 0).long()], 1)
    assert bdf.mig_like(torch.eye(d), Z, levels) == pytest.approx(mig(Z.numpy(), levels.numpy())["mig"])
    U = found["global"]
    assert bdf.mig_like(U * torch.tensor([[2.0], [0.5], [3.0]]), Z, levels) == pytest.approx(bdf.mig_like(U, Z, levels))
    assert np.isfinite(bdf.mig_like(U, Z, levels))
