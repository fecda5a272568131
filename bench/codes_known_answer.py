"""Known answer: can a loss tell a factorised code from a rotated or a polar one?

`spectral_ops.testing.codes` draws one disc's four factors with three codes that give the same
distribution of images: factorized (x, y, radius, brightness on z_0..z_3), rotated (x and radius
rotated by 45 degrees in the (z_0, z_2) plane) and polar (radius from the norm, x from the angle
of that plane: the code the experiment's GANs learn). Every loss is evaluated on the same 256
latents for each code, at latent sizes 4, 10 and 64 (the latents past 4 are ignored by G). A loss
that can move a GAN from a polar code to the factorised one must score the polar code clearly
above the factorised one.

    python bench/codes_known_answer.py            # writes bench/results/codes.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spectral_ops import spectral_penalty
from spectral_ops.baselines import hessian_penalty, jacobian_l1, orojar
from spectral_ops.directions import global_alignment_penalty
from spectral_ops.testing.codes import CODES, disc_code


def _draws(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


LOSSES = {
    "spectral offdiag (defaults)": lambda G, z: spectral_penalty(G, z),
    "spectral offdiag, singular weights": lambda G, z: spectral_penalty(G, z, weights="singular"),
    "spectral l1": lambda G, z: spectral_penalty(G, z, loss="l1"),
    "spectral assigned": lambda G, z: spectral_penalty(G, z, loss="assigned"),
    "global term": lambda G, z: global_alignment_penalty(G, z),
    "Hessian Penalty (mean, 8 draws)": lambda G, z: hessian_penalty(G, z, k=8, reduction="mean", generator=_draws(1)),
    "OroJaR (mean, 8 draws)": lambda G, z: orojar(G, z, k=8, reduction="mean", generator=_draws(1)),
    "Jacobian L1": lambda G, z: jacobian_l1(G, z),
}


def table(sizes=(4, 10, 64), n: int = 256) -> str:
    rows = [
        "| latent | loss | factorized | rotated 45 | polar | rotated / factorized | polar / factorized |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in sizes:
        z = torch.randn(n, d, generator=_draws(0), dtype=torch.float64)
        for name, loss in LOSSES.items():
            v = {kind: float(loss(disc_code(kind, d), z).detach()) for kind in CODES}
            f = v["factorized"]
            rows.append(
                f"| {d} | {name} | {f:.4g} | {v['rotated']:.4g} | {v['polar']:.4g} | "
                f"{v['rotated'] / f:.2f} | {v['polar'] / f:.2f} |"
            )
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/results/codes.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    body = table()
    Path(args.out).write_text(
        "# Factorized, rotated and polar codes of one disc: what each loss sees\n\n"
        "Command: `python bench/codes_known_answer.py` (float64, 256 latents, the same for every "
        "code; `spectral_ops.testing.codes`).\n\n" + body
    )
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
