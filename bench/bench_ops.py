"""Fused ops against their eager-torch composites (reference.py), with pytest-benchmark.

    pytest bench/bench_ops.py                 # CPU: cpp vs reference
    pytest bench/bench_ops.py --device cuda   # GPU: cuda and triton vs eager CUDA torch

Ratios (speedup vs reference, and triton/cuda on GPUs) are printed at the end of the run by
bench/conftest.py.  Benchmarks report figures; they assert nothing about speed.
"""
from __future__ import annotations

import pytest
import torch

from spectral_ops import ops
from spectral_ops.ops import reference

SHAPES = [(32, 4, 32), (256, 8, 128), (1024, 16, 512)]


def _device(config) -> str:
    return config.getoption("--device", default="cpu") or "cpu"


def _contenders(device: str) -> list[str]:
    wanted = ["cuda", "triton"] if device == "cuda" else ["cpp"]
    return [name for name in wanted if name in ops.available_backends(device)] + ["reference"]


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", _contenders(_device(metafunc.config)))


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

    with ops.use_backend(backend):
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
    _run(benchmark, ratio_report, benchmark.group, backend,
         lambda: torch.autograd.grad(ops.orthonormalize(W), W, grad), device)


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
