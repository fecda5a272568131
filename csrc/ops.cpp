// Schemas of the spectral_ops operators and their autograd.  Kernels: csrc/cpu/*.cpp (CPU),
// csrc/cuda/*.cu (CUDA); fake (meta) registrations live in Python (spectral_ops/ops/_native.py).
//
// Autograd is registered here, in C++, for every device: each backward is its own op
// (orthonormalize_backward, alignment_loss_backward) dispatched by device like the forward;
// alignment_loss_forward is the loss plus the statistics that alignment_loss_backward reuses.  A
// Python register_autograd costs several Python round trips per call (about 100 us), which is
// most of the time of a small batch.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <tuple>

TORCH_LIBRARY(spectral_ops, m) {
  m.def("orthonormalize(Tensor W) -> Tensor");
  m.def("orthonormalize_backward(Tensor grad_Q, Tensor Q, Tensor W) -> Tensor");
  m.def("ritz_step(Tensor Q, Tensor MQ, Tensor? V_prev) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("alignment_loss(Tensor V, Tensor S, str kind, str weights) -> Tensor");
  // The loss and the per-sample statistics its backward reuses (common/alignment.h: saved_width).
  m.def("alignment_loss_forward(Tensor V, Tensor S, str kind, str weights) -> (Tensor, Tensor)");
  m.def(
      "alignment_loss_backward(Tensor grad, Tensor V, Tensor S, Tensor saved, str kind, str weights) -> "
      "(Tensor, Tensor)");
}

namespace spectral_ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_orthonormalize(const at::Tensor& W) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("spectral_ops::orthonormalize", "")
                             .typed<at::Tensor(const at::Tensor&)>();
  return op.call(W);
}

at::Tensor call_orthonormalize_backward(const at::Tensor& grad_Q, const at::Tensor& Q, const at::Tensor& W) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("spectral_ops::orthonormalize_backward", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(grad_Q, Q, W);
}

at::Tensor call_alignment_loss(const at::Tensor& V, const at::Tensor& S, c10::string_view kind,
                               c10::string_view weights) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("spectral_ops::alignment_loss", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, c10::string_view)>();
  return op.call(V, S, kind, weights);
}

std::tuple<at::Tensor, at::Tensor> call_alignment_loss_forward(const at::Tensor& V, const at::Tensor& S,
                                                               c10::string_view kind, c10::string_view weights) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("spectral_ops::alignment_loss_forward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                       c10::string_view, c10::string_view)>();
  return op.call(V, S, kind, weights);
}

std::tuple<at::Tensor, at::Tensor> call_alignment_loss_backward(const at::Tensor& grad, const at::Tensor& V,
                                                                const at::Tensor& S, const at::Tensor& saved,
                                                                c10::string_view kind, c10::string_view weights) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("spectral_ops::alignment_loss_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, c10::string_view, c10::string_view)>();
  return op.call(grad, V, S, saved, kind, weights);
}

// Q = orthonormalize(W); grad_W = orthonormalize_backward(grad_Q, Q, W).
struct Orthonormalize : public torch::autograd::Function<Orthonormalize> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& W) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor Q = call_orthonormalize(W);
    ctx->save_for_backward({Q, W});
    return Q;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    return {call_orthonormalize_backward(grads[0], saved[0], saved[1])};
  }
};

// (loss, stats) = alignment_loss_forward(V, S, kind, weights);
// (grad_V, grad_S) = alignment_loss_backward(grad, V, S, stats, kind, weights): the backward reuses
// the forward's per-sample statistics instead of recomputing them.
struct AlignmentLoss : public torch::autograd::Function<AlignmentLoss> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& V, const at::Tensor& S, c10::string_view kind,
                            c10::string_view weights) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [loss, stats] = call_alignment_loss_forward(V, S, kind, weights);
    ctx->save_for_backward({V, S, stats});
    ctx->saved_data["kind"] = std::string(kind);
    ctx->saved_data["weights"] = std::string(weights);
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    auto [grad_V, grad_S] =
        call_alignment_loss_backward(grads[0], saved[0], saved[1], saved[2], ctx->saved_data["kind"].toStringRef(),
                                     ctx->saved_data["weights"].toStringRef());
    return {grad_V, grad_S, at::Tensor(), at::Tensor()};
  }
};

at::Tensor orthonormalize_autograd(const at::Tensor& W) { return Orthonormalize::apply(W); }

at::Tensor alignment_loss_autograd(const at::Tensor& V, const at::Tensor& S, c10::string_view kind,
                                   c10::string_view weights) {
  if (!(at::GradMode::is_enabled() && (V.requires_grad() || S.requires_grad()))) {
    // No graph: the plain forward, without the statistics only a backward would read.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_alignment_loss(V, S, kind, weights);
  }
  return AlignmentLoss::apply(V, S, kind, weights);
}

}  // namespace
}  // namespace spectral_ops

TORCH_LIBRARY_IMPL(spectral_ops, Autograd, m) {
  m.impl("orthonormalize", &spectral_ops::orthonormalize_autograd);
  m.impl("alignment_loss", &spectral_ops::alignment_loss_autograd);
  // ritz_step is used without a graph: its outputs never require grad (no autograd warning either).
  m.impl("ritz_step", torch::CppFunction::makeFallthrough());
}
