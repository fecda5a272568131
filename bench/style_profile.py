"""Where one power iteration's time goes on a style-based generator, and what the library could change.

Run:  cd bench && BENCH_THREADS=1 python style_profile.py [--rounds 7] [--no-profile]

For a DCGAN, a StyleGAN2-like generator with fused (grouped-convolution) modulated convolutions
and the same generator with unfused modulation (same function, shared weights), all at B=32,
k=4, d=64 (folded batch 128), it times, interleaved round by round:
  - the baseline: one generator forward+backward on the folded batch (parameters and input);
  - the parts of one iteration: J v per JVP mode, and J^T u through the kept forward graph;
  - a prototype of a library change, "forward, shared primal": J v by torch.func.jvp vmapped over
    the k tangents at the B distinct latents, so the primal forward runs on B rows, not B*k
    (SharedPrimalOperator below; spectral_ops itself is not modified);
and, with torch.profiler, how much of each part goes to per-sample weight tensors
([N, out, in, kh, kw]) and to convolution double-backward.  Prints markdown tables and writes them
to bench/results/style_profile.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from generators import DCGAN, StyleGenerator
from ratios import RESULTS_DIR
from spectral_ops import ops
from spectral_ops.jacobian import JacobianOperator

B, K, D = 32, 4, 64


class SharedPrimalOperator(JacobianOperator):
    """JacobianOperator whose J v is forward-mode AD with the primal computed once per distinct z.

    The folded batch repeats every latent k times, so the folded forward-mode product recomputes
    k identical primals (for a style generator: k identical sets of per-sample weights).  Here J v
    is torch.func.vmap over the k tangents of torch.func.jvp(G, z [B, d]): primal ops run on B
    rows, only tangent ops are batched over the k vectors.  J^T u is unchanged (one backward
    through the folded forward graph kept by the constructor).

    An nn.Module runs through torch.func.functional_call with its buffers cloned inside the
    transformed function, so that a forward that updates a buffer in place (StyleGAN2's w_avg in
    training mode, which torch.func otherwise refuses) works and leaves G's buffers untouched.
    """

    def __init__(self, G, z, k):
        super().__init__(G, z, k, "forward")
        self.z0 = z.detach()
        self.f = G
        if isinstance(G, torch.nn.Module):
            params, buffers = dict(G.named_parameters()), dict(G.named_buffers())

            def f(x):
                local = {name: b.clone() for name, b in buffers.items()}
                return torch.func.functional_call(G, {**params, **local}, (x,))

            self.f = f

    def jvp(self, V):
        f, z0 = self.f, self.z0

        def one(v):
            return torch.func.jvp(f, (z0,), (v,))[1]

        with torch.enable_grad():
            jv = torch.func.vmap(one, in_dims=1, out_dims=1)(V.to(self.y.dtype))  # [B, k, ...]
        return jv.reshape(self.B, self.k, -1)


GENERATORS = {
    "DCGAN 32x32x1": lambda: DCGAN(D, size=32),
    "style, fused modconv": lambda: StyleGenerator(D, size=32).eval(),
    "style, unfused modconv": lambda: StyleGenerator(D, size=32, fused_modconv=False).eval(),
}
MODES = ("double_backward", "forward", "finite_difference")
PROPOSED = "forward, shared primal"


def _operator(G, z, mode):
    return SharedPrimalOperator(G, z, K) if mode == PROPOSED else JacobianOperator(G, z, K, mode)


def cases_for(G, z):
    """name -> zero-argument callable; every case is one of the parts of the table."""
    z_rep = z.repeat_interleave(K, 0).requires_grad_(True)
    params = list(G.parameters())
    Q = ops.orthonormalize(torch.randn(B, K, D))

    def fwd_bwd(inputs):
        def step():
            y = G(z_rep)
            torch.autograd.grad(y, inputs, torch.ones_like(y))

        return step

    cases = {"fwd+bwd": fwd_bwd([z_rep] + params), "fwd+bwd (input grad only)": fwd_bwd([z_rep])}

    def forward(x):
        def run():
            G(x)

        return run

    def no_grad(fn):
        def run():
            with torch.no_grad():
                fn()

        return run

    cases["forward (graph kept)"] = forward(z_rep)
    cases[f"forward, no grad ({B * K} rows)"] = no_grad(forward(z_rep))
    cases[f"forward, no grad ({B} rows)"] = no_grad(forward(z))
    if hasattr(G, "mapping"):
        cases[f"mapping network, no grad ({B * K} rows)"] = no_grad(lambda: G.mapping(z_rep))
    for mode in MODES + (PROPOSED,):
        op = _operator(G, z, mode)
        op.matvec(Q)  # builds the double-backward graph once
        JQ = op.jvp(Q).detach()
        cases[f"J v: {mode}"] = lambda op=op: op.jvp(Q)
        if mode == "double_backward":
            cases["J^T u (kept graph)"] = lambda op=op: op.vjp(JQ)
            _, vjp_fn = torch.func.vjp(G, z.detach())  # primal graph on B rows, cotangents vmapped over k
            U = JQ.reshape(B, K, *op.y.shape[1:])
            cases["J^T u: shared primal (vmap over k cotangents)"] = lambda: torch.func.vmap(
                lambda u: vjp_fn(u)[0], in_dims=1, out_dims=1
            )(U)
        cases[f"iteration: {mode}"] = lambda op=op: ops.ritz_step(Q, op.matvec(Q).detach(), None)
    return cases


def interleaved(cases: dict, rounds: int) -> dict:
    times = {name: [] for name in cases}
    for _ in range(rounds + 1):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts[1:]) for name, ts in times.items()}


def accuracy(G, z) -> dict:
    """Relative error of J v per mode against double_backward, and of the prototype's M v."""
    Q = ops.orthonormalize(torch.randn(B, K, D))
    ref = JacobianOperator(G, z, K, "double_backward")
    Jv, Mv = ref.jvp(Q).detach(), ref.matvec(Q).detach()
    out = {}
    for mode in MODES[1:] + (PROPOSED,):
        op = _operator(G, z, mode)
        out[f"J v: {mode}"] = float((op.jvp(Q).detach() - Jv).norm() / Jv.norm())
        out[f"M v: {mode}"] = float((op.matvec(Q).detach() - Mv).norm() / Mv.norm())
    return out


def profile_shares(fn) -> dict:
    """Self CPU time (ms) of one call of fn: total, in ops on per-sample weight tensors (5-D first
    input), inside convolution double-backward, and its number of convolution calls."""
    fn()
    with torch.profiler.profile(record_shapes=True) as prof:
        fn()
    events = prof.events()
    total = sum(e.self_cpu_time_total for e in events)
    weights = sum(
        e.self_cpu_time_total for e in events if e.input_shapes and e.input_shapes[0] and len(e.input_shapes[0]) == 5
    )
    dbl = next((e.cpu_time_total for e in prof.key_averages() if e.key == "aten::_convolution_double_backward"), 0)
    convs = sum(1 for e in events if e.name == "aten::_convolution")
    return dict(total=total / 1e3, weights=weights / 1e3, conv_double_backward=dbl / 1e3, conv_calls=convs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    out = [
        f"### style_profile (B={B}, k={K}, d={D}, folded batch {B * K}; median of {args.rounds} interleaved "
        f"rounds; ratio = median / fwd+bwd median of the same generator)",
        "",
    ]
    for name, make in GENERATORS.items():
        torch.manual_seed(0)
        G, z = make(), torch.randn(B, D)
        cases = cases_for(G, z)
        med = interleaved(cases, args.rounds)
        base, start = med["fwd+bwd"], len(out)
        out += [f"#### {name}", "", "| part | median (ms) | / fwd+bwd |", "|---|---|---|"]
        out += [f"| {case} | {1e3 * m:.1f} | {m / base:.2f}x |" for case, m in med.items()]
        out.append("")
        errs = accuracy(G, z)
        out.append("relative error against double_backward: " + ", ".join(f"{c} {e:.1e}" for c, e in errs.items()))
        out.append("")
        if not args.no_profile:
            out += [
                "| part (profiled once; compare shares, not times) | self CPU ms | on per-sample weight tensors "
                "| in conv double-backward | aten::_convolution calls |",
                "|---|---|---|---|---|",
            ]
            for case in ("fwd+bwd", "J v: double_backward", "J v: forward", f"J v: {PROPOSED}", "J^T u (kept graph)"):
                p = profile_shares(cases[case])
                out.append(
                    f"| {case} | {p['total']:.1f} | {p['weights']:.1f} ({p['weights'] / p['total']:.0%}) "
                    f"| {p['conv_double_backward']:.1f} | {p['conv_calls']} |"
                )
            out.append("")
        print("\n".join(out[start:]), flush=True)
    text = "\n".join(out)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, "style_profile.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
