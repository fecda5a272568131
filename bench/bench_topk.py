"""Benchmarks for jacobian_topk.  Run:  pytest bench/bench_topk.py -s  (BENCH_THREADS=1 on a shared machine)

Prints (and writes to bench/results/topk.md) ratios measured in one run:
  1. the cost of one power iteration / one generator forward+backward on the folded batch,
     per JVP mode, and the naive unfolded vmap(jvp/vjp) iteration for reference, on the DCGAN and
     on a StyleGAN2-like generator (modulated convolutions, mapping network; fused and unfused);
  2. method="power" against the best dense baseline, vmap(jacfwd) + SVD, at B=16, d=512,
     64x64 output, k=4, tol=1e-3, with the accuracy reached;
  3. a sweep over d of power, dense and auto (auto / best of the two);
  4. peak memory of power and dense against one forward+backward (torch profiler).
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

import pytest
import torch

from generators import DCGAN, StyleGenerator, gapped_scales
from ratios import RatioTable
from spectral_ops import jacobian_topk, ops
from spectral_ops.jacobian import JacobianOperator

TABLE = RatioTable("topk")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))


@pytest.fixture(scope="module", autouse=True)
def _report():
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    yield
    TABLE.report()


def interleaved(benchmark, cases: dict, rounds: int = ROUNDS) -> dict:
    """Run every case once per round, in turn, so that load drifting on a shared machine hits
    all of them alike; pytest-benchmark times the whole round.  Returns each case's median (s)."""
    times: dict = {name: [] for name in cases}

    def one_round():
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=1, iterations=1)
    return {name: statistics.median(ts[1:]) for name, ts in times.items()}  # ts[0]: the warm-up


# ---------------------------------------------------------------- 1. one iteration vs fwd+bwd
ITER_B, ITER_K, ITER_D = 32, 4, 64
FOLDED = f"B={ITER_B}, k={ITER_K}, d={ITER_D} (folded batch {ITER_B * ITER_K})"
# Style generators run in eval mode: in training mode their forward updates the w_avg buffer in
# place, which torch.func (jvp="forward", naive_vmap) refuses; with truncation_psi=1 both modes
# compute the same G(z).
ITER_GENERATORS = {
    "dcgan": (f"one iteration, DCGAN 32x32, {FOLDED}", lambda: DCGAN(ITER_D, size=32)),
    "style": (f"one iteration, StyleGAN2-like 32x32x3 (mapping 4x128, fused modconv), {FOLDED}",
              lambda: StyleGenerator(ITER_D, size=32).eval()),
    "style_unfused": (f"one iteration, StyleGAN2-like 32x32x3, unfused modconv (same function), {FOLDED}",
                      lambda: StyleGenerator(ITER_D, size=32, fused_modconv=False).eval()),
}


def _iteration_setup(arch="dcgan"):
    torch.manual_seed(0)
    G = ITER_GENERATORS[arch][1]()
    z = torch.randn(ITER_B, ITER_D)
    return G, z


def _fwd_bwd_k(G, z, k, with_params=True):
    """One generator forward+backward on the folded batch (B*k rows), as in a training step."""
    z_rep = z.repeat_interleave(k, 0).requires_grad_(True)
    inputs = [z_rep] + (list(G.parameters()) if with_params else [])

    def step():
        y = G(z_rep)
        torch.autograd.grad(y, inputs, torch.ones_like(y))

    return step


def _one_iteration(G, z, mode):
    op = JacobianOperator(G, z, ITER_K, mode)
    Q = ops.orthonormalize(torch.randn(ITER_B, ITER_K, ITER_D))
    op.matvec(Q)  # builds the double-backward graph once

    def step():
        MQ = op.matvec(Q).detach()
        ops.ritz_step(Q, MQ, None)

    return step


def _naive_iteration(G, z):
    """Not folded: vmap over samples and vectors of per-vector torch.func jvp + vjp."""

    def f(zb):
        return G(zb[None])[0]

    def mv(zb, v):
        _, jv = torch.func.jvp(f, (zb,), (v,))
        _, vjp_fn = torch.func.vjp(f, zb)
        return vjp_fn(jv)[0]

    batched = torch.func.vmap(torch.func.vmap(mv, in_dims=(None, 0)), in_dims=(0, 0))
    Q = ops.orthonormalize(torch.randn(ITER_B, ITER_K, ITER_D))

    def step():
        MQ = batched(z, Q).detach()
        ops.ritz_step(Q, MQ, None)

    return step


@pytest.mark.parametrize("arch", list(ITER_GENERATORS))
def test_iteration_cost(benchmark, arch):
    G, z = _iteration_setup(arch)
    cases = {"fwd+bwd": _fwd_bwd_k(G, z, ITER_K), "fwd+bwd (input grad only)": _fwd_bwd_k(G, z, ITER_K, False)}
    cases.update({mode: _one_iteration(G, z, mode) for mode in ("double_backward", "finite_difference", "forward")})
    cases["naive_vmap"] = _naive_iteration(G, z)
    medians = interleaved(benchmark, cases, rounds=max(ROUNDS, 7))
    for case, median in medians.items():
        TABLE.add(ITER_GENERATORS[arch][0], case, median, baseline=case == "fwd+bwd")
    if arch == "style":
        TABLE.note("StyleGAN2-like G: mapping (pixel norm, 4 x 128 leaky ReLU), learned 4x4 constant, modulated "
                   "3x3 convolutions with demodulation as grouped convolutions (channels 64/64/32/16 at 4/8/16/32), "
                   "upsampling by grouped transposed convolution + blur, constant noise buffers, skip toRGB, tanh; "
                   "eval mode.  Why its ratio is higher and what the library could change: bench/style_profile.py "
                   "(results/style_profile.md)")


# ---------------------------------------------------------------- 2. power vs vmap(jacfwd) + SVD
HEAD = dict(B=16, d=512, size=64, k=4, tol=1e-3)


def _head_setup():
    torch.manual_seed(0)
    G = DCGAN(HEAD["d"], size=HEAD["size"], width=16, latent_scales=gapped_scales(HEAD["d"], ratio=0.5, floor=0.01))
    z = torch.randn(HEAD["B"], HEAD["d"])
    return G, z


def _jacfwd_svd(G, z, k):
    f = lambda x: G(x[None]).reshape(-1)  # noqa: E731
    J = torch.func.vmap(torch.func.jacfwd(f))(z)
    _, S, Vh = torch.linalg.svd(J, full_matrices=False)
    return S[:, :k], Vh[:, :k]


def test_power_vs_dense(benchmark):
    G, z = _head_setup()
    k = HEAD["k"]
    out = {}

    def dense():
        out["dense"] = _jacfwd_svd(G, z, k)

    def power():
        out["power"] = jacobian_topk(G, z, k, tol=HEAD["tol"], method="power")

    medians = interleaved(benchmark, {"jacfwd+svd": dense, "power": power}, rounds=3)
    (S, Vh), top = out["dense"], out["power"]
    group = "B=16, d=512, 64x64 output, k=4, tol=1e-3 (gapped G)"
    TABLE.add(group, "jacfwd+svd", medians["jacfwd+svd"], baseline=True)
    TABLE.add(group, "power", medians["power"], iterations=top.iterations,
              min_abs_cos=f"{float((top.vectors * Vh).sum(-1).abs().min()):.5f}",
              max_rel_value_err=f"{float(((top.values - S) / S).abs().max()):.1e}")


# ---------------------------------------------------------------- 3. sweep over d: auto vs the better
SWEEP_B, SWEEP_K = 16, 4


@pytest.mark.parametrize("d", [16, 64, 128, 512])
def test_sweep_d(benchmark, d):
    torch.manual_seed(0)
    G = DCGAN(d, size=32, width=16)
    z = torch.randn(SWEEP_B, d)
    ran = {}

    def case(method):
        def fn():
            ran[method] = jacobian_topk(G, z, SWEEP_K, iters=20, tol=1e-3, method=method).method
        return fn

    medians = interleaved(benchmark, {m: case(m) for m in ("power", "dense", "auto")}, rounds=3)
    group = f"sweep d={d} (B=16, 32x32, k=4, iters<=20, tol=1e-3)"
    best = min(medians["power"], medians["dense"])
    for method, median in medians.items():
        extra = dict(ran=ran[method])
        if method == "auto":
            extra["auto_over_best"] = f"{median / best:.2f}x"
        TABLE.add(group, method, median, baseline=method == "power", **extra)


# ---------------------------------------------------------------- 4. peak memory
def peak_allocated_mb(fn) -> float:
    """Peak bytes allocated by torch while fn runs, above what was allocated before (profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = [e["args"] for e in json.load(f)["traceEvents"] if e.get("name") == "[memory]"]
    if not events:
        return 0.0
    before = events[0]["Total Allocated"] - events[0]["Bytes"]
    return (max(e["Total Allocated"] for e in events) - before) / 2 ** 20


def test_peak_memory():
    torch.manual_seed(0)
    B, k, d = 32, 4, 64
    G = DCGAN(d, size=64, width=32)
    z = torch.randn(B, d)
    peaks = {
        "fwd+bwd": peak_allocated_mb(_fwd_bwd_k(G, z, k)),
        "power": peak_allocated_mb(lambda: jacobian_topk(G, z, k, iters=5, tol=0.0, method="power",
                                                         jvp="double_backward")),
        "dense": peak_allocated_mb(lambda: jacobian_topk(G, z, k, method="dense", jvp="forward", chunk_size=8)),
    }
    TABLE.note("peak memory allocated by torch (profiler), DCGAN 64x64, B=32, k=4, d=64: "
               + ", ".join(f"{c} {v:.0f} MB" for c, v in peaks.items())
               + f"; power / fwd+bwd = {peaks['power'] / peaks['fwd+bwd']:.2f}x, "
               f"dense (chunk_size=8) / fwd+bwd = {peaks['dense'] / peaks['fwd+bwd']:.2f}x")
