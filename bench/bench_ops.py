"""Fused ops against their eager-torch composites (reference.py), with pytest-benchmark.

    pytest bench/bench_ops.py                 # CPU: cpp (AVX2 + FMA where the CPU has it),
                                              # cpp-baseline (the portable copy) vs reference
    pytest bench/bench_ops.py --device cuda   # GPU: cuda and triton vs eager CUDA torch

BENCH_THREADS=n sets torch's CPU threads (default 1: on a shared machine, idle-waiting OpenMP
threads make multi-threaded timings of millisecond calls erratic, for every backend).

Per op: forward, and forward + backward, at (B, k, d) in SHAPES.  End to end: `jacobian_topk`
(power method) and a `spectral_penalty` forward + backward on a small DCGAN generator, each under
every backend (`ops.use_backend`), so the table shows whether the fused ops pay off in a whole
call, generator passes included.

Ratios (speedup vs reference, and triton/cuda on GPUs) are printed at the end of the run by
bench/conftest.py (the session RatioTable of bench/ratios.py).  Benchmarks report figures; they assert
nothing about speed.
"""

from __future__ import annotations

import os

import pytest
import torch

from generators import DCGAN
from spectral_ops import ops
from spectral_ops.ops import reference
from spectral_ops.topk import jacobian_topk
from spectral_ops.regularizer import spectral_penalty

SHAPES = [(32, 4, 32), (256, 8, 128), (1024, 16, 512)]


def _device(config) -> str:
    return config.getoption("--device", default="cpu") or "cpu"


def _contenders(device: str) -> list[str]:
    wanted = ["cuda", "triton"] if device == "cuda" else ["cpp"]
    names = [name for name in wanted if name in ops.available_backends(device)]
    if "cpp" in names and len(ops.cpu_isas()) > 1:
        names.append("cpp-baseline")  # the same kernels without AVX2 + FMA
    return names + ["reference"]


def _backend(name: str):
    """ops.use_backend(name); "cpp-baseline" is the cpp backend on its baseline instruction set."""
    return ops.use_backend("cpp", cpu_isa="baseline") if name == "cpp-baseline" else ops.use_backend(name)


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", _contenders(_device(metafunc.config)))


@pytest.fixture(scope="module", autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def device(request):
    return _device(request.config)


def _inputs(shape, device):
    g = torch.Generator().manual_seed(0)
    B, k, d = shape
    W = torch.randn(B, k, d, generator=g)
    Q = reference.orthonormalize(W)
    MQ = Q * torch.linspace(2.0, 1.0, k)[None, :, None] + 0.1 * torch.randn(B, k, d, generator=g)
    S = torch.rand(B, k, generator=g)
    return [t.to(device) for t in (W, Q, MQ, S)]


def _run(benchmark, ratio_report, group, backend, fn, device):
    def timed():
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    with _backend(backend):
        timed()  # warm-up (compiles Triton kernels)
        benchmark(timed)
    ratio_report.add(group, backend, benchmark, baseline=backend == "reference")
    ratio_report.compare("triton", "cuda")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_orthonormalize(benchmark, ratio_report, backend, shape, device):
    W, *_ = _inputs(shape, device)
    benchmark.group = f"orthonormalize {shape}"
    _run(benchmark, ratio_report, benchmark.group, backend, lambda: ops.orthonormalize(W), device)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_orthonormalize_forward_backward(benchmark, ratio_report, backend, shape, device):
    W, *_ = _inputs(shape, device)
    W.requires_grad_()
    grad = torch.ones_like(W)
    benchmark.group = f"orthonormalize+backward {shape}"
    _run(
        benchmark,
        ratio_report,
        benchmark.group,
        backend,
        lambda: torch.autograd.grad(ops.orthonormalize(W), W, grad),
        device,
    )


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_ritz_step(benchmark, ratio_report, backend, shape, device):
    W, Q, MQ, _ = _inputs(shape, device)
    benchmark.group = f"ritz_step {shape}"
    _run(benchmark, ratio_report, benchmark.group, backend, lambda: ops.ritz_step(Q, MQ, W), device)


@pytest.mark.parametrize("kind", ["l1", "offdiag"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_alignment_loss_forward_backward(benchmark, ratio_report, backend, shape, kind, device):
    _, Q, _, S = _inputs(shape, device)
    V = Q.clone().requires_grad_()
    S = S.clone().requires_grad_()
    benchmark.group = f"alignment_loss[{kind}]+backward {shape}"

    def step():
        return torch.autograd.grad(ops.alignment_loss(V, S, kind, "singular").sum(), (V, S))

    _run(benchmark, ratio_report, benchmark.group, backend, step, device)


# End to end: a DCGAN generator (latent 16, 16x16x1, width 16), B latents, k vectors.
E2E_LATENT, E2E_B, E2E_K = 16, 16, 4


def _generator(device):
    torch.manual_seed(0)
    G = DCGAN(latent_dim=E2E_LATENT, size=16, width=16).to(device)
    z = torch.randn(E2E_B, E2E_LATENT, generator=torch.Generator().manual_seed(1)).to(device)
    return G, z


def test_jacobian_topk(benchmark, ratio_report, backend, device):
    G, z = _generator(device)
    benchmark.group = f"jacobian_topk DCGAN16 (B={E2E_B},k={E2E_K},d={E2E_LATENT}), 10 iters"
    # tol=0: always 10 power steps, so both backends do the same work.
    _run(
        benchmark,
        ratio_report,
        benchmark.group,
        backend,
        lambda: jacobian_topk(G, z, E2E_K, iters=10, tol=0.0, method="power", jvp="double_backward"),
        device,
    )


@pytest.mark.parametrize("loss", ["l1", "offdiag"])
def test_spectral_penalty_step(benchmark, ratio_report, backend, loss, device):
    G, z = _generator(device)
    params = [p for p in G.parameters() if p.requires_grad]
    benchmark.group = f"spectral_penalty[{loss}]+backward DCGAN16 (B={E2E_B},k={E2E_K},d={E2E_LATENT})"

    def step():
        value = spectral_penalty(G, z, k=E2E_K, iters=2, loss=loss, jvp="double_backward")
        return torch.autograd.grad(value, params)

    _run(benchmark, ratio_report, benchmark.group, backend, step, device)
