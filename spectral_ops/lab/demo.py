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

import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from spectral_ops.config import RegularizerConfig
from spectral_ops.lab.evaluate import (
    evaluate_generator,
    format_table,
    reference_rows,
    side_by_side,
    traversal_grid,
    _titled,
)
from spectral_ops.lab.io import atomic_save_image, atomic_write_text
from spectral_ops.lab.metrics import PredictorConfig, load_or_fit_predictor
from spectral_ops.lab.train import RUN_FILES, TRAIN_REGULARIZER, TrainConfig, load_generator, train
from spectral_ops.lab.viz import typical_latent

__all__ = ["demo", "DEMO"]

#: The demo's setting. `spot` (one disc: x, y, radius, brightness, with distinct output
#: sensitivities) is a dataset the baseline GAN learns in this budget (Frechet distance within
#: 10x of real-vs-real); the regularizer weight comes from docs/experiment.md.
DEMO = {"dataset": "spot", "latent_dim": 6, "steps": 1400, "batch_size": 64, "reg_weight": 0.1}


def demo(
    *,
    out: str | os.PathLike = "runs/demo",
    steps: int = DEMO["steps"],
    batch_size: int = DEMO["batch_size"],
    seed: int = 0,
    dataset: str = DEMO["dataset"],
    latent_dim: int = DEMO["latent_dim"],
    reg_weight: float = DEMO["reg_weight"],
    reg_config: RegularizerConfig = TRAIN_REGULARIZER,
    n_eval: int = 2000,
    cache_dir=None,
    quick: bool = False,
    progress: bool = True,
    jobs: int = 1,
    log=print,
) -> dict:
    """Run the comparison; returns the dict written to metrics.json."""
    t_start = time.perf_counter()
    out = Path(out)
    base = TrainConfig(
        dataset=dataset,
        latent_dim=latent_dim,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        log_every=50,
        ckpt_every=max(steps, 1),
    )
    pcfg = PredictorConfig(dataset=dataset)
    if quick:
        base = dataclasses.replace(base, steps=min(steps, 20), ckpt_every=20, n_train=512, width=8, log_every=5)
        n_eval = min(n_eval, 300)
        pcfg = dataclasses.replace(pcfg, n_train=512, n_val=128, epochs=1, batch_size=64)
    base.validate()
    predictor, pinfo = load_or_fit_predictor(pcfg, cache_dir=cache_dir, progress=progress)
    how = "cached" if pinfo["cached"] else "fitted in %.0f s" % pinfo["fit_seconds"]
    log(
        f"factor predictor ({how}): "
        + ", ".join(
            f"{k} {'acc' if 'accuracy' in v else 'R2'} {next(iter(v.values())):.2f}"
            for k, v in pinfo["validation"].items()
        )
    )
    runs = {
        "baseline": dataclasses.replace(base, reg="none", out=str(out / "baseline")),
        "spectral": dataclasses.replace(
            base, reg="spectral", reg_weight=reg_weight, reg_config=reg_config, out=str(out / "spectral")
        ),
    }
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
        log(
            f"{name}: trained {steps} steps in {seconds:.0f} s, MIG {ev['mig']:.3f}, "
            f"Frechet {ev['frechet_distance']:.2f} ({ev['frechet_ratio']:.1f}x real-vs-real)"
        )
    references = reference_rows(dataset, base.size, base.latent_dim, predictor, n=n_eval, seed=seed)
    table = format_table({**results, **references})
    # pictures: coordinate traversals, and curved singular-vector trajectories
    z0 = typical_latent(base.latent_dim, seed=seed + 7)  # ||z0|| = sqrt(d), a typical latent
    atomic_save_image(
        side_by_side(
            [
                traversal_grid(models[n], z0=z0, title=f"{n}: rows = latent dims z0..z{base.latent_dim - 1}")
                for n in models
            ]
        ),
        out / "traversals.png",
    )
    pictures = ["traversals.png"]
    try:
        from spectral_ops.lab.viz import make_grid, trajectory_traversal

        tiles = []
        for name, G in models.items():
            rows, _, _ = trajectory_traversal(G, z0, [0, 1, 2], span=2.5, n=9, steps=8, iters=6)
            tiles.append(
                _titled(
                    make_grid(rows.clamp(0, 1), row_labels=["v1", "v2", "v3"], value_range=(0.0, 1.0), scale=2),
                    f"{name}: curved top-3 singular-vector trajectories",
                )
            )
        atomic_save_image(side_by_side(tiles), out / "trajectories.png")
        pictures.append("trajectories.png")
    except Exception as exc:  # pictures are a bonus: report, do not lose the measurements
        log(f"(trajectory pictures skipped: {exc})")
    total = time.perf_counter() - t_start
    blob = {
        "results": results,
        "reference": references,
        "table": table,
        "total_seconds": total,
        "pictures": pictures,
        "predictor": pinfo,
        "configs": {n: dataclasses.asdict(c) for n, c in runs.items()},
        "threads": torch.get_num_threads(),
        "quick": quick,
    }
    atomic_write_text(json.dumps(blob, indent=2, default=str), out / "metrics.json")
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
