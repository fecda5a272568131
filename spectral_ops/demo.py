"""`spectral-ops demo`: does the spectral regularizer disentangle a small GAN?

With no arguments: render the procedural `spot` images (one disc; factors x, y, radius and
brightness, with distinct output sensitivities), fit (or load from the cache) a factor predictor
used only for measuring, train the same small GAN twice from the same seed, without and with the
spectral regularizer (in two processes), then print a side-by-side table with the pipeline's own
ceiling (an oracle generator z_i -> factor i) and floor (the same oracle, rotated): MIG, MIG-sup,
DCI over varying factors, the axis alignment of the top singular vectors, the Frechet distance as
a multiple of real-vs-real, time; and write under `runs/demo/`:

- `metrics.json`: everything in the table and more (per-factor MIG, the configs, timings);
- `traversals.png`: one row per latent dimension, baseline (left) vs spectral (right);
- `trajectories.png`: curved trajectories along the top-3 singular vectors of each generator;
- `baseline/` and `spectral/`: each run's checkpoint, log and summary.

A rerun into the same folder replaces what the previous one wrote there (and says so).

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
from .evaluate import (evaluate_generator, format_table, reference_rows, side_by_side, traversal_grid, writable_dir,
                       _titled)
from .metrics import PredictorConfig, load_or_fit_predictor
from .train import RUN_FILES, TrainConfig, load_generator, train
from .viz import typical_latent

__all__ = ["add_arguments", "run", "demo", "DEMO"]

#: The demo's setting. `spot` (one disc: x, y, radius, brightness, with distinct output
#: sensitivities) is a dataset the baseline GAN learns in this budget (Frechet distance within
#: 10x of real-vs-real); the regularizer weight comes from docs/experiment.md.
DEMO = {"dataset": "spot", "latent_dim": 6, "steps": 1400, "batch_size": 64, "reg_weight": 0.3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo",
                        help="output folder; a rerun replaces the demo's previous output there (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=DEMO["steps"], help="GAN training steps per run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=DEMO["batch_size"], help="GAN batch size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed shared by both runs (default: %(default)s)")
    parser.add_argument("--latent-dim", type=int, default=DEMO["latent_dim"], help="latent size (default: %(default)s)")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default=DEMO["dataset"], help="procedural dataset (default: %(default)s)")
    parser.add_argument("--reg-weight", type=float, default=DEMO["reg_weight"], help="spectral regularizer weight (default: %(default)s)")
    parser.add_argument("--reg-loss", choices=("l1", "assigned", "offdiag"), default="offdiag", help="spectral loss variant (default: %(default)s)")
    parser.add_argument("--reg-grad", choices=("fast", "implicit"), default="fast", help="spectral gradient mode (default: %(default)s)")
    parser.add_argument("--n-eval", type=int, default=2000, help="latent samples for the metrics (default: %(default)s)")
    parser.add_argument("--cache-dir", default=None, help="factor-predictor cache (default: $SPECTRAL_OPS_CACHE or ~/.cache/spectral_ops)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="train the two GANs in this many processes, one thread each (default: 2 when the "
                             "machine has 2 or more cores, else 1)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test configuration (seconds, meaningless numbers)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def demo(*, out: str | os.PathLike = "runs/demo", steps: int = DEMO["steps"], batch_size: int = DEMO["batch_size"],
         seed: int = 0, dataset: str = DEMO["dataset"], latent_dim: int = DEMO["latent_dim"],
         reg_weight: float = DEMO["reg_weight"], reg_loss: str = "offdiag", reg_grad: str = "fast",
         n_eval: int = 2000, cache_dir=None, quick: bool = False, progress: bool = True, jobs: int = 1,
         log=print) -> dict:
    """Run the comparison; returns the dict written to metrics.json."""
    t_start = time.perf_counter()
    out = Path(out)
    base = TrainConfig(dataset=dataset, latent_dim=latent_dim, steps=steps, batch_size=batch_size, seed=seed, log_every=50,
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
    previous = [name for name, cfg in runs.items() if any((Path(cfg.out) / f).exists() for f in RUN_FILES)]
    if previous:
        log(f"replacing the previous demo runs in {out} ({', '.join(previous)})")
    trained = _train_all(runs, jobs=jobs, progress=progress)
    for name, cfg in runs.items():
        G, seconds, steps = trained[name]
        ev = evaluate_generator(G, dataset=dataset, size=cfg.size, predictor=predictor, n=n_eval, seed=seed)
        ev["train_seconds"] = seconds
        results[name], models[name] = ev, G
        log(f"{name}: trained {steps} steps in {seconds:.0f} s, MIG {ev['mig']:.3f}, "
            f"Frechet {ev['frechet_distance']:.2f} ({ev['frechet_ratio']:.1f}x real-vs-real)")
    references = reference_rows(dataset, base.size, base.latent_dim, predictor, n=n_eval, seed=seed)
    table = format_table({**results, **references})
    # pictures: coordinate traversals, and curved singular-vector trajectories
    z0 = typical_latent(base.latent_dim, seed=seed + 7)  # ||z0|| = sqrt(d), a typical latent
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
    blob = {"results": results, "reference": references, "table": table, "total_seconds": total, "pictures": pictures,
            "predictor": pinfo, "configs": {n: dataclasses.asdict(c) for n, c in runs.items()},
            "threads": torch.get_num_threads(), "quick": quick}
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(blob, indent=2, default=str))
    os.replace(tmp, out / "metrics.json")
    return blob


def _train_one(name: str, cfg: TrainConfig, progress: bool, threads: int | None):
    """Train one run (in this process or a worker); returns (name, checkpoint, seconds, steps)."""
    if threads is not None:
        torch.set_num_threads(threads)
    res = train(cfg, overwrite=True, progress=progress, desc=f"{name} GAN")
    return name, res.checkpoint, res.seconds, res.steps


def _train_all(runs: dict, *, jobs: int, progress: bool) -> dict:
    """{name: (G for evaluation, train seconds, steps)}: the runs in `jobs` processes (one torch
    thread each, spawned, so they share nothing), or one after the other in this process."""
    if jobs <= 1 or len(runs) <= 1:
        out = {}
        for name, cfg in runs.items():
            res = train(cfg, overwrite=True, progress=progress, desc=f"{name} GAN")
            out[name] = (res.G, res.seconds, res.steps)  # the evaluation generator (EMA when kept)
        return out
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(jobs, len(runs)), mp_context=ctx) as pool:
        # one progress bar (the last, regularized run: the longer one); two would overwrite each other
        last = list(runs)[-1]
        futures = [pool.submit(_train_one, name, cfg, progress and name == last, 1) for name, cfg in runs.items()]
        done = [f.result() for f in futures]
    return {name: (load_generator(ckpt)[0], seconds, steps) for name, ckpt, seconds, steps in done}


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
        jobs = args.jobs if args.jobs is not None else (2 if (os.cpu_count() or 1) >= 2 else 1)
        if jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {jobs}")
        msg = writable_dir(args.out)
        if msg:
            raise ValueError(msg)
        if args.latent_dim < 4:
            raise ValueError(f"--latent-dim must be >= 4 (k = 4 singular vectors), got {args.latent_dim}")
        blob = demo(out=args.out, steps=args.steps, batch_size=args.batch_size, seed=args.seed, dataset=args.dataset,
                    latent_dim=args.latent_dim,
                    reg_weight=args.reg_weight, reg_loss=args.reg_loss, reg_grad=args.reg_grad, n_eval=args.n_eval,
                    cache_dir=args.cache_dir, quick=args.quick, progress=not args.no_progress, jobs=jobs)
    except ValueError as exc:
        print(f"spectral-ops demo: error: {exc}", file=sys.stderr)
        return 2
    print()
    print(blob["table"])
    print(f"\ntotal {blob['total_seconds']:.0f} s; wrote {Path(args.out) / 'metrics.json'} and "
          + ", ".join(str(Path(args.out) / p) for p in blob["pictures"]))
    return 0
