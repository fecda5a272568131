"""`spectral-ops directions`: global latent directions of a trained generator, and their traversals.

It computes the top-k eigenvectors of the average pull-back metric E_z[J^T J]
(`spectral_ops.global_directions`, matrix-free, streaming over `--samples` latents) and writes
into `--out`:

- `directions.png`: traversals z0 + t v_i along each direction from `--n` typical latents (rows
  labelled with the share of the metric's trace each direction explains);
- `axes.png`: the same traversals along the first k coordinate axes, for comparison;
- `directions.pt`: directions [k, d], values [k], explained [k]; `directions.json`: the figures
  and settings.

The generator comes from a checkpoint (`--ckpt`) or an importable object (`--generator`), by the
rule of `spectral-ops trace` (the flags and loaders both use: `generators.py`).  Bad arguments or
a generator that cannot be used: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json

import torch

from spectral_ops.lab.io import atomic_save, atomic_write_text, require_modules
from spectral_ops.directions import global_directions
from spectral_ops.validation import check_seed, derived_seed
from spectral_ops.lab.cli.errors import fail, first_line
from spectral_ops.lab.cli.options import add_device_option, device_from_args
from spectral_ops.lab.cli.generators import (
    add_generator_arguments,
    add_picture_arguments,
    check_generator_output,
    generator_from_args,
    output_dir,
    recorded_settings,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_generator_arguments(p)
    p.add_argument("--out", default="runs/directions", help="output folder (created; default runs/directions)")
    p.add_argument("--k", type=int, default=4, help="how many directions (default 4)")
    p.add_argument("--samples", type=int, default=512, help="latents the metric is averaged over (default 512)")
    p.add_argument("--batch-size", type=int, default=64, help="latents per generator pass (default 64)")
    p.add_argument("--iters", type=int, default=60, help="most work, in averaged products of k vectors (default 60)")
    p.add_argument("--tol", type=float, default=1e-4, help="residual tolerance (default 1e-4)")
    p.add_argument(
        "--stability",
        action="store_true",
        help="also compute the directions on an independent sample set and report the subspace angle",
    )
    p.add_argument("--span", type=float, default=2.5, help="latent distance each way (default 2.5)")
    add_picture_arguments(p)
    p.add_argument("--n", type=int, default=1, help="typical starting latents to draw from (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and the start (default 0)")
    add_device_option(p)


def _check(args: argparse.Namespace) -> None:
    for name in ("k", "samples", "batch_size", "iters", "scale", "n"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.columns < 2:
        raise ValueError(f"--columns must be >= 2, got {args.columns}")
    for name in ("span", "tol"):
        value = getattr(args, name)
        if not (0 <= value < float("inf")) or (name == "span" and value == 0):
            raise ValueError(f"--{name} must be a finite number {'> 0' if name == 'span' else '>= 0'}, got {value}")


def run(args: argparse.Namespace) -> int:
    try:
        require_modules("spectral-ops directions", {"PIL": "pillow"})
        from spectral_ops.lab import viz

        _check(args)
        check_seed(args.seed, allow_none=False, name="--seed")
        device = device_from_args(args)
        G, d = generator_from_args(args)
        if args.k > d:
            raise ValueError(f"--k must be <= latent dim {d}, got {args.k}")
        out = output_dir(args.out)
        if isinstance(G, torch.nn.Module):
            G.eval().to(device)
        with torch.no_grad():
            check_generator_output(G(torch.zeros(1, d, device=device)), d)
        found = global_directions(
            G,
            args.samples,
            args.k,
            latent_dim=d,
            batch_size=args.batch_size,
            iters=args.iters,
            tol=args.tol,
            seed=args.seed,
            stability=args.stability,
            progress=True,
            device=device,
        )  # the trace is exact where that is cheap
        found.directions, found.values, found.explained = (
            t.cpu() for t in (found.directions, found.values, found.explained)
        )
        draw = G if device.type == "cpu" else (lambda x: G(x.to(device)).cpu())  # the figures take CPU latents
        labels = [
            f"v{i} {100 * float(e):.0f}%"
            for i, e in enumerate(torch.diff(found.explained, prepend=found.explained.new_zeros(1)))
        ]
        rows, axes = [], []
        for s in range(args.n):
            z0 = viz.typical_latent(d, seed=derived_seed(args.seed, s))
            rows.append(viz.vector_traversal(draw, z0, found.directions, span=args.span, n=args.columns)[0])
            axes.append(viz.coordinate_traversal(draw, z0, list(range(args.k)), span=args.span, n=args.columns)[0])
        viz.save_grid(torch.cat(rows), out / "directions.png", row_labels=labels * args.n, scale=args.scale)
        viz.save_grid(
            torch.cat(axes), out / "axes.png", row_labels=[f"z{i}" for i in range(args.k)] * args.n, scale=args.scale
        )
    except (ValueError, TypeError) as exc:
        return fail("directions", first_line(exc))
    except OSError as exc:
        return fail("directions", f"--out: cannot write ({exc.strerror or exc})")
    atomic_save(
        {"directions": found.directions, "values": found.values, "explained": found.explained}, out / "directions.pt"
    )
    report = {
        "values": found.values.tolist(),
        "explained": found.explained.tolist(),
        "trace": found.trace,
        "trace_exact": found.trace_exact,
        "trace_stderr": found.trace_stderr,
        "residuals": found.residuals.tolist(),
        "converged": bool(found.converged.all()),
        "products": found.products,
        "stability_deg": found.stability_deg,
        "settings": recorded_settings(args),
    }
    atomic_write_text(json.dumps(report, indent=1, default=str) + "\n", out / "directions.json")
    angle = "" if found.stability_deg is None else f", {found.stability_deg:.1f} deg from an independent sample set"
    error = (
        ""
        if found.explained_stderr is None
        else f" (+- {100 * float(found.explained_stderr[-1]):.1f}%, estimated trace)"
    )
    print(
        f"{args.k} directions explain {100 * float(found.explained[-1]):.1f}%{error} of E||J||_F^2"
        f" ({found.products} products{angle}); wrote directions.png, axes.png, directions.pt, directions.json to {out}"
    )
    return 0
