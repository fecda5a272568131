// Schemas of the spectral_ops operators.  Kernels: csrc/cpu/*.cpp (CPU), csrc/cuda/*.cu (CUDA);
// fake (meta) and autograd registrations live in Python (spectral_ops/ops/_registration.py).
#include <torch/library.h>

TORCH_LIBRARY(spectral_ops, m) {
  m.def("orthonormalize(Tensor W) -> Tensor");
  m.def("orthonormalize_backward(Tensor grad_Q, Tensor Q, Tensor W) -> Tensor");
  m.def("ritz_step(Tensor Q, Tensor MQ, Tensor? V_prev) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("alignment_loss(Tensor V, Tensor S, str kind, str weights) -> Tensor");
  m.def("alignment_loss_backward(Tensor grad, Tensor V, Tensor S, str kind, str weights) -> (Tensor, Tensor)");
}

// ritz_step is used without a graph: its outputs never require grad (no autograd warning either).
TORCH_LIBRARY_IMPL(spectral_ops, Autograd, m) {
  m.impl("ritz_step", torch::CppFunction::makeFallthrough());
}
