"""`spectral-ops train`: a small GAN on a procedural dataset, optionally regularized.

- Non-saturating GAN loss; R1 on real images (lazy: every `r1_every` steps, scaled); Adam.
- An exponential moving average of G's weights (`ema`, warmed up as min(ema, (1+t)/(10+t))):
  the EMA generator is what `train` returns as `G`, what checkpoints serve and what is evaluated.
- Optional regularizer on the generator step: the spectral regularizer (`--reg spectral`) or a
  peer (`hessian`, `orojar`, `path_length`), imported lazily.
- Progress bar (tqdm), a JSON-lines metrics log (`log.jsonl`), a summary (`train.json`).
- Checkpoints are written atomically (temporary file, then `os.replace`) and hold everything
  needed to continue bit-for-bit on the CPU: models, optimizers, regularizer state, the sampling
  generator and the torch / numpy / python RNG states. `--resume` continues from one, with the
  checkpoint's settings: only `RESUMABLE` fields may change, any other difference is refused.
- A fresh run into a folder that already holds one (checkpoint.pt, log.jsonl or train.json) is
  refused unless `overwrite` (`--overwrite`) replaces it.
- Faults: SIGINT / SIGTERM stop the run between two steps, save a checkpoint there and raise
  `TrainingInterrupted` (the CLI prints where it saved and exits 130, or 143 for SIGTERM; a second
  signal, 2 s or more later, stops at once without saving). A NaN / Inf loss or weight raises
  `TrainingDiverged` (exit 1) before anything non-finite is saved. On resume the log is cut back
  to the checkpoint's step, so after a crash (kill -9) every step is logged exactly once. A full
  disk (OSError ENOSPC, also where torch.save meets it) keeps the previous checkpoint and raises
  OSError naming the file (the CLI: one line, exit 2); a resume already at `steps` writes nothing.
- Several processes: run under `torchrun --nproc_per_node N`. Each process draws its own
  batch_size / N rows; G and D are wrapped in DistributedDataParallel (gloo on CPU, nccl on GPU).

Python use: `train(TrainConfig(...)) -> TrainResult` (the demo and the experiment call it).
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from spectral_ops.config import RegularizerConfig, flat_items
from spectral_ops.lab.data import DATASETS, make_dataset
from spectral_ops.lab.io import atomic_save, atomic_write_text
from spectral_ops.lab.models import Discriminator, Generator
from spectral_ops.validation import check_int, check_number, check_seed, derived_seed

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "build_models",
    "build_regularizer",
    "load_checkpoint",
    "load_generator",
    "REGULARIZERS",
    "RESUMABLE",
    "RUN_FILES",
    "TRAIN_REGULARIZER",
    "TrainingInterrupted",
    "TrainingDiverged",
]

REGULARIZERS = ("none", "spectral", "hessian", "orojar", "path_length")
NORMS = ("pixel", "layer", "none")
DEVICES = ("auto", "cpu", "cuda")
#: TrainConfig fields a resumed run may change: how far it goes, how often it logs and saves, where
#: it writes and runs (on another device the run goes on, but not bit for bit)
RESUMABLE = ("steps", "log_every", "ckpt_every", "out", "device")
#: the files that make a folder hold a run
RUN_FILES = ("checkpoint.pt", "log.jsonl", "train.json")


#: The trainer's spectral settings: the library's defaults, regularized every 4 steps (the
#: library's default is 8; the demo and docs/experiment.md were measured with 4).
TRAIN_REGULARIZER = RegularizerConfig(every=4)


def _option(default, help: str, group: str, choices=None, **extra):
    return field(default=default, metadata={"help": help, "group": group, "choices": choices, **extra})


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in checkpoints).  Each field's metadata
    gives its command-line help, group and choices (`spectral-ops train` is generated from it)."""

    dataset: str = _option("sprites", "procedural dataset", "data and model", tuple(sorted(DATASETS)))
    size: int = _option(32, "image side in pixels", "data and model", (32, 64))
    n_train: int = _option(20000, "training images rendered", "data and model")
    data_seed: int = _option(0, "seed of the rendered training set", "data and model")
    latent_dim: int = _option(10, "latent size d", "data and model")
    width: int = _option(32, "channel width of G (and of D unless --d-width)", "data and model")
    d_width: int = _option(0, "channel width of D, 0: the same as --width", "data and model")
    norm: str = _option("pixel", "per-sample normalisation in G, never batch-coupled", "data and model", NORMS)
    steps: int = _option(2000, "total training steps, one D and one G update each", "optimisation")
    batch_size: int = _option(64, "global batch, split over processes", "optimisation")
    lr_g: float = _option(1e-3, "Adam learning rate of G", "optimisation")
    lr_d: float = _option(1e-3, "Adam learning rate of D", "optimisation")
    beta1: float = _option(0.0, "Adam beta1, in [0, 1)", "optimisation")
    beta2: float = _option(0.99, "Adam beta2, in [0, 1)", "optimisation")
    r1_gamma: float = _option(1.0, "R1 penalty weight on real images, 0 disables", "optimisation")
    r1_every: int = _option(4, "apply R1 every N steps, scaled by N", "optimisation")
    ema: float = _option(
        0.99,
        "decay of an exponential moving average of G's weights, evaluated and checkpointed; 0 disables",
        "optimisation",
    )
    seed: int = _option(0, "seed of initialisation and sampling", "optimisation")
    reg: str = _option("none", "generator regularizer", "regularizer", REGULARIZERS)
    reg_weight: float = _option(1.0, "weight of the regularizer", "regularizer")
    #: the spectral regularizer's settings; `every` (lazy regularization) applies to every --reg
    reg_config: RegularizerConfig = _option(
        TRAIN_REGULARIZER,
        "spectral regularizer settings",
        "regularizer",
        prefix="reg-",
        only=("k", "iters", "loss", "grad", "every", "batch_fraction"),
    )
    out: str = _option("runs/train", "output folder: checkpoint.pt, log.jsonl, train.json", "output")
    ckpt_every: int = _option(500, "checkpoint every N steps", "output")
    log_every: int = _option(50, "log every N steps", "output")
    device: str = _option("auto", "device", "output", DEVICES)

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the first bad field; returns self."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices is not None and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be one of {choices}, got {getattr(self, f.name)!r}")
        for name in ("n_train", "latent_dim", "width", "batch_size", "r1_every", "ckpt_every", "log_every"):
            _as_value_error(check_int, name, getattr(self, name), 1)
        for name in ("steps", "d_width"):
            _as_value_error(check_int, name, getattr(self, name), 0)
        for name in ("seed", "data_seed"):
            _as_value_error(check_seed, getattr(self, name), False, name)
        for name in ("lr_g", "lr_d", "r1_gamma", "reg_weight"):
            _as_value_error(check_number, name, getattr(self, name), 0)
        for name in ("beta1", "beta2", "ema"):
            _as_value_error(lambda n, v: check_number(n, v, 0, 1, high_open=True), name, getattr(self, name))
        if not isinstance(self.reg_config, RegularizerConfig):
            raise ValueError(f"reg_config must be a RegularizerConfig, got {type(self.reg_config).__name__}")
        try:
            self.reg_config.validate(self.latent_dim)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"reg_config: {exc}") from None
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
        return self

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A config from `asdict` output (a checkpoint's, train.json's).  Checkpoints written before
        the regularizer settings were nested keep them flat as reg_k, reg_iters, ...: those map to
        reg_config.k, ...  Unknown names raise TypeError."""
        values = dict(values)
        nested = dict(values.pop("reg_config", None) or {})
        for name in ("k", "iters", "loss", "grad", "every", "batch_fraction"):
            if f"reg_{name}" in values:
                nested[name] = values.pop(f"reg_{name}")
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown TrainConfig field(s) {unknown}")
        return cls(**values, reg_config=TRAIN_REGULARIZER.replace(**nested))


def _as_value_error(check, *args):
    """The trainer reports every bad setting as ValueError (the CLI's exit status 2)."""
    try:
        return check(*args)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


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


# ---------------------------------------------------------------------------------------------
def build_models(config: TrainConfig) -> tuple[Generator, Discriminator]:
    G = Generator(config.latent_dim, size=config.size, width=config.width, norm=config.norm)
    D = Discriminator(size=config.size, width=config.d_width or config.width)
    return G, D


def build_regularizer(config: TrainConfig) -> nn.Module | None:
    """The regularizer module for config.reg (None for "none"), every one on the lazy schedule
    of config.reg_config.every (spectral_ops.lazy)."""
    if config.reg == "none":
        return None
    from spectral_ops import baselines
    from spectral_ops.lazy import LazyFunction
    from spectral_ops.regularizer import SpectralRegularizer

    every = config.reg_config.every
    if config.reg == "spectral":
        return SpectralRegularizer(config.latent_dim, config.reg_config.replace(seed=config.seed))
    if config.reg == "path_length":
        return baselines.PathLengthRegularizer(every=every)
    return LazyFunction({"hessian": baselines.hessian_penalty, "orojar": baselines.orojar}[config.reg], every)


@torch.no_grad()
def _ema_update(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """G_ema <- beta * G_ema + (1 - beta) * G on the parameters; buffers are copied."""
    for p_e, p in zip(G_ema.parameters(), G.parameters()):
        p_e.lerp_(p, 1.0 - beta)
    for b_e, b in zip(G_ema.buffers(), G.buffers()):
        b_e.copy_(b)


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


def resumed_config(saved: TrainConfig, requested: TrainConfig, step: int) -> TrainConfig:
    """The config a resumed run continues with: `saved` with the RESUMABLE fields of `requested`;
    ValueError listing any other difference, or a total of steps below the checkpoint's."""
    refused = {k: v for k, v in config_changes(saved, requested).items() if k not in RESUMABLE}
    if refused:
        raise ValueError(
            f"resume: the checkpoint's settings differ from the requested ones ({format_changes(refused)});"
            f" only {', '.join(RESUMABLE)} may change on resume: start a new run for the others"
        )
    config = dataclasses.replace(saved, **{k: getattr(requested, k) for k in RESUMABLE})
    if config.steps < step:
        raise ValueError(
            f"resume: the checkpoint is at step {step}, past steps={config.steps} (steps is the total to reach)"
        )
    return config


def config_changes(saved: TrainConfig, requested: TrainConfig) -> dict[str, tuple]:
    """{field path: (saved value, requested value)} for every setting that differs (nested
    settings by their dotted path, e.g. reg_config.k)."""
    a, b = flat_items(saved), flat_items(requested)
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def format_changes(changes: dict[str, tuple]) -> str:
    """'latent_dim: 6 -> 8, reg: 'none' -> 'spectral'' (checkpoint value -> requested value)."""
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())


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


# ---------------------------------------------------------------------------------------------
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
        if self.G_ema is None:
            return TrainResult(
                G=self.G,
                D=self.D,
                config=self.config,
                seconds=seconds,
                steps=steps,
                history=history,
                checkpoint=checkpoint,
            )
        self.G_ema.eval()
        return TrainResult(
            G=self.G_ema,
            D=self.D,
            config=self.config,
            seconds=seconds,
            steps=steps,
            history=history,
            checkpoint=checkpoint,
            G_train=self.G,
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


def _discriminator_step(run: RunState, step: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One D update on B real and B generated images (each (B, 1, size, size)), with the R1
    penalty on the reals every r1_every steps (scaled by r1_every): (loss_D, r1, whether R1 ran)."""
    config, B = run.config, run.batch
    idx = torch.randint(0, run.data.shape[0], (B,), generator=run.sampler).to(run.device)
    z = torch.randn(B, config.latent_dim, generator=run.sampler).to(run.device)
    real = run.data[idx]
    with torch.no_grad():
        fake = run.G(z)
    do_r1 = config.r1_gamma > 0 and step % config.r1_every == 0
    if do_r1:
        real = real.detach().requires_grad_(True)
    logits = run.D_run(torch.cat([real, fake]))
    l_real, l_fake = logits[:B], logits[B:]
    loss_D = F.softplus(-l_real).mean() + F.softplus(l_fake).mean()
    r1 = torch.zeros((), device=run.device)
    if do_r1:
        (g,) = torch.autograd.grad(l_real.sum(), real, create_graph=True)
        r1 = g.pow(2).flatten(1).sum(1).mean()
        loss_D = loss_D + 0.5 * config.r1_gamma * config.r1_every * r1
    run.opt_D.zero_grad(set_to_none=True)
    loss_D.backward()
    run.opt_D.step()
    return loss_D, r1, do_r1


def _generator_step(run: RunState) -> tuple[torch.Tensor, torch.Tensor]:
    """One G update on B latents (B, latent_dim): the non-saturating loss plus reg_weight times
    the regularizer (on its own lazy schedule): (adversarial loss, regularizer value)."""
    config = run.config
    z = torch.randn(run.batch, config.latent_dim, generator=run.sampler).to(run.device)
    run.D.requires_grad_(False)
    fake = run.G_run(z)
    loss_adv = F.softplus(-run.D(fake)).mean()
    loss_G = loss_adv
    reg_val = torch.zeros((), device=run.device)
    if run.reg is not None and config.reg_weight > 0:
        if bool(torch.isfinite(fake.detach()).all()):
            reg_val = run.reg(run.G_run, z)
        else:  # a diverged G: the regularizers refuse its G(z) (ValueError); reported as divergence, exit 1
            reg_val = torch.full((), float("nan"), device=run.device)
        loss_G = loss_G + config.reg_weight * reg_val
    run.opt_G.zero_grad(set_to_none=True)
    loss_G.backward()
    run.opt_G.step()
    run.D.requires_grad_(True)
    return loss_adv, reg_val


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
