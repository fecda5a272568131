"""Post-hoc direction finders compared on known factors: which way of choosing K directions in z
moves one ground-truth factor per direction?

On trained generator checkpoints (default: every runs/exp23_d10/<variant>/seed<N>/checkpoint.pt),
with K = the dataset's number of factors, each finder gives K unit directions in z:

- global: `spectral_ops.global_directions`, the top-K eigenvectors of E_z[J^T J];
- local, aggregated: `spectral_ops.jacobian_topk` at --n-fit typical latents, then the top-K
  eigenvectors of the mean over samples of V V^T (V: the sample's top-K right-singular vectors);
- local, per start: the top-K right-singular vectors at each start z0 itself (a different set of
  directions per start; no global code, so no MIG-like score);
- SeFa (Shen & Zhou 2021): the top-K eigenvectors of A^T A, A the weight of G's first layer (the
  Linear that takes z), each row normalised to unit norm as in the official code;
- GANSpace (Haerkoenen et al. 2020): PCA (d components) of the first hidden activation (the input
  of the first transposed convolution) over --n-fit x 8 latents, mapped back to z by least squares
  z ~ M^T x on the standardised PCA coordinates x; the first K rows of M, normalised;
- axes: the latent coordinate axes (what MIG scores), all d of them, and the K with the largest
  mean image change under the step below;
- random: 3 sets of K random orthonormal directions (the floor);
- oracle axes: the oracle generator z_i -> factor i rendered by the dataset itself
  (spectral_ops.lab.metrics.reference_generators), its first K axes (the ceiling).

Scoring.  From --starts random starts z0 ~ N(0, I), every direction u is traversed as the straight
path z0 + t u, t in [-step, step] at --points points (both signs, the same latent step for every
finder), the cached factor predictor reads the factors of every image, and
`spectral_ops.lab.metrics.trajectory.purity_from_changes` gives per start the share of the total
factor change (total variation along the path) taken by the most-changed factor.  Per direction:
its mean purity over starts and the factor it moves (the largest total change summed over starts).
Per finder: the mean purity over its K directions, the number of distinct factors its K
directions move, and a MIG-like score: the project's MIG (20 quantile bins, normalised by the
factor's entropy, on the predicted levels of G(z) for --n-mig latents) computed over the finder's
K coordinates c = (U U^T)^-1 U z (U: the directions as rows; c = U z when they are orthonormal)
instead of the d latent axes.  For "axes (all d)" it is the usual MIG over z.

    PYTHONPATH=. python bench/bench_direction_finders.py                     # every checkpoint found
    PYTHONPATH=. python bench/bench_direction_finders.py --ckpt runs/a/checkpoint.pt runs/b/checkpoint.pt

Prints markdown tables (per checkpoint, then mean +- std over the seeds of each variant) and writes
them, with the command, to --out (default bench/results/direction_finders.md).
"""

from __future__ import annotations

import argparse
import glob
import math
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spectral_ops import global_directions, jacobian_topk
from spectral_ops.lab.metrics import PredictorConfig, load_or_fit_predictor
from spectral_ops.lab.metrics.disentanglement import mig, varying_mask
from spectral_ops.lab.metrics.reference_generators import oracle_generator
from spectral_ops.lab.metrics.trajectory import factor_changes, purity_from_changes

DEFAULT_GLOB = "runs/exp23_d10/*/seed*/checkpoint.pt"
RANDOM_SETS = 3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", nargs="+", default=None, help=f"training checkpoints (default: {DEFAULT_GLOB})")
    p.add_argument("--starts", type=int, default=128, help="random starts z0 per direction (default: %(default)s)")
    p.add_argument(
        "--step", type=float, default=1.5, help="latent step each way along a direction (default: %(default)s)"
    )
    p.add_argument("--points", type=int, default=9, help="points along each path (default: %(default)s)")
    p.add_argument("--n-fit", type=int, default=512, help="latents the finders average over (default: %(default)s)")
    p.add_argument("--n-mig", type=int, default=2000, help="latents of the MIG-like score (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="bench/results/direction_finders.md")
    return p.parse_args(argv)


# ---- the finders: each returns K unit directions [K, d] (float32) -----------------------------
def _unit_rows(U: torch.Tensor) -> torch.Tensor:
    return (U / U.norm(dim=1, keepdim=True)).float()


def _top_eigvecs(M: torch.Tensor, K: int) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(M.double())
    return _unit_rows(vecs[:, torch.argsort(vals, descending=True)[:K]].T)


def find_global(G, d: int, K: int, n: int, seed: int) -> torch.Tensor:
    return _unit_rows(global_directions(G, n, K, latent_dim=d, seed=seed).directions)


def find_local_aggregated(G, z: torch.Tensor, K: int) -> torch.Tensor:
    V = jacobian_topk(G, z, K).vectors.double()  # [n, K, d]
    return _top_eigvecs(torch.einsum("nki,nkj->ij", V, V) / V.shape[0], K)


def find_sefa(G, K: int) -> torch.Tensor:
    A = G.fc.weight.detach().double()  # [out, d]: the layer that takes z
    A = A / A.norm(dim=1, keepdim=True)
    return _top_eigvecs(A.T @ A, K)


def _first_hidden(G, z: torch.Tensor) -> torch.Tensor:
    """The input of G's first transposed convolution, flattened per row."""
    out: list[torch.Tensor] = []
    hook = G.net[0].register_forward_pre_hook(lambda m, args: out.append(args[0]))
    try:
        with torch.no_grad():
            G(z)
    finally:
        hook.remove()
    return out[0].reshape(z.shape[0], -1).double()


def find_ganspace(G, d: int, K: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, d, generator=gen)
    X = torch.cat([_first_hidden(G, Z[i : i + 1024]) for i in range(0, n, 1024)])
    mean = X.mean(0, keepdim=True)
    _, S, Vh = torch.linalg.svd(X - mean, full_matrices=False)
    comp = Vh[:d]  # [d, m]: d principal components of the activations
    coords = (X - mean) @ comp.T / (S[:d] / math.sqrt(n - 1))  # standardised PCA coordinates [n, d]
    M = torch.linalg.lstsq(coords, Z.double()).solution  # [d, d]: z ~ M^T x
    return _unit_rows(M[:K])


def random_directions(d: int, K: int, seed: int) -> torch.Tensor:
    Q, _ = torch.linalg.qr(torch.randn(d, K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return Q.T.float()


# ---- scoring ---------------------------------------------------------------------------------
@torch.no_grad()
def _images(G, Z: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    return torch.cat([G(Z[i : i + chunk]) for i in range(0, Z.shape[0], chunk)]).clamp(0, 1)


def score_directions(G, predictor, dirs: torch.Tensor, z0: torch.Tensor, step: float, points: int) -> list[dict]:
    """dirs [K, d] (the same for every start) or [n, K, d] (one set per start) -> per direction
    {purity (mean over starts), changes [F] (summed over starts), winner, image_change}."""
    n, d = z0.shape
    per_start = dirs.dim() == 3
    t = torch.linspace(-step, step, points)
    out = []
    for i in range(dirs.shape[-2]):
        u = dirs[:, i] if per_start else dirs[i].expand(n, d)  # [n, d]
        Z = z0[None] + t[:, None, None] * u[None]  # [T, n, d]
        imgs = _images(G, Z.reshape(-1, d))
        imgs = imgs.reshape(points, n, *imgs.shape[1:])
        ch = factor_changes(imgs, predictor=predictor)  # [n, F]
        pur = purity_from_changes(ch)
        img_len = (imgs[1:] - imgs[:-1]).flatten(2).norm(dim=-1).sum(0)  # [n] image-space path length
        total = ch.sum(0)
        out.append(
            {
                "purity": float(pur.mean()),
                "changes": total.tolist(),
                "winner": int(total.argmax()),
                "image_change": float(img_len.mean()),
            }
        )
    return out


def mig_like(U: torch.Tensor, Z: torch.Tensor, levels: torch.Tensor) -> float:
    """MIG over the K coordinates of z along the directions U [K, d] (see the module docstring)."""
    U = U.double()
    codes = torch.linalg.solve(U @ U.T, U @ Z.double().T).T  # [N, K]
    return float(mig(codes.numpy(), levels.numpy(), varying=varying_mask(levels.numpy()))["mig"])


def summarise(name: str, scored: list[dict], U: torch.Tensor | None, mig_data, names) -> dict:
    winners = [s["winner"] for s in scored]
    return {
        "finder": name,
        "purity": sum(s["purity"] for s in scored) / len(scored),
        "distinct": len(set(winners)),
        "moves": ",".join(names[w] for w in winners),
        "image_change": sum(s["image_change"] for s in scored) / len(scored),
        "mig": float("nan") if U is None else mig_like(U, *mig_data),
    }


def _mig_data(G, predictor, d: int, n: int, seed: int):
    Z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed + 1))
    pred = predictor.predict(_images(G, Z))
    return Z, predictor.to_levels(pred)


def evaluate_checkpoint(G, predictor, args, K: int) -> list[dict]:
    d = G.latent_dim
    names = list(predictor.factor_names)
    gen = torch.Generator().manual_seed(args.seed)
    z0 = torch.randn(args.starts, d, generator=gen)
    z_fit = torch.randn(args.n_fit, d, generator=gen)
    mig_data = _mig_data(G, predictor, d, args.n_mig, args.seed)
    sc = lambda U: score_directions(G, predictor, U, z0, args.step, args.points)
    rows = []
    finders = {
        "global E[J^T J]": lambda: find_global(G, d, K, args.n_fit, args.seed),
        "local top-k, aggregated": lambda: find_local_aggregated(G, z_fit, K),
        "SeFa": lambda: find_sefa(G, K),
        "GANSpace": lambda: find_ganspace(G, d, K, 8 * args.n_fit, args.seed),
    }
    for name, find in finders.items():
        U = find()
        rows.append(summarise(name, sc(U), U, mig_data, names))
    V = jacobian_topk(G, z0, K).vectors.float()  # [n, K, d]
    rows.append(summarise("local top-k, per start", sc(V), None, mig_data, names))
    eye = torch.eye(d)
    axes = sc(eye)
    rows.append(summarise("axes (all d)", axes, eye, mig_data, names))
    active = sorted(range(d), key=lambda j: -axes[j]["image_change"])[:K]
    rows.append(summarise("axes (K most active)", [axes[j] for j in active], eye[active], mig_data, names))
    rand = [
        summarise("random", sc(R), R, mig_data, names)
        for R in map(lambda s: random_directions(d, K, s), range(RANDOM_SETS))
    ]
    rows.append(
        {
            "finder": f"random (mean of {RANDOM_SETS} sets)",
            **{k: sum(r[k] for r in rand) / len(rand) for k in ("purity", "distinct", "image_change", "mig")},
            "moves": " / ".join(r["moves"] for r in rand),
        }
    )
    return rows


def evaluate_oracle(dataset: str, d: int, size: int, predictor, args, K: int) -> dict:
    G = oracle_generator(dataset, d, size)
    names = list(predictor.factor_names)
    z0 = torch.randn(args.starts, d, generator=torch.Generator().manual_seed(args.seed))
    U = torch.eye(d)[:K]
    scored = score_directions(G, predictor, U, z0, args.step, args.points)
    return summarise("oracle axes (ceiling)", scored, U, _mig_data(G, predictor, d, args.n_mig, args.seed), names)


# ---- tables ----------------------------------------------------------------------------------
HEAD = (
    "| finder | mean purity | distinct factors moved (of K) | factor moved by each direction "
    "| MIG over its K coordinates | mean image change |\n|---|---|---|---|---|---|"
)


def _f(x: float, fmt: str = ".3f") -> str:
    return "n/a" if x != x else format(x, fmt)


def row_line(r: dict) -> str:
    dist = f"{r['distinct']:.2f}" if isinstance(r["distinct"], float) else str(r["distinct"])
    cells = [r["finder"], _f(r["purity"]), dist, r["moves"], _f(r["mig"]), _f(r["image_change"], ".2f")]
    return "| " + " | ".join(cells) + " |"


def _ms(xs: list[float]) -> str:
    xs = [x for x in xs if x == x]
    if not xs:
        return "n/a"
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return f"{m:.3f} ± {s:.3f}"


def summary_table(per_ckpt: dict[str, list[dict]], oracle: dict) -> str:
    variants: dict[str, list[str]] = {}
    for label in per_ckpt:
        variants.setdefault(label.rsplit("/", 1)[0], []).append(label)
    lines = [
        "| variant | seeds | finder | mean purity | distinct factors moved (of K) | MIG over its K coordinates |",
        "|---|---|---|---|---|---|",
    ]
    for v, labels in variants.items():
        for finder in (r["finder"] for r in per_ckpt[labels[0]]):
            rs = [next(r for r in per_ckpt[lb] if r["finder"] == finder) for lb in labels]
            cells = [_ms([float(r[k]) for r in rs]) for k in ("purity", "distinct", "mig")]
            lines.append(f"| {v} | {len(labels)} | {finder} | " + " | ".join(cells) + " |")
    lines.append(
        f"| oracle | - | {oracle['finder']} | {oracle['purity']:.3f} | {oracle['distinct']} | {_f(oracle['mig'])} |"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from spectral_ops.lab.train import load_generator

    paths = args.ckpt or sorted(glob.glob(DEFAULT_GLOB))
    if not paths:
        raise SystemExit(f"no checkpoints found (looked for {DEFAULT_GLOB}); pass --ckpt")
    t0 = time.perf_counter()
    per_ckpt: dict[str, list[dict]] = {}
    dataset = latent = size = None
    predictor = None
    for path in paths:
        G, cfg = load_generator(path)
        G.requires_grad_(False)
        if dataset is None:
            dataset, latent, size = cfg.dataset, cfg.latent_dim, cfg.size
            predictor, _ = load_or_fit_predictor(PredictorConfig(dataset=dataset, size=size), progress=False)
        elif (cfg.dataset, cfg.latent_dim, cfg.size) != (dataset, latent, size):
            raise SystemExit(f"{path}: dataset/latent/size differ from the first checkpoint's; run them separately")
        K = len(predictor.factor_names)
        label = f"{Path(path).parent.parent.name}/{Path(path).parent.name}"
        t1 = time.perf_counter()
        per_ckpt[label] = evaluate_checkpoint(G, predictor, args, K)
        print(f"{label}: {time.perf_counter() - t1:.0f} s", file=sys.stderr, flush=True)
    oracle = evaluate_oracle(dataset, latent, size, predictor, args, K)
    md = [
        "# Post-hoc direction finders on known factors",
        "",
        f"Dataset `{dataset}` ({', '.join(predictor.factor_names)}), latent {latent}, K = {K}; "
        f"{args.starts} starts, latent step ±{args.step} in {args.points} points, "
        f"finders fitted on {args.n_fit} latents, MIG-like score on {args.n_mig}. "
        "Definitions: the docstring of bench/bench_direction_finders.py.",
        "",
        "## Mean ± std over the seeds of each variant",
        "",
        summary_table(per_ckpt, oracle),
        "",
        "## Per checkpoint",
        "",
    ]
    for label, rows in per_ckpt.items():
        md += [f"### {label}", "", HEAD, *map(row_line, rows), ""]
    md += ["### oracle generator", "", HEAD, row_line(oracle), ""]
    cmd = sys.argv[1:] if argv is None else argv
    md += [
        f"Command (one thread, {time.perf_counter() - t0:.0f} s): "
        "`PYTHONPATH=. python bench/bench_direction_finders.py " + " ".join(shlex.quote(a) for a in cmd) + "`",
        "",
    ]
    text = "\n".join(md)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
