"""The regularizer's settings, typed and validated in one place.

`RegularizerConfig` is what `SpectralRegularizer` takes (its keyword arguments build one), what
`spectral_penalty` checks its arguments with, and what an application nests in its own config
(the trainer's `TrainConfig.reg_config`).  Each field's metadata holds its allowed values
(`choices`) and a one-line `help`, so a command line can be generated from the dataclass
instead of repeating them.  The loss and weight kinds come from the ops layer
(`spectral_ops.ops.LOSS_KINDS`, `WEIGHT_KINDS`), their single definition.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .jacobian import JVP_MODES
from .ops.reference import LOSS_KINDS, WEIGHT_KINDS
from .validation import check_bool, check_choice, check_int, check_k, check_number, check_seed

GRADS = ("fast", "implicit")
SOLVERS = ("krylov", "power")
BATCHNORM = ("error", "eval")
REMOVED_GRADS = {
    "last_step": "grad='last_step' was removed: its gradient has the wrong sign inside the top-k "
    "block (see the regularizer docs); use grad='fast' (same cost) or 'implicit'"
}


def option(default, help: str, choices: tuple | None = None):
    """A dataclass field with its command-line help and allowed values in the metadata."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class RegularizerConfig:
    """Settings of the spectral regularizer (defaults pass the known-answer gate)."""

    k: int = option(4, "singular vectors aligned per sample (1 <= k <= latent_dim)")
    solver: str = option(
        "krylov",
        "inner solver for the vectors: batched Lanczos from the warm-start block "
        "(krylov) or block power iteration (power)",
        SOLVERS,
    )
    iters: int = option(6, "cap per computed call: power iterations, or krylov products of k vectors per sample")
    loss: str = option("offdiag", "alignment loss variant", LOSS_KINDS)
    grad: str = option("fast", "eigenvector gradient: in-block exact + first order (fast) or CG (implicit)", GRADS)
    every: int = option(8, "lazy regularization: compute on one call in N, scaled by N")
    batch_fraction: float = option(0.25, "fraction of the batch regularized, in (0, 1]")
    warm_start: bool = option(True, "start from a running sign-aligned mean basis")
    jvp: str = option("auto", "Jacobian-vector product mode", JVP_MODES)
    weights: str = option("uniform", "per-vector weights: spectrum-free rank weights or singular values", WEIGHT_KINDS)
    batchnorm: str = option("error", "train-mode BatchNorm in G: refuse, or use running statistics", BATCHNORM)
    momentum: float = option(0.2, "weight of the new batch mean in the running basis, in (0, 1]")
    tol: float = option(1e-4, "residual ||Mv - lam v|| / lam_1 the inner solver stops at (every vector)")
    null_tol: float = option(
        1e-3, "vectors with sigma_i <= null_tol * sigma_1 (directions G ignores) drop out of the loss, in [0, 1)"
    )
    cg_iters: int = option(8, "conjugate-gradient steps for grad='implicit'")
    cg_tol: float = option(1e-6, "relative CG tolerance for grad='implicit'")
    seed: int = option(0, "seeds the initial basis and the regularized row subsets")

    def __post_init__(self):
        self.validate()  # a bad field fails where it is written; k against d is checked by validate(d)

    def validate(self, latent_dim: int | None = None) -> "RegularizerConfig":
        """Raise TypeError / ValueError naming the first bad field; returns self."""
        if latent_dim is not None:
            check_k(self.k, latent_dim)
        else:
            check_int("k", self.k, 1)
        check_choice("solver", self.solver, SOLVERS)
        check_int("iters", self.iters, 1)
        check_choice("loss", self.loss, LOSS_KINDS)
        if isinstance(self.grad, str) and self.grad in REMOVED_GRADS:
            raise ValueError(REMOVED_GRADS[self.grad])
        check_choice("grad", self.grad, GRADS)
        check_int("every", self.every, 1)
        check_number("batch_fraction", self.batch_fraction, 0, 1, low_open=True)
        check_bool("warm_start", self.warm_start)
        check_choice("jvp", self.jvp, JVP_MODES)
        check_choice("weights", self.weights, WEIGHT_KINDS)
        check_choice("batchnorm", self.batchnorm, BATCHNORM)
        check_number("momentum", self.momentum, 0, 1, low_open=True)
        check_number("tol", self.tol, 0)
        check_number("null_tol", self.null_tol, 0, 1, high_open=True)
        check_int("cg_iters", self.cg_iters, 0)
        check_number("cg_tol", self.cg_tol, 0)
        check_seed(self.seed, allow_none=False)
        return self

    def replace(self, **changes) -> "RegularizerConfig":
        """A copy with `changes` applied (unknown names raise TypeError naming them)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(
                f"unknown regularizer option(s) {unknown}; valid: {[f.name for f in dataclasses.fields(self)]}"
            )
        return dataclasses.replace(self, **changes)


def from_flat(cls, values: dict, base=None):
    """The dataclass `cls` from `values` keyed by dotted field paths ("reg_config.k"; other keys
    are ignored); fields absent from `values` keep their value in `base` (default: cls())."""
    base = cls() if base is None else base
    changes = {}
    for f in dataclasses.fields(cls):
        current = getattr(base, f.name)
        if dataclasses.is_dataclass(current):
            prefix = f.name + "."
            inner = {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}
            if inner:
                try:
                    changes[f.name] = from_flat(type(current), inner, current)
                except (TypeError, ValueError) as exc:  # name the nested field: "reg_config: k must ..."
                    raise type(exc)(f"{f.name}: {exc}") from None
        elif f.name in values:
            changes[f.name] = values[f.name]
    return dataclasses.replace(base, **changes)


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
