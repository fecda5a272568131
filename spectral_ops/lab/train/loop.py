"""The training loop: `train`, one process's run (`RunState`: data, models, optimizers, sampler),
several processes (DDP under torchrun), SIGINT / SIGTERM between two steps, the metrics log and
progress bar (`TrainLog`), and the divergence check after every step."""

from __future__ import annotations

import copy
import gc
import json
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from spectral_ops.lab.data import make_dataset
from spectral_ops.lab.io import atomic_write_text
from spectral_ops.lab.models import Discriminator, Generator
from spectral_ops.lab.train.checkpoint import (
    Checkpointer,
    TrainingDiverged,
    TrainingInterrupted,
    _claim_folder,
    _write_summary,
    read_resume,
)
from spectral_ops.lab.train.config import TrainConfig, build_models, resumed_config
from spectral_ops.lab.train.losses import _discriminator_step, _generator_step, build_regularizer
from spectral_ops.validation import derived_seed


@dataclass
class TrainResult:
    G: nn.Module
    D: nn.Module
    config: TrainConfig
    seconds: float
    steps: int
    history: list = field(default_factory=list)
    checkpoint: str | None = None
    #: the trained generator when `G` is its EMA copy (config.ema > 0), else None
    G_train: nn.Module | None = None


@torch.no_grad()
def _ema_update(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """G_ema <- beta * G_ema + (1 - beta) * G on the parameters; buffers are copied."""
    for p_e, p in zip(G_ema.parameters(), G.parameters()):
        p_e.lerp_(p, 1.0 - beta)
    for b_e, b in zip(G_ema.buffers(), G.buffers()):
        b_e.copy_(b)


class _StopSignals:
    """While active (main thread only): SIGINT / SIGTERM set `signum` instead of interrupting, so
    the loop stops between two steps. A second signal 2 s or more after the first raises
    KeyboardInterrupt at once (a stuck step can still be stopped; one key press delivered twice,
    as torchrun forwards it, is not a second request)."""

    def __init__(self):
        self.signum, self._at, self._previous = None, 0.0, {}

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum, self._at = signum, time.monotonic()
        elif time.monotonic() - self._at >= 2.0:
            raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False


def _dist_setup(device_pref: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world, device, we_initialized) — initialises torch.distributed under torchrun."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    initialized = False
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    elif world > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        initialized = True
        rank = dist.get_rank()
    else:
        rank = 0
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, world, device, initialized


@dataclass(eq=False)
class RunState:
    """One process's run: its data, models, optimizers and sampling RNG (built by `_setup`)."""

    config: TrainConfig
    rank: int
    world: int
    device: torch.device
    data: torch.Tensor  # (n_train, 1, size, size) training images in [0, 1], on `device`
    G: Generator
    D: Discriminator
    G_ema: Generator | None  # the moving average of G's weights (config.ema > 0), else None
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    reg: nn.Module | None  # the generator's regularizer (config.reg), else None
    sampler: torch.Generator  # this process's batch indices and latents
    G_run: nn.Module | None = None  # G as the steps call it: in DistributedDataParallel when world > 1
    D_run: nn.Module | None = None
    start: int = 0  # the steps done before this call (a resumed checkpoint's)
    elapsed: float = 0.0  # the seconds they took
    t0: float = 0.0  # time.perf_counter() when this call's steps began

    @property
    def batch(self) -> int:
        """B, the rows this process draws each step: batch_size / world."""
        return self.config.batch_size // self.world

    def wrap(self) -> None:
        """Set G_run, D_run: G and D, in DistributedDataParallel under several processes."""
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.G_run, self.D_run = DDP(self.G, device_ids=ids), DDP(self.D, device_ids=ids)
        else:
            self.G_run, self.D_run = self.G, self.D

    def result(self, seconds: float, steps: int, history: list, checkpoint: str | None) -> TrainResult:
        """The TrainResult of the finished run (its generators in eval mode)."""
        self.G.eval()
        if self.G_ema is not None:
            self.G_ema.eval()
        return TrainResult(
            G=self.G if self.G_ema is None else self.G_ema,
            D=self.D,
            config=self.config,
            seconds=seconds,
            steps=steps,
            history=history,
            checkpoint=checkpoint,
            G_train=None if self.G_ema is None else self.G,
        )


def _setup(config: TrainConfig, rank: int, world: int, device: torch.device) -> RunState:
    """A fresh run on `device`: the dataset, then (seeded by config.seed, in this order, which
    the random stream of every run and checkpoint depends on) models, regularizer, optimizers, EMA
    copy and this rank's sampler."""
    data = make_dataset(config.dataset, config.n_train, size=config.size, seed=config.data_seed).images.to(device)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)  # numpy takes [0, 2**32); torch and random take the whole seed
    G, D = build_models(config)
    G, D = G.to(device), D.to(device)
    reg = build_regularizer(config)
    if reg is not None:
        reg = reg.to(device)
    opt_G = torch.optim.Adam(G.parameters(), lr=config.lr_g, betas=(config.beta1, config.beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=config.lr_d, betas=(config.beta1, config.beta2))
    G_ema = copy.deepcopy(G).requires_grad_(False) if config.ema > 0 else None
    sampler = torch.Generator(device="cpu").manual_seed(derived_seed(config.seed * 1000, rank))
    return RunState(config, rank, world, device, data, G, D, G_ema, opt_G, opt_D, reg, sampler)


def _check_processes(config: TrainConfig, blob: dict | None, world: int) -> None:
    """ValueError unless the batch splits evenly over `world` processes, as many as the resumed run's."""
    if config.batch_size % world:
        raise ValueError(f"batch_size ({config.batch_size}) must be divisible by the number of processes ({world})")
    if blob is not None and int(blob.get("world", 1)) != world:
        raise ValueError(f"resume: checkpoint was written with {blob.get('world')} processes, now {world}")


class TrainLog:
    """A run's metrics: the sums since the last log line, the lines (`history`, appended to
    log.jsonl when writing) and the progress bar."""

    FILE = "log.jsonl"
    NAMES = ("loss_D", "loss_G", "r1", "reg")

    def __init__(self, out: Path, writes: bool):
        self.path, self.writes = out / self.FILE, writes
        self.sums = torch.zeros(4, dtype=torch.float64)  # of NAMES, since the last line
        self.counts = torch.zeros(4, dtype=torch.float64)  # the steps that computed each
        self.history: list[dict] = []
        self.file = self.bar = None
        self.solver: list[
            tuple[float, float]
        ] = []  # the spectral regularizer's (worst residual, active) per computed call

    def cut(self, step: int) -> None:
        """Keep the log lines up to `step` (a resumed run continues the log from its checkpoint:
        after a crash the log may run ahead of it, or end in a half-written line)."""
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        keep = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if (
                isinstance(rec, dict)
                and isinstance(rec.get("step"), int)
                and rec["step"] <= step
                and line.endswith("\n")
            ):
                keep.append(line)
        if keep != lines:
            try:
                atomic_write_text("".join(keep), self.path)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"cannot cut the log {str(self.path)!r} back to step {step} "
                    f"({exc.strerror or exc}); it is unchanged",
                ) from exc

    def open(self, config: TrainConfig, start: int, show: bool, desc: str | None) -> None:
        """Append to the log file (when writing); a progress bar from `start` (hidden unless `show`)."""
        self.file = open(self.path, "a") if self.writes else None
        self.bar = tqdm(
            total=config.steps,
            initial=min(start, config.steps),
            disable=not show,
            desc=desc or f"train {config.reg}",
            leave=False,
            dynamic_ncols=True,
        )

    def add(self, values: torch.Tensor, did_r1: bool, did_reg: bool) -> None:
        """Add one step's (4,) float64 values of NAMES (r1, reg: counted on the steps that computed them)."""
        self.sums += values
        self.counts += torch.tensor([1.0, 1.0, float(did_r1), float(did_reg)], dtype=torch.float64)

    def add_solver(self, reg) -> None:
        """After a computed spectral regularizer call: its median worst residual and mean active count."""
        if getattr(reg, "last_worst_residual", None) is not None:
            self.solver.append((float(reg.last_worst_residual), float(reg.last_active.double().mean())))

    def line(self, step: int, seconds: float) -> None:
        """Log the means since the last line (r1 and reg: over the steps that computed them)."""
        mean = (self.sums / self.counts.clamp_min(1)).tolist()
        self.sums.zero_(), self.counts.zero_()
        rec = {
            "step": step,
            "loss_D": mean[0],
            "loss_G": mean[1],
            "r1": mean[2],
            "reg": mean[3],
            "seconds": round(seconds, 3),
        }
        if self.solver:  # what the spectral regularizer's loss saw since the last line
            rec["reg_residual"] = max(r for r, _ in self.solver)
            rec["reg_active"] = sum(a for _, a in self.solver) / len(self.solver)
            self.solver = []
        self.history.append(rec)
        if self.file is not None:
            try:
                self.file.write(json.dumps(rec) + "\n")
                self.file.flush()
            except OSError as exc:
                raise OSError(
                    exc.errno, f"cannot write the log {str(self.path)!r} at step {step} ({exc.strerror or exc})"
                ) from exc
        self.bar.set_postfix(D=f"{rec['loss_D']:.2f}", G=f"{rec['loss_G']:.2f}", reg=f"{rec['reg']:.3f}")

    def close(self, *, quiet: bool = False) -> None:
        """Close the bar and the file (`quiet`: ignore an OSError on closing)."""
        if self.bar is not None:
            self.bar.close()
        if self.file is not None and not self.file.closed:
            try:
                self.file.close()
            except OSError:  # a full disk: already reported by the write that failed
                if not quiet:
                    raise


_LOSS_SOURCES = {
    "loss_D": "discriminator",
    "loss_G": "generator",
    "r1": "discriminator's R1 penalty",
    "reg": "generator's regularizer",
}


def _should_stop(run: RunState, ckpt: Checkpointer, stop: _StopSignals, values: torch.Tensor, done: int) -> bool:
    """Whether a signal stops every process after step `done`; TrainingDiverged when one of the
    step's losses (`values`, (4,) float64 of TrainLog.NAMES) is not finite on any process."""
    names = TrainLog.NAMES
    bad = [k for k, v in zip(names, values.tolist()) if not np.isfinite(v)]
    flags = [float(stop.signum is not None), float(bool(bad))]
    if run.world > 1:  # every rank stops at the same step
        import torch.distributed as dist

        t = torch.tensor(flags, device=run.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        flags = t.tolist()
    if flags[1]:
        what = (
            ", ".join(f"{k} = {float(values[names.index(k)])} ({_LOSS_SOURCES[k]})" for k in bad)
            if bad
            else "a loss on another process"
        )
        raise TrainingDiverged(
            f"training diverged at step {done}: {what}; stopped without saving, {ckpt.last_good()}", done, ckpt.last
        )
    return bool(flags[0])


def _run_steps(run: RunState, ckpt: Checkpointer, log: TrainLog, stop: _StopSignals) -> int | None:
    """Train from run.start to config.steps, logging and checkpointing on schedule; the step a
    signal stopped the run after (its state saved), or None when every step ran."""
    config = run.config
    for step in range(run.start, config.steps):
        loss_D, r1, did_r1 = _discriminator_step(run, step)
        loss_adv, reg_val = _generator_step(run)
        if run.G_ema is not None:
            _ema_update(run.G_ema, run.G, min(config.ema, (1 + step) / (10 + step)))
        done = step + 1
        values = torch.stack([loss_D.detach(), loss_adv.detach(), r1.detach(), reg_val.detach()]).double().cpu()
        stop_now = _should_stop(run, ckpt, stop, values, done)
        log.add(values, did_r1, reg_val.grad_fn is not None)
        if reg_val.grad_fn is not None:
            log.add_solver(run.reg)
        if done % config.log_every == 0 or done == config.steps:
            log.line(done, run.elapsed + time.perf_counter() - run.t0)
        saved_now = done % config.ckpt_every == 0 and done != config.steps
        if saved_now:
            ckpt.save(run, log, done)
        log.bar.update(1)
        if stop_now and done != config.steps:
            if not saved_now:
                ckpt.save(run, log, done)
            return done
    return None


def _finish(
    run: RunState, ckpt: Checkpointer, log: TrainLog, stop: _StopSignals, interrupted: int | None
) -> tuple[int, float]:
    """After the steps: TrainingInterrupted if a signal stopped them (their state is saved), else
    the final checkpoint and train.json: (the final step, the run's seconds)."""
    log.bar.close()
    if interrupted is not None:
        log.close()
        if run.world > 1:
            import torch.distributed as dist

            dist.barrier()
        raise TrainingInterrupted(interrupted, ckpt.last, stop.signum or signal.SIGINT)
    final_step = max(run.start, run.config.steps)  # a signal from here on is ignored: the run completes
    ckpt.save(run, log, final_step)
    seconds = run.elapsed + time.perf_counter() - run.t0
    if log.writes:
        log.close()
        _write_summary(log.path.parent / "train.json", run, final_step, seconds, ckpt.last, log.history)
    return final_step, seconds


def train(
    config: TrainConfig,
    *,
    resume: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    write: bool = True,
    desc: str | None = None,
) -> TrainResult:
    """Train a GAN as described by `config`.

    Args:
        config: the run (validated here). With `resume` it must equal the checkpoint's config but
            for the `RESUMABLE` fields (`steps`: the total to reach, `log_every`, `ckpt_every`,
            `out`, `device`); any other difference raises ValueError listing them.
        resume: a checkpoint path to continue from. The log in config.out is cut back to the
            checkpoint's step. A checkpoint already at config.steps writes nothing (no checkpoint,
            log or train.json is touched) and returns its state, with history [] and checkpoint
            the resumed file.
        overwrite: replace a run already in config.out. Without it, a fresh run into a folder
            holding one (`RUN_FILES`), or a resumed run into another run's folder, is refused.
        progress: show a tqdm bar (rank 0 only).
        write: write checkpoints and logs under config.out (rank 0 only).
        desc: progress-bar label.

    Returns:
        TrainResult with the (unwrapped) G and D on their device; with config.ema > 0, G is the
        EMA generator (what checkpoints serve to `load_generator`) and G_train the trained one.

    Raises:
        ValueError: a bad config, checkpoint or output folder.
        OSError: a checkpoint or log could not be written (a previous checkpoint stays intact).
        TrainingInterrupted: SIGINT / SIGTERM; the current step's state was saved first.
        TrainingDiverged: a NaN / Inf loss or weight; nothing non-finite was saved.
    """
    import torch.distributed as dist

    blob = None
    if resume is not None:
        blob, saved = read_resume(resume)
        config = resumed_config(saved, config, int(blob["step"]))
    config.validate()
    # a resume with no step left to run writes nothing: the run's files stay as they are
    done = blob is not None and int(blob["step"]) >= config.steps
    rank, world, device, we_init = _dist_setup(config.device)
    out, writes = Path(config.out), write and rank == 0 and not done
    ckpt, log, run = Checkpointer(out, writes), TrainLog(out, writes), None
    stop = _StopSignals()
    try:
        _check_processes(config, blob, world)
        _claim_folder(out, resume, overwrite, blob, world, log)
        run = _setup(config, rank, world, device)
        if blob is not None:
            ckpt.restore(blob, run, log, resume)
        run.wrap()
        log.open(config, run.start, progress and rank == 0, desc)
        run.t0 = time.perf_counter()
        with stop:
            final_step, seconds = _finish(run, ckpt, log, stop, _run_steps(run, ckpt, log, stop))
        if world > 1:
            dist.barrier()  # no rank tears down while another still communicates
    finally:
        log.close(quiet=True)
        if we_init and dist.is_initialized():
            # Free the DDP reducers (they hold the process group and its threads) before the group:
            # left to interpreter exit, gloo threads could be destroyed unjoined (std::terminate).
            if run is not None:
                run.G_run = run.D_run = None
            gc.collect()
            dist.destroy_process_group()
    return run.result(seconds, final_step, log.history, str(resume) if done else ckpt.last)
