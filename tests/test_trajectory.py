"""trace_trajectory against an analytic generator whose singular-vector flow is known exactly.

The generator (float64).  Fix an orthogonal R (d x d) and write w = R z, u = (w_0, w_1),
r = ||u||, theta = atan2(w_1, w_0), rest = w_2..w_{d-1}.  Then

    G(z) = ( a * r,  s * u / r,  c * rest )            in R^{1 + 2 + (d - 2)}.

With e_r = u / r and e_theta = (-sin theta, cos theta), the Jacobian with respect to w has the
orthogonal row blocks a e_r^T, (s / r) e_theta e_theta^T (since d(u/r)/du = (I - e_r e_r^T) / r)
and c I, so

    J^T J = R^T [ a^2 e_r e_r^T + (s/r)^2 e_theta e_theta^T + c^2 I_rest ] R.

The right-singular vectors are R^T e_theta (value s/r), R^T e_r (value a) and R^T e_j (value c).

- For r < s/a and c < a, the top vector is R^T e_theta.  Its unit-speed integral curve is a
  circle in the (w_0, w_1) plane: theta(t) = theta_0 +- t / r_0, r and rest fixed.  This path is
  curved, keeps ||z|| constant, and the largest-magnitude component of e_theta changes sign
  along it (so the sign convention alone would make a walker turn back).
- Following R^T e_r is a straight radial line r(t) = r_0 + t, along which s/r falls through a:
  the two top singular values cross at r = s/a, and the tracked vector, constant along the
  line, moves from index 1 to index 0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spectral_ops import jacobian_topk
from spectral_ops.lab.metrics.trajectory import (
    factor_changes,
    output_arc_length,
    resample_by_output_length,
    trajectory_purity,
)
from spectral_ops.trajectory import Trajectory, trace_trajectory

A, S, C = 1.0, 3.0, 0.5
D = 4


def rotation(d: int = D, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return Q


R = rotation()


def G_polar(z: torch.Tensor) -> torch.Tensor:
    w = z @ R.T
    u = w[:, :2]
    r = u.norm(dim=-1, keepdim=True)
    return torch.cat([A * r, S * u / r, C * w[:, 2:]], dim=-1)


def start_points(radii) -> torch.Tensor:
    """Latents whose (w_0, w_1) part has the given radii (float64, one row per radius)."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(len(radii), D, generator=g, dtype=torch.float64)
    w[:, :2] = w[:, :2] / w[:, :2].norm(dim=-1, keepdim=True) * torch.tensor(radii, dtype=torch.float64)[:, None]
    return w @ R


def polar(z: torch.Tensor):
    w = z @ R.T
    return w[:, :2].norm(dim=-1), torch.atan2(w[:, 1], w[:, 0]), w


def e_theta(z: torch.Tensor) -> torch.Tensor:
    _, th, _ = polar(z)
    e = torch.zeros(z.shape[0], D, dtype=torch.float64)
    e[:, 0], e[:, 1] = -torch.sin(th), torch.cos(th)
    return e @ R


def e_r(z: torch.Tensor) -> torch.Tensor:
    _, th, _ = polar(z)
    e = torch.zeros(z.shape[0], D, dtype=torch.float64)
    e[:, 0], e[:, 1] = torch.cos(th), torch.sin(th)
    return e @ R


def exact_circle(z0: torch.Tensor, v0: torch.Tensor, t: float) -> torch.Tensor:
    """The exact point at arc length t on the integral curve of +-R^T e_theta through z0, with
    the orientation of v0."""
    r0, th0, w0 = polar(z0)
    orient = torch.sign((v0 * e_theta(z0)).sum(-1))
    th = th0 + orient * t / r0
    w = w0.clone()
    w[:, 0], w[:, 1] = r0 * torch.cos(th), r0 * torch.sin(th)
    return w @ R


# ---------------------------------------------------------------- the analytic field itself


def test_analytic_field_matches_jacobian_topk():
    """The closed form above is what jacobian_topk computes (guards the derivation)."""
    z = start_points([0.7, 1.0, 2.0])
    top = jacobian_topk(G_polar, z, 2, method="dense")
    r, _, _ = polar(z)
    assert torch.allclose(top.values[:, 0], S / r, rtol=1e-12)
    assert torch.allclose(top.values[:, 1], torch.full_like(r, A), rtol=1e-12)
    assert torch.allclose(
        (top.vectors[:, 0] * e_theta(z)).sum(-1).abs(), torch.ones(3, dtype=torch.float64), atol=1e-12
    )
    assert torch.allclose((top.vectors[:, 1] * e_r(z)).sum(-1).abs(), torch.ones(3, dtype=torch.float64), atol=1e-12)


# ---------------------------------------------------------------- order of convergence

T_TOTAL = 1.2
STEP_SIZES = [0.3, 0.15, 0.075, 0.0375]
ORDER = {"euler": (1.0, 0.15), "heun": (2.0, 0.2), "rk4": (4.0, 0.4)}


def convergence(method: str, project=None):
    z0 = start_points([1.0, 1.3, 0.8])
    errors = []
    for h in STEP_SIZES:
        tr = trace_trajectory(
            G_polar, z0, 0, steps=round(T_TOTAL / h), step_size=h, method=method, topk_method="dense", project=project
        )
        exact = exact_circle(z0, tr.tangent[0], T_TOTAL)
        errors.append((tr.z[-1] - exact).norm(dim=-1).max().item())
    slope = np.polyfit(np.log(STEP_SIZES), np.log(errors), 1)[0]
    return slope, errors


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_order_of_convergence_on_curved_exact_flow(method):
    """The end-point error against the exact circle falls as h^order (log-log slope)."""
    slope, errors = convergence(method)
    order, tol = ORDER[method]
    assert abs(slope - order) < tol, (method, slope, errors)
    assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:])), errors
    # The path really is curved: over T=1.2 at r ~ 1 the chord leaves the tangent by > 0.5.
    assert errors[-1] < {"euler": 0.05, "heun": 5e-4, "rk4": 1e-7}[method]


def test_sphere_projection_keeps_norm_and_converges():
    """The exact circle lies on ||z|| = ||z0||, so projection keeps the exact solution; rk4 with
    projection still converges at order ~4 and the norm is kept to rounding."""
    slope, errors = convergence("rk4", project="sphere")
    assert abs(slope - 4.0) < 0.5, (slope, errors)
    z0 = start_points([1.0, 1.3, 0.8])
    tr = trace_trajectory(G_polar, z0, 0, steps=6, step_size=0.2, method="euler", project="sphere", topk_method="dense")
    norms = tr.z.norm(dim=-1)
    assert torch.allclose(norms, norms[:1].expand_as(norms), rtol=1e-13)


def test_power_iteration_warm_start_matches_dense():
    """Warm-started power iteration gives the same path as the exact dense field, with far fewer
    iterations than a cold start would need per evaluation."""
    z0 = start_points([1.0, 1.3, 0.8])
    dense = trace_trajectory(G_polar, z0, 0, steps=8, step_size=0.15, method="rk4", topk_method="dense")
    power = trace_trajectory(
        G_polar, z0, 0, steps=8, step_size=0.15, method="rk4", topk_method="power", iters=50, tol=1e-10
    )
    assert (power.z - dense.z).abs().max().item() < 1e-8
    cold = trace_trajectory(
        G_polar,
        z0,
        0,
        steps=8,
        step_size=0.15,
        method="rk4",
        topk_method="power",
        iters=50,
        tol=1e-10,
        warm_start=False,
    )
    assert (cold.z - dense.z).abs().max().item() < 1e-8
    assert power.evaluations == cold.evaluations == 1 + 4 * 8
    assert power.iterations < cold.iterations / 2, (power.iterations, cold.iterations)


# ---------------------------------------------------------------- sign continuity


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_sign_continuity_around_the_circle(method):
    """Walk 0.9 of a full turn.  The stored tangent never flips, the angle advances monotonically,
    and the sign convention without continuity would have flipped the vector on the way."""
    z0 = start_points([1.0])
    h, steps = 0.05, round(0.9 * 2 * math.pi / 0.05)
    tr = trace_trajectory(G_polar, z0, 0, steps=steps, step_size=h, method=method, topk_method="dense")
    tang = tr.tangent[:, 0]
    dots = (tang[1:] * tang[:-1]).sum(-1)
    assert dots.min().item() > math.cos(2 * h)  # the true turn per step is h / r = h
    _, th, _ = polar(tr.z[:, 0])
    dth = torch.remainder(th[1:] - th[:-1] + math.pi, 2 * math.pi) - math.pi
    orient = torch.sign(dth[0])
    assert (dth * orient > 0.5 * h).all()
    # Without continuity: the raw convention (largest |component| positive) flips along the path.
    lead = tang.gather(1, tang.abs().argmax(1, keepdim=True)).squeeze(1)
    assert (lead > 0).any() and (lead < 0).any()
    if method == "rk4":
        exact = exact_circle(z0, tr.tangent[0], steps * h)
        assert (tr.z[-1] - exact).norm().item() < 1e-6


# ---------------------------------------------------------------- crossings


@pytest.mark.parametrize("topk_method", ["dense", "power"])
def test_tracking_through_a_singular_value_crossing(topk_method):
    """Follow R^T e_r from r=2 outward: s/r = 1.5 > a = 1 first, then < a after r = 3.  The
    tracked vector stays R^T e_r (the same smooth field) while its index moves from 1 to 0."""
    z0 = start_points([2.05, 2.2])  # no evaluation lands exactly on r = 3, where e_r, e_theta are not unique
    init = torch.stack([e_theta(z0), e_r(z0)], dim=1)  # orients the walk outward
    tr = trace_trajectory(
        G_polar,
        z0,
        1,
        steps=9,
        step_size=0.25,
        method="rk4",
        k=3,
        topk_method=topk_method,
        init=init,
        iters=30,
        tol=1e-10,
    )
    assert tr.vectors.shape == (10, 2, 3, D)
    assert (tr.tracked[0] == 1).all() and (tr.tracked[-1] == 0).all()
    er = e_r(z0)
    cos = (tr.tangent * er[None]).sum(-1)
    assert cos.min().item() > 1 - 1e-8
    r_end, _, _ = polar(tr.z[-1])
    assert torch.allclose(r_end, torch.tensor([2.05, 2.2], dtype=torch.float64) + 9 * 0.25, atol=1e-8)
    # Index-based following would have switched fields: after the crossing, index 1 is e_theta.
    after = (tr.vectors[-1, :, 1] * e_theta(tr.z[-1])).sum(-1).abs()
    assert after.min().item() > 1 - 1e-8
    # The tracked singular value is a everywhere; the other one fell through it.
    assert torch.allclose(tr.tracked_values, torch.ones_like(tr.tracked_values), atol=1e-8)


def test_crossing_needs_the_margin_vector():
    """Walk R^T e_r inward from r=3.95, where it is the top vector, through the crossing at r=3.
    With the default k = direction + 2 the walker stays on the radial line; with k = 1 there is
    no spare vector, so past the crossing the only vector computed is e_theta and the walker
    turns onto the circle field (the reason for the default margin)."""
    z0 = start_points([3.95])
    init = -torch.stack([e_r(z0), e_theta(z0)], dim=1)  # orients the walk inward
    kept = trace_trajectory(G_polar, z0, 0, steps=6, step_size=0.25, method="rk4", topk_method="dense", init=init)
    lost = trace_trajectory(
        G_polar, z0, 0, steps=6, step_size=0.25, method="rk4", k=1, topk_method="dense", init=init[:, :1]
    )
    assert kept.tracked[0, 0] == 0 and kept.tracked[-1, 0] == 1
    r_kept, _, _ = polar(kept.z[-1])
    assert abs(r_kept.item() - 2.45) < 1e-8
    assert ((kept.tangent[:, 0] * e_r(z0)).sum(-1) < -1 + 1e-8).all()
    r_lost, _, _ = polar(lost.z[-1])
    assert r_lost.item() > 2.6  # stopped shrinking at the crossing
    assert abs((lost.tangent[-1, 0] * e_r(lost.z[-1])).sum().item()) < 1e-6


# ---------------------------------------------------------------- both ways, shapes, dtypes


def test_both_ways_is_the_backward_walk_reversed():
    z0 = start_points([1.0, 1.5])
    both = trace_trajectory(G_polar, z0, 0, steps=5, step_size=0.1, both_ways=True, topk_method="dense")
    fwd = trace_trajectory(G_polar, z0, 0, steps=5, step_size=0.1, topk_method="dense")
    assert both.z.shape == (11, 2, D) and both.origin == 5
    assert torch.equal(both.z[5], z0)
    assert torch.allclose(both.z[5:], fwd.z, atol=1e-14)
    # The backward half is the exact circle walked the other way.
    exact = exact_circle(z0, -fwd.tangent[0], 0.5)
    assert (both.z[0] - exact).norm(dim=-1).max().item() < 1e-6
    tang = both.tangent[:, 0]
    assert ((tang[1:] * tang[:-1]).sum(-1) > 0.99).all()  # oriented along increasing time


def test_neural_generator_float32_shapes_and_finite():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 20))
    z0 = torch.randn(3, 6)
    tr = trace_trajectory(net, z0, 1, steps=4, step_size=0.1, method="heun", topk_method="power")
    assert isinstance(tr, Trajectory)
    assert tr.z.shape == (5, 3, 6) and tr.values.shape == (5, 3, 3) and tr.vectors.shape == (5, 3, 3, 6)
    assert tr.residuals.shape == (5, 3, 3) and tr.tracked.shape == (5, 3)
    assert tr.z.dtype == torch.float32 and torch.isfinite(tr.z).all() and torch.isfinite(tr.values).all()
    steps = (tr.z[1:] - tr.z[:-1]).norm(dim=-1)
    assert torch.allclose(steps, torch.full_like(steps, 0.1), rtol=0.05)
    assert tr.evaluations == 1 + 2 * 4


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(method="midpoint"), "method"),
        (dict(direction=3), "direction"),  # >= k (k=3 given below)
        (dict(direction=4), "direction"),  # >= d
        (dict(direction=-1), "direction"),
        (dict(steps=0), "steps"),
        (dict(step_size=0.0), "step_size"),
        (dict(step_size=-0.1), "step_size"),
        (dict(step_size=float("nan")), "step_size"),
        (dict(project="ball"), "project"),
        (dict(topk_method="svd"), "topk_method"),
        (dict(iters=0), "iters"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, word):
    z0 = start_points([1.0])
    base = dict(k=3) if kwargs.get("direction") == 3 else {}
    with pytest.raises(ValueError, match=word):
        trace_trajectory(G_polar, z0, **{**base, **kwargs})


def test_wrong_types_raise_type_error():
    """A value of the wrong type is a TypeError naming the argument (spectral_ops.validation)."""
    with pytest.raises(TypeError, match="steps must be an int"):
        trace_trajectory(G_polar, start_points([1.0]), steps=2.5)
    with pytest.raises(TypeError, match="direction must be an int"):
        trace_trajectory(G_polar, start_points([1.0]), direction=True)


def test_bad_latents():
    z0 = start_points([1.0, 1.0, 1.0])
    z0[2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"z0 .*rows \[2\]"):
        trace_trajectory(G_polar, z0)
    with pytest.raises(ValueError, match="z0"):
        trace_trajectory(G_polar, torch.zeros(D, dtype=torch.float64))
    with pytest.raises(ValueError, match="project"):
        trace_trajectory(G_polar, torch.zeros(1, D, dtype=torch.float64), project="sphere")
    with pytest.raises(TypeError, match="G"):
        trace_trajectory(None, start_points([1.0]))


@pytest.mark.parametrize(
    "name, value",
    [("both_ways", "no"), ("warm_start", "no"), ("progress", "no"), ("warm_start", 0), ("both_ways", None)],
)
def test_a_non_bool_flag_is_a_type_error(name, value):
    """A str (or any non-bool) where a bool is expected is refused naming the argument.  Before:
    both_ways="no" walked both ways and warm_start="no" warm-started (any non-empty str is true)."""
    with pytest.raises(TypeError, match=f"{name} must be a bool, got {type(value).__name__}"):
        trace_trajectory(G_polar, start_points([1.0]), steps=1, **{name: value})


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 10**30])
def test_a_seed_a_generator_cannot_take_is_refused_naming_it(seed):
    """Before: "Overflow when unpacking long long" from torch.Generator.manual_seed."""
    with pytest.raises(ValueError, match=r"seed must be an int in \[-2\*\*63, 2\*\*64 - 1\], got "):
        trace_trajectory(G_polar, start_points([1.0]), steps=1, seed=seed)


def test_the_extreme_seeds_work_and_negative_ones_wrap_as_torch_does():
    """-1 and 2**64 - 1 are the same torch seed: the same random completion of a partial init,
    so the same path bit for bit; -2**63 works too."""
    z0 = start_points([1.0, 1.3])
    init = e_theta(z0)[:, None]  # [B, 1, d]: one given row, the others drawn from the seed
    runs = [
        trace_trajectory(G_polar, z0, 0, k=3, steps=2, topk_method="power", iters=3, tol=0.0, init=init, seed=seed)
        for seed in (-1, 2**64 - 1, -(2**63))
    ]
    assert torch.equal(runs[0].z, runs[1].z) and torch.equal(runs[0].vectors, runs[1].vectors)
    assert bool(torch.isfinite(runs[2].z).all())


def test_a_meta_or_integer_init_is_refused_naming_it():
    """Before: a meta init reached Tensor.item() ("cannot be called on meta tensors"), and an
    integer init was silently cast."""
    z0 = start_points([1.0])
    with pytest.raises(ValueError, match="init is on the meta device: spectral_ops needs its values"):
        trace_trajectory(G_polar, z0, steps=1, init=torch.zeros(1, D, device="meta"))
    with pytest.raises(ValueError, match="init is on the meta device"):
        trace_trajectory(G_polar, z0, steps=1, k=2, init=torch.zeros(1, 2, D, device="meta"))
    with pytest.raises(TypeError, match="init must be a floating-point tensor, got torch.int64"):
        trace_trajectory(G_polar, z0, steps=1, init=torch.ones(1, D, dtype=torch.long))


def test_match_picks_largest_abs_cos_and_its_sign():
    """The matching rule on its own: rows permuted and negated are found by |cos|, signed to agree."""
    from spectral_ops.trajectory import _Field

    V = torch.eye(3, dtype=torch.float64)[None].repeat(2, 1, 1)
    V[0] = V[0][[2, 0, 1]] * torch.tensor([[-1.0], [1.0], [1.0]], dtype=torch.float64)  # e2 at index 0, negated
    ref = torch.tensor([[0.1, 0.2, 0.97], [0.9, 0.3, 0.1]], dtype=torch.float64)
    v, idx, V2 = _Field.match(V, ref)
    assert idx.tolist() == [0, 0]
    assert torch.equal(v[0], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    assert torch.equal(V2[0, 0], v[0]) and torch.equal(V2[0, 1], V[0, 1])


# ---------------------------------------------------------------- trajectory purity


def test_purity_single_factor_mixed_and_total_variation():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    one = torch.stack([t * 0.5, torch.zeros_like(t), torch.full_like(t, 0.3)], -1)
    assert trajectory_purity(one).item() == pytest.approx(1.0, abs=1e-15)
    two = torch.stack([t * 0.5, t * 0.5, torch.zeros_like(t)], -1)
    assert trajectory_purity(two).item() == pytest.approx(0.5, abs=1e-12)
    # back and forth: factor 1 goes 0 -> 0.3 -> 0 (total change 0.6, net 0); factor 0 moves 0.2.
    wobble = torch.stack([t * 0.2, 0.3 - (t - 0.5).abs() * 0.6, torch.zeros_like(t)], -1)
    p, c = trajectory_purity(wobble, return_changes=True)
    assert torch.allclose(c, torch.tensor([0.2, 0.6, 0.0], dtype=torch.float64), atol=1e-12)
    assert p.item() == pytest.approx(0.75, abs=1e-12)
    # batched, scale, categorical-as-index, and a path with no change at all
    batch = torch.stack([one, two, torch.zeros_like(one)], 1)
    assert torch.allclose(trajectory_purity(batch), torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
    assert trajectory_purity(two, scale=[1.0, 0.5, 1.0]).item() == pytest.approx(2 / 3, abs=1e-12)
    cat = torch.tensor([[0.0, 0.0], [1.0, 0.1], [1.0, 0.2], [3.0, 0.3]])
    assert torch.allclose(factor_changes(cat, categorical=[True, False]), torch.tensor([2.0, 0.3], dtype=torch.float64))


class _StubPredictor(torch.nn.Module):
    """Factor 0 ordinal = mean brightness; factor 1 categorical with logits (10 x left-half mean, 0)."""

    categorical = [False, True]

    def forward(self, x):
        left = x[..., : x.shape[-1] // 2].mean((1, 2, 3))
        return [x.mean((1, 2, 3)), torch.stack([10 * left, torch.zeros_like(left)], -1)]


def test_purity_with_a_predictor_uses_values_and_probabilities():
    T1 = 5
    imgs = torch.zeros(T1, 2, 1, 4, 4)
    b = torch.linspace(0, 0.8, T1)
    imgs[:, 0, :, :, 2:] = b[:, None, None, None]  # right half brightens: ordinal only
    imgs[:, 1] = b[:, None, None, None]  # everything brightens: both factors
    p, c = trajectory_purity(imgs, predictor=_StubPredictor(), return_changes=True)
    assert c.shape == (2, 2)
    assert c[0, 0].item() == pytest.approx(0.4, abs=1e-6) and c[0, 1].item() == 0.0
    probs = torch.sigmoid(10 * b.double())
    assert c[1, 1].item() == pytest.approx((probs[-1] - probs[0]).item(), abs=1e-6)
    assert p[0].item() == 1.0 and 0.5 < p[1].item() < 1.0


def test_resample_by_output_length_equalizes_output_change():
    def G(z):
        return 2.0 * z

    Z = torch.zeros(21, 2, 3, dtype=torch.float64)
    Z[:, 0, 0] = torch.linspace(0, 2, 21, dtype=torch.float64) ** 2  # uneven spacing, length 4
    Z[:, 1, 1] = torch.linspace(0, 0.5, 21, dtype=torch.float64)  # latent length 0.5 only
    arc = output_arc_length(G, Z)
    assert torch.allclose(arc[-1], torch.tensor([8.0, 1.0], dtype=torch.float64))
    Zs, reached = resample_by_output_length(G, Z, 3.0, 4)
    assert reached.tolist() == [True, False]
    assert torch.allclose(Zs[:, 0, 0], torch.tensor([0.0, 0.5, 1.0, 1.5], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(Zs[:, 1, 1], torch.tensor([0.0, 0.5, 1.0, 1.5], dtype=torch.float64) / 3, atol=1e-12)
    with pytest.raises(ValueError, match="length"):
        resample_by_output_length(G, Z, 0.0, 4)


def test_purity_bad_input():
    with pytest.raises(ValueError, match="path"):
        trajectory_purity(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="non-finite"):
        trajectory_purity(torch.tensor([[0.0, float("nan")], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="scale"):
        trajectory_purity(torch.zeros(3, 2), scale=[1.0, 0.0])
    with pytest.raises(ValueError, match="categorical"):
        trajectory_purity(torch.zeros(3, 2), categorical=[True])
