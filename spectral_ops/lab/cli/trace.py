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
an importable object (`--generator`), by this rule (`GENERATOR_RULE`):

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
import inspect
import json
import os
import pkgutil
import reprlib
import sys
from pathlib import Path

import torch

from spectral_ops.lab.io import atomic_save, atomic_write_text, require_modules, writable_dir
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
    p.add_argument("--columns", type=int, default=9, help="images per row (default 9)")
    p.add_argument("--scale", type=int, default=2, help="pixel upscaling of the PNGs (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting latents (default 0)")
    p.add_argument("--n", type=int, default=2, help="number of starting latents (default 2)")


def _fail(msg: str) -> int:
    print(f"spectral-ops trace: error: {msg}", file=sys.stderr)
    return 2


def add_generator_arguments(p: argparse.ArgumentParser) -> None:
    """--ckpt or --generator (one of them), and --latent-dim: where a command's G comes from."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", metavar="PATH", help="checkpoint written by `spectral-ops train` or `demo`")
    src.add_argument("--generator", metavar="MODULE:ATTR", help=GENERATOR_RULE)
    p.add_argument("--latent-dim", type=int, default=None, help="latent size (if the generator has no latent_dim)")


def generator_from_args(args: argparse.Namespace):
    """(G, latent size d) from --ckpt / --generator and --latent-dim; ValueError naming the flag."""
    G = load_generator_from_checkpoint(args.ckpt) if args.ckpt else load_generator_from_spec(args.generator)
    d = args.latent_dim if args.latent_dim is not None else getattr(G, "latent_dim", None)
    if d is None:
        raise ValueError("the generator has no latent_dim attribute: pass --latent-dim")
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"--latent-dim must be an integer >= 1, got {d!r}")
    return G, d


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


GENERATOR_RULE = (
    "importable generator: MODULE:ATTR is used as the generator, called on (N, d) latents "
    "(an nn.Module, callable object or function; a class is built with no arguments); "
    "MODULE:ATTR() calls a factory with no arguments and uses what it returns"
)


def load_generator_from_spec(spec: str):
    """'package.module:attr' -> the generator (see GENERATOR_RULE): attr itself, or attr() when
    attr is a class or the spec ends in '()'; a plain function is never called here."""
    if ":" not in spec:
        raise ValueError(f"--generator must look like package.module:attr, got {spec!r}")
    mod_name, attr = spec.split(":", 1)
    factory = attr.endswith("()")
    if factory:
        attr = attr[:-2]
    if not mod_name or not attr or not all(part.isidentifier() for part in attr.split(".")):
        raise ValueError(f"--generator must look like package.module:attr or package.module:factory(), got {spec!r}")
    try:
        obj = pkgutil.resolve_name(f"{mod_name}:{attr}")
    except ImportError as exc:
        raise ValueError(f"--generator: cannot import module {mod_name!r}: {exc}") from None
    except AttributeError:
        if mod_name not in sys.modules:  # raised while importing the module, not by the lookup
            raise
        raise ValueError(f"--generator: module {mod_name!r} has no attribute {attr!r}") from None
    except ValueError:  # a module name resolve_name cannot parse ("my-pkg:G", "1st:G")
        raise ValueError(
            f"--generator must look like package.module:attr or package.module:factory(), got {spec!r}"
        ) from None
    if factory or inspect.isclass(obj):
        what = "factory" if factory else "class"
        if not callable(obj):
            raise ValueError(f"--generator: {mod_name}:{attr} is not callable, so not a {what}")
        try:
            obj = obj()
        except Exception as exc:  # e.g. a class whose constructor needs arguments
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(
                f"--generator: {what} {mod_name}:{attr} could not be called with no arguments "
                f"({type(exc).__name__}: {line})"
            ) from None
    if not callable(obj):
        raise ValueError(
            f"--generator: {spec!r} {'returned' if factory else 'is'} {reprlib.repr(obj)} "
            f"({type(obj).__name__}), not a generator (an nn.Module or a function of the latents)"
        )
    try:
        inspect.signature(obj).bind(None)
    except TypeError:
        hint = f"; to use it as a factory, write {mod_name}:{attr}()" if not factory else ""
        raise ValueError(
            f"--generator: {spec!r} cannot be called with a latent batch (its signature is "
            f"{inspect.signature(obj)}){hint}"
        ) from None
    except ValueError:  # no signature to read (a builtin): the probe call below decides
        pass
    return obj


def _check_output(y, d: int) -> None:
    """The generator's output for a (1, d) latent batch must be a (1, ...) floating tensor."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"the generator must return a tensor for a (1, {d}) latent batch, got a {type(y).__name__}")
    if y.ndim < 2 or y.shape[0] != 1 or not y.is_floating_point():
        raise ValueError(
            f"the generator must return a (1, ...) floating tensor for a (1, {d}) latent batch, got "
            f"{y.dtype} of shape {tuple(y.shape)}"
        )


def load_generator_from_checkpoint(path: str):
    """The generator stored in a training checkpoint (uses the trainer's own loader)."""
    if not os.path.isfile(path):
        raise ValueError(f"--ckpt: no such file {path!r}")
    try:
        from spectral_ops.lab import train
    except ImportError as exc:
        raise ValueError(f"--ckpt needs spectral_ops.lab.train, which failed to import: {exc}") from None
    loader = getattr(train, "load_generator", None)
    if loader is None:
        raise ValueError("--ckpt: this build's trainer has no load_generator(path)")
    try:
        G = loader(path)
    except Exception as exc:  # a corrupt or foreign file
        raise ValueError(f"--ckpt: cannot load a generator from {path!r}: {exc}") from None
    return G[0] if isinstance(G, tuple) else G


def _writable_dir(path: str) -> Path:
    problem = writable_dir(path)
    if problem is not None:
        raise ValueError(f"--out: {problem}")
    return Path(path)


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
        out = _writable_dir(args.out)
    except ValueError as exc:
        return _fail(str(exc))

    if isinstance(G, torch.nn.Module):
        G.eval()
    dtype = torch.float32
    gen = torch.Generator().manual_seed(args.seed)
    Z0 = torch.randn(args.n, d, generator=gen, dtype=dtype)
    try:
        with torch.no_grad():
            y = G(Z0[:1])
    except Exception as exc:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _fail(f"the generator failed on a (1, {d}) latent batch: {line}")
    try:
        _check_output(y, d)
        return _trace(args, G, Z0, d, directions, out, viz)
    except (ValueError, TypeError) as exc:  # a generator or a setting the checks above let through
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _fail(line)
    except OSError as exc:  # a full disk, ...
        return _fail(f"--out: cannot write to {str(out)!r} ({exc.strerror or exc})")


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
    settings = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"}
    settings.update(latent_dim=d, directions=directions, span=span)
    atomic_write_text(json.dumps(settings, indent=1, default=str) + "\n", out / "trace.json")
    print(f"wrote {3 * args.n + len(directions) * args.n} PNGs, trajectories.pt and trace.json to {out}")
    return 0
