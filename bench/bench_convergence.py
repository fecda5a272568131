"""Are the vectors the loss sees converged?  |cos| to the exact singular vectors, per index.

Run:  python bench/bench_convergence.py [CHECKPOINT ...]   (writes bench/results/convergence.md/json)

For each generator (an untrained DCGAN-style G of spectral_ops.lab.models, flat spectrum: the worst
case; plus any training checkpoints given), it makes the calls a trainer makes: 48 batches of
32 rows at a fixed G, SpectralRegularizer with its defaults (every=1 here so every call
computes; batch_fraction 0.25: 8 rows a call), for iters = 1, 2, 3, 4 and with and without the
warm start.  Over the last 24 calls, it compares the vectors the loss saw (`reg.last_vectors`)
with the exact top-k eigenvectors of J^T J (`jacobian_topk(method="dense")`), per index:
median |cos| and the 10th percentile, and the median sigma_{i+1}/sigma_i.
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import spectral_ops  # noqa: E402
from spectral_ops import SpectralRegularizer  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")
CALLS, KEEP, B = 48, 24, 32


def generators(paths):
    from spectral_ops.lab.models import Generator

    torch.manual_seed(0)
    yield "untrained DCGAN (latent 10, 32x32)", Generator(10, size=32).eval()
    for p in paths:
        from spectral_ops.lab.train import load_generator

        G, _ = load_generator(p)
        yield f"trained: {p}", G.eval()


def measure(G, d, iters, warm):
    reg = SpectralRegularizer(d, every=1, iters=iters, warm_start=warm)
    gen = torch.Generator().manual_seed(5)
    cos, ratios = [], []
    for call in range(CALLS):
        z = torch.randn(B, d, generator=gen)
        reg(G, z)
        if call < CALLS - KEEP:
            continue
        exact = spectral_ops.jacobian_topk(G, reg.last_latents, reg.k, method="dense")
        cos.append((reg.last_vectors * exact.vectors).sum(-1).abs())
        S = exact.values
        ratios.append(S[:, 1:] / S[:, :-1].clamp_min(1e-30))
    cos, ratios = torch.cat(cos), torch.cat(ratios)
    return {"median_cos": cos.median(0).values.tolist(), "p10_cos": cos.quantile(0.1, dim=0).tolist(),
            "median_sigma_ratio": ratios.median(0).values.tolist()}


def main(paths):
    torch.set_num_threads(1)
    rows = []
    for name, G in generators(paths):
        d = G.latent_dim
        for warm in (True, False):
            for iters in (1, 2, 3, 4):
                r = measure(G, d, iters, warm)
                rows.append(dict(generator=name, iters=iters, warm_start=warm, **r))
                print(name, iters, warm, [round(x, 3) for x in r["median_cos"]], [round(x, 3) for x in r["p10_cos"]],
                      flush=True)
    lines = ["### convergence of the vectors the loss sees", "",
             "`python bench/bench_convergence.py`: median |cos| (10th percentile) to the exact vectors, per index, "
             f"over the last {KEEP} of {CALLS} calls at a fixed G, 8 rows a call, k=4.", "",
             "| generator | iters | warm start | v1 | v2 | v3 | v4 | median sigma_i+1/sigma_i |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{m:.3f} ({p:.3f})" for m, p in zip(r["median_cos"], r["p10_cos"])]
        lines.append(f"| {r['generator']} | {r['iters']} | {'yes' if r['warm_start'] else 'no'} | " + " | ".join(cells)
                     + f" | {' / '.join(f'{x:.2f}' for x in r['median_sigma_ratio'])} |")
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "convergence.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(RESULTS, "convergence.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
