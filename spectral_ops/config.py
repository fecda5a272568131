"""The regularizer's settings, typed and validated in one place.

`RegularizerConfig` is what `SpectralRegularizer` takes (its keyword arguments build one), what
`spectral_penalty` checks its arguments with, and what an application nests in its own config
(the trainer's `TrainConfig.reg_config`).  Its fields are plain dataclass fields, documented in
the Args of `spectral_penalty` and `SpectralRegularizer`; the allowed values of the choice
fields are the constants below and, for the loss and weight kinds, the ops layer's
(`spectral_ops.ops.LOSS_KINDS`, `WEIGHT_KINDS`), their single definition.  Command-line flags
are the application's business (`spectral_ops.lab`), not this module's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .jacobian import JVP_MODES
from .ops.common import LOSS_KINDS, WEIGHT_KINDS
from .validation import check_bool, check_choice, check_int, check_k, check_number, check_seed

GRADS = ("fast", "implicit")
# the ops' weight kinds, and "geometric": offdiag's rank weights 2^-(i-1) (regularizer.loss_values)
REGULARIZER_WEIGHTS = (*WEIGHT_KINDS, "geometric")
SOLVERS = ("krylov", "power")
BATCHNORM = ("error", "eval")
REMOVED_GRADS = {
    "last_step": "grad='last_step' was removed: its gradient has the wrong sign inside the top-k "
    "block (see the regularizer docs); use grad='fast' (same cost) or 'implicit'"
}


@dataclass(frozen=True)
class RegularizerConfig:
    """Settings of the spectral regularizer (defaults pass the known-answer gate)."""

    k: int = 4
    solver: str = "krylov"
    iters: int = 6
    loss: str = "offdiag"
    grad: str = "fast"
    every: int = 8
    batch_fraction: float = 0.25
    warm_start: bool = True
    jvp: str = "auto"
    weights: str = "uniform"
    batchnorm: str = "error"
    momentum: float = 0.2
    tol: float = 1e-4
    null_tol: float = 1e-3
    cg_iters: int = 8
    cg_tol: float = 1e-6
    seed: int = 0

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
        check_choice("weights", self.weights, REGULARIZER_WEIGHTS)
        if self.weights == "geometric" and self.loss != "offdiag":
            raise ValueError(
                f"weights='geometric' (rank weights) applies to loss='offdiag' only, got loss={self.loss!r}"
            )
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
