"""Every public entry point on every device: the result against the same oracle as its CPU tests,
and every output on the input's device.

Each test takes `device` ("cpu", and "cuda" where a GPU is present).  The oracles are computed on
the CPU in float64: the explicit Jacobian's SVD (torch.func.jacrev + torch.linalg.svd) for the
top-k solvers, autograd through torch.linalg.eigh of the explicit J^T J for the regularizer's
implicit gradient and the closed form of grad="fast" (tests/test_regularizer.py), the dense mean
metric for the global directions; where the exact answer is a random estimate (the peer
regularizers, Hutchinson traces) the oracle is the same call on the CPU in float64, with the same
CPU-seeded draws.  The generators are tiny, so the CPU half runs in seconds.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import spectral_ops
from spectral_ops.testing.families import families, latent_scales, ScaledInput, dcgan, mlp, oracle_svd
from spectral_ops import (
    SpectralRegularizer,
    conditioned,
    global_directions,
    jacobian_topk,
    spectral_penalty,
    trace_trajectory,
)
from spectral_ops.baselines import PathLengthRegularizer, hessian_penalty, jacobian_l1, orojar, path_length
from test_directions import _oracle as mean_metric_oracle
from test_regularizer import CONVERGED, GENERATORS, _grads, fast_formula, make_mlp, oracle, rel

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU"))]
D, B, K = 8, 3, 3
LOSSES = ("l1", "assigned", "offdiag")


def _z(B=B, d=D, seed=1, dtype=torch.float64) -> torch.Tensor:
    """[B, d] latents drawn on the CPU (the same numbers for every device)."""
    return torch.randn(B, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _to(device: str, G: nn.Module) -> nn.Module:
    """A copy of G on `device` (G itself stays where it is, for the CPU oracle)."""
    return copy.deepcopy(G).to(device)


def _on(device: str, *tensors) -> None:
    for t in tensors:
        assert isinstance(t, torch.Tensor) and t.device.type == device, (device, None if t is None else t.device)


# ---- jacobian_topk ----------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", ["mlp_tanh", "dcgan_convtranspose"])
@pytest.mark.parametrize("method", ["power", "krylov", "dense", "auto"])
def test_jacobian_topk_methods(device, family, method):
    G, z = families(D)[family], _z()
    S, Vh = oracle_svd(G, z)
    top = jacobian_topk(_to(device, G), z.to(device), K, iters=400, tol=1e-9, method=method)
    _on(device, top.vectors, top.values, top.residuals, top.converged)
    assert top.method == method if method != "auto" else top.method in ("dense", "krylov")
    assert bool(top.converged.all())
    cos = (top.vectors.cpu() * Vh[:, :K]).sum(-1).abs()
    assert cos.min() >= 1 - 1e-8, cos
    assert torch.allclose(top.values.cpu(), S[:, :K], rtol=1e-7, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("jvp", ["double_backward", "forward", "finite_difference"])
def test_jacobian_topk_jvp_modes(device, jvp):
    G, z = families(D)["dcgan_convtranspose"], _z()
    S, Vh = oracle_svd(G, z)
    top = jacobian_topk(_to(device, G), z.to(device), K, iters=400, tol=1e-9, jvp=jvp, method="power")
    _on(device, top.vectors, top.values)
    assert top.jvp == jvp
    bound = 1e-8 if jvp == "finite_difference" else 1e-10  # test_topk.py measures 4.8e-12 and 2.2e-13
    assert torch.allclose(top.values.cpu(), S[:, :K], rtol=bound, atol=0)
    assert (1 - (top.vectors.cpu() * Vh[:, :K]).sum(-1).abs()).max() < 1e-9


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["krylov", "power"])
def test_jacobian_topk_float32_with_4d_latents(device, method):
    """float32 (where a GPU's convolutions may use TF32: about 1e-3 relative), latents [B, d, 1, 1]."""
    torch.manual_seed(0)
    G = ScaledInput(dcgan(D), latent_scales(D, dtype=torch.float32))
    G4 = nn.Sequential(nn.Flatten(), G)
    z = _z(dtype=torch.float32)
    S, Vh = oracle_svd(copy.deepcopy(G).double(), z.double())
    top = jacobian_topk(_to(device, G4), z.to(device)[:, :, None, None], K, iters=200, tol=1e-4, method=method)
    _on(device, top.vectors, top.values, top.residuals)
    assert top.vectors.dtype == torch.float32 and top.vectors.shape == (B, K, D)
    assert torch.allclose(top.values.cpu().double(), S[:, :K], rtol=1e-2)
    assert (top.vectors.cpu().double() * Vh[:, :K]).sum(-1).abs().min() >= 0.99


# ---- spectral_penalty ----------------------------------------------------------------------------------
def _penalty_against_oracle(device, gen, loss, grad, **options):
    make, d = GENERATORS[gen]
    G = make()
    z = _z(3, d)
    Gd = _to(device, G)
    value = spectral_penalty(
        Gd, z.to(device), k=2, loss=loss, grad=grad, **{"jvp": "double_backward", **CONVERGED, **options}
    )
    _on(device, value)
    value_ref, g_ref = oracle(G, z, 2, loss, "uniform")
    assert abs(float(value.detach()) - float(value_ref.detach())) <= 1e-9
    expected = g_ref if grad == "implicit" else fast_formula(G, z, 2, loss, "uniform")
    grads = _grads(value, Gd)
    _on(device, grads)
    assert float(expected.norm()) > 1e-3  # a gradient worth comparing
    assert rel(grads.cpu(), expected) <= (1e-4 if grad == "implicit" else 1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gen", list(GENERATORS))
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("grad", ["fast", "implicit"])
def test_spectral_penalty_against_the_eigh_oracle(device, gen, loss, grad):
    _penalty_against_oracle(device, gen, loss, grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("jvp", ["forward", "finite_difference"])
def test_spectral_penalty_other_jvp_modes(device, jvp):
    _penalty_against_oracle(device, "conv", "l1", "implicit", jvp=jvp)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("solver", getattr(spectral_ops.config, "SOLVERS", ()))
def test_spectral_penalty_every_solver(device, solver):
    """Each inner solver of the regularizer (where the configuration offers a choice)."""
    _penalty_against_oracle(device, "conv", "offdiag", "implicit", solver=solver)


# ---- SpectralRegularizer -------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_regularizer_lazy_warm_subset_against_its_cpu_twin_and_the_oracle(device):
    """every=2 (computed, skipped, ...), batch_fraction=0.5, warm start: four calls on the device
    and on the CPU agree (values, gradients, the running basis); the first computed call agrees
    with the oracle on the rows it regularized (`last_latents`)."""
    G = make_mlp()
    options = dict(k=2, every=2, batch_fraction=0.5, warm_start=True, momentum=0.5, **CONVERGED)
    reg_cpu, reg = SpectralRegularizer(5, **options), SpectralRegularizer(5, **options).to(device)
    Gd = _to(device, G)
    for call in range(4):
        z = _z(8, 5, seed=10 + call)
        value_cpu, value = reg_cpu(G, z), reg(Gd, z.to(device))
        _on(device, value, reg.basis, reg.step)
        if call % 2:
            assert float(value.detach()) == 0.0 and value.grad_fn is None
            value.backward()  # a zero leaf that backward() accepts
            continue
        _on(device, reg.last_latents, reg.last_vectors, reg.last_values, reg.last_residuals)
        assert reg.last_latents.shape == (4, 5)
        assert torch.equal(reg.last_latents.cpu(), reg_cpu.last_latents)  # the same rows (a CPU-seeded draw)
        assert abs(float(value.detach()) - float(value_cpu.detach())) <= 1e-9 * max(1.0, abs(float(value_cpu.detach())))
        grads, grads_cpu = _grads(value, Gd), _grads(value_cpu, G)
        assert rel(grads.cpu(), grads_cpu) <= 1e-6
        if call == 0:  # started from the fixed basis: the oracle of the regularized rows, scaled by every
            value_ref, _ = oracle(G, reg_cpu.last_latents, 2, "offdiag", "uniform")
            assert abs(float(value.detach()) - 2 * float(value_ref.detach())) <= 1e-8
            assert rel(grads.cpu(), 2 * fast_formula(G, reg_cpu.last_latents, 2, "offdiag", "uniform")) <= 1e-6
    assert int(reg.step) == 4
    assert torch.allclose(reg.basis.cpu(), reg_cpu.basis, atol=1e-5)
    assert torch.allclose(reg.basis @ reg.basis.T, torch.eye(2, device=device), atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grad", ["fast", "implicit"])
def test_autocast(device, dtype, grad):
    if device == "cpu" and dtype == torch.float16:
        pytest.skip("autocast on the CPU supports bfloat16 only")
    G = _to(device, make_mlp().float())
    z = _z(8, 5, seed=3, dtype=torch.float32).to(device)
    ref = spectral_penalty(G, z, k=2, grad=grad, jvp="double_backward", iters=8)
    reg = SpectralRegularizer(5, k=2, grad=grad, every=1, batch_fraction=1.0, iters=8).to(device)
    with torch.autocast(device, dtype=dtype):
        value = spectral_penalty(G, z, k=2, grad=grad, jvp="double_backward", iters=8)
        module_value = reg(G, z)
    for v in (value, module_value):
        _on(device, v)
        assert v.dtype == torch.float32 and torch.isfinite(v)
        assert abs(float(v.detach()) - float(ref.detach())) <= 0.05 * float(ref.detach()) + 1e-3
    (value + module_value).backward()
    grads = [p.grad for p in G.parameters() if p.grad is not None]
    assert len(grads) == 3 and all(torch.isfinite(g).all() for g in grads)  # the last bias has no say in J
    _on(device, *grads)


# ---- trace_trajectory ----------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("topk_method", ["power", "krylov", "dense"])
def test_trace_trajectory(device, topk_method):
    """Both ways, on the sphere, rk4: the same path as on the CPU, and at the last point the
    tracked vectors are the explicit Jacobian's singular vectors."""
    G, z0 = families(D)["mlp_tanh"], _z(2)
    options = dict(
        steps=3,
        step_size=0.05,
        method="rk4",
        both_ways=True,
        project="sphere",
        iters=400,
        tol=1e-10,
        topk_method=topk_method,
    )
    ref = trace_trajectory(G, z0, 0, **options)
    tr = trace_trajectory(_to(device, G), z0.to(device), 0, **options)
    _on(device, tr.z, tr.values, tr.vectors, tr.residuals, tr.tracked, tr.tangent, tr.tracked_values)
    assert tr.z.shape == (7, 2, D) and tr.origin == 3
    assert torch.equal(tr.tracked.cpu(), ref.tracked)
    assert torch.allclose(tr.z.cpu(), ref.z, atol=1e-8)
    assert torch.allclose(tr.values.cpu(), ref.values, rtol=1e-7)
    S, Vh = oracle_svd(G, tr.z[-1].cpu())
    k = tr.vectors.shape[2]
    assert (tr.vectors[-1].cpu() * Vh[:, :k]).sum(-1).abs().min() >= 1 - 1e-7
    assert torch.allclose(tr.values[-1].cpu(), S[:, :k], rtol=1e-7)


# ---- global_directions ---------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_global_directions_against_the_mean_metric(device):
    G = families(12)["dcgan_convtranspose"]
    z = _z(40, 12, seed=0)
    lam, U, M = mean_metric_oracle(G, z)
    out = global_directions(
        _to(device, G), None, 3, latents=z.to(device), batch_size=16, iters=200, tol=1e-9, trace_probes=None
    )
    _on(device, out.directions, out.values, out.explained, out.residuals, out.converged)
    assert bool(out.converged.all())
    assert (out.directions.cpu() * U[:3]).sum(-1).abs().min() >= 1 - 1e-9
    assert torch.allclose(out.values.cpu(), lam[:3], rtol=1e-8)
    assert abs(out.trace / float(M.trace()) - 1) < 1e-10


@pytest.mark.parametrize("device", DEVICES)
def test_global_directions_sampled_on_the_device(device):
    """latent_dim + device=: the latents, the start and the probes come from CPU generators, so the
    estimate (Hutchinson trace, stability angle) is the CPU run's."""
    G = families(12)["mlp_tanh"]
    options = dict(
        latent_dim=12, dtype=torch.float64, iters=100, tol=1e-9, trace_probes=4, stability=True, batch_size=16
    )
    ref = global_directions(G, 48, 2, **options)
    out = global_directions(_to(device, G), 48, 2, device=device, **options)
    _on(device, out.directions, out.values, out.explained)
    assert (out.directions.cpu() * ref.directions).sum(-1).abs().min() >= 1 - 1e-9
    assert torch.allclose(out.values.cpu(), ref.values, rtol=1e-8)
    assert abs(out.trace / ref.trace - 1) < 1e-10
    assert abs(out.stability_deg - ref.stability_deg) < 1e-3


# ---- the peers -------------------------------------------------------------------------------------------
def _mixing():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 6)).double()


def _seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["hessian_penalty", "orojar", "jacobian_l1", "path_length"])
def test_peer_penalties_against_their_cpu_twin(device, name):
    fn = {
        "hessian_penalty": lambda G, z, g: hessian_penalty(G, z, k=4, generator=g),
        "orojar": lambda G, z, g: orojar(G, z, k=4, generator=g),
        "jacobian_l1": lambda G, z, g: jacobian_l1(G, z),  # no draws
        "path_length": lambda G, z, g: path_length(G, z, generator=g),
    }[name]
    G, z = _mixing(), _z(5, 4)
    Gd = _to(device, G)
    ref, value = fn(G, z, _seeded(2)), fn(Gd, z.to(device), _seeded(2))
    _on(device, value)
    assert float(ref.detach()) > 1e-6 and abs(float(value.detach()) / float(ref.detach()) - 1) < 1e-9
    grads = _grads(value, Gd)
    _on(device, grads)
    assert rel(grads.cpu(), _grads(ref, G)) < 1e-8


@pytest.mark.parametrize("device", DEVICES)
def test_path_length_regularizer_module(device):
    G, Gd = _mixing(), _to(device, _mixing())
    pl_cpu, pl = PathLengthRegularizer(decay=0.5, every=2), PathLengthRegularizer(decay=0.5, every=2).to(device)
    for call in range(3):
        z = _z(8, 4, seed=call)
        torch.manual_seed(100 + call)  # the noise draws (CPU, then moved) are the same for both
        ref = pl_cpu(G, z)
        torch.manual_seed(100 + call)
        value = pl(Gd, z.to(device))
        _on(device, value, pl.mean, pl.step)
        assert abs(float(value.detach()) - float(ref.detach())) <= 1e-9 * max(1.0, abs(float(ref.detach())))
        if call == 1:
            assert value.grad_fn is None and float(value.detach()) == 0.0
    assert abs(float(pl.mean) - float(pl_cpu.mean)) < 1e-6 and int(pl.step) == 3


# ---- spectral_ops.conditioned ----------------------------------------------------------------------------
class ClassConditional(nn.Module):
    """G(z, c) = mlp(z + embedding(c)): [N, 5], [N] -> [N, 12]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.net = nn.Embedding(3, 5), mlp(5, 12, 16)

    def forward(self, z, c):
        return self.net(z + self.embed(c))


def _conditional_oracle(G, z, c):
    J = torch.func.vmap(torch.func.jacrev(lambda x, ci: G(x[None], ci[None]).reshape(-1)))(z, c)
    _, S, Vh = torch.linalg.svd(J, full_matrices=False)
    return S, Vh


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["krylov", "dense"])
def test_conditioned_topk(device, method):
    G = ClassConditional().double()
    z, c = _z(4, 5), torch.tensor([0, 1, 2, 1])
    S, Vh = _conditional_oracle(G, z, c)
    top = jacobian_topk(conditioned(_to(device, G), c.to(device)), z.to(device), 2, iters=200, tol=1e-10, method=method)
    _on(device, top.vectors, top.values)
    assert (top.vectors.cpu() * Vh[:, :2]).sum(-1).abs().min() >= 1 - 1e-8
    assert torch.allclose(top.values.cpu(), S[:, :2], rtol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_conditioned_regularizer_on_a_subset(device):
    """batch_fraction selects rows of z and of the labels, on the device."""
    G = ClassConditional().double()
    z, c = _z(8, 5), torch.tensor([0, 1, 2, 1, 0, 2, 2, 1])
    options = dict(k=2, every=1, batch_fraction=0.5, grad="implicit", **CONVERGED)
    ref = SpectralRegularizer(5, **options)(conditioned(G, c), z)
    Gd = _to(device, G)
    reg = SpectralRegularizer(5, **options).to(device)
    value = reg(conditioned(Gd, c.to(device)), z.to(device))
    _on(device, value, reg.last_latents, reg.last_vectors)
    assert abs(float(value.detach()) - float(ref.detach())) <= 1e-9
    assert rel(_grads(value, Gd).cpu(), _grads(ref, G)) <= 1e-6


# ---- the command line --------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_cli_topk_on_the_device(device, capsys):
    from spectral_ops.lab.cli import main

    assert main(["topk", "--batch", "2", "--latent-dim", "4", "--iters", "20", "--size", "16", "--device", device]) == 0
    out = capsys.readouterr().out
    assert f"on {device}" in out and "converged 8/8" in out, out


@pytest.mark.parametrize("device", DEVICES)
def test_cli_directions_on_the_device(device, tmp_path, capsys):
    from spectral_ops.lab.cli import main

    out = tmp_path / "dirs"
    assert (
        main(
            [
                "directions",
                "--generator",
                "spectral_ops.lab.models:Generator",
                "--out",
                str(out),
                "--samples",
                "16",
                "--batch-size",
                "8",
                "--k",
                "2",
                "--columns",
                "3",
                "--iters",
                "10",
                "--device",
                device,
            ]
        )
        == 0
    )
    saved = torch.load(out / "directions.pt")
    V = saved["directions"]
    assert V.device.type == "cpu" and V.shape == (2, 10)  # written for any machine to read
    assert torch.allclose(V @ V.T, torch.eye(2), atol=1e-5)
    assert json.loads((out / "directions.json").read_text())["settings"]["device"] == device
    assert (out / "directions.png").stat().st_size > 0 and "directions explain" in capsys.readouterr().out


@pytest.mark.parametrize(
    "command",
    [["topk", "--batch", "2", "--latent-dim", "4"], ["directions", "--generator", "spectral_ops.lab.models:Generator"]],
)
def test_cli_device_cuda_without_a_gpu_exits_2(command, monkeypatch, tmp_path, capsys):
    from spectral_ops.lab.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    extra = ["--out", str(tmp_path / "x")] if command[0] == "directions" else []
    assert main([*command, *extra, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda" in err[0], err
