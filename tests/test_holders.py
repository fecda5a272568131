"""The ways trainers hold G, and no side effects on G.

A trainer rarely hands over the module itself: a callable object, a lambda over a dict of nets, a
namespace, a partial, or a bound method of its loss object (StyleGAN2's `StyleGAN2Loss.run_G`
reaches `self.G_mapping` and `self.G_synthesis`).  Every call of the library must leave every
parameter and buffer of G as it found it, also when it refuses G, and must run the same numbers
as on the module itself.  Each test says, in its docstring, what the library did before the fix.
The oracle is the explicit float64 Jacobian of the same holder with its modules in eval mode.
"""

from __future__ import annotations

import functools
import types
import warnings
import weakref

import pytest
import torch
from torch import nn
from torch.nn.functional import relu

from spectral_ops.testing.families import explicit_jacobian, mlp
from test_real_generators import _bn_net, _Conditional, _z  # a train-mode BatchNorm net, G(z, c), latents
import spectral_ops
from spectral_ops import SpectralRegularizer, global_directions, jacobian_topk, spectral_penalty, trace_trajectory

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = torch.finfo(torch.float64).eps


def _state(*modules: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of the modules, copied (the state a call must leave as found)."""
    return [t.detach().clone() for m in modules for t in [*m.parameters(), *m.buffers()]]


def _same_state(before: list[torch.Tensor], *modules: nn.Module) -> bool:
    now = _state(*modules)
    return len(now) == len(before) and all(torch.equal(a, b) for a, b in zip(before, now))


# ---- a StyleGAN2-like pair and a trainer's loss object ------------------------------------------------
class Mapping(nn.Module):
    """z [N, d] -> w [N, w_dim]; tracks the mean of w in a `w_avg` buffer in training mode (as
    StyleGAN2's mapping network does)."""

    def __init__(self, d: int = 6, w_dim: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, w_dim), nn.LeakyReLU(0.2), nn.Linear(w_dim, w_dim))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.net(z)
        if self.training:
            self.w_avg.copy_(w.detach().mean(0).lerp(self.w_avg, 0.995))
        return w


class Synthesis(nn.Module):
    """w [N, w_dim] -> [N, 2, 3, 3] through a train-mode-sensitive BatchNorm1d."""

    def __init__(self, w_dim: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(w_dim, 12), nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, 18))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.net(w).reshape(-1, 2, 3, 3)


class Loss:
    """StyleGAN2Loss's pattern: the nets as attributes, G reached through a method."""

    def __init__(self, mapping: nn.Module, synthesis: nn.Module):
        self.G_mapping, self.G_synthesis, self.pl_weight = mapping, synthesis, 2.0

    def run_G(self, z: torch.Tensor) -> torch.Tensor:
        return self.G_synthesis(self.G_mapping(z))


class Wrapper:
    """A plain callable object around the nets."""

    def __init__(self, mapping: nn.Module, synthesis: nn.Module):
        self.parts = [mapping, synthesis]

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.parts[1](self.parts[0](z))


class SlottedWrapper:
    """A callable object with __slots__ (no __dict__)."""

    __slots__ = ("mapping", "synthesis")

    def __init__(self, mapping: nn.Module, synthesis: nn.Module):
        self.mapping, self.synthesis = mapping, synthesis

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.synthesis(self.mapping(z))


def _nets():
    """(mapping, synthesis) in training mode, with running statistics from a few batches."""
    torch.manual_seed(0)
    mapping, synthesis = Mapping().double().train(), Synthesis().double().train()
    with torch.no_grad():
        for seed in range(3):
            synthesis(mapping(_z(32, 6, seed=10 + seed)))
    return mapping, synthesis


def _holders(mapping: nn.Module, synthesis: nn.Module) -> dict:
    """Ways trainers hold G that the module scan did not follow before (all closing over locals)."""
    nets = {"G_mapping": mapping, "G_synthesis": synthesis}
    ns = types.SimpleNamespace(mapping=mapping, synthesis=synthesis)
    loss = Loss(mapping, synthesis)
    return {
        "callable object": Wrapper(mapping, synthesis),
        "object with __slots__": SlottedWrapper(mapping, synthesis),
        "lambda over a dict": lambda x: nets["G_synthesis"](nets["G_mapping"](x)),
        "lambda over a namespace": lambda x: ns.synthesis(ns.mapping(x)),
        "partial of a callable object": functools.partial(Wrapper(mapping, synthesis)),
        "bound method of a loss object": loss.run_G,
        "lambda over a loss object": lambda x: loss.run_G(x),
    }


def _oracle_values(G, z: torch.Tensor, k: int, *modules: nn.Module) -> torch.Tensor:
    """Top-k singular values [B, k] of the explicit float64 Jacobian of G with `modules` in eval
    mode (what batchnorm="eval" promises), training modes put back."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        return torch.linalg.svdvals(explicit_jacobian(G, z))[:, :k]
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


@pytest.mark.parametrize("holder", list(_holders(*_nets())))
def test_every_holder_of_G_leaves_its_state_as_found(holder):
    """Before: behind a callable object, a dict, a namespace, a partial of an object or a trainer's
    loss object, the module scan found no module: the passes moved the mapping network's w_avg and
    the BatchNorm running statistics, batchnorm="eval" did nothing, and batchnorm="error" refused
    only after the probe had updated the statistics ("G couples the rows")."""
    mapping, synthesis = _nets()
    G = _holders(mapping, synthesis)[holder]
    z = _z(4, 6)
    before = _state(mapping, synthesis)
    with pytest.raises(ValueError, match=r"batch-coupled layers in training mode.*batchnorm='eval'"):
        jacobian_topk(G, z, 2)
    assert _same_state(before, mapping, synthesis)

    ref = _oracle_values(G, z, 3, mapping, synthesis)
    for method in ("power", "krylov", "dense"):
        top = jacobian_topk(G, z, 3, method=method, iters=300, tol=1e-12, batchnorm="eval")
        assert torch.allclose(top.values, ref, rtol=1e3 * EPS**0.5), method  # tol 1e-12 on residuals
    spectral_penalty(G, z, k=2, batchnorm="eval").backward()
    reg = SpectralRegularizer(6, k=2, every=1, batch_fraction=1.0, batchnorm="eval")
    reg(G, z).backward()
    global_directions(G, 8, 2, latent_dim=6, batch_size=4, batchnorm="eval", dtype=torch.float64)
    trace_trajectory(G, z[:2], steps=2, k=2, step_size=0.05, batchnorm="eval")
    assert _same_state(before, mapping, synthesis)
    assert mapping.training and synthesis.net[1].training
    G(z)  # the trainer's own call still updates both
    assert not torch.equal(before[-1], mapping.w_avg)


class _Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(18, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x)


def test_modules_on_the_trainer_object_that_G_never_runs_are_left_alone():
    """The trainer object G is a method of also holds a discriminator with train-mode BatchNorm:
    G never runs it, so it must neither be refused (batchnorm="error") nor touched.  Guards the
    scan of attributes against refusing what it finds without G running it."""
    mapping, synthesis = _nets()
    synthesis.eval()
    loss = Loss(mapping, synthesis)
    loss.D = _Discriminator().double().train()
    with torch.no_grad():
        loss.D(synthesis(mapping(_z(16, 6, seed=4))))
    z = _z(4, 6)
    before = _state(mapping, synthesis, loss.D)
    top = jacobian_topk(loss.run_G, z, 3, method="dense")
    spectral_penalty(loss.run_G, z, k=2).backward()
    assert torch.allclose(top.values, _oracle_values(loss.run_G, z, 3, mapping), rtol=100 * EPS)
    assert _same_state(before, mapping, synthesis, loss.D) and loss.D.training


def test_new_modules_at_the_ids_of_dead_ones_are_probed_again(monkeypatch):
    """Before: the probe's cache is keyed by the ids of G's modules; a trainer object made anew
    with new nets at the ids of freed ones (CPython reuses them: bench/fuzz.py met it) hit the
    old entry, whose modules were gone, and the passes ran without the buffer guarantee (w_avg
    moved).  The collision is made certain here by giving both generators one identity."""
    import gc

    from spectral_ops import probes

    monkeypatch.setattr(
        probes,
        "generator_identity",
        lambda G, modules=None: (Loss.run_G.__code__, ("one identity for both",)),
    )
    z = _z(4, 6)
    mapping, synthesis = _nets()
    spectral_penalty(Loss(mapping, synthesis.eval()).run_G, z, k=2)
    gone = weakref.ref(mapping)
    del mapping, synthesis
    gc.collect()
    assert gone() is None
    mapping, synthesis = _nets()
    before = _state(mapping, synthesis)
    spectral_penalty(Loss(mapping, synthesis.eval()).run_G, z, k=2)
    assert _same_state(before, mapping, synthesis)


# ---- state the scan cannot reach, and a G that changes its parameters ----------------------------------
def test_a_refused_probe_leaves_modules_the_scan_cannot_reach_as_found():
    """Before: behind a weak reference (which no scan follows), the batch-coupling probe's forwards
    updated running_mean, running_var and num_batches_tracked, then refused G ("G couples the
    rows"), with batchnorm="error" and "eval" alike; now the modules G runs are met before they
    run, refused or put in eval mode, and named in a warning once per generator."""
    net = _bn_net()
    ref = weakref.ref(net)
    G = lambda x: ref()(x)
    z = _z(4, 6)
    before = _state(net)
    with pytest.raises(ValueError, match=r"batch-coupled layers in training mode \(1\)"):
        jacobian_topk(G, z, 2)
    assert _same_state(before, net)
    with pytest.warns(UserWarning, match=r"did not find among the objects G holds \(Sequential\)"):
        top = jacobian_topk(G, z, 2, method="dense", batchnorm="eval")
    assert _same_state(before, net) and net.training and net[1].training
    assert torch.allclose(top.values, _oracle_values(G, z, 2, net), rtol=100 * EPS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per generator
        top = jacobian_topk(G, z, 2, method="dense", batchnorm="eval")
        spectral_penalty(G, z, k=2, batchnorm="eval").backward()
    with pytest.raises(ValueError, match="batchnorm='eval'"):  # the cached probe: refused before any pass
        jacobian_topk(G, z, 2)
    assert _same_state(before, net)


class _SelfUpdating(nn.Module):
    """A G whose forward changes its own parameter."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, 30, dtype=torch.float64).reshape(6, 5))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.w.data.mul_(1.01)
        return torch.tanh(z @ self.w)


@pytest.mark.parametrize("holder", ["module", "callable object"])
def test_a_generator_that_changes_its_parameters_is_refused_and_left_as_found(holder):
    """Before: refused as "not a function of z" after the probe's three forwards had multiplied
    the parameter by 1.01**3; now the parameter is put back and the error says what G did."""
    net = _SelfUpdating()
    G = net if holder == "module" else Wrapper(nn.Identity(), net)
    before = _state(net)
    with pytest.raises(ValueError, match=r"changed its own parameters when called \(w\).*put them back"):
        jacobian_topk(G, _z(4, 6), 2)
    assert _same_state(before, net)
    with pytest.raises(ValueError, match=r"changed its own parameters"):
        spectral_penalty(G, _z(4, 6), k=2)
    assert _same_state(before, net)


class _Opaque:
    """A callable with nothing the scan can look into."""

    __slots__ = ()

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z[:, :3] * 2.0)


def test_no_module_and_nothing_to_look_into_is_said_once():
    """Before: a callable the scan could not look into got no module and no word: the buffer
    guarantee silently did not apply.  Now a warning says so, once per generator."""
    G, z = _Opaque(), _z(3, 6)
    with pytest.warns(UserWarning, match=r"found no nn.Module behind G \(a _Opaque\).*does not\s+apply"):
        jacobian_topk(G, z, 2, method="dense")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        top = jacobian_topk(G, z, 2, method="dense")
        jacobian_topk(lambda x: torch.tanh(x[:, :3] * 2.0), z, 2, method="dense")  # a plain function: no word
        jacobian_topk(lambda x: relu(x[:, :3]) + x[:, :3], z, 2, method="dense")  # nor for torch's functions
    assert torch.allclose(top.values, torch.linalg.svdvals(explicit_jacobian(G, z))[:, :2], rtol=100 * EPS)


def test_scan_is_bounded_and_cycle_safe():
    """The scan follows cycles once and stops at its depth: a trainer object that refers to itself
    and a long chain of holders end (before: not followed at all)."""
    from spectral_ops.holders import SCAN_DEPTH, scan

    net = mlp(6, m=5).double()
    loss = Loss(net, nn.Identity())
    loss.trainer = loss  # a cycle
    loss.history = list(range(10_000))  # a long list of plain numbers
    found, missed = scan(loss.run_G)
    assert {id(m) for m in found} == {id(net), id(loss.G_synthesis)} and not missed
    deep = net
    for _ in range(SCAN_DEPTH + 2):
        deep = types.SimpleNamespace(inner=deep)
    found, missed = scan(deep)
    assert found == [] and missed


# ---- a G that writes to its input ------------------------------------------------------------------------
def test_a_generator_that_writes_to_its_input_matches_the_oracle():
    """Before: every method and JVP mode raised "a view of a leaf Variable that requires grad is
    being used in an in-place operation" for x.mul_(2) inside G, though G(z) works."""
    torch.manual_seed(0)
    net = mlp(6, m=5).double()

    def G(x):
        return net(x.mul_(2.0))

    def out_of_place(x):
        return net(2.0 * x)

    z = _z(4, 6)
    z_before = z.clone()
    S = torch.linalg.svdvals(explicit_jacobian(out_of_place, z))[:, :3]
    for method in ("power", "krylov", "dense"):
        for jvp in ("auto", "double_backward", "forward", "finite_difference"):
            top = jacobian_topk(G, z, 3, method=method, jvp=jvp, iters=300, tol=1e-12)
            rtol = 1e-5 if jvp == "finite_difference" else 1e3 * EPS**0.5  # differences: eps^(2/3) steps
            assert torch.allclose(top.values, S, rtol=rtol), (method, jvp)
    assert torch.equal(z, z_before)  # G never wrote to the caller's z
    value = spectral_penalty(G, z, k=2)
    ref_value = spectral_penalty(out_of_place, z, k=2)
    assert torch.allclose(value, ref_value, rtol=1e3 * EPS)
    grads = torch.autograd.grad(value, list(net.parameters()), allow_unused=True)  # J ignores the last bias
    ref_grads = torch.autograd.grad(ref_value, list(net.parameters()), allow_unused=True)
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None) and (g is None or torch.allclose(g, r, rtol=1e3 * EPS**0.5, atol=EPS))
    SpectralRegularizer(6, k=2, every=1)(G, z).backward()
    traj = trace_trajectory(G, z[:2], steps=2, k=2, step_size=0.05)
    ref_traj = trace_trajectory(out_of_place, z[:2], steps=2, k=2, step_size=0.05)
    assert torch.allclose(traj.z, ref_traj.z, atol=1e3 * EPS**0.5)
    dirs = global_directions(G, 8, 2, latent_dim=6, batch_size=4, dtype=torch.float64)
    ref_dirs = global_directions(out_of_place, 8, 2, latent_dim=6, batch_size=4, dtype=torch.float64)
    assert torch.allclose(dirs.values, ref_dirs.values, rtol=1e3 * EPS**0.5)
    assert torch.equal(z, z_before)


# ---- per-row arguments in a lambda, and meta row arguments --------------------------------------------------
@pytest.mark.parametrize("B, method", [(4, "auto"), (2, "power"), (2, "auto")])
def test_per_row_arguments_in_a_lambda_say_to_use_conditioned(B, method):
    """Before: G's own "The size of tensor a (2) must match the size of tensor b (4)" from the
    library's 2-row probe (B = 4) or its k-folded batch (B = 2, k = 2), or (B = 2, auto's one-row
    cost measurement, where c broadcasts) "G changed the batch size", with no word on the cause."""
    torch.manual_seed(0)
    G = _Conditional().double()
    c = torch.arange(B) % 3
    with pytest.raises(ValueError, match=r"per-row arguments.*spectral_ops.conditioned\(G, c\)") as e:
        jacobian_topk(lambda x: G(x, c), _z(B, 6), 2, method=method)
    if method == "power" or B == 4:  # G's own error, kept as the cause
        assert isinstance(e.value.__cause__, RuntimeError) and "size" in str(e.value.__cause__)
        assert f"(z has {B})" in str(e.value)
    with pytest.raises(ValueError, match=r"conditioned\(G, c\)"):
        spectral_penalty(lambda x: G(x, c), _z(B, 6), k=2)
    top = jacobian_topk(spectral_ops.conditioned(G, c), _z(B, 6), 2, method="dense")  # the fix it names
    assert torch.isfinite(top.values).all()


def test_conditioned_refuses_meta_arguments_by_name():
    """Before: c on the meta device was blamed on random noise ("G(z) is not a function of z")."""
    G = _Conditional().double()
    with pytest.raises(ValueError, match=r"row argument 0 is on the meta device.*shape \(4,\)"):
        spectral_ops.conditioned(G, torch.zeros(4, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match=r"keyword argument 'c' is on the meta device"):
        spectral_ops.conditioned(G, c=torch.zeros(4, dtype=torch.long, device="meta"))


def test_a_generator_whose_output_is_on_meta_is_refused_by_name():
    """G(z) on the meta device (a module left on 'meta', or a tensor G uses): every entry point says
    so (previous main: "Tensor.item() cannot be called on meta tensors" from inside the probe)."""
    lin = nn.Linear(4, 6, device="meta")
    G = lambda x: lin(x.to("meta"))
    z = torch.randn(3, 4)
    for call in (
        lambda: jacobian_topk(G, z, 2),
        lambda: spectral_penalty(G, z, k=2),
        lambda: trace_trajectory(G, z, steps=2),
        lambda: SpectralRegularizer(4, k=2)(G, z),
        lambda: global_directions(G, 8, 2, latent_dim=4),
    ):
        with pytest.raises(ValueError, match=r"^G\(z\) is on the meta device"):
            call()
