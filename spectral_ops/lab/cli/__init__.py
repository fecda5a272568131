"""The `spectral-ops` command line.  Each subcommand lives in its own module, which provides
`add_arguments(parser)` and `run(args) -> int`; this file only wires them together."""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "demo": (
        "spectral_ops.lab.cli.demo",
        "train a small GAN with and without the regularizer and compare (no arguments needed)",
    ),
    "train": ("spectral_ops.lab.cli.train", "train a GAN on a procedural dataset, optionally regularized"),
    "eval": ("spectral_ops.lab.cli.eval", "measure disentanglement of a trained checkpoint"),
    "trace": ("spectral_ops.lab.cli.trace", "trace curved singular-vector trajectories and draw them"),
    "directions": (
        "spectral_ops.lab.cli.directions",
        "global latent directions of a generator (top eigenvectors of E[J^T J]) and their traversals",
    ),
    "topk": (
        "spectral_ops.lab.cli.topk",
        "top-k Jacobian singular values of a small generator, against full Jacobian + SVD",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spectral-ops",
        description="spectral_ops: top-k Jacobian singular vectors and the spectral disentanglement regularizer.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # The library needs torch alone; the commands need the lab extra: say so before importing them.
    from spectral_ops.lab.io import LAB_MODULES, require_modules

    try:
        require_modules("spectral-ops", LAB_MODULES)
    except ValueError as exc:
        print(f"spectral-ops: error: {exc}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (train saves a checkpoint first)
        print(f"spectral-ops {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
