"""`spectral-ops train`: a small GAN on a procedural dataset, optionally regularized.

- Non-saturating GAN loss; R1 on real images (lazy: every `r1_every` steps, scaled); Adam.
- An exponential moving average of G's weights (`ema`, warmed up as min(ema, (1+t)/(10+t))):
  the EMA generator is what `train` returns as `G`, what checkpoints serve and what is evaluated.
- Optional regularizer on the generator step: the spectral regularizer (`--reg spectral`) or a
  peer (`hessian`, `orojar`, `path_length`), imported lazily.
- Progress bar (tqdm), a JSON-lines metrics log (`log.jsonl`), a summary (`train.json`).
- Checkpoints are written atomically (temporary file, then `os.replace`) and hold everything
  needed to continue bit-for-bit on the CPU: models, optimizers, regularizer state, the sampling
  generator and the torch / numpy / python RNG states. `--resume` continues from one.
- Several processes: run under `torchrun --nproc_per_node N`. Each process draws its own
  batch_size / N rows; G and D are wrapped in DistributedDataParallel (gloo on CPU, nccl on GPU).

Python use: `train(TrainConfig(...)) -> TrainResult` (the demo and the experiment call it).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._io import atomic_save, writable_dir

from .data import DATASETS, make_dataset
from .models import Discriminator, Generator

__all__ = ["TrainConfig", "TrainResult", "train", "build_models", "build_regularizer", "load_checkpoint",
           "load_generator", "add_arguments", "run", "REGULARIZERS"]

REGULARIZERS = ("none", "spectral", "hessian", "orojar", "path_length")
_CKPT_FORMAT = 1


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in checkpoints)."""

    dataset: str = "sprites"
    size: int = 32
    n_train: int = 20000
    data_seed: int = 0
    latent_dim: int = 10
    width: int = 32
    d_width: int = 0
    norm: str = "pixel"
    steps: int = 2000
    batch_size: int = 64
    lr_g: float = 1e-3
    lr_d: float = 1e-3
    beta1: float = 0.0
    beta2: float = 0.99
    r1_gamma: float = 1.0
    r1_every: int = 4
    ema: float = 0.99
    reg: str = "none"
    reg_weight: float = 1.0
    reg_k: int = 4
    reg_iters: int = 2
    reg_loss: str = "offdiag"
    reg_grad: str = "fast"
    reg_every: int = 4
    reg_batch_fraction: float = 0.25
    seed: int = 0
    out: str = "runs/train"
    ckpt_every: int = 500
    log_every: int = 50
    device: str = "auto"

    def validate(self) -> "TrainConfig":
        def pos_int(name, minimum=1):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")

        def nonneg(name):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")

        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {self.dataset!r}")
        if self.size not in (32, 64):
            raise ValueError(f"size must be 32 or 64, got {self.size!r}")
        for name in ("n_train", "latent_dim", "width", "batch_size", "r1_every", "reg_k", "reg_iters",
                     "reg_every", "ckpt_every", "log_every"):
            pos_int(name)
        pos_int("steps", 0)
        pos_int("d_width", 0)
        for name in ("lr_g", "lr_d", "r1_gamma", "reg_weight"):
            nonneg(name)
        for name in ("beta1", "beta2", "ema"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {v!r}")
        if self.norm not in ("pixel", "layer", "none"):
            raise ValueError(f"norm must be 'pixel', 'layer' or 'none', got {self.norm!r}")
        if self.reg not in REGULARIZERS:
            raise ValueError(f"reg must be one of {REGULARIZERS}, got {self.reg!r}")
        if self.reg_k > self.latent_dim:
            raise ValueError(f"reg_k ({self.reg_k}) must be <= latent_dim ({self.latent_dim})")
        if self.reg_loss not in ("l1", "assigned", "offdiag"):
            raise ValueError(f"reg_loss must be 'l1', 'assigned' or 'offdiag', got {self.reg_loss!r}")
        if self.reg_grad not in ("fast", "implicit"):
            raise ValueError(f"reg_grad must be 'fast' or 'implicit', got {self.reg_grad!r}")
        if not 0 < self.reg_batch_fraction <= 1:
            raise ValueError(f"reg_batch_fraction must lie in (0, 1], got {self.reg_batch_fraction!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
        return self


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


# ---------------------------------------------------------------------------------------------
def build_models(config: TrainConfig) -> tuple[Generator, Discriminator]:
    G = Generator(config.latent_dim, size=config.size, width=config.width, norm=config.norm)
    D = Discriminator(size=config.size, width=config.d_width or config.width)
    return G, D


def build_regularizer(config: TrainConfig) -> nn.Module | None:
    """The regularizer module for config.reg (None for "none"); imported lazily."""
    if config.reg == "none":
        return None
    if config.reg == "spectral":
        from .regularizer import SpectralRegularizer

        return SpectralRegularizer(config.latent_dim, k=config.reg_k, iters=config.reg_iters, loss=config.reg_loss,
                                   grad=config.reg_grad, every=config.reg_every,
                                   batch_fraction=config.reg_batch_fraction, seed=config.seed)
    from . import baselines

    if config.reg == "path_length":
        return baselines.PathLengthRegularizer(every=config.reg_every)
    fn = {"hessian": baselines.hessian_penalty, "orojar": baselines.orojar}[config.reg]
    return _LazyPeer(fn, config.reg_every)


class _LazyPeer(nn.Module):
    """Wrap a stateless peer penalty f(G, z) with lazy regularization (every N calls, scaled by N)."""

    def __init__(self, fn, every: int):
        super().__init__()
        self.fn, self.every = fn, every
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, G, z):
        step = int(self.step)
        self.step += 1
        if step % self.every:
            return torch.zeros((), device=z.device)
        return self.every * self.fn(G, z)


@torch.no_grad()
def _ema_update(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """G_ema <- beta * G_ema + (1 - beta) * G on the parameters; buffers are copied."""
    for p_e, p in zip(G_ema.parameters(), G.parameters()):
        p_e.lerp_(p, 1.0 - beta)
    for b_e, b in zip(G_ema.buffers(), G.buffers()):
        b_e.copy_(b)


def _rng_state(gen: torch.Generator) -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "sampler": gen.get_state(),
             "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
             "python": random.getstate()}
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


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by `train` (no pickled code: weights_only loading)."""
    blob = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != _CKPT_FORMAT:
        raise ValueError(f"{path} is not a spectral-ops training checkpoint")
    return blob


def load_generator(path: str | os.PathLike) -> tuple[Generator, TrainConfig]:
    """(generator in eval mode, its TrainConfig) from a checkpoint: the EMA generator when the run
    kept one (config.ema > 0), else the trained one."""
    blob = load_checkpoint(path)
    config = TrainConfig(**blob["config"])
    G, _ = build_models(config)
    G.load_state_dict(blob["G_ema"] if blob.get("G_ema") is not None else blob["G"])
    G.eval()
    return G, config


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


def train(config: TrainConfig, *, resume: str | os.PathLike | None = None, progress: bool = True,
          write: bool = True, desc: str | None = None) -> TrainResult:
    """Train a GAN as described by `config`.

    Args:
        config: the run (validated here). With `resume`, the checkpoint's config is used and only
            `steps` (the total to reach), `out`, `ckpt_every`, `log_every` come from `config`.
        resume: a checkpoint path to continue from.
        progress: show a tqdm bar (rank 0 only).
        write: write checkpoints and logs under config.out (rank 0 only).
        desc: progress-bar label.

    Returns:
        TrainResult with the (unwrapped) G and D on their device; with config.ema > 0, G is the
        EMA generator (what checkpoints serve to `load_generator`) and G_train the trained one.
    """
    import torch.distributed as dist

    blob = None
    if resume is not None:
        if not os.path.isfile(resume):
            raise ValueError(f"resume: no checkpoint at {str(resume)!r}")
        blob = load_checkpoint(resume)
        keep = {k: getattr(config, k) for k in ("steps", "out", "ckpt_every", "log_every")}
        config = dataclasses.replace(TrainConfig(**blob["config"]), **keep)
    config.validate()
    rank, world, device, we_init = _dist_setup(config.device)
    if config.batch_size % world:
        raise ValueError(f"batch_size ({config.batch_size}) must be divisible by the number of processes ({world})")
    B = config.batch_size // world
    out = Path(config.out)
    main = rank == 0
    if write and main:
        out.mkdir(parents=True, exist_ok=True)

    try:
        data = make_dataset(config.dataset, config.n_train, size=config.size, seed=config.data_seed).images.to(device)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed)
        G, D = build_models(config)
        G, D = G.to(device), D.to(device)
        reg = build_regularizer(config)
        if reg is not None:
            reg = reg.to(device)
        opt_G = torch.optim.Adam(G.parameters(), lr=config.lr_g, betas=(config.beta1, config.beta2))
        opt_D = torch.optim.Adam(D.parameters(), lr=config.lr_d, betas=(config.beta1, config.beta2))
        G_ema = copy.deepcopy(G).requires_grad_(False) if config.ema > 0 else None
        sampler = torch.Generator(device="cpu").manual_seed(config.seed * 1000 + rank)
        start, elapsed = 0, 0.0
        if blob is not None:
            G.load_state_dict(blob["G"])
            D.load_state_dict(blob["D"])
            if G_ema is not None:
                G_ema.load_state_dict(blob["G_ema"] if blob.get("G_ema") is not None else blob["G"])
            opt_G.load_state_dict(blob["opt_G"])
            opt_D.load_state_dict(blob["opt_D"])
            if reg is not None and blob.get("reg") is not None:
                reg.load_state_dict(blob["reg"])
            start, elapsed = int(blob["step"]), float(blob["elapsed"])
            if int(blob.get("world", 1)) != world:
                raise ValueError(f"resume: checkpoint was written with {blob.get('world')} processes, now {world}")
            states = blob["rng"]
            _set_rng_state(states[rank] if isinstance(states, list) else states, sampler)

        if world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            G_run, D_run = DDP(G, device_ids=ids), DDP(D, device_ids=ids)
        else:
            G_run, D_run = G, D

        def save(step: int) -> str | None:
            rng = _rng_state(sampler)
            if world > 1:
                gathered = [None] * world
                dist.all_gather_object(gathered, rng)
                rng = gathered
            if not (write and main):
                return None
            path = out / "checkpoint.pt"
            atomic_save({"format": _CKPT_FORMAT, "config": asdict(config), "step": step, "world": world,
                          "elapsed": elapsed + (time.perf_counter() - t0),
                          "G": G.state_dict(), "G_ema": None if G_ema is None else G_ema.state_dict(),
                          "D": D.state_dict(), "opt_G": opt_G.state_dict(),
                          "opt_D": opt_D.state_dict(), "reg": None if reg is None else reg.state_dict(),
                          "rng": rng}, path)
            return str(path)

        log_f = open(out / "log.jsonl", "a") if (write and main) else None
        history: list[dict] = []
        t0 = time.perf_counter()
        ckpt_path = None
        bar = tqdm(total=config.steps, initial=min(start, config.steps), disable=not (progress and main),
                   desc=desc or f"train {config.reg}", leave=False, dynamic_ncols=True)
        n = data.shape[0]
        acc = torch.zeros(4, dtype=torch.float64)  # sums since the last log line: loss_D, loss_G, r1, reg
        acc_n = torch.zeros(4, dtype=torch.float64)
        for step in range(start, config.steps):
            # ---- discriminator step
            idx = torch.randint(0, n, (B,), generator=sampler).to(device)
            z = torch.randn(B, config.latent_dim, generator=sampler).to(device)
            real = data[idx]
            with torch.no_grad():
                fake = G(z)
            do_r1 = config.r1_gamma > 0 and step % config.r1_every == 0
            if do_r1:
                real = real.detach().requires_grad_(True)
            logits = D_run(torch.cat([real, fake]))
            l_real, l_fake = logits[:B], logits[B:]
            loss_D = F.softplus(-l_real).mean() + F.softplus(l_fake).mean()
            r1 = torch.zeros((), device=device)
            if do_r1:
                (g,) = torch.autograd.grad(l_real.sum(), real, create_graph=True)
                r1 = g.pow(2).flatten(1).sum(1).mean()
                loss_D = loss_D + 0.5 * config.r1_gamma * config.r1_every * r1
            opt_D.zero_grad(set_to_none=True)
            loss_D.backward()
            opt_D.step()

            # ---- generator step
            z = torch.randn(B, config.latent_dim, generator=sampler).to(device)
            D.requires_grad_(False)
            fake = G_run(z)
            loss_adv = F.softplus(-D(fake)).mean()
            loss_G = loss_adv
            reg_val = torch.zeros((), device=device)
            if reg is not None and config.reg_weight > 0:
                reg_val = reg(G_run, z)
                loss_G = loss_G + config.reg_weight * reg_val
            opt_G.zero_grad(set_to_none=True)
            loss_G.backward()
            opt_G.step()
            D.requires_grad_(True)
            if G_ema is not None:
                _ema_update(G_ema, G, min(config.ema, (1 + step) / (10 + step)))

            done = step + 1
            acc += torch.stack([loss_D.detach(), loss_adv.detach(), r1.detach(), reg_val.detach()]).double().cpu()
            acc_n += torch.tensor([1.0, 1.0, float(do_r1), float(reg_val.requires_grad)], dtype=torch.float64)
            if done % config.log_every == 0 or done == config.steps:
                mean = (acc / acc_n.clamp_min(1)).tolist()
                acc.zero_(), acc_n.zero_()
                # means over the steps since the last line (r1 and reg: over the steps that computed them)
                rec = {"step": done, "loss_D": mean[0], "loss_G": mean[1], "r1": mean[2], "reg": mean[3],
                       "seconds": round(elapsed + time.perf_counter() - t0, 3)}
                history.append(rec)
                if log_f is not None:
                    log_f.write(json.dumps(rec) + "\n")
                    log_f.flush()
                bar.set_postfix(D=f"{rec['loss_D']:.2f}", G=f"{rec['loss_G']:.2f}", reg=f"{rec['reg']:.3f}")
            if done % config.ckpt_every == 0 and done != config.steps:
                ckpt_path = save(done) or ckpt_path
            bar.update(1)
        bar.close()
        final_step = max(start, config.steps)
        ckpt_path = save(final_step) or ckpt_path
        seconds = elapsed + time.perf_counter() - t0
        if log_f is not None:
            log_f.close()
            summary = {"config": asdict(config), "steps": final_step, "seconds": round(seconds, 2),
                       "world": world, "checkpoint": ckpt_path, "last": history[-1] if history else None}
            tmp = out / "train.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2))
            os.replace(tmp, out / "train.json")
        if world > 1:
            dist.barrier()  # no rank tears down while another still communicates
    finally:
        if we_init and dist.is_initialized():
            # Free the DDP reducers (they hold the process group and its threads) before the group:
            # left to interpreter exit, gloo threads could be destroyed unjoined (std::terminate).
            G_run = D_run = None  # noqa: F841
            gc.collect()
            dist.destroy_process_group()
    G.eval()
    if G_ema is None:
        return TrainResult(G=G, D=D, config=config, seconds=seconds, steps=final_step, history=history,
                           checkpoint=ckpt_path)
    G_ema.eval()
    return TrainResult(G=G_ema, D=D, config=config, seconds=seconds, steps=final_step, history=history,
                       checkpoint=ckpt_path, G_train=G)


# ---------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    g = parser.add_argument_group("data and model")
    g.add_argument("--dataset", choices=sorted(DATASETS), default=d.dataset, help="procedural dataset (default: %(default)s)")
    g.add_argument("--size", type=int, choices=(32, 64), default=d.size, help="image side in pixels (default: %(default)s)")
    g.add_argument("--n-train", type=int, default=d.n_train, help="training images rendered (default: %(default)s)")
    g.add_argument("--data-seed", type=int, default=d.data_seed, help="seed of the rendered training set (default: %(default)s)")
    g.add_argument("--latent-dim", type=int, default=d.latent_dim, help="latent size d (default: %(default)s)")
    g.add_argument("--width", type=int, default=d.width, help="channel width of G (and of D unless --d-width) (default: %(default)s)")
    g.add_argument("--d-width", type=int, default=d.d_width,
                   help="channel width of D, 0: the same as --width (default: %(default)s)")
    g.add_argument("--norm", choices=("pixel", "layer", "none"), default=d.norm,
                   help="per-sample normalisation in G, never batch-coupled (default: %(default)s)")
    g = parser.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=d.steps, help="total training steps, one D and one G update each (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch, split over processes (default: %(default)s)")
    g.add_argument("--lr-g", type=float, default=d.lr_g, help="Adam learning rate of G (default: %(default)s)")
    g.add_argument("--lr-d", type=float, default=d.lr_d, help="Adam learning rate of D (default: %(default)s)")
    g.add_argument("--beta1", type=float, default=d.beta1, help="Adam beta1 (default: %(default)s)")
    g.add_argument("--beta2", type=float, default=d.beta2, help="Adam beta2 (default: %(default)s)")
    g.add_argument("--r1-gamma", type=float, default=d.r1_gamma, help="R1 penalty weight on real images, 0 disables (default: %(default)s)")
    g.add_argument("--r1-every", type=int, default=d.r1_every, help="apply R1 every N steps, scaled by N (default: %(default)s)")
    g.add_argument("--ema", type=float, default=d.ema,
                   help="decay of an exponential moving average of G's weights, evaluated and checkpointed; "
                        "0 disables (default: %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of initialisation and sampling (default: %(default)s)")
    g = parser.add_argument_group("regularizer")
    g.add_argument("--reg", choices=REGULARIZERS, default=d.reg, help="generator regularizer (default: %(default)s)")
    g.add_argument("--reg-weight", type=float, default=d.reg_weight, help="weight of the regularizer (default: %(default)s)")
    g.add_argument("--reg-k", type=int, default=d.reg_k, help="spectral: singular vectors aligned (default: %(default)s)")
    g.add_argument("--reg-iters", type=int, default=d.reg_iters, help="spectral: power iterations per step (default: %(default)s)")
    g.add_argument("--reg-loss", choices=("l1", "assigned", "offdiag"), default=d.reg_loss, help="spectral: loss variant (default: %(default)s)")
    g.add_argument("--reg-grad", choices=("fast", "implicit"), default=d.reg_grad, help="spectral: gradient mode (default: %(default)s)")
    g.add_argument("--reg-every", type=int, default=d.reg_every, help="lazy regularization: every N G steps, scaled by N (default: %(default)s)")
    g.add_argument("--reg-batch-fraction", type=float, default=d.reg_batch_fraction,
                   help="spectral: fraction of the batch regularized (default: %(default)s)")
    g = parser.add_argument_group("output")
    g.add_argument("--out", default=d.out, help="output folder: checkpoint.pt, log.jsonl, train.json (default: %(default)s)")
    g.add_argument("--ckpt-every", type=int, default=d.ckpt_every, help="checkpoint every N steps (default: %(default)s)")
    g.add_argument("--log-every", type=int, default=d.log_every, help="log every N steps (default: %(default)s)")
    g.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="continue from CKPT (default: OUT/checkpoint.pt); --steps is the total to reach")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device, help="device (default: %(default)s)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.epilog = ("Several processes: torchrun --nproc_per_node 2 -m spectral_ops.cli train ... "
                     "(gloo on CPU, nccl on GPU).")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        resume = None
        if args.resume is not None:
            resume = str(Path(config.out) / "checkpoint.pt") if args.resume == "auto" else args.resume
        else:
            config.validate()
        msg = writable_dir(config.out)
        if msg:
            raise ValueError(msg)
        result = train(config, resume=resume, progress=not args.no_progress)
    except ValueError as exc:
        print(f"spectral-ops train: error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        last = result.history[-1] if result.history else {}
        print(f"trained {result.steps} steps in {result.seconds:.1f} s; checkpoint: {result.checkpoint}; "
              f"last: " + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k != "step"))
    return 0
