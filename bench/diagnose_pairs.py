"""Diagnose how the experiment's GANs encode x and radius on `spot`: a polar code in a pair of
latents, or not.

For each trained generator (a checkpoint of `bench/experiment_disentangle.py`), on n latents:

- the mutual information (nats, 20 quantile bins, the factors as the cached predictor reads them)
  between each latent and each factor;
- the pair (a, b): the two latents with the largest MI(x) + MI(radius);
- in that pair's plane, the norm rho = ||(z_a, z_b)|| and the angle theta = atan2(z_b, z_a):
  MI(radius; rho) against the best single latent's MI(radius; z_i), MI(x; theta) against the best
  MI(x; z_i), and the Spearman correlation of radius with rho;
- the local metric in the pair's plane on the first 256 latents (two exact JVPs each): the median
  ratio of the two columns' norms ||J e_a|| / ||J e_b|| (ordered >= 1) and the median |cos| between
  them.

A GAN has a *polar pair* when the radius is mostly a monotone function of rho (Spearman >= 0.5)
and rho says more about the radius than any single latent does (gain >= 1). On the experiment's
GANs the Spearman correlation separates them: 0.07-0.42 on every baseline and peer, 0.6-0.9 on
the regularized ones but one (bench/results/polar_pairs.md). A 2D Gaussian's norm and angle are independent,
so a polar code reproduces independent factors exactly; docs/experiment.md reads the table.

    python bench/diagnose_pairs.py runs/exp23_d10 runs/exp23_d16 --out bench/results/polar_pairs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spectral_ops.lab.metrics import PredictorConfig, load_or_fit_predictor
from spectral_ops.lab.metrics.disentanglement import discretize
from spectral_ops.lab.train.checkpoint import load_generator

POLAR_SPEARMAN, POLAR_GAIN = 0.5, 1.0  # a polar pair: radius follows rho, and rho beats every single latent


def _mi(u: np.ndarray, v: np.ndarray, n_bins: int = 20) -> float:
    """Mutual information (nats) between two 1D samples, each quantile-binned."""
    from sklearn.metrics import mutual_info_score

    binned = discretize(np.stack([u, v], 1), n_bins)
    return float(mutual_info_score(binned[:, 0], binned[:, 1]))


def _spearman(u: np.ndarray, v: np.ndarray) -> float:
    ru, rv = np.argsort(np.argsort(u)), np.argsort(np.argsort(v))
    return float(np.corrcoef(ru, rv)[0, 1])


def _pair_metric(G, z: torch.Tensor, a: int, b: int) -> tuple[float, float]:
    """(median column-norm ratio >= 1, median |cos|) of J e_a and J e_b over the rows of z [N, d]."""

    def column(i: int) -> torch.Tensor:
        e = torch.zeros_like(z)
        e[:, i] = 1
        return torch.func.jvp(G, (z,), (e,))[1].flatten(1)  # [N, m]

    with torch.no_grad():
        ja, jb = column(a), column(b)
    na, nb = ja.norm(dim=1), jb.norm(dim=1)
    ratio = torch.maximum(na, nb) / torch.minimum(na, nb).clamp_min(1e-30)
    cos = (ja * jb).sum(1).abs() / (na * nb).clamp_min(1e-30)
    return float(ratio.median()), float(cos.median())


def diagnose(path: Path, predictor, n: int = 4000, seed: int = 1) -> dict:
    """The record of one checkpoint (see the module docstring)."""
    G, config = load_generator(path)
    d = config.latent_dim
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        pred = predictor.predict(G(z).clamp(0, 1)).numpy()  # [n, 4]: x, y, radius, brightness
    names = list(predictor.factor_names)
    ix, ir = names.index("x"), names.index("radius")
    zn = z.numpy()
    mi = np.array([[_mi(zn[:, i], pred[:, j]) for j in range(pred.shape[1])] for i in range(d)])  # [d, 4]
    a, b = (int(i) for i in np.argsort(-(mi[:, ix] + mi[:, ir]))[:2])
    rho, theta = np.hypot(zn[:, a], zn[:, b]), np.arctan2(zn[:, b], zn[:, a])
    mi_r_rho, mi_x_theta = _mi(rho, pred[:, ir]), _mi(theta, pred[:, ix])
    gain_r, gain_x = mi_r_rho / max(mi[:, ir].max(), 1e-12), mi_x_theta / max(mi[:, ix].max(), 1e-12)
    spearman = _spearman(pred[:, ir], rho)
    norm_ratio, cos = _pair_metric(G, z[:256], a, b)
    return {
        "run": str(path.parent),
        "latent_dim": d,
        "reg": config.reg,
        "reg_weight": config.reg_weight,
        "steps": config.steps,
        "seed": config.seed,
        "pair": [a, b],
        "mi_x_best": float(mi[:, ix].max()),
        "mi_x_theta": mi_x_theta,
        "mi_radius_best": float(mi[:, ir].max()),
        "mi_radius_rho": mi_r_rho,
        "gain_x_theta": gain_x,
        "gain_radius_rho": gain_r,
        "spearman_radius_rho": spearman,
        "polar": bool(spearman >= POLAR_SPEARMAN and gain_r >= POLAR_GAIN),
        "pair_norm_ratio": norm_ratio,
        "pair_abs_cos": cos,
    }


def _group(record: dict) -> str:
    """The variant a record belongs to, from its run folder (…/<variant>/seed<k>)."""
    return Path(record["run"]).parent.name


def summarise(records: list[dict]) -> str:
    """Markdown: per latent size and variant, the GANs with a polar pair and the mean statistics."""
    rows = [
        "| latent | steps | variant | GANs | polar pair | MI(x; theta) / best MI(x; z_i) | MI(radius; rho) / best "
        "MI(radius; z_i) | Spearman(radius, rho) | pair norm ratio | pair abs cos |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["latent_dim"], r["steps"], _group(r)) for r in records})
    for d, steps, group in keys:
        rs = [r for r in records if (r["latent_dim"], r["steps"], _group(r)) == (d, steps, group)]

        def mean(key: str) -> str:
            return f"{np.mean([r[key] for r in rs]):.2f}"

        polar = sum(r["polar"] for r in rs)
        rows.append(
            f"| {d} | {steps} | {group} | {len(rs)} | {polar} of {len(rs)} | {mean('gain_x_theta')} | "
            f"{mean('gain_radius_rho')} | {mean('spearman_radius_rho')} | {mean('pair_norm_ratio')} | "
            f"{mean('pair_abs_cos')} |"
        )
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("roots", nargs="+", help="experiment output folders (searched for */seed*/checkpoint.pt)")
    p.add_argument("--out", default="bench/results/polar_pairs", help="writes <out>.jsonl and <out>.md")
    p.add_argument("--n", type=int, default=4000, help="latent samples per GAN (default: 4000)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor, _ = load_or_fit_predictor(PredictorConfig(dataset="spot"), progress=False)
    paths = sorted(q for root in args.roots for q in Path(root).glob("*/seed*/checkpoint.pt"))
    records = []
    for i, path in enumerate(paths):
        records.append(diagnose(path, predictor, n=args.n))
        r = records[-1]
        print(
            f"[{i + 1}/{len(paths)}] {r['run']}: pair z{r['pair'][0]} z{r['pair'][1]}, gains x {r['gain_x_theta']:.2f} "
            f"radius {r['gain_radius_rho']:.2f}, polar {r['polar']}",
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    table = summarise(records)
    out.with_suffix(".md").write_text(
        "# Polar (x, radius) pairs in the experiment's GANs\n\n"
        f"Command: `python bench/diagnose_pairs.py {' '.join(args.roots)} --out {args.out}` "
        f"({args.n} latents per GAN; a polar pair: Spearman(radius, rho) >= {POLAR_SPEARMAN} and "
        f"MI(radius; rho) / best MI(radius; z_i) >= {POLAR_GAIN}).\n\n" + table
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
