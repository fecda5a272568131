"""`spectral-ops eval`: measure how disentangled a trained generator is.

For N latent samples z ~ N(0, I): generate images, read their factors with the factor predictor
(fitted once on labelled procedural images and cached; it never sees the GAN), then compute
MIG and DCI between z and the predicted factors, per-dimension activeness (E ||J e_i||), and a
Frechet distance between the predictor's features of real and generated images (lower is
better). Also draws a traversal grid: one row per latent dimension.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ._io import EVAL_MODULES, require_modules, writable_dir
from .data import DATASETS, make_dataset
from .metrics import (PredictorConfig, activeness, activeness_summary, dci, frechet_distance,
                      load_or_fit_predictor, mig)

__all__ = ["evaluate_generator", "traversal_grid", "side_by_side", "add_arguments", "run"]


@torch.no_grad()
def _generate(G, z: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    return torch.cat([G(z[i:i + chunk]) for i in range(0, z.shape[0], chunk)])


def evaluate_generator(G, *, dataset: str, size: int, predictor, n: int = 2000, seed: int = 0,
                       n_active: int = 200, real_images: torch.Tensor | None = None) -> dict:
    """Disentanglement and sample statistics of G: (N, d) -> (N, 1, size, size) in [0, 1].

    Args:
        G: the generator (its latent size is read from `G.latent_dim`).
        dataset, size: the procedural dataset G was trained on (names the factors).
        predictor: a fitted FactorPredictor for that dataset.
        n: latent samples for MIG / DCI / Frechet distance.
        seed: seed of the latent samples (and of the real images when not given).
        n_active: samples for activeness.
        real_images: (M, 1, size, size) real images for the Frechet distance; default: n rendered.

    Returns:
        dict: mig, mig_per_factor, dci_disentanglement, dci_completeness, dci_informativeness,
        activeness (per_dim, active_dims, effective_dims), frechet_distance, factor_names, seconds.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    t0 = time.perf_counter()
    d = G.latent_dim
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=gen)
    images = _generate(G, z).clamp(0, 1)
    pred, feats = predictor.predict(images, return_features=True)
    levels = predictor.to_levels(pred)
    names = list(predictor.factor_names)
    m = mig(z.numpy(), levels.numpy())
    # DCI: class index for categorical factors, the predicted value in [0, 1] for ordinal ones
    dc = dci(z.numpy(), pred.numpy(), categorical=predictor.categorical, seed=seed)
    act = activeness_summary(activeness(G, z[:n_active]))
    if real_images is None:
        real_images = make_dataset(dataset, n, size=size, seed=10_000 + seed).images
    _, real_feats = predictor.predict(real_images, return_features=True)
    fd = frechet_distance(real_feats, feats)
    return {"mig": m["mig"], "mig_per_factor": dict(zip(names, m["per_factor"])),
            "varying_factors": m["varying_factors"],
            "dci_disentanglement": dc["disentanglement"], "dci_completeness": dc["completeness"],
            "dci_informativeness": dc["informativeness"],
            "dci_informativeness_per_factor": dict(zip(names, dc["informativeness_per_factor"])),
            "activeness": act, "frechet_distance": fd, "factor_names": names, "n": n,
            "seconds": time.perf_counter() - t0}


@torch.no_grad()
def traversal_grid(G, *, z0: torch.Tensor | None = None, span: float = 2.5, n: int = 9, scale: int = 2,
                   title: str | None = None) -> Image.Image:
    """One row per latent dimension i: G(z0 + t e_i), t in linspace(-span, span, n). z0: (1, d)
    (default: zeros). Returns an RGB image with row labels (and a title line if given)."""
    from .viz import coordinate_traversal, make_grid

    d = G.latent_dim
    z0 = torch.zeros(1, d) if z0 is None else z0.reshape(1, d)
    rows, _ = coordinate_traversal(G, z0, list(range(d)), span=span, n=n)
    grid = make_grid(rows.clamp(0, 1), row_labels=[f"z{i}" for i in range(d)], value_range=(0.0, 1.0), scale=scale)
    return _titled(grid, title) if title else grid


def _titled(img: Image.Image, title: str) -> Image.Image:
    out = Image.new("RGB", (img.width, img.height + 16), (255, 255, 255))
    ImageDraw.Draw(out).text((4, 2), title, fill=(0, 0, 0))
    out.paste(img, (0, 16))
    return out


def side_by_side(images: list[Image.Image], gap: int = 12) -> Image.Image:
    """Paste images left to right on a white background."""
    w = sum(im.width for im in images) + gap * (len(images) - 1)
    h = max(im.height for im in images)
    out = Image.new("RGB", (w, h), (255, 255, 255))
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width + gap
    return out


def format_table(results: dict[str, dict]) -> str:
    """A fixed-width table, one column per run (name -> evaluate_generator output + 'train_seconds')."""
    names = list(results)
    rows = [("MIG (higher better)", lambda r: f"{r['mig']:.3f}"),
            ("DCI disentanglement", lambda r: f"{r['dci_disentanglement']:.3f}"),
            ("DCI completeness", lambda r: f"{r['dci_completeness']:.3f}"),
            ("DCI informativeness", lambda r: f"{r['dci_informativeness']:.3f}"),
            ("active dims (>10% of max)", lambda r: f"{r['activeness']['active_dims']}/{len(r['activeness']['per_dim'])}"),
            ("effective dims", lambda r: f"{r['activeness']['effective_dims']:.2f}"),
            ("Frechet dist. (lower better)", lambda r: f"{r['frechet_distance']:.2f}"),
            ("train time (s)", lambda r: f"{r.get('train_seconds', float('nan')):.1f}")]
    for f in results[names[0]]["factor_names"]:
        rows.insert(1, (f"  MIG {f}", lambda r, f=f: f"{r['mig_per_factor'][f]:.3f}"))
    rows = rows[:1] + rows[1:1 + len(results[names[0]]["factor_names"])][::-1] + rows[1 + len(results[names[0]]["factor_names"]):]
    w0 = max(len(r[0]) for r in rows) + 2
    cols = [max(len(n), 9) + 2 for n in names]
    lines = ["".ljust(w0) + "".join(n.rjust(c) for n, c in zip(names, cols))]
    lines.append("-" * (w0 + sum(cols)))
    for label, fn in rows:
        lines.append(label.ljust(w0) + "".join(fn(results[n]).rjust(c) for n, c in zip(names, cols)))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, metavar="PATH", help="checkpoint written by `spectral-ops train` or `demo`")
    parser.add_argument("--n-samples", type=int, default=2000, help="latent samples for MIG / DCI / Frechet distance (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent samples (default: %(default)s)")
    parser.add_argument("--out", default=None, help="folder for eval.json and traversal.png (default: the checkpoint's folder)")
    parser.add_argument("--cache-dir", default=None, help="factor-predictor cache (default: $SPECTRAL_OPS_CACHE or ~/.cache/spectral_ops)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from .train import load_generator

    try:
        require_modules("spectral-ops eval", EVAL_MODULES, extra="eval")
        if args.n_samples < 100:
            raise ValueError(f"--n-samples must be >= 100, got {args.n_samples}")
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        if not os.path.isfile(args.ckpt):
            raise ValueError(f"--ckpt: no such file {args.ckpt!r}")
        try:
            G, config = load_generator(args.ckpt)
        except Exception as exc:
            raise ValueError(f"--ckpt: cannot read a training checkpoint from {args.ckpt!r}: {exc}") from None
        out = Path(args.out) if args.out else Path(args.ckpt).resolve().parent
        msg = writable_dir(out)
        if msg:
            raise ValueError(msg)
        predictor, pinfo = load_or_fit_predictor(PredictorConfig(dataset=config.dataset, size=config.size),
                                                 cache_dir=args.cache_dir, progress=not args.no_progress)
        res = evaluate_generator(G, dataset=config.dataset, size=config.size, predictor=predictor,
                                 n=args.n_samples, seed=args.seed)
    except ValueError as exc:
        print(f"spectral-ops eval: error: {exc}", file=sys.stderr)
        return 2
    res["checkpoint"] = str(args.ckpt)
    res["predictor_validation"] = pinfo["validation"]
    print(format_table({Path(args.ckpt).parent.name or "model": res}))
    (out / "eval.json").write_text(json.dumps(res, indent=2))
    traversal_grid(G, title=f"{args.ckpt}: rows = latent dims").save(out / "traversal.png")
    print(f"wrote {out / 'eval.json'} and {out / 'traversal.png'}")
    return 0
