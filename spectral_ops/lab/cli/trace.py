"""`spectral-ops trace`: trace curved singular-vector trajectories of a generator and draw them.

For each of `--n` random starting latents (seeded), it writes into `--out`:

- `sample{i}_axes.png`: traversals along the coordinate axes z_i (one row per index in
  `--directions`, z0 in the middle column);
- `sample{i}_lines.png`: straight lines along the singular vectors v_i(z0);
- `sample{i}_curves.png`: the curved trajectories that keep following v_i (both ways);
- `sample{i}_values_dir{j}.png`: the top singular values along each curved trajectory;
- `trajectories.pt`: the traced latents, values and tracked indices; `trace.json`: the settings.

All three grids use the same latent distance per column: `--steps * --step-size` each way.

The generator comes from a checkpoint written by `spectral-ops train` / `demo` (`--ckpt`), or from
an importable object (`--generator`), by this rule (`GENERATOR_RULE`; the flags and loaders are
shared with `spectral-ops directions`, in `generators.py`):

- `package.module:attr` names the generator: an nn.Module (or any callable object) or a function,
  called with (N, d) latents and returning (N, ...) outputs; a function is never called to find
  out what it is;
- if attr is a class, it is built with no arguments;
- `package.module:attr()` calls attr with no arguments and uses what it returns (a factory).

Its latent size comes from a `latent_dim` attribute or `--latent-dim`. Bad arguments, a generator
that cannot be built, or one that does not return an (N, ...) tensor: a one-line error, exit 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from spectral_ops.lab.cli.errors import fail, first_line
from spectral_ops.lab.cli.generators import (
    add_generator_arguments,
    add_picture_arguments,
    check_generator_output,
    generator_from_args,
    output_dir,
    recorded_settings,
)
from spectral_ops.lab.io import atomic_save, atomic_write_text, require_modules
from spectral_ops.trajectory import INTEGRATORS
from spectral_ops.validation import check_seed


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_generator_arguments(p)
    p.add_argument("--out", default="runs/trace", help="output folder (created; default runs/trace)")
    p.add_argument(
        "--directions",
        default="0,1,2",
        help="singular-vector / axis indices, comma-separated (e.g. 0,1,2) or a count N for 0..N-1",
    )
    p.add_argument("--steps", type=int, default=12, help="integration steps each way (default 12)")
    p.add_argument("--step-size", type=float, default=0.25, help="latent distance per step (default 0.25)")
    p.add_argument("--method", default="rk4", choices=INTEGRATORS, help="integrator (default rk4)")
    p.add_argument("--project", default=None, choices=["sphere"], help="keep ||z|| fixed along the path")
    add_picture_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the starting latents (default 0)")
    p.add_argument("--n", type=int, default=2, help="number of starting latents (default 2)")


def parse_directions(text: str) -> list[int]:
    """'0,2,5' -> [0, 2, 5]; '3' -> [0, 1, 2]."""
    parts = [s.strip() for s in str(text).split(",") if s.strip()]
    try:
        vals = [int(s) for s in parts]
    except ValueError:
        raise ValueError(f"--directions must be comma-separated integers or a count, got {text!r}") from None
    if not vals:
        raise ValueError("--directions is empty")
    if len(vals) == 1 and "," not in str(text):
        if vals[0] < 1:
            raise ValueError(f"--directions count must be >= 1, got {vals[0]}")
        return list(range(vals[0]))
    if any(v < 0 for v in vals):
        raise ValueError(f"--directions must be >= 0, got {text!r}")
    return vals


def run(args: argparse.Namespace) -> int:
    try:
        require_modules("spectral-ops trace", {"matplotlib": "matplotlib"})
        from spectral_ops.lab import viz

        directions = parse_directions(args.directions)
        for name in ("steps", "n", "columns", "scale"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
        if args.columns < 2:
            raise ValueError(f"--columns must be >= 2, got {args.columns}")
        if not (args.step_size > 0 and args.step_size < float("inf")):
            raise ValueError(f"--step-size must be a finite number > 0, got {args.step_size}")
        check_seed(args.seed, allow_none=False, name="--seed")
        G, d = generator_from_args(args)
        if max(directions) >= d:
            raise ValueError(f"--directions must be < latent dim {d}, got {max(directions)}")
        out = output_dir(args.out)
    except ValueError as exc:
        return fail("trace", str(exc))

    if isinstance(G, torch.nn.Module):
        G.eval()
    dtype = torch.float32
    gen = torch.Generator().manual_seed(args.seed)
    Z0 = torch.randn(args.n, d, generator=gen, dtype=dtype)
    try:
        with torch.no_grad():
            y = G(Z0[:1])
    except Exception as exc:
        return fail("trace", f"the generator failed on a (1, {d}) latent batch: {first_line(exc)}")
    try:
        check_generator_output(y, d)
        return _trace(args, G, Z0, d, directions, out, viz)
    except (ValueError, TypeError) as exc:  # a generator or a setting the checks above let through
        return fail("trace", first_line(exc))
    except OSError as exc:  # a full disk, ...
        return fail("trace", f"--out: cannot write to {str(out)!r} ({exc.strerror or exc})")


def _trace(args, G, Z0, d: int, directions: list[int], out: Path, viz) -> int:
    span = args.steps * args.step_size
    labels = [f"{i}" for i in directions]
    record = {"z0": Z0, "directions": directions, "trajectories": []}
    from tqdm.auto import tqdm

    for s in tqdm(range(args.n), desc="trace", disable=args.n < 2):
        z0 = Z0[s]
        axes, _ = viz.coordinate_traversal(G, z0, directions, span=span, n=args.columns)
        viz.save_grid(axes, out / f"sample{s}_axes.png", row_labels=[f"z{i}" for i in directions], scale=args.scale)
        lines, _ = viz.line_traversal(G, z0, directions, span=span, n=args.columns)
        viz.save_grid(lines, out / f"sample{s}_lines.png", row_labels=[f"v{i}" for i in labels], scale=args.scale)
        curves, Z, trajs = viz.trajectory_traversal(
            G, z0, directions, span=span, n=args.columns, steps=args.steps, method=args.method, project=args.project
        )
        viz.save_grid(curves, out / f"sample{s}_curves.png", row_labels=[f"c{i}" for i in labels], scale=args.scale)
        for j, tr in zip(directions, trajs):
            viz.plot_singular_values(
                tr, out / f"sample{s}_values_dir{j}.png", title=f"sample {s}, trajectory of v{j} ({args.method})"
            )
            record["trajectories"].append(
                {
                    "sample": s,
                    "direction": j,
                    "z": tr.z[:, 0],
                    "values": tr.values[:, 0],
                    "tracked": tr.tracked[:, 0],
                    "origin": tr.origin,
                }
            )
    atomic_save(record, out / "trajectories.pt")
    settings = recorded_settings(args)
    settings.update(latent_dim=d, directions=directions, span=span)
    atomic_write_text(json.dumps(settings, indent=1, default=str) + "\n", out / "trace.json")
    print(f"wrote {3 * args.n + len(directions) * args.n} PNGs, trajectories.pt and trace.json to {out}")
    return 0
