"""Generators as real trainers write them, and bad or extreme input: no silent wrong numbers.

Each test names, in its docstring, what the library did before the fix.  The oracles are the same
generator seen in a form the library handled before (flat latents, eval mode, a module instead
of a lambda) and explicit Jacobians.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from spectral_ops.testing.families import DCGAN4D, StyleLike, explicit_jacobian, families, mlp
import spectral_ops
from spectral_ops import SpectralRegularizer, jacobian_topk, spectral_penalty, trace_trajectory

pytestmark = pytest.mark.usefixtures("one_thread")


def _z(*shape, seed=1, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _buffers(G: nn.Module) -> dict:
    return {name: b.clone() for name, b in G.named_buffers()}


def _same_buffers(before: dict, G: nn.Module) -> bool:
    now = dict(G.named_buffers())
    return before.keys() == now.keys() and all(torch.equal(before[n], now[n]) for n in before)


def _count_probes(monkeypatch) -> list:
    from spectral_ops import probes

    calls = []
    real = probes.check_function_of_z
    monkeypatch.setattr(probes, "check_function_of_z", lambda G, z: (calls.append(1), real(G, z)))
    return calls


# ---- 1. latents of any shape --------------------------------------------------------------------
def test_4d_latents_match_the_flat_generator():
    """Before: z [B, nz, 1, 1] raised "z must be 2-D" in every entry point."""
    torch.manual_seed(0)
    G = DCGAN4D(nz=6).double().eval()
    z = _z(3, 6, 1, 1)
    flat = lambda x: G(x.reshape(-1, 6, 1, 1))  # the form that worked before
    for method in ("power", "dense"):
        top = jacobian_topk(G, z, 3, method=method, iters=200, tol=1e-10)
        ref = jacobian_topk(flat, z.reshape(3, 6), 3, method=method, iters=200, tol=1e-10)
        assert top.vectors.shape == (3, 3, 6)
        assert torch.allclose(top.values, ref.values, rtol=1e-10) and torch.allclose(
            top.vectors, ref.vectors, atol=1e-8
        )
    S = torch.linalg.svdvals(explicit_jacobian(flat, z.reshape(3, 6)))[:, :3]
    assert torch.allclose(top.values, S, rtol=1e-8)
    value = spectral_penalty(G, z, k=2)
    assert torch.allclose(value, spectral_penalty(flat, z.reshape(3, 6), k=2), rtol=1e-12)
    reg = SpectralRegularizer(6, k=2, every=1, batch_fraction=1.0)
    reg(G, z).backward()
    assert reg.last_vectors.shape == (3, 2, 6) and reg.last_latents.shape == (3, 6, 1, 1)
    traj = trace_trajectory(G, z, steps=2, k=2, step_size=0.05)
    assert traj.z.shape == (3, 3, 6) and torch.isfinite(traj.values).all()
    with pytest.raises(ValueError, match="latent_dim=6"):
        SpectralRegularizer(6)(G, _z(3, 7, 1, 1))


def test_4d_latents_with_train_mode_batchnorm_eval_policy():
    """Before: with batchnorm="eval" the library's own 2-row probe crashed inside conv_transpose2d
    (it was fed z [2, 6] flat)."""
    torch.manual_seed(0)
    G = DCGAN4D(nz=6).double().train()
    with torch.no_grad():
        G(_z(16, 6, 1, 1, seed=5))  # running statistics from a training batch
    z = _z(4, 6, 1, 1)
    with pytest.raises(ValueError, match="batchnorm='eval'"):
        jacobian_topk(G, z, 2)
    top = jacobian_topk(G, z, 2, batchnorm="eval", method="dense")
    assert G.training and G.net[1].training
    G.eval()
    assert torch.allclose(top.values, jacobian_topk(G, z, 2, method="dense").values, rtol=1e-12)


# ---- 1. generators with extra arguments -----------------------------------------------------------
class _Conditional(nn.Module):
    """G(z, c): a class embedding added to z."""

    def __init__(self, d=6, classes=3):
        super().__init__()
        self.embed = nn.Embedding(classes, d)
        self.net = mlp(d, m=10)

    def forward(self, z, c):
        """z [N, d]; c: class labels [N], or one int for the whole batch."""
        c = torch.as_tensor(c).expand(z.shape[0]) if not torch.is_tensor(c) or c.dim() == 0 else c
        return self.net(z + self.embed(c))


def test_extra_argument_generators_via_lambda_and_partial_are_probed_once(monkeypatch):
    """Before: a lambda or functools.partial made anew on every call re-ran the JVP-mode probe on
    every call (the cache was keyed by the function object)."""
    torch.manual_seed(0)
    G = _Conditional().double()
    calls = _count_probes(monkeypatch)
    z = _z(3, 6)

    def wrap(net):
        return lambda x: net(x, 2)

    for _ in range(3):  # one class for the whole batch: a lambda (or a partial) is enough
        top = jacobian_topk(wrap(G), z, 2, method="power", iters=100, tol=1e-10)
    assert len(calls) == 1
    for _ in range(3):
        jacobian_topk(functools.partial(G, c=2), z, 2, method="power", iters=1)
    assert len(calls) == 2  # one probe for the partial form
    jacobian_topk(functools.partial(G, c=1), z, 2, method="power", iters=1)
    assert len(calls) == 3  # another constant argument is another generator
    jacobian_topk(wrap(_Conditional().double()), z, 2, method="power", iters=3)
    assert len(calls) == 4  # another module is another generator
    ref = torch.linalg.svdvals(explicit_jacobian(lambda x: G(x, 2), z))[:, :2]
    assert torch.allclose(top.values, ref, rtol=1e-8)


def test_per_row_conditioning_with_conditioned():
    """Before: G(z, c) with one class per row could not be passed at all: a lambda closing over c
    [B] breaks when the library folds z to B*k rows or probes 2 rows (a size-mismatch crash)."""
    torch.manual_seed(0)
    G = _Conditional().double()
    c = torch.tensor([0, 2, 1, 2])
    z = _z(4, 6)
    with pytest.raises(ValueError, match=r"conditioned\(G, c\)") as refused:  # see tests/test_holders.py
        jacobian_topk(lambda x: G(x, c), z, 2)
    assert isinstance(refused.value.__cause__, RuntimeError)
    Gc = spectral_ops.conditioned(G, c)
    for method in ("power", "dense"):
        top = jacobian_topk(Gc, z, 2, method=method, iters=200, tol=1e-10)
        for b in range(4):
            ref = torch.linalg.svdvals(explicit_jacobian(lambda x: G(x, c[b : b + 1].expand(x.shape[0])), z[b : b + 1]))
            assert torch.allclose(top.values[b], ref[0, :2], rtol=1e-8)
    reg = SpectralRegularizer(6, k=2, every=1, batch_fraction=0.5, iters=200, tol=1e-10)
    reg(Gc, z).backward()
    rows = reg._rows(4, 0, z.device)
    assert torch.allclose(
        reg.last_values,
        jacobian_topk(spectral_ops.conditioned(G, c[rows]), z[rows], 2, method="dense").values,
        rtol=1e-6,
    )
    trace_trajectory(Gc, z, steps=1, k=2)
    with pytest.raises(ValueError, match="row argument 0 of the conditioned G has 3 rows, z has 4"):
        jacobian_topk(spectral_ops.conditioned(G, c[:3]), z, 2)
    with pytest.raises(TypeError, match="keyword"):
        spectral_ops.conditioned(G, torch.tensor(1))


# ---- 1. batch coupling the module scan cannot see -------------------------------------------------
def _bn_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 5)).double().train()
    with torch.no_grad():
        net(_z(32, 6, seed=3))
    return net


def test_batchnorm_behind_a_lambda_is_found_and_eval_applies():
    """Before: BatchNorm behind a lambda was not detected: values silently depended on the other
    rows (row 0 alone 4.54, in a batch of 8 3.65), and batchnorm="eval" had no effect."""
    net = _bn_net()
    z = _z(8, 6)
    with pytest.raises(ValueError, match="batchnorm='eval'"):
        jacobian_topk(lambda x: net(x), z, 2)
    alone = jacobian_topk(lambda x: net(x), z[:1], 2, batchnorm="eval", method="dense").values
    batch = jacobian_topk(lambda x: net(x), z, 2, batchnorm="eval", method="dense").values
    assert torch.allclose(alone[0], batch[0], rtol=1e-12)  # a row's values do not depend on its batch
    net.eval()
    assert torch.allclose(batch, jacobian_topk(net, z, 2, method="dense").values, rtol=1e-12)


def test_hidden_batch_coupling_is_detected_empirically():
    """Before: a batch statistic computed inside a function (here the batch mean) silently made
    every row's Jacobian depend on its batch-mates."""
    net = mlp(6, m=5).double()

    def centred(x):
        return net(x - x.mean(0, keepdim=True))

    for call in (
        lambda: jacobian_topk(centred, _z(4, 6), 2),
        lambda: spectral_penalty(centred, _z(4, 6), k=2),
        lambda: trace_trajectory(centred, _z(4, 6), steps=1),
    ):
        with pytest.raises(ValueError, match="couples the rows"):
            call()


# ---- 1. non-deterministic generators ---------------------------------------------------------------
def test_random_noise_inputs_and_dropout_are_refused():
    """Before: with per-layer random noise (a style generator's default) or train-mode Dropout,
    jvp="auto" silently fell back to finite differences and returned garbage (values [119, 61.6,
    0, 0] against [69.9, 46.5, 34.9, 29.2]; the regularizer's gradient had cosine 0.04)."""
    torch.manual_seed(0)
    G = StyleLike().double().eval()
    z = _z(3, 8)
    with pytest.raises(ValueError, match="not a function of z"):
        jacobian_topk(G, z, 2)
    with pytest.raises(ValueError, match="noise_mode='const'"):
        spectral_penalty(G, z, k=2)
    dropout = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.Linear(16, 4)).double().train()
    with pytest.raises(ValueError, match="Dropout"):
        jacobian_topk(dropout, z, 2)
    const = lambda x: G(x, noise_mode="const")  # the documented fix
    top = jacobian_topk(const, z, 2, method="power", iters=300, tol=1e-10)
    assert torch.equal(
        top.values,
        jacobian_topk(
            spectral_ops.conditioned(G, noise_mode="const"), z, 2, method="power", iters=300, tol=1e-10
        ).values,
    )
    S = torch.linalg.svdvals(explicit_jacobian(const, z))[:, :2]
    assert top.jvp == "double_backward" and torch.allclose(top.values, S, rtol=1e-8)


# ---- 1. no side effects on G -------------------------------------------------------------------------
def test_extra_passes_leave_every_buffer_of_G_unchanged():
    """Before: the extra passes changed G's state: a style generator's w_avg moved (4.5% in one
    call) and train-mode BatchNorm statistics were updated by passes hidden behind a function."""
    torch.manual_seed(0)
    G = StyleLike().double().train()
    const = lambda x: G(x, noise_mode="const")
    z = _z(4, 8)
    with torch.no_grad():
        const(_z(16, 8, seed=9))
    before = _buffers(G)
    jacobian_topk(const, z, 2, method="power", iters=3)
    jacobian_topk(const, z, 2, method="dense")
    spectral_penalty(const, z, k=2).backward()
    reg = SpectralRegularizer(8, k=2, every=1)
    reg(const, z).backward()
    trace_trajectory(const, z, steps=2, k=2)
    assert _same_buffers(before, G)
    const(z)  # the user's own training-mode call still updates it
    assert not torch.equal(before["w_avg"], G.w_avg)

    net = _bn_net()
    before = _buffers(net)
    spectral_penalty(functools.partial(net), _z(4, 6), k=2, batchnorm="eval").backward()
    assert _same_buffers(before, net)


# ---- 1. the lazy step -----------------------------------------------------------------------------------
def test_lazy_step_returns_a_zero_that_backward_accepts_and_says_what_comes_next():
    """Before: a skipped call returned a zero with no graph, so a trainer with a separate
    regularization phase (loss_Greg.backward()) crashed, and nothing said whether a call would compute."""
    G = mlp(5, m=6)
    reg = SpectralRegularizer(5, k=2, every=3)
    seen = []
    for _ in range(6):
        seen.append(reg.will_compute)
        loss = reg(G, torch.randn(8, 5))
        loss.backward()  # the separate phase
        assert (loss.grad_fn is not None) == seen[-1]
    assert seen == [True, False, False, True, False, False]


# ---- 2. non-finite outputs and state -------------------------------------------------------------------
def _nan_rows(net, rows):
    def G(x):
        y = net(x)
        mask = torch.zeros(x.shape[0], 1, dtype=torch.bool)
        mask[[r for r in rows if r < x.shape[0]]] = True  # rows of the batch as the caller numbers them
        return torch.where(mask, torch.full_like(y, math.nan), y)

    return G


def test_non_finite_output_rows_are_named():
    """Before: NaN values with converged=True (power), or "linalg.eigh failed to converge" (dense)."""
    net = mlp(6, m=5).double()
    z = _z(4, 6)

    def G(x):  # NaN wherever the first latent is above 1 (rows 1 and 3 of z below)
        y = net(x)
        return torch.where((x[:, :1] > 1), torch.full_like(y, math.nan), y)

    z[:, 0] = torch.tensor([0.0, 2.0, -1.0, 3.0], dtype=z.dtype)
    for method in ("power", "krylov", "dense", "auto"):
        with pytest.raises(ValueError, match=r"non-finite values \(NaN or Inf\) in rows \[1, 3\]"):
            jacobian_topk(G, z, 2, method=method)
    with pytest.raises(ValueError, match=r"rows \[1, 3\]"):
        spectral_penalty(G, z, k=2)


def test_infinite_derivative_is_named():
    """Before: sqrt at 0 (an infinite derivative) gave NaN values with converged=True."""
    z = _z(3, 4)
    z[2] = 0.0
    z[0, 0] = 0.5

    def G(x):
        return torch.sqrt(x.abs() + 0.0) * 2.0

    for method in ("power", "krylov", "dense"):
        with pytest.raises(ValueError, match=r"not finite.*rows \[2\]"):
            jacobian_topk(G, z, 2, method=method, jvp="double_backward")


def test_a_failed_call_leaves_the_regularizer_state_unchanged():
    """Before: one NaN batch made the warm-start basis NaN for good: every later healthy call
    returned 0.0 with NaN gradients, and the NaN basis went into checkpoints."""
    torch.manual_seed(0)
    net = mlp(5, m=6)

    def G(x):
        y = net(x)
        return torch.where(x[:, :1] > 50, torch.full_like(y, math.nan), y)

    reg = SpectralRegularizer(5, k=2, every=1, batch_fraction=1.0)
    reg(G, torch.randn(8, 5)).backward()
    state = {n: t.clone() for n, t in reg.state_dict().items()}
    last = reg.last_vectors
    bad = torch.randn(8, 5)
    bad[3, 0] = 100.0
    with pytest.raises(ValueError, match=r"rows \[3\]"):
        reg(G, bad)
    assert all(torch.equal(state[n], t) for n, t in reg.state_dict().items()) and reg.last_vectors is last
    net.zero_grad()
    value = reg(G, torch.randn(8, 5))
    value.backward()
    assert float(value) > 0 and all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    assert torch.isfinite(reg.basis).all()


@pytest.mark.parametrize("scale", [1e20, 1e-20])
@pytest.mark.parametrize("method", ["power", "krylov", "dense"])
def test_scaled_generators_give_scaled_values(scale, method):
    """Before: jacobian_topk of 1e20 * G in float32 was all NaN with converged=True, and of
    1e-20 * G off by 2x (J^T J overflows / underflows float32)."""
    torch.manual_seed(0)
    G = families(6)["mlp_tanh"].float()
    z = _z(3, 6, dtype=torch.float32)
    ref = jacobian_topk(G, z, 3, method=method, iters=300, tol=1e-5)
    top = jacobian_topk(lambda x: scale * G(x), z, 3, method=method, iters=300, tol=1e-5)
    assert torch.isfinite(top.values).all() and top.converged.all() == ref.converged.all()
    assert torch.allclose(top.values / scale, ref.values, rtol=1e-4)
    assert ((top.vectors * ref.vectors).sum(-1).abs() > 1 - 1e-4).all()


# ---- 2. clear errors -------------------------------------------------------------------------------------
def test_clear_errors_name_the_argument():
    """Before, in order: an IndexError deep in jacobian.py; a message naming the probe's row count;
    a hint that blamed no_grad; seeds of any type were cast or crashed; meta tensors crashed inside
    torch; a dtype mismatch crashed in a matmul."""
    net = mlp(6, m=5).double()
    z = _z(4, 6)
    with pytest.raises(ValueError, match="0-d tensor"):
        jacobian_topk(lambda x: net(x).sum(), z, 2)
    with pytest.raises(ValueError, match=r"z has 4\)"):
        jacobian_topk(lambda x: net(x)[:1], z, 2)
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="inference_mode"):
            jacobian_topk(net, z, 2)
        with pytest.raises(RuntimeError, match="inference_mode"):
            spectral_penalty(net, z, k=2)
    for bad_seed in (1.5, "0", True):
        with pytest.raises(TypeError, match="seed"):
            jacobian_topk(net, z, 2, seed=bad_seed)
        with pytest.raises(TypeError, match="seed"):
            trace_trajectory(net, z, seed=bad_seed)
    with pytest.raises(TypeError, match="seed"):
        SpectralRegularizer(6, seed=None)
    with pytest.raises(ValueError, match="z is on the meta device"):
        jacobian_topk(net, z.to("meta"), 2)
    with pytest.raises(ValueError, match="init is on the meta device"):
        jacobian_topk(net, z, 2, init=torch.empty(2, 6, device="meta", dtype=z.dtype))
    with pytest.raises(TypeError, match=r"z has dtype torch.float32 but G's parameters are torch.float64"):
        jacobian_topk(net, z.float(), 2)
    with pytest.raises(TypeError, match=r"z has dtype torch.float32 but G's parameters are torch.float64"):
        spectral_penalty(lambda x: net(x), z.float(), k=2)


def test_forward_mode_runs_the_primal_once_per_latent_and_handles_buffer_updates():
    """jvp="forward" on a style generator in training mode (w_avg updated in place).  Before:
    torch.func refused the in-place buffer update (so auto skipped the mode and jvp="forward"
    raised), and every product recomputed the primal on all B*k folded rows."""
    torch.manual_seed(0)
    G = StyleLike().double().train()
    rows = []
    G.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    const = spectral_ops.conditioned(G, noise_mode="const")
    z = _z(3, 8)
    before = _buffers(G)
    ref = jacobian_topk(const, z, 3, method="power", iters=200, tol=1e-10, jvp="double_backward")
    rows.clear()
    top = jacobian_topk(const, z, 3, method="power", iters=200, tol=1e-10, jvp="forward")
    assert top.jvp == "forward" and torch.allclose(top.values, ref.values, rtol=1e-9)
    # the folded graph once (9 rows), each product's primal on the B = 3 latents; 1 and 2: probes
    assert rows.count(3 * 3) == 1 and rows.count(3) >= top.iterations and set(rows) <= {1, 2, 3, 9}
    assert _same_buffers(before, G)
    value = spectral_penalty(const, z, k=2, jvp="forward")
    ref_value = spectral_penalty(const, z, k=2, jvp="double_backward")
    grads = torch.autograd.grad(value, list(G.parameters()), allow_unused=True)
    ref_grads = torch.autograd.grad(ref_value, list(G.parameters()), allow_unused=True)
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None) and (g is None or torch.allclose(g, r, rtol=1e-8, atol=1e-12))
