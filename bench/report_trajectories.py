"""Trajectory purity of curved singular-vector trajectories vs straight singular-vector lines vs
coordinate-axis traversals, on a trained sprites GAN (the paper's first claim).

    PYTHONPATH=. python bench/report_trajectories.py --ckpt runs/<baseline>/checkpoint.pt
    PYTHONPATH=. python bench/report_trajectories.py --ckpt runs/a/checkpoint.pt runs/b/checkpoint.pt ...

With several checkpoints (GAN seeds), each gets its own report in --out/<label>/ and --out/report.md
adds the across-seed table: per seed the pooled means of curves, lines and axes, the paired
curve-minus-line difference, and the mean turning angle of the curves, then mean +- std over seeds.
The turning angle of a curve is the sum of the angles between successive steps (degrees): 0 for a
straight line, so it says whether the paths were long enough for curvature to matter.

For each of --n-starts random latents z0 (seeded) and each path kind:

- curve i (i < --directions): trace_trajectory from z0 following v_i (forward from z0);
- line i: z0 + t v_i(z0), the straight line along the same initial vector;
- axis j (every latent coordinate j): z0 + t e_j;

every path gets the same latent budget (--steps x --step-size, sampled at --steps + 1 points), is
cut where its *output-space* path length sum ||G(z_{t+1}) - G(z_t)|| reaches L, and is resampled at
--points points evenly spaced in output arc length.  L is the --length-quantile (default 0.25)
quantile of the output lengths of all paths of all kinds within the budget (or, with --length-frac,
that fraction of the median distance ||G(z) - G(z')|| between generated images), so all kinds
change the image by the same amount.  Paths too short to reach L within the budget are excluded
from the means and counted.  The factor predictor (spectral_ops.lab.metrics, fitted on labelled
sprites, cached) reads the factors of every resampled image, and trajectory_purity gives, per path,
the share of the total factor change taken by the most-changed factor (1 = one factor at a time).

Writes report.json, report.md and PNG grids (one per shown start: curve rows, line rows, axis
rows, all at equal output length) into --out.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from spectral_ops import trace_trajectory
from spectral_ops.lab.metrics import PredictorConfig, load_or_fit_predictor
from spectral_ops.lab.metrics.trajectory import (
    factor_changes,
    output_arc_length,
    purity_from_changes,
    resample_by_output_length,
)
from spectral_ops.lab.cli.generators import load_generator_from_spec
from spectral_ops.lab import viz
from spectral_ops.lab.io import atomic_write_text


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", nargs="+", help="one or more training checkpoints (GAN seeds)")
    src.add_argument(
        "--generator", help="module:attr (e.g. spectral_ops.lab.models:Generator for an untrained control)"
    )
    p.add_argument("--latent-dim", type=int, default=None)
    p.add_argument("--label", default=None, help="name of the generator in the report")
    p.add_argument("--n-starts", type=int, default=128)
    p.add_argument("--directions", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--step-size", type=float, default=0.25)
    p.add_argument("--method", default="heun", choices=["euler", "heun", "rk4"])
    p.add_argument("--points", type=int, default=12)
    p.add_argument(
        "--length-quantile",
        type=float,
        default=0.25,
        help="L = this quantile of all paths' output lengths within the latent budget (default 0.25)",
    )
    p.add_argument(
        "--length-frac",
        type=float,
        default=None,
        help="instead: L = this fraction of the median distance between generated images",
    )
    p.add_argument("--batch", type=int, default=64, help="starting points traced together")
    p.add_argument("--show", type=int, default=3, help="starts drawn as PNG grids")
    p.add_argument(
        "--ignore-factors",
        default="",
        help="comma-separated factor names left out of purity (e.g. shape when the predictor cannot read it)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/trajectories")
    return p.parse_args(argv)


@torch.no_grad()
def typical_distance(G, d: int, gen: torch.Generator, n: int = 256) -> float:
    a = G(torch.randn(n, d, generator=gen)).reshape(n, -1).double()
    b = G(torch.randn(n, d, generator=gen)).reshape(n, -1).double()
    return float((a - b).norm(dim=-1).median())


def measure(G, predictor, Z: torch.Tensor, L: float, points: int, arc: torch.Tensor, keep: list[int]):
    """Paths Z (T+1, B, d) -> (purity [B], changes [B, F], reached [B], resampled latents, images)."""
    Zs, reached = resample_by_output_length(G, Z, L, points, arc=arc)
    with torch.no_grad():
        imgs = viz.generate(G, Zs.reshape(-1, Zs.shape[-1]))
    imgs = imgs.reshape(points, Z.shape[1], *imgs.shape[1:])
    ch = factor_changes(imgs, predictor=predictor)[:, keep]
    return purity_from_changes(ch), ch, reached, Zs, imgs


def summarize(purity: torch.Tensor, reached: torch.Tensor) -> dict:
    p = purity[reached].double()
    n = int(p.numel())
    if n == 0:
        return {"n": 0, "reached": 0.0}
    sem = float(p.std() / math.sqrt(n)) if n > 1 else float("nan")
    return {
        "n": n,
        "reached": float(reached.double().mean()),
        "mean": float(p.mean()),
        "sem": sem,
        "median": float(p.median()),
        "frac_above_0.8": float((p > 0.8).double().mean()),
    }


def turning_degrees(Z: torch.Tensor) -> torch.Tensor:
    """(T+1, B, d) path -> (B,) sum of the angles between successive steps, in degrees."""
    dz = Z[1:] - Z[:-1]
    dz = dz / dz.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    cos = (dz[1:] * dz[:-1]).sum(-1).clamp(-1, 1)
    return torch.rad2deg(torch.arccos(cos)).sum(0)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.ckpt and len(args.ckpt) > 1:
        return main_many(args, argv)
    return report_one(args, args.ckpt[0] if args.ckpt else None, Path(args.out), argv)


def main_many(args, argv) -> int:
    """One report per checkpoint, then the across-seed table in --out/report.md."""
    out = Path(args.out)
    per_seed = []
    for ckpt in args.ckpt:
        label = Path(ckpt).parent.name if Path(ckpt).name == "checkpoint.pt" else Path(ckpt).stem
        if label in [p[0] for p in per_seed]:
            label = f"{Path(ckpt).parent.parent.name}-{label}"
        report_one(args, ckpt, out / label, argv, label=label)
        per_seed.append((label, json.loads((out / label / "report.json").read_text())))

    def ms(xs):
        xs = [x for x in xs if x == x]
        m = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
        return f"{m:.3f} ± {sd:.3f}"

    md = [
        "## Trajectory purity across GAN seeds",
        "",
        "| GAN | curves | straight lines | axes | curve − line (paired) | curve turning (deg) | starts |",
        "|---|---|---|---|---|---|---|",
    ]
    cols = {"c": [], "l": [], "a": [], "d": [], "t": []}
    for label, r in per_seed:
        c, line, a = (r["pooled"][k]["mean"] for k in ("curves (all v_i)", "lines (all v_i)", "axes (all z_j)"))
        diffs = [v["mean_curve_minus_line"] for v in r["paired_curve_vs_line"].values()]
        dmean = sum(diffs) / len(diffs)
        turn = r["curve_turning_degrees_mean"]
        for key, v in zip("cladt", (c, line, a, dmean, turn)):
            cols[key].append(v)
        md.append(
            f"| {label} | {c:.3f} | {line:.3f} | {a:.3f} | {dmean:+.3f} | {turn:.1f} | {r['settings']['n_starts']} |"
        )
    md.append(
        f"| mean ± std over {len(per_seed)} seeds | {ms(cols['c'])} | {ms(cols['l'])} | {ms(cols['a'])} | "
        f"{ms(cols['d'])} | {ms(cols['t'])} | |"
    )
    md += [
        "",
        "Command: `PYTHONPATH=. python bench/report_trajectories.py "
        + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        + "`",
        "",
    ]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.json").write_text(json.dumps({label: r for label, r in per_seed}, indent=1) + "\n")
    print("\n".join(md))
    return 0


def _load(args, ckpt):
    """(G in eval mode with frozen parameters, its dataset) from --ckpt or --generator."""
    dataset = "sprites"
    if ckpt:
        from spectral_ops.lab.train import load_generator

        G, config = load_generator(ckpt)
        dataset = config.dataset
    else:
        G = load_generator_from_spec(args.generator)
    if isinstance(G, torch.nn.Module):
        G.eval()
        for p in G.parameters():
            p.requires_grad_(False)
    return G, dataset


def _scored_factors(args, predictor, pinfo):
    """(names of the factors scored, their columns, the ignored names) after --ignore-factors."""
    names = list(
        getattr(predictor, "factor_names", None)
        or pinfo.get("factor_names")
        or [f"f{j}" for j in range(len(predictor.categorical))]
    )
    ignored = [f.strip() for f in args.ignore_factors.split(",") if f.strip()]
    unknown = [f for f in ignored if f not in names]
    if unknown:
        raise SystemExit(f"--ignore-factors: unknown factors {unknown}; the predictor measures {names}")
    keep = [j for j, f in enumerate(names) if f not in ignored]
    return [names[j] for j in keep], keep, ignored


def _trace_paths(args, G, Z0, d: int, K: int, kinds):
    """Pass 1: every path within the same latent budget, (T+1, n, d) per batch of starts, plus
    the top-k evaluations and power iterations the curves took."""
    t = torch.linspace(0, args.steps * args.step_size, args.steps + 1)
    paths: dict[str, list[torch.Tensor]] = {k: [] for k in kinds}
    n_eval = n_iter = 0
    batches = list(range(0, args.n_starts, args.batch))
    eye = torch.eye(d)
    bar = tqdm(total=len(batches) * (2 * K + d), desc="trace paths")
    for b0 in batches:
        z0 = Z0[b0 : b0 + args.batch]
        for i in range(K):
            tr = trace_trajectory(
                G, z0, i, steps=args.steps, step_size=args.step_size, method=args.method, topk_method="auto"
            )
            n_eval += tr.evaluations
            n_iter += tr.iterations
            paths[f"curve v{i}"].append(tr.z)
            paths[f"line v{i}"].append(z0[None] + t[:, None, None] * tr.tangent[0][None])
            bar.update(2)
        for j in range(d):
            paths[f"axis z{j}"].append(z0[None] + t[:, None, None] * eye[j][None, None])
            bar.update(1)
    bar.close()
    return paths, n_eval, n_iter


def _output_length(args, G, d, gen, arcs, kinds):
    """(L, how it was chosen): the output path length every path is cut at."""
    totals = torch.cat([a[-1] for k in kinds for a in arcs[k]])
    if args.length_quantile is not None:
        L = float(torch.quantile(totals.double(), args.length_quantile))
        return L, f"the {args.length_quantile:g} quantile of the output lengths of all paths within the budget"
    return args.length_frac * typical_distance(
        G, d, gen
    ), f"{args.length_frac:g} x the median distance between generated images"


def _score(args, G, predictor, paths, arcs, L, keep, kinds, factor_names):
    """Pass 2: cut every path at output length L, resample, read the factors, score.  Returns
    (per-path rows, {kind: (purity, reached)}, the images shown per kind)."""
    res = {k: {"purity": [], "changes": [], "reached": []} for k in kinds}
    shown: dict[str, torch.Tensor] = {}
    for k in tqdm(kinds, desc="purity"):
        for bi, (Z, arc) in enumerate(zip(paths[k], arcs[k])):
            pur, ch, reached, _, imgs = measure(G, predictor, Z, L, args.points, arc, keep)
            res[k]["purity"].append(pur)
            res[k]["changes"].append(ch)
            res[k]["reached"].append(reached)
            if bi == 0:
                shown[k] = imgs[:, : args.show]
    rows, scored = {}, {}
    for name in kinds:
        pur = torch.cat(res[name]["purity"])
        reached = torch.cat(res[name]["reached"])
        ch = torch.cat(res[name]["changes"])
        s = summarize(pur, reached)
        if s["n"]:
            dom = ch[reached].argmax(-1)
            s["dominant_factor"] = {factor_names[f]: float((dom == f).double().mean()) for f in range(ch.shape[1])}
            s["mean_change"] = {factor_names[f]: float(ch[reached][:, f].mean()) for f in range(ch.shape[1])}
        rows[name] = s
        scored[name] = (pur, reached)
    return rows, scored, shown


def _pooled_and_paired(scored, kinds, K):
    """Pooled summaries per family of paths, and the paired curve-minus-line comparison for the
    same start and vector (both reached)."""

    def pooled(prefix):
        names = [k for k in kinds if k.startswith(prefix)]
        pur = torch.cat([scored[k][0] for k in names])
        reached = torch.cat([scored[k][1] for k in names])
        return summarize(pur, reached)

    pooled_rows = {
        "curves (all v_i)": pooled("curve"),
        "lines (all v_i)": pooled("line"),
        "axes (all z_j)": pooled("axis"),
    }
    paired = {}
    for i in range(K):
        pc, rc = scored[f"curve v{i}"]
        pl, rl = scored[f"line v{i}"]
        both = rc & rl
        diff = (pc - pl)[both].double()
        paired[f"v{i}"] = {
            "n": int(both.sum()),
            "mean_curve_minus_line": float(diff.mean()) if diff.numel() else float("nan"),
            "sem": float(diff.std() / math.sqrt(diff.numel())) if diff.numel() > 1 else float("nan"),
            "curve_better_frac": float((diff > 0).double().mean()) if diff.numel() else float("nan"),
        }
    return pooled_rows, paired


def _markdown(args, report, factor_names, turning) -> str:
    label, L, how = report["generator"], report["output_length_L"], report["output_length_rule"]
    pooled_rows, rows, paired = report["pooled"], report["per_path"], report["paired_curve_vs_line"]
    md = [
        f"## Trajectory purity: {label}",
        "",
        f"{args.n_starts} starting points, output path length L = {L:.3f} "
        f"({how}), {args.points} points per path, factors scored: {', '.join(factor_names)}, "
        f"latent budget {args.steps * args.step_size:g}, integrator {args.method}; curves turn by "
        f"{float(turning.mean()):.1f} degrees on average (median {float(turning.median()):.1f}) over the budget.",
        "",
        "| paths | n reached | reached | mean purity | sem | median | share > 0.8 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in list(pooled_rows.items()) + list(rows.items()):
        if s["n"]:
            md.append(
                f"| {name} | {s['n']} | {s['reached']:.2f} | {s['mean']:.3f} | {s['sem']:.3f} | {s['median']:.3f} "
                f"| {s['frac_above_0.8']:.2f} |"
            )
        else:
            md.append(f"| {name} | 0 | 0.00 | - | - | - | - |")
    md += [
        "",
        "Paired, same start and vector (curve minus line):",
        "",
        "| vector | n | mean difference | sem | curve better |",
        "|---|---|---|---|---|",
    ]
    for k, s in paired.items():
        md.append(
            f"| {k} | {s['n']} | {s['mean_curve_minus_line']:+.3f} | {s['sem']:.3f} | {s['curve_better_frac']:.2f} |"
        )
    md += [
        "",
        "Dominant factor (share of reached paths):",
        "",
        "| paths | " + " | ".join(factor_names) + " |",
        "|---|" + "---|" * len(factor_names),
    ]
    for name, s in rows.items():
        if s["n"]:
            md.append(f"| {name} | " + " | ".join(f"{s['dominant_factor'][f]:.2f}" for f in factor_names) + " |")
    md += ["", f"Command: `{report['command']}`", ""]
    return "\n".join(md)


def report_one(args, ckpt, out: Path, argv, label=None) -> int:
    """Trace curves, lines and axes from --n-starts latents, score their purity, and write
    report.json, report.md and start{s}.png into out."""
    torch.manual_seed(args.seed)
    G, dataset = _load(args, ckpt)
    d = args.latent_dim or getattr(G, "latent_dim")
    K = min(args.directions, d)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    predictor, pinfo = load_or_fit_predictor(PredictorConfig(dataset=dataset), progress=True)
    factor_names, keep, ignored = _scored_factors(args, predictor, pinfo)
    gen = torch.Generator().manual_seed(args.seed)
    if args.length_frac is not None:
        args.length_quantile = None
    Z0 = torch.randn(args.n_starts, d, generator=gen)
    kinds = [f"curve v{i}" for i in range(K)] + [f"line v{i}" for i in range(K)] + [f"axis z{j}" for j in range(d)]
    paths, n_eval, n_iter = _trace_paths(args, G, Z0, d, K, kinds)
    arcs = {k: [output_arc_length(G, Z) for Z in paths[k]] for k in kinds}
    L, how = _output_length(args, G, d, gen, arcs, kinds)
    rows, scored, shown = _score(args, G, predictor, paths, arcs, L, keep, kinds, factor_names)
    pooled_rows, paired = _pooled_and_paired(scored, kinds, K)
    label = label or args.label or (Path(ckpt).parent.name if ckpt else args.generator)
    turning = torch.cat([turning_degrees(Z) for k in kinds if k.startswith("curve") for Z in paths[k]])
    report = {
        "generator": label,
        "source": ckpt or args.generator,
        "latent_dim": d,
        "dataset": dataset,
        "curve_turning_degrees_mean": float(turning.mean()),
        "curve_turning_degrees_median": float(turning.median()),
        "settings": {k: v for k, v in vars(args).items()},
        "output_length_L": L,
        "output_length_rule": how,
        "predictor": {"validation": pinfo.get("validation"), "cached": pinfo.get("cached")},
        "factors_scored": factor_names,
        "factors_ignored": ignored,
        "pooled": pooled_rows,
        "per_path": rows,
        "paired_curve_vs_line": paired,
        "topk_evaluations": n_eval,
        "power_iterations": n_iter,
        "seconds": time.time() - t_start,
        "command": "PYTHONPATH=. python bench/report_trajectories.py "
        + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
    }
    atomic_write_text(json.dumps(report, indent=1) + "\n", out / "report.json")
    md = _markdown(args, report, factor_names, turning)
    atomic_write_text(md, out / "report.md")
    print(md)
    names = (
        [k for k in kinds if k.startswith("curve")]
        + [k for k in kinds if k.startswith("line")]
        + [k for k in kinds if k.startswith("axis")][: max(K, 4)]
    )
    for s in range(min(args.show, Z0.shape[0])):
        viz.save_grid(torch.stack([shown[k][:, s] for k in names]), out / f"start{s}.png", row_labels=names, scale=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
