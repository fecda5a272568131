"""`spectral-ops demo`: the main job, with no arguments (spectral_ops.lab.demo says what it does).

The training options are generated from `TrainConfig` (defaults: the demo's setting, `DEMO`);
the rest are the demo's own.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from spectral_ops.lab.cli.errors import fail
from spectral_ops.lab.cli.options import add_cache_dir_option, add_options, add_threads_option, apply_threads, from_flat
from spectral_ops.lab.demo import DEMO, demo
from spectral_ops.lab.io import EVAL_MODULES, require_modules, writable_dir
from spectral_ops.lab.train import TrainConfig

#: the settings the demo's flags start from
DEMO_DEFAULTS = TrainConfig(**DEMO)
#: TrainConfig fields the demo exposes (both runs share them; reg_* only affect the spectral run)
DEMO_OPTIONS = ("steps", "batch_size", "seed", "latent_dim", "dataset", "reg_weight", "reg_config")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        default="runs/demo",
        help="output folder; a rerun replaces the demo's previous output there (default: %(default)s)",
    )
    add_options(parser, TrainConfig, DEMO_DEFAULTS, only=DEMO_OPTIONS)
    parser.add_argument(
        "--n-eval", type=int, default=2000, help="latent samples for the metrics (default: %(default)s)"
    )
    add_cache_dir_option(parser)
    add_threads_option(parser)
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="train the two GANs in this many processes, one thread each (default: 2 when the "
        "machine has 2 or more cores, else 1)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny smoke-test configuration (seconds, meaningless numbers)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    try:
        require_modules("spectral-ops demo", EVAL_MODULES)
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        if args.batch_size < 2:
            raise ValueError(f"--batch-size must be >= 2, got {args.batch_size}")
        if args.n_eval < 100:
            raise ValueError(f"--n-eval must be >= 100, got {args.n_eval}")
        apply_threads(args)
        jobs = args.jobs if args.jobs is not None else (2 if (os.cpu_count() or 1) >= 2 else 1)
        if jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {jobs}")
        msg = writable_dir(args.out)
        if msg:
            raise ValueError(msg)
        if args.latent_dim < 4:
            raise ValueError(f"--latent-dim must be >= 4 (k = 4 singular vectors), got {args.latent_dim}")
        cfg = from_flat(TrainConfig, vars(args), DEMO_DEFAULTS)
        cfg.reg_config.validate(cfg.latent_dim)
        if not cfg.reg_weight >= 0:
            raise ValueError(f"--reg-weight must be >= 0, got {cfg.reg_weight}")
        blob = demo(
            out=args.out,
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            dataset=cfg.dataset,
            latent_dim=cfg.latent_dim,
            reg_weight=cfg.reg_weight,
            reg_config=cfg.reg_config,
            n_eval=args.n_eval,
            cache_dir=args.cache_dir,
            quick=args.quick,
            progress=not args.no_progress,
            jobs=jobs,
        )
    except ValueError as exc:
        return fail("demo", exc)
    print()
    print(blob["table"])
    print(
        f"\ntotal {blob['total_seconds']:.0f} s; wrote {Path(args.out) / 'metrics.json'} and "
        + ", ".join(str(Path(args.out) / p) for p in blob["pictures"])
    )
    return 0
