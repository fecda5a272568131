"""Peer regularizers behind the spectral regularizer's call shape ``f(G, z, ...) -> scalar``.

- `hessian_penalty`: Peebles et al. 2020, "The Hessian Penalty" (off-diagonal Hessian via the
  variance of finite-difference second directional derivatives along Rademacher vectors).
- `orojar`: Wei et al. 2021, "Orthogonal Jacobian Regularization" (off-diagonal of J^T J via the
  variance of ||J v||^2 along Rademacher vectors).
- `jacobian_l1`: Rhodes & Lee 2021, "Local Disentanglement in Variational Auto-Encoders Using
  Jacobian L1 Regularization" (the L1 norm of the whole Jacobian, by forward differences along
  each latent axis).
- `path_length` / `PathLengthRegularizer`: the StyleGAN2 path-length penalty (Karras et al. 2020),
  in z-space, with the running mean kept by the module.

Each returns a scalar differentiable w.r.t. G's parameters.  G may be DDP-wrapped (the extra
passes use G.module) and follows the same BatchNorm policy as the spectral regularizer.  Bad
arguments raise TypeError / ValueError naming them (spectral_ops.validation's style); a G(z) that
is not finite, or a penalty that overflows, raises ValueError naming the rows of z.
"""

from .peers import PathLengthRegularizer, hessian_penalty, jacobian_l1, orojar, path_length

__all__ = ["hessian_penalty", "orojar", "jacobian_l1", "path_length", "PathLengthRegularizer"]
