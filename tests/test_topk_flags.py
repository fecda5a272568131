"""Honest flags of jacobian_topk: converged against the exact operator (finite differences are
reported as approximate, their error folded into the residuals), a warning for an unconverged
power or krylov result, and method="auto" deciding with the product costs timed on the
caller's G.  Oracles: the explicit Jacobian (torch.func.jacrev in float64)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from spectral_ops.testing.families import dcgan, explicit_jacobian, families
from spectral_ops import cost, jacobian_topk, topk


@pytest.fixture(autouse=True)
def _fresh_warnings():
    """Each test sees the once-per-process warnings afresh."""
    warned = getattr(topk, "_warned", set())
    warned.clear()
    yield
    warned.clear()


def exact_residuals(G, z, top) -> torch.Tensor:
    """[B, k] ||M v - sigma^2 v|| / sigma_1^2 with the exact M = J^T J (float64 oracle) and the
    result's vectors and values."""
    J = explicit_jacobian(G, z.double()).detach()
    M = J.transpose(1, 2) @ J
    lam_ref = torch.linalg.eigvalsh(M).flip(-1)[:, :1]
    V = top.vectors.double()
    lam = top.values.double() ** 2
    return (V @ M - lam[..., None] * V).norm(dim=-1) / lam_ref


# ---------------------------------------------------------------- finite differences
@pytest.mark.parametrize("method", ["krylov", "dense", "power"])
def test_finite_difference_residuals_are_against_the_exact_operator(method):
    """A float32 ReLU DCGAN: central differences cross kinks, so J_h v is off by ~1e-2.  The
    reported residuals must bound the residuals against the exact J^T J (explicit Jacobian), and
    converged must be False where those exceed tol; the result says it is approximate.  Fails on
    the code before: TopK had no `approximate`, and the residuals (about 1e-7, against the
    differences' own operator) were 1e4 times below the exact ones while converged was True."""
    torch.manual_seed(0)
    G = dcgan(16, channels=16)
    z = torch.randn(4, 16)
    tol = 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        top = jacobian_topk(G, z, 4, iters=300, tol=tol, method=method, jvp="finite_difference")
    exact = exact_residuals(copy.deepcopy(G).double(), z, top).to(top.residuals.dtype)
    assert bool((exact > 10 * tol).any())  # the subject: the differences are inaccurate here
    assert bool((top.residuals >= 0.5 * exact).all()), (top.residuals, exact)
    assert not bool(top.converged[exact >= tol].any())
    assert top.approximate and top.jvp == "finite_difference"


def test_finite_difference_on_a_smooth_float64_generator_converges():
    """Where central differences are accurate (a tanh MLP in float64: error ~1e-10), the folded
    estimate does not hide convergence: converged is True and the exact residuals are below tol;
    the result is still flagged approximate.  Fails on the code before only through
    `approximate` (it had no such field); it guards the estimate against being too pessimistic."""
    G = families(8)["mlp_tanh"]
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    top = jacobian_topk(G, z, 3, iters=300, tol=1e-6, method="krylov", jvp="finite_difference")
    assert top.approximate
    assert bool(top.converged.all()), top.residuals
    assert float(exact_residuals(G, z, top).max()) < 1e-6


def test_exact_modes_are_not_approximate():
    """jvp="double_backward" results are exact: approximate is False and the residuals are the
    solver's.  Fails on the code before (no `approximate` field)."""
    G = families(8)["mlp_tanh"]
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for method in ("power", "krylov", "dense"):
        top = jacobian_topk(G, z, 2, iters=500, tol=1e-8, method=method, jvp="double_backward")
        assert not top.approximate and bool(top.converged.all())
        assert float(exact_residuals(G, z, top).max()) < 1e-7


# ---------------------------------------------------------------- warnings
def _flat_dcgan():
    torch.manual_seed(0)
    return dcgan(16, channels=16), torch.randn(4, 16)


def test_unconverged_power_warns_once_naming_the_residual_and_the_setting():
    """method="power" at its default iters on a flat spectrum stops unconverged: a UserWarning
    names the residual reached, iters and method="krylov"; a second such call does not warn
    again; converged results (krylov, power, dense on a gapped float64 MLP) never warn.  Fails
    on the code before: it never warned (only .converged said so)."""
    G0 = families(8)["mlp_tanh"]
    z0 = torch.randn(2, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("krylov", "power", "dense"):
            assert bool(jacobian_topk(G0, z0, 2, iters=500, tol=1e-8, method=method).converged.all())
    G, z = _flat_dcgan()
    with pytest.warns(UserWarning) as record:
        top = jacobian_topk(G, z, 4, method="power", jvp="double_backward")
    assert not bool(top.converged.all())
    message = str(record[0].message)
    assert f"{float(top.residuals.max()):.1e}" in message
    assert "iters=20" in message and "method='krylov'" in message
    assert record[0].filename == __file__  # points at the caller
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        jacobian_topk(G, z, 4, method="power", jvp="double_backward")
    assert not [w for w in again if "did not converge" in str(w.message)]


def test_krylov_out_of_budget_warns():
    """krylov that spends its budget (iters=1: k products per sample) unconverged warns, naming
    iters.  Fails on the code before (no warning)."""
    G, z = _flat_dcgan()
    with pytest.warns(UserWarning, match=r"krylov.*iters=1.*raise iters"):
        top = jacobian_topk(G, z, 4, iters=1, tol=1e-6, method="krylov", jvp="double_backward")
    assert not bool(top.converged.all())


# ---------------------------------------------------------------- auto: measured costs
# Costs in seconds as measure_costs found them on a CPU (rounded): a StyleGAN2-like generator
# (bench/generators.StyleGenerator, 32x32x3, d=64), whose cost is mostly per row, and a
# launch-bound generator whose cost is mostly fixed per pass (per-row cost ~0).
STYLE_COSTS = dict(
    build=(0.004, 0.0024), first_jvp=(0.01, 0.0075), product=(0.01, 0.0062), matmul_flop=2e-11, eigh=2e-4, step=4e-4
)
FIXED_COSTS = dict(
    build=(0.005, 1e-7), first_jvp=(0.01, 1e-7), product=(0.01, 1e-7), matmul_flop=1e-12, eigh=2e-4, step=4e-4
)


def _auto_with(monkeypatch, costs, G, z):
    calls = []

    def fake(G_, z_, mode):
        calls.append(mode)
        return cost.ProductCosts(**costs)

    monkeypatch.setattr(topk, "measure_costs", fake, raising=False)  # raising=False: runs on older code too
    top = jacobian_topk(G, z, 4, iters=20, tol=1e-3, method="auto", jvp="double_backward")
    return top.method, calls


def test_auto_decides_with_the_costs_measured_on_G(monkeypatch):
    """Same B=3, k=4, d=64 problem, two cost profiles injected in place of the timed probe: a
    per-row-heavy (style-like) G runs krylov, a fixed-cost-heavy G runs dense.  No wall clock.
    Fails on the code before: auto took no measurement (its fitted constants picked dense for
    both; measure_costs did not exist)."""
    z = torch.randn(3, 64, generator=torch.Generator().manual_seed(4))
    picked = {}
    for name, costs in (("style", STYLE_COSTS), ("fixed", FIXED_COSTS)):
        G = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Tanh(), torch.nn.Linear(48, 3 * 32 * 32))
        picked[name], calls = _auto_with(monkeypatch, costs, G, z)
    assert picked == {"style": "krylov", "fixed": "dense"}
    assert calls == ["double_backward"]  # the last G's costs were timed once
    m = 3 * 32 * 32  # the fitted fallback chose dense for the style-like costs (the reported 3.2x)
    assert cost.estimated_cost("dense", 3, 4, 64, m, 20) < cost.estimated_cost("krylov", 3, 4, 64, m, 20)


def test_cost_probe_runs_once_per_generator_and_mode(monkeypatch):
    """The timed probe is cached with the JVP-mode probe: a second auto call on the same G does
    not time again; another generator or JVP mode does.  Its figures are positive and finite.
    Fails on the code before (no measure_costs)."""
    real = cost.measure_costs
    calls = []

    def spy(G, z, mode):
        calls.append(mode)
        return real(G, z, mode)

    monkeypatch.setattr(topk, "measure_costs", spy)
    G = families(8)["mlp_tanh"]
    z = torch.randn(2, 8, dtype=torch.float64)
    for _ in range(2):
        jacobian_topk(G, z, 2, iters=50, method="auto", jvp="double_backward")
    assert calls == ["double_backward"]
    jacobian_topk(G, z, 2, iters=50, method="auto", jvp="forward")
    jacobian_topk(families(8)["sigmoid_image_mlp"], z, 2, iters=50, method="auto", jvp="double_backward")
    assert calls == ["double_backward", "forward", "double_backward"]
    costs = real(G, z, "double_backward")
    figures = [*costs.build, *costs.first_jvp, *costs.product, costs.matmul_flop, costs.eigh, costs.step]
    assert all(0 <= f < 10 for f in figures) and costs.product[0] + costs.product[1] > 0


# ---------------------------------------------------------------- the dense method's converged
@pytest.mark.parametrize("method", ["dense", "auto"])
def test_dense_converged_follows_tol(monkeypatch, method):
    """method="dense" (and auto where it picks dense: here with costs under which dense is the
    cheaper) compares its eigh's residuals to tol as the other methods do: tol=0 reports no
    vector converged (and warns), a tol above float32 rounding all of them, a tol between the
    residuals exactly those below it; the residuals are the exact ones (float64 explicit
    Jacobian) to within float32 rounding of J^T J.  Fails on the previous main: with an exact
    JVP dense reported every vector converged whatever tol (tol was replaced by infinity)."""
    monkeypatch.setattr(topk, "measure_costs", lambda G_, z_, mode: cost.ProductCosts(**FIXED_COSTS))
    torch.manual_seed(0)
    G = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Tanh(), torch.nn.Linear(48, 3 * 32 * 32))
    z = torch.randn(3, 64, generator=torch.Generator().manual_seed(4))

    def run(tol):
        return jacobian_topk(G, z, 4, tol=tol, method=method, jvp="double_backward")

    with pytest.warns(UserWarning, match=r"method='dense'.*tol=0\b"):
        none = run(0.0)
    assert none.method == "dense" and not bool(none.converged.any())
    eps = torch.finfo(torch.float32).eps
    exact = exact_residuals(copy.deepcopy(G).double(), z, none).to(none.residuals.dtype)
    # |computed - exact| <= ||fl(J^T J) - J^T J|| / lam_1 + rounding of v and lam: a few eps * sqrt(m)
    assert float((none.residuals - exact).abs().max()) < 4 * eps * (3 * 32 * 32) ** 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged: no warning
        top = run(1e-4)
    assert bool(top.converged.all())
    middle = float(none.residuals.flatten().median())
    some = run(middle)
    assert (
        torch.equal(some.converged, some.residuals < middle) and 0 < int(some.converged.sum()) < some.converged.numel()
    )
