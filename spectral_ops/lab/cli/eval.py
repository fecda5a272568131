"""`spectral-ops eval`: measure the disentanglement of a trained checkpoint (eval.json and a
traversal picture beside it, or in --out)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from spectral_ops.lab.cli.errors import fail
from spectral_ops.lab.cli.options import add_cache_dir_option, add_threads_option, apply_threads
from spectral_ops.lab.evaluate import check_outputs, evaluate_generator, format_table, traversal_grid
from spectral_ops.lab.io import EVAL_MODULES, atomic_save_image, atomic_write_text, require_modules, writable_dir
from spectral_ops.lab.metrics import PredictorConfig, load_or_fit_predictor
from spectral_ops.lab.train import load_generator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ckpt", required=True, metavar="PATH", help="checkpoint written by `spectral-ops train` or `demo`"
    )
    parser.add_argument(
        "--n-samples",
        type=int,
        default=2000,
        help="latent samples for MIG / DCI / Frechet distance (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent samples (default: %(default)s)")
    parser.add_argument(
        "--out", default=None, help="folder for eval.json and traversal.png (default: the checkpoint's folder)"
    )
    add_cache_dir_option(parser)
    add_threads_option(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    try:
        require_modules("spectral-ops eval", EVAL_MODULES)
        if args.n_samples < 100:
            raise ValueError(f"--n-samples must be >= 100, got {args.n_samples}")
        apply_threads(args)
        if not os.path.isfile(args.ckpt):
            raise ValueError(f"--ckpt: no such file {args.ckpt!r}")
        try:
            G, config = load_generator(args.ckpt)
        except Exception as exc:
            raise ValueError(f"--ckpt: cannot read a training checkpoint from {args.ckpt!r}: {exc}") from None
        check_outputs(G, n=args.n_samples, seed=args.seed)  # NaN weights: said before a predictor is fitted
        out = Path(args.out) if args.out else Path(args.ckpt).resolve().parent
        msg = writable_dir(out)
        if msg:
            raise ValueError(msg)
        predictor, pinfo = load_or_fit_predictor(
            PredictorConfig(dataset=config.dataset, size=config.size),
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
        )
        res = evaluate_generator(
            G, dataset=config.dataset, size=config.size, predictor=predictor, n=args.n_samples, seed=args.seed
        )
    except ValueError as exc:
        return fail("eval", exc)
    res["checkpoint"] = str(args.ckpt)
    res["predictor_validation"] = pinfo["validation"]
    print(format_table({Path(args.ckpt).parent.name or "model": res}))
    try:
        atomic_write_text(json.dumps(res, indent=2), out / "eval.json")
        atomic_save_image(traversal_grid(G, title=f"{args.ckpt}: rows = latent dims"), out / "traversal.png")
    except OSError as exc:  # a full disk, a vanished folder, ...
        return fail("eval", f"--out: cannot write to {str(out)!r} ({exc.strerror or exc})")
    print(f"wrote {out / 'eval.json'} and {out / 'traversal.png'}")
    return 0
