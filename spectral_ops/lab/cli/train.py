"""`spectral-ops train`: train a GAN on a procedural dataset, optionally regularized.

The options are generated from `TrainConfig` (and its nested `RegularizerConfig`) by
`options.add_options`; only the flags that are not settings of the run (--resume, --overwrite,
--threads, --no-progress) are written here.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path

from spectral_ops.lab.cli.options import add_options, add_threads_option, apply_threads, from_flat
from spectral_ops.lab.io import writable_dir
from spectral_ops.lab.train import (
    TrainConfig,
    TrainingDiverged,
    TrainingInterrupted,
    config_changes,
    folder_problem,
    format_changes,
    read_resume,
    resumed_config,
    train,
)

GROUPS = ("data and model", "optimisation", "regularizer", "output")


class _StoreGiven(argparse.Action):
    """argparse's "store" that also records the option in `namespace._given` (with --resume only
    the options given on the command line are requested changes)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, "_given", getattr(namespace, "_given", frozenset()) | {self.dest})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for name in (None, "store"):  # the default action of every option below
        parser.register("action", name, _StoreGiven)
    parser.set_defaults(_given=frozenset())
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    add_options(parser, TrainConfig, groups=groups)
    g = groups["output"]
    g.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CKPT",
        help="continue the run in CKPT (without CKPT: OUT/checkpoint.pt; with it, OUT defaults to its "
        "folder) with its settings: only --steps (the total to reach), --log-every, --ckpt-every, "
        "--out and --device may change; any other option given that differs is refused. A run "
        "already at --steps is left as it is: one line says so, exit 0",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in OUT (checkpoint, log, summary); without it a fresh run into a "
        "folder holding one is refused",
    )
    add_threads_option(g)
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.epilog = (
        "Several processes: torchrun --nproc_per_node 2 -m spectral_ops.lab.cli train ... "
        "(gloo on CPU, nccl on GPU). Exit status: 0 done (also a --resume already at --steps: nothing "
        "is written), 2 bad arguments, checkpoint or output folder (also a full disk, on a fresh "
        "run or a --resume: one line), 1 the run diverged (NaN / Inf), 130 (143) stopped by SIGINT "
        "(SIGTERM) after saving a checkpoint at the current step."
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return from_flat(TrainConfig, vars(args))


def _resume_config(args: argparse.Namespace, resume: str) -> tuple[TrainConfig, int]:
    """(the checkpoint's config with the options given on the command line applied (train()
    refuses those that may not change) and OUT (given, or else the checkpoint's folder), the
    checkpoint's step)."""
    blob, saved = read_resume(resume)
    given = {k: getattr(args, k) for k in getattr(args, "_given", ())}
    given.setdefault("out", str(Path(resume).parent))
    config = resumed_config(saved, from_flat(TrainConfig, given, saved), int(blob["step"]))
    changes = {k: v for k, v in config_changes(saved, config).items() if k != "out"}
    step = int(blob["step"])
    if step >= config.steps:  # nothing to run: nothing is written, so no folder to claim
        return config.validate(), step
    problem = folder_problem(Path(config.out), resume, args.overwrite)
    if problem:
        raise ValueError(problem)
    if changes and int(os.environ.get("RANK", "0")) == 0:
        print(f"resuming {resume} at step {step}, with {format_changes(changes)}", file=sys.stderr)
    return config, step


def _configure(args: argparse.Namespace) -> tuple[TrainConfig, str | None, int]:
    """(the run's config, the checkpoint to resume or None, the step it starts from); ValueError
    for bad arguments.  A resume already at --steps is returned without touching any folder."""
    apply_threads(args)
    resume, start = None, 0
    if args.resume is not None:
        resume = str(Path(args.out) / "checkpoint.pt") if args.resume == "auto" else args.resume
        if not os.path.isfile(resume):
            raise ValueError(f"resume: no checkpoint at {resume!r}")
        config, start = _resume_config(args, resume)
        if start >= config.steps:
            return config, resume, start
    else:
        config = config_from_args(args).validate()
    msg = writable_dir(config.out)
    if msg:
        raise ValueError(msg)
    return config, resume, start


def run(args: argparse.Namespace) -> int:
    prog = "spectral-ops train"
    rank0 = int(os.environ.get("RANK", "0")) == 0
    config = None
    try:
        config, resume, start = _configure(args)
        if resume is not None and start >= config.steps:
            if rank0:
                print(
                    f"{prog}: {resume} is already at step {start} of --steps {config.steps}: nothing to do, "
                    f"nothing written (give a larger --steps to continue the run)"
                )
            return 0
        result = train(config, resume=resume, overwrite=args.overwrite, progress=not args.no_progress)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a vanished folder, ...
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{prog}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        if rank0:
            print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:
        if rank0:
            name = signal.Signals(exc.signum).name
            where = f"saved {exc.checkpoint}" if exc.checkpoint else "nothing saved (write=False)"
            print(
                f"{prog}: {name} at step {exc.step}: {where}; continue with: spectral-ops train --out "
                f"{shlex.quote(config.out)} --resume",
                file=sys.stderr,
            )
        return 128 + int(exc.signum)
    except KeyboardInterrupt:  # before the first step, or a second signal
        if rank0:
            out = config.out if config is not None else args.out
            print(
                f"{prog}: interrupted before it could save; the last checkpoint in {out}, if any, is intact",
                file=sys.stderr,
            )
        return 130
    if rank0:
        last = result.history[-1] if result.history else {}
        print(
            f"trained {result.steps} steps in {result.seconds:.1f} s; checkpoint: {result.checkpoint}; "
            f"last: " + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k != "step")
        )
    return 0
