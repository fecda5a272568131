"""spectral_ops on a GPU: ratios measured in one run, with the peak memory of every row.

    BENCH_DEVICE=cuda pytest bench/bench_gpu.py -s            # on a GPU (bench/gpu_check.sh runs it)
    BENCH_DEVICE=cpu BENCH_TINY=1 pytest bench/bench_gpu.py -s # a dry run with tiny sizes

BENCH_ROUNDS=n rounds per case (default 3); every round runs each case of a group once, in turn,
and the timer stops after a torch.cuda.synchronize().  Peak memory: torch.cuda.max_memory_allocated
over the case, less what was allocated before it (MB; "-" on the CPU).  Written to
bench/results/gpu.md and gpu.json (gpu_tiny_cpu.* for the dry run) after every test, so a run
cut short keeps what it measured.

  a. one power iteration and one krylov step (each the mean over a solve with tol=0: the call's
     time / its generator passes) against one forward+backward of the folded batch (B*k rows),
     for the DCGAN at 64x64 and the StyleGAN2-like generator at 64x64 and 256x256;
  b. a generator step (G + D, non-saturating loss, Adam) with the default SpectralRegularizer
     against the plain step, latent 10, 64 and 128 (target: <= 1.2x);
  c. SpectralRegularizer's computed call (value + backward, and value only) and its skipped call,
     against one generator forward+backward on the batch;
  d. krylov against per-sample ARPACK (bench_topk.py's, SciPy eigsh on the same products) to
     tol=1e-4 at B=16/64, d=128/512 (bench_topk.py section 5 has B=16, d=128), gapped DCGAN
     32x32: ARPACK timed on its first samples and scaled to B (each sample is its own solve).
"""

from __future__ import annotations

import copy
import os
import statistics
import time

import pytest
import torch
from torch import nn

from generators import DCGAN, StyledLayer, StyleGenerator, ToRGB, gapped_scales
from ratios import RatioTable
from spectral_ops import SpectralRegularizer, jacobian_topk
from spectral_ops.lab.models import Discriminator, Generator

DEVICE = torch.device(os.environ.get("BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))
TINY = os.environ.get("BENCH_TINY") == "1"
CUDA = DEVICE.type == "cuda"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
TABLE = RatioTable(
    os.environ.get("BENCH_GPU_TABLE")  # gpu_check.sh writes its two parts apart
    or ("gpu" if CUDA and not TINY else f"gpu_{'tiny_' if TINY else ''}{DEVICE.type}")
)
if CUDA and not torch.cuda.is_available():
    raise RuntimeError("BENCH_DEVICE=cuda but torch.cuda.is_available() is False")


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


@pytest.fixture(scope="module", autouse=True)
def _setup():
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    if CUDA:
        TABLE.note(
            f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
            f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, cudnn TF32 {torch.backends.cudnn.allow_tf32}"
        )
    yield
    TABLE.report()


def measure(benchmark, cases: dict, rounds: int = ROUNDS) -> dict:
    """Each case once per round, in turn; {name: (median seconds, peak MB or None)}."""
    times: dict = {name: [] for name in cases}
    peaks: dict = {name: None for name in cases}

    def one_round():
        for name, fn in cases.items():
            _sync()
            if CUDA:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            fn()
            _sync()
            times[name].append(time.perf_counter() - t0)
            if CUDA:
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20
                peaks[name] = max(peaks[name] or 0.0, peak)

    benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=1, iterations=1)
    return {name: (statistics.median(ts[1:] or ts), peaks[name]) for name, ts in times.items()}


def _add(group: str, results: dict, baseline: str, **extra) -> None:
    for case, (median, peak) in results.items():
        TABLE.add(
            group,
            case,
            median,
            baseline=case == baseline,
            peak_mb="-" if peak is None else f"{peak:.0f}",
            **extra.get(case, {}),
        )
    TABLE.report()  # after every test: a run cut short keeps its rows


def _latents(B: int, d: int, seed: int = 0) -> torch.Tensor:
    """[B, d] drawn on the CPU (the same numbers on every device), then moved."""
    return torch.randn(B, d, generator=torch.Generator().manual_seed(seed)).to(DEVICE)


# ---------------------------------------------------------------- a. power iteration, krylov step vs fwd+bwd
class LargeStyleGenerator(StyleGenerator):
    """StyleGenerator grown past 64x64 by its own per-resolution blocks (an upsampling and a plain
    modulated convolution, a toRGB), 8 feature channels at 128 and 256."""

    def __init__(self, latent_dim: int, size: int, **options):
        super().__init__(latent_dim, size=min(size, 64), **options)
        res, ch = 128, 8
        while res <= size:
            self.layers.append(StyledLayer(ch, ch, self.w_dim, res, up=True))
            self.layers.append(StyledLayer(ch, ch, self.w_dim, res))
            self.to_rgbs.append(ToRGB(ch, self.channels, self.w_dim))
            res *= 2
        self.size = size


ITER = dict(B=4, k=2, d=8) if TINY else dict(B=16, k=4, d=64)
ITER_GENERATORS = {  # name: (label, builder); style generators in eval mode (w_avg is not updated)
    "dcgan64": ("DCGAN 64x64x1", lambda d: DCGAN(d, size=16 if TINY else 64)),
    "style64": ("StyleGAN2-like 64x64x3", lambda d: StyleGenerator(d, size=8 if TINY else 64).eval()),
    "style256": ("StyleGAN2-like 256x256x3", lambda d: LargeStyleGenerator(d, size=16 if TINY else 256).eval()),
}
SOLVE_ITERS = 2 if TINY else 8  # power iterations per timed call; krylov: the same budget, SOLVE_ITERS*k products


def _fwd_bwd(G: nn.Module, z: torch.Tensor, k: int):
    """One generator forward+backward on the folded batch (B*k rows), as in a training step."""
    z_rep = z.repeat_interleave(k, 0).requires_grad_(True)
    inputs = [z_rep, *G.parameters()]

    def step():
        y = G(z_rep)
        torch.autograd.grad(y, inputs, torch.ones_like(y))

    return step


@pytest.mark.filterwarnings("ignore:jacobian_topk")  # tol=0: unconverged by design
@pytest.mark.parametrize("arch", list(ITER_GENERATORS))
def test_iteration_cost(benchmark, arch):
    B, k, d = ITER["B"], ITER["k"], ITER["d"]
    torch.manual_seed(0)
    label, build = ITER_GENERATORS[arch]
    G, z = build(d).to(DEVICE), _latents(B, d)
    passes = {}

    def solve(method):
        def run():
            top = jacobian_topk(G, z, k, iters=SOLVE_ITERS, tol=0.0, method=method, jvp="double_backward")
            passes[method] = top.iterations

        return run

    results = measure(
        benchmark,
        {f"fwd+bwd ({B * k} rows)": _fwd_bwd(G, z, k), "power solve": solve("power"), "krylov solve": solve("krylov")},
    )
    base = results[f"fwd+bwd ({B * k} rows)"]
    per_step = {
        "power iteration": (results["power solve"][0] / passes["power"], results["power solve"][1]),
        "krylov step": (results["krylov solve"][0] / passes["krylov"], results["krylov solve"][1]),
    }
    _add(
        f"a. one step, {label}, B={B}, k={k}, d={d}",
        {f"fwd+bwd ({B * k} rows)": base, **per_step},
        f"fwd+bwd ({B * k} rows)",
        **{
            "power iteration": dict(per=f"{passes['power']} iterations/call"),
            "krylov step": dict(per=f"{passes['krylov']} passes/call of {B} rows"),
        },
    )
    if arch == "dcgan64":
        TABLE.note(
            "a: a step's time is the mean over one jacobian_topk call with tol=0 (call time / generator "
            "passes: the forward graph, the probe and the Rayleigh-Ritz work included); power folds k "
            "vectors per pass (B*k rows), krylov one (B rows, krylov_block); jvp=double_backward; peak_mb "
            "is over the whole call"
        )


# ---------------------------------------------------------------- b. regularized generator step vs plain
STEP_B, STEPS = (4, 2) if TINY else (32, 8)
STEP_LATENTS = (10, 16) if TINY else (10, 64, 128)


def _gan(latent: int):
    torch.manual_seed(0)
    width = 8 if TINY else 32
    G = Generator(latent, size=32, width=width).to(DEVICE)
    D = Discriminator(size=32, width=width).to(DEVICE)
    return G, D, torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.99))


@pytest.mark.parametrize("latent", STEP_LATENTS)
def test_generator_step(benchmark, latent):
    cases = {}
    for name, options in (("plain", None), ("spectral, defaults", {})):
        G, D, opt = _gan(latent)
        reg = None if options is None else SpectralRegularizer(latent, **options).to(DEVICE)
        zs = [_latents(STEP_B, latent, seed=s) for s in range(STEPS)]

        def steps(G=G, D=D, opt=opt, reg=reg, zs=zs):
            for z in zs:
                loss = nn.functional.softplus(-D(G(z))).mean()
                if reg is not None:
                    loss = loss + reg(G, z)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        cases[name] = steps
    results = {name: (median / STEPS, peak) for name, (median, peak) in measure(benchmark, cases).items()}
    ratio = results["spectral, defaults"][0] / results["plain"][0]
    _add(f"b. generator step, DCGAN 32x32 + D, latent {latent}, B={STEP_B} ({STEPS} steps per round)", results, "plain")
    TABLE.note(
        f"b: latent {latent}: default regularized step / plain step = {ratio:.2f}x; target <= 1.2x: "
        + ("met" if ratio <= 1.2 else "MISSED")
    )


# ---------------------------------------------------------------- c. computed and skipped calls
CALL_LATENT = 16 if TINY else 64


def test_regularizer_calls(benchmark):
    G, _, _ = _gan(CALL_LATENT)
    z = _latents(STEP_B, CALL_LATENT)
    computed = SpectralRegularizer(CALL_LATENT, every=1).to(DEVICE)
    skipping = SpectralRegularizer(CALL_LATENT, every=10**9).to(DEVICE)
    skipping(G, z)  # its first call computes; every later one is skipped

    def fwd_bwd():
        G(z).sum().backward()

    def value_and_backward():
        computed(G, z).backward()

    results = measure(
        benchmark,
        {
            "G fwd+bwd": fwd_bwd,
            "computed call + backward": value_and_backward,
            "computed call (value only)": lambda: computed(G, z),
            "skipped call": lambda: skipping(G, z),
        },
    )
    _add(
        f"c. SpectralRegularizer call (defaults but every), DCGAN 32x32, latent {CALL_LATENT}, B={STEP_B}",
        results,
        "G fwd+bwd",
    )


# ---------------------------------------------------------------- d. krylov vs per-sample ARPACK, larger B and d
ARPACK_CASES = [(4, 16)] if TINY else [(16, 512), (64, 128), (64, 512)]
ARPACK_TIMED = 2 if TINY else 8  # samples ARPACK solves in a timed round (its time is scaled to B)
ARPACK_K, ARPACK_TOL = 4, 1e-4


@pytest.mark.parametrize("B, d", ARPACK_CASES)
def test_krylov_vs_arpack(benchmark, B, d):
    from bench_topk import CONV_MODE, _arpack_per_sample, full_jacobian

    torch.manual_seed(0)
    G = DCGAN(
        d,
        size=16 if TINY else 32,
        width=16,
        latent_scales=gapped_scales(d, n_gapped=min(32, d), ratio=0.85, floor=0.85 ** min(32, d)),
    ).to(DEVICE)
    z = _latents(B, d)
    G64 = copy.deepcopy(G).double()
    M = []
    for zc in z.double().split(8):  # the float64 reference on the device, 8 samples at a time
        J = full_jacobian(G64, zc)
        M.append(J.transpose(1, 2) @ J)
    M = torch.cat(M)
    del J, G64
    lam_ref = torch.linalg.eigvalsh(M).flip(-1)[:, :ARPACK_K]
    out = {}

    def krylov():
        top = jacobian_topk(G, z, ARPACK_K, method="krylov", iters=d, tol=ARPACK_TOL, jvp=CONV_MODE)
        out["krylov"] = (top.values.double() ** 2, top.iterations, bool(top.converged.all()))

    def arpack():
        n = min(B, ARPACK_TIMED)
        lam, _, median_products, extra = _arpack_per_sample(G, z[:n], ARPACK_K)
        out["arpack"] = (lam, median_products, extra["converged"])

    results = measure(benchmark, {"krylov": krylov, "arpack per sample": arpack}, rounds=max(1, ROUNDS - 1))
    n = min(B, ARPACK_TIMED)
    results["arpack per sample"] = (results["arpack per sample"][0] * B / n, results["arpack per sample"][1])
    err_k = float((out["krylov"][0].to(lam_ref).sqrt() / lam_ref.sqrt() - 1).abs().max())
    err_a = float((out["arpack"][0].to(lam_ref)[:n].sqrt() / lam_ref[:n].sqrt() - 1).abs().max())
    _add(
        f"d. to tol=1e-4, gapped DCGAN, B={B}, d={d}, k={ARPACK_K}",
        results,
        "krylov",
        krylov=dict(passes=out["krylov"][1], converged=out["krylov"][2], max_value_err=f"{err_k:.1e}"),
        **{
            "arpack per sample": dict(
                matvecs_per_sample=f"{out['arpack'][1]:.0f}",
                converged=out["arpack"][2],
                max_value_err=f"{err_a:.1e}",
                timed=f"{n} samples, scaled to {B}",
            )
        },
    )
    speedup = results["arpack per sample"][0] / results["krylov"][0]
    TABLE.note(
        f"d: B={B}, d={d}: per-sample ARPACK / krylov time = {speedup:.1f}x (target >= 10x: "
        + ("met" if speedup >= 10 else "MISSED")
        + "); ARPACK's time is its first samples' scaled to B"
    )
