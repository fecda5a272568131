"""A run's files: the checkpoint (atomic save, load, restore on resume, `load_generator`) and the
RNG states it holds, the output folder's claim (`RUN_FILES`, overwrite, stale temporary files),
train.json; and the exceptions that name the checkpoint a stopped run left."""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from spectral_ops.lab.io import atomic_save, atomic_write_text
from spectral_ops.lab.models import Generator
from spectral_ops.lab.train.config import TrainConfig, build_models

if TYPE_CHECKING:
    from spectral_ops.lab.train.loop import RunState, TrainLog

#: the files that make a folder hold a run
RUN_FILES = ("checkpoint.pt", "log.jsonl", "train.json")


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM stopped `train` between two steps; the state after `step` steps is saved
    in `checkpoint` (None when nothing is written: write=False or not rank 0)."""

    def __init__(self, step: int, checkpoint: str | None, signum: int):
        super().__init__(f"interrupted at step {step}")
        self.step, self.checkpoint, self.signum = step, checkpoint, signum


class TrainingDiverged(RuntimeError):
    """A loss or a weight became NaN / Inf at `step`; nothing from that step on was saved, the
    last good checkpoint (`checkpoint`, None if there is none) is intact."""

    def __init__(self, message: str, step: int, checkpoint: str | None):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


def _rng_state(gen: torch.Generator) -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "sampler": gen.get_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["sampler"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0].strip() if text else type(exc).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by `train` (no pickled code: weights_only loading). A missing,
    empty, truncated or foreign file raises ValueError with a one-line reason."""
    if not os.path.isfile(path):
        raise ValueError(f"no checkpoint at {str(path)!r}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{str(path)!r} is empty, not a spectral-ops training checkpoint")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, a pickle of other classes, ...
        raise ValueError(
            f"{str(path)!r} is not a readable spectral-ops training checkpoint (truncated or "
            f"another kind of file: {_first_line(exc)})"
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != Checkpointer.FORMAT:
        raise ValueError(f"{str(path)!r} is not a spectral-ops training checkpoint")
    missing = [k for k in Checkpointer.KEYS if k not in blob]
    if missing or not isinstance(blob["config"], dict):
        raise ValueError(
            f"{str(path)!r} is an incomplete spectral-ops training checkpoint "
            f"(missing {', '.join(missing) or 'config'})"
        )
    return blob


def _checkpoint_config(blob: dict, path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(blob["config"])
    except TypeError as exc:
        raise ValueError(f"{str(path)!r} holds a config this version cannot read ({_first_line(exc)})") from None


def _load_state(module, state, what: str, path) -> None:
    try:
        module.load_state_dict(state)
    except Exception as exc:
        raise ValueError(f"{str(path)!r}: {what} does not match the checkpoint's config ({_first_line(exc)})") from None


def load_generator(path: str | os.PathLike) -> tuple[Generator, TrainConfig]:
    """(generator in eval mode, its TrainConfig) from a checkpoint: the EMA generator when the run
    kept one (config.ema > 0), else the trained one. A bad file raises ValueError."""
    blob = load_checkpoint(path)
    config = _checkpoint_config(blob, path)
    G, _ = build_models(config)
    _load_state(G, blob["G_ema"] if blob.get("G_ema") is not None else blob["G"], "the generator", path)
    G.eval()
    return G, config


def read_resume(path) -> tuple[dict, TrainConfig]:
    try:
        blob = load_checkpoint(path)
        return blob, _checkpoint_config(blob, path)
    except ValueError as exc:
        raise ValueError(f"resume: {exc}") from None


def _existing_run(out: Path) -> list[str]:
    return [name for name in RUN_FILES if (out / name).exists()]


def _own_folder(out: Path, resume) -> bool:
    return resume is not None and Path(resume).resolve().parent == out.resolve()


def folder_problem(out: Path, resume, overwrite: bool) -> str | None:
    """Why a run may not write into `out` (it holds another run), or None."""
    found = [] if (overwrite or _own_folder(out, resume)) else _existing_run(out)
    if found:
        return (
            f"output folder {str(out)!r} already holds a run ({', '.join(found)}): continue it with --resume, "
            f"replace it with --overwrite (overwrite=True), or choose another --out"
        )
    return None


def _clear_run(out: Path) -> None:
    """Remove a previous run's files (and temporary files a crash left) from `out`."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    _remove_stale_tmp(out)


def _remove_stale_tmp(out: Path) -> None:
    for tmp in [*out.glob("checkpoint.pt.*.tmp"), *out.glob("train.json.*.tmp"), *out.glob("log.jsonl.*.tmp")]:
        tmp.unlink(missing_ok=True)


def _nonfinite_weight(modules: dict[str, nn.Module | None]) -> str | None:
    """ "the generator's weight fc.weight" for the first parameter or buffer that is not finite
    ({description: module}), else None."""
    for name, m in modules.items():
        if m is None:
            continue
        for pname, t in [*m.named_parameters(), *m.named_buffers()]:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return f"the {name}'s weight {pname}"
    return None


def _claim_folder(out: Path, resume, overwrite: bool, blob: dict | None, world: int, log: TrainLog) -> None:
    """Refuse (ValueError, on every process) an output folder holding another run, then prepare it
    when writing: create, clear on overwrite, drop stale temporary files, cut the log on resume."""
    import torch.distributed as dist

    problem = folder_problem(out, resume, overwrite) if log.writes else None
    if world > 1:  # every rank stops, or none (rank 0 alone sees the folder)
        box = [problem]
        dist.broadcast_object_list(box, src=0)
        problem = box[0]
    if problem:
        raise ValueError(problem)
    if log.writes:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite and not _own_folder(out, resume):
            _clear_run(out)
        _remove_stale_tmp(out)
        if blob is not None:
            log.cut(int(blob["step"]))


class Checkpointer:
    """A run's checkpoint: out/checkpoint.pt, written atomically (when writing: rank 0), with
    everything needed to continue bit for bit; `last` is the one a failure leaves intact."""

    FILE = "checkpoint.pt"
    FORMAT = 1
    #: the keys every checkpoint holds (newer ones also G_ema, reg and log_acc)
    KEYS = ("config", "step", "world", "elapsed", "G", "D", "opt_G", "opt_D", "rng")

    def __init__(self, out: Path, writes: bool):
        self.path, self.writes = out / self.FILE, writes
        self.last: str | None = None
        self.last_step = 0  # the step of `last`

    def restore(self, blob: dict, run: RunState, log: TrainLog, source) -> None:
        """Continue `run` and the log's sums from a checkpoint read from `source` (ValueError on a mismatch)."""
        _load_state(run.G, blob["G"], "the generator", source)
        _load_state(run.D, blob["D"], "the discriminator", source)
        if run.G_ema is not None:
            _load_state(
                run.G_ema, blob["G_ema"] if blob.get("G_ema") is not None else blob["G"], "the EMA generator", source
            )
        _load_state(run.opt_G, blob["opt_G"], "the generator's optimizer", source)
        _load_state(run.opt_D, blob["opt_D"], "the discriminator's optimizer", source)
        if run.reg is not None and blob.get("reg") is not None:
            _load_state(run.reg, blob["reg"], "the regularizer", source)
        run.start, run.elapsed = int(blob["step"]), float(blob["elapsed"])
        if blob.get("log_acc") is not None:  # a checkpoint between two log lines
            log.sums.copy_(blob["log_acc"][0]), log.counts.copy_(blob["log_acc"][1])
        states = blob["rng"]
        _set_rng_state(states[run.rank] if isinstance(states, list) else states, run.sampler)
        self.last_step = run.start
        if self.writes and self.path.is_file():
            self.last = str(self.path)

    def save(self, run: RunState, log: TrainLog, step: int) -> None:
        """Save the state after `step` steps (every process calls it: the RNG states are gathered).
        A non-finite weight raises TrainingDiverged instead; an OSError keeps the previous file."""
        bad = _nonfinite_weight({"generator": run.G, "discriminator": run.D, "EMA generator": run.G_ema})
        if bad:
            raise TrainingDiverged(
                f"training diverged by step {step}: {bad} is not finite; not saved, {self.last_good()}", step, self.last
            )
        rng = _rng_state(run.sampler)
        if run.world > 1:
            import torch.distributed as dist

            gathered = [None] * run.world
            dist.all_gather_object(gathered, rng)
            rng = gathered
        if not self.writes:
            return
        try:
            atomic_save(
                {
                    "format": self.FORMAT,
                    "config": asdict(run.config),
                    "step": step,
                    "world": run.world,
                    "elapsed": run.elapsed + (time.perf_counter() - run.t0),
                    "G": run.G.state_dict(),
                    "G_ema": None if run.G_ema is None else run.G_ema.state_dict(),
                    "D": run.D.state_dict(),
                    "opt_G": run.opt_G.state_dict(),
                    "opt_D": run.opt_D.state_dict(),
                    "reg": None if run.reg is None else run.reg.state_dict(),
                    "rng": rng,
                    "log_acc": torch.stack([log.sums, log.counts]),
                },
                self.path,
            )
        except OSError as exc:
            kept = f"the previous one (step {self.last_step}) is unchanged" if self.last else "none was saved before"
            raise OSError(
                exc.errno,
                f"cannot save the checkpoint {str(self.path)!r} at step {step} ({exc.strerror or exc}); {kept}",
            ) from exc
        self.last, self.last_step = str(self.path), step

    def last_good(self) -> str:
        """The end of a failure's message: which checkpoint is left."""
        if self.last is None:
            return "and there is no checkpoint yet"
        return f"the last good checkpoint is {self.last} (step {self.last_step})"


def _write_summary(
    path: Path, run: RunState, steps: int, seconds: float, checkpoint: str | None, history: list[dict]
) -> None:
    """train.json: the config, how far the run went, its checkpoint and last log line."""
    summary = {
        "config": asdict(run.config),
        "steps": steps,
        "seconds": round(seconds, 2),
        "world": run.world,
        "checkpoint": checkpoint,
        "last": history[-1] if history else None,
    }
    try:
        atomic_write_text(json.dumps(summary, indent=2), path)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot write the summary {str(path)!r} ({exc.strerror or exc}); the finished run is in {checkpoint}",
        ) from exc
