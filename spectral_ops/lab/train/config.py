"""The trainer's settings: `TrainConfig` (its fields' metadata makes the `spectral-ops train`
flags), the option lists, `TRAIN_REGULARIZER` and the flags of its settings (`REG_FLAGS`),
validation, the networks a config builds, and what a resumed run may change (`RESUMABLE`,
`resumed_config`, `config_changes` over `flat_items`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from spectral_ops.config import GRADS, RegularizerConfig
from spectral_ops.lab.data import DATASETS
from spectral_ops.lab.models import LATENT_MAPS, NORMS, Discriminator, Generator
from spectral_ops.ops import LOSS_KINDS
from spectral_ops.validation import check_int, check_number, check_seed

REGULARIZERS = ("none", "spectral", "hessian", "orojar", "jacobian_l1", "path_length")
DEVICES = ("auto", "cpu", "cuda")
#: TrainConfig fields a resumed run may change: how far it goes, how often it logs and saves, where
#: it writes and runs (on another device the run goes on, but not bit for bit)
RESUMABLE = ("steps", "log_every", "ckpt_every", "out", "device")


#: The trainer's spectral settings: the library's defaults, regularized every 4 steps (the
#: library's default is 8; the demo and docs/experiment.md were measured with 4).
TRAIN_REGULARIZER = RegularizerConfig(every=4)

#: The regularizer settings `spectral-ops train` and `demo` expose, as --reg-NAME: field name ->
#: (help, allowed values or None).  The library's RegularizerConfig has plain fields; its allowed
#: values are the library's lists (LOSS_KINDS, GRADS), which it validates against.
REG_FLAGS: dict[str, tuple[str, tuple | None]] = {
    "k": ("singular vectors aligned per sample (1 <= k <= latent_dim)", None),
    "iters": ("cap per computed call: power iterations, or krylov products of k vectors per sample", None),
    "loss": ("alignment loss variant", LOSS_KINDS),
    "grad": ("eigenvector gradient: in-block exact + first order (fast) or CG (implicit)", GRADS),
    "every": ("lazy regularization: compute on one call in N, scaled by N", None),
    "batch_fraction": ("fraction of the batch regularized, in (0, 1]", None),
}


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
    latent_map: str = _option(
        "none", "G's first op on z: none, or uniform (sqrt(3) erf(z / sqrt(2)))", "data and model", LATENT_MAPS
    )
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
    reg_global: float = _option(
        0.0,
        "spectral only: weight of the global term (off-diagonal share of the batch's mean J^T J, "
        "spectral_ops.directions.global_alignment_penalty) relative to the local one; 0 disables",
        "regularizer",
    )
    #: the spectral regularizer's settings; `every` (lazy regularization) applies to every --reg
    reg_config: RegularizerConfig = _option(
        TRAIN_REGULARIZER,
        "spectral regularizer settings",
        "regularizer",
        prefix="reg-",
        fields=REG_FLAGS,
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
        for name in ("lr_g", "lr_d", "r1_gamma", "reg_weight", "reg_global"):
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


def build_models(config: TrainConfig) -> tuple[Generator, Discriminator]:
    G = Generator(
        config.latent_dim, size=config.size, width=config.width, norm=config.norm, latent_map=config.latent_map
    )
    D = Discriminator(size=config.size, width=config.d_width or config.width)
    return G, D


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


def flat_items(config, path: str = "") -> dict:
    """{dotted path: value} over the leaves of a (nested) dataclass instance."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flat_items(value, f"{path}{f.name}."))
        else:
            out[f"{path}{f.name}"] = value
    return out


def format_changes(changes: dict[str, tuple]) -> str:
    """'latent_dim: 6 -> 8, reg: 'none' -> 'spectral'' (checkpoint value -> requested value)."""
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
