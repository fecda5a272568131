"""`spectral-ops demo`: does the spectral regularizer disentangle a small GAN?

With no arguments: render dSprites-like sprites, fit (or load from the cache) a factor predictor
used only for measuring, train the same small GAN twice from the same seed, without and with the
spectral regularizer, then print a side-by-side table (MIG, DCI, activeness, Frechet distance,
time) and write under `runs/demo/`:

- `metrics.json`: everything in the table and more (per-factor MIG, the configs, timings);
- `traversals.png`: one row per latent dimension, baseline (left) vs spectral (right);
- `trajectories.png`: curved trajectories along the top-3 singular vectors of each generator;
- `baseline/` and `spectral/`: each run's checkpoint, log and summary.

Sized to finish within about 5 minutes on 2 CPU cores from a cold cache; `--steps` trades time
for quality, `--quick` is a seconds-long smoke run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from ._io import EVAL_MODULES, require_modules
from .data import DATASETS
from .evaluate import evaluate_generator, format_table, side_by_side, traversal_grid, writable_dir, _titled
from .metrics import PredictorConfig, load_or_fit_predictor
from .train import TrainConfig, train

__all__ = ["add_arguments", "run", "demo"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=800, help="GAN training steps per run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="GAN batch size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed shared by both runs (default: %(default)s)")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="sprites", help="procedural dataset (default: %(default)s)")
    parser.add_argument("--reg-weight", type=float, default=1.0, help="spectral regularizer weight (default: %(default)s)")
    parser.add_argument("--reg-loss", choices=("l1", "assigned", "offdiag"), default="offdiag", help="spectral loss variant (default: %(default)s)")
    parser.add_argument("--reg-grad", choices=("fast", "implicit"), default="fast", help="spectral gradient mode (default: %(default)s)")
    parser.add_argument("--n-eval", type=int, default=2000, help="latent samples for the metrics (default: %(default)s)")
    parser.add_argument("--cache-dir", default=None, help="factor-predictor cache (default: $SPECTRAL_OPS_CACHE or ~/.cache/spectral_ops)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test configuration (seconds, meaningless numbers)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def demo(*, out: str | os.PathLike = "runs/demo", steps: int = 800, batch_size: int = 32, seed: int = 0,
         dataset: str = "sprites", reg_weight: float = 1.0, reg_loss: str = "offdiag", reg_grad: str = "fast",
         n_eval: int = 2000, cache_dir=None, quick: bool = False, progress: bool = True,
         log=print) -> dict:
    """Run the comparison; returns the dict written to metrics.json."""
    t_start = time.perf_counter()
    out = Path(out)
    base = TrainConfig(dataset=dataset, steps=steps, batch_size=batch_size, seed=seed, log_every=50,
                       ckpt_every=max(steps, 1))
    pcfg = PredictorConfig(dataset=dataset)
    if quick:
        base = dataclasses.replace(base, steps=min(steps, 20), ckpt_every=20, n_train=512, width=8, log_every=5)
        n_eval = min(n_eval, 300)
        pcfg = dataclasses.replace(pcfg, n_train=512, n_val=128, epochs=1, batch_size=64)
    base.validate()
    predictor, pinfo = load_or_fit_predictor(pcfg, cache_dir=cache_dir, progress=progress)
    how = "cached" if pinfo["cached"] else "fitted in %.0f s" % pinfo["fit_seconds"]
    log(f"factor predictor ({how}): "
        + ", ".join(f"{k} {'acc' if 'accuracy' in v else 'R2'} {next(iter(v.values())):.2f}"
                    for k, v in pinfo["validation"].items()))
    runs = {"baseline": dataclasses.replace(base, reg="none", out=str(out / "baseline")),
            "spectral": dataclasses.replace(base, reg="spectral", reg_weight=reg_weight, reg_loss=reg_loss,
                                            reg_grad=reg_grad, out=str(out / "spectral"))}
    results, models = {}, {}
    for name, cfg in runs.items():
        res = train(cfg, progress=progress, desc=f"{name} GAN")
        ev = evaluate_generator(res.G, dataset=dataset, size=cfg.size, predictor=predictor, n=n_eval, seed=seed)
        ev["train_seconds"] = res.seconds
        results[name], models[name] = ev, res.G
        log(f"{name}: trained {res.steps} steps in {res.seconds:.0f} s, MIG {ev['mig']:.3f}")

    table = format_table(results)
    # pictures: coordinate traversals, and curved singular-vector trajectories
    z0 = torch.randn(1, base.latent_dim, generator=torch.Generator().manual_seed(seed + 7))
    side_by_side([traversal_grid(models[n], z0=z0, title=f"{n}: rows = latent dims z0..z{base.latent_dim - 1}")
                  for n in models]).save(out / "traversals.png")
    pictures = ["traversals.png"]
    try:
        from .viz import make_grid, trajectory_traversal

        tiles = []
        for name, G in models.items():
            rows, _, _ = trajectory_traversal(G, z0, [0, 1, 2], span=2.5, n=9, steps=8, iters=6)
            tiles.append(_titled(make_grid(rows.clamp(0, 1), row_labels=["v1", "v2", "v3"], value_range=(0.0, 1.0),
                                           scale=2), f"{name}: curved top-3 singular-vector trajectories"))
        side_by_side(tiles).save(out / "trajectories.png")
        pictures.append("trajectories.png")
    except Exception as exc:  # pictures are a bonus: report, do not lose the measurements
        log(f"(trajectory pictures skipped: {exc})")
    total = time.perf_counter() - t_start
    blob = {"results": results, "table": table, "total_seconds": total, "pictures": pictures,
            "predictor": pinfo, "configs": {n: dataclasses.asdict(c) for n, c in runs.items()},
            "threads": torch.get_num_threads(), "quick": quick}
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(blob, indent=2, default=str))
    os.replace(tmp, out / "metrics.json")
    return blob


def run(args: argparse.Namespace) -> int:
    try:
        require_modules("spectral-ops demo", EVAL_MODULES)
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        if args.batch_size < 2:
            raise ValueError(f"--batch-size must be >= 2, got {args.batch_size}")
        if args.n_eval < 100:
            raise ValueError(f"--n-eval must be >= 100, got {args.n_eval}")
        if not args.reg_weight >= 0:
            raise ValueError(f"--reg-weight must be >= 0, got {args.reg_weight}")
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        msg = writable_dir(args.out)
        if msg:
            raise ValueError(msg)
        blob = demo(out=args.out, steps=args.steps, batch_size=args.batch_size, seed=args.seed, dataset=args.dataset,
                    reg_weight=args.reg_weight, reg_loss=args.reg_loss, reg_grad=args.reg_grad, n_eval=args.n_eval,
                    cache_dir=args.cache_dir, quick=args.quick, progress=not args.no_progress)
    except ValueError as exc:
        print(f"spectral-ops demo: error: {exc}", file=sys.stderr)
        return 2
    print()
    print(blob["table"])
    print(f"\ntotal {blob['total_seconds']:.0f} s; wrote {Path(args.out) / 'metrics.json'} and "
          + ", ".join(str(Path(args.out) / p) for p in blob["pictures"]))
    return 0
