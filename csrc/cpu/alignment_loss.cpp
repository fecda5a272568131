// alignment_loss, alignment_loss_forward and alignment_loss_backward on the CPU
// (maths: common/alignment.h).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <tuple>

#include "common/alignment.h"
#include "common/checks.h"
#include "cpu/cpu_loop.h"

namespace spectral_ops {
namespace {

// loss [B] and, if with_saved, the statistics the backward needs ([B, saved_width]).
std::tuple<at::Tensor, at::Tensor> alignment_loss_impl(const at::Tensor& V, const at::Tensor& S, c10::string_view kind,
                                                       c10::string_view weights, bool with_saved) {
  const AlignmentInputs in = alignment_inputs(check_rows(V, "V"), V, S, kind, weights);
  at::Tensor loss = at::empty({in.s.B}, in.V.options());
  at::Tensor saved = with_saved ? at::empty({in.s.B, in.width}, in.V.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(in.ct, "alignment_loss_cpu", [&] {
    const int64_t k = in.s.k, d = in.s.d, width = in.width;
    const scalar_t* v = in.V.const_data_ptr<scalar_t>();
    const scalar_t* sv = in.S.const_data_ptr<scalar_t>();
    scalar_t* out = loss.data_ptr<scalar_t>();
    scalar_t* st = with_saved ? saved.data_ptr<scalar_t>() : nullptr;
    for_each_sample<scalar_t>(in.s.B, 2 * k * k * d, 0, [&](const SerialContext& ctx, int64_t b, scalar_t*) {
      out[b] = alignment_loss_sample(ctx, v + b * k * d, sv + b * k, (int)k, (int)d, in.kind, in.weights,
                                     st ? st + b * width : nullptr);
    });
  });
  return {loss.to(V.scalar_type()), saved};
}

at::Tensor alignment_loss_cpu(const at::Tensor& V, const at::Tensor& S, c10::string_view kind,
                              c10::string_view weights) {
  return std::get<0>(alignment_loss_impl(V, S, kind, weights, /*with_saved=*/false));
}

std::tuple<at::Tensor, at::Tensor> alignment_loss_forward_cpu(const at::Tensor& V, const at::Tensor& S,
                                                              c10::string_view kind, c10::string_view weights) {
  return alignment_loss_impl(V, S, kind, weights, /*with_saved=*/true);
}

std::tuple<at::Tensor, at::Tensor> alignment_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& V,
                                                               const at::Tensor& S, const at::Tensor& saved,
                                                               c10::string_view kind, c10::string_view weights) {
  const AlignmentInputs in = alignment_inputs(check_rows(V, "V"), V, S, kind, weights);
  check_grad(grad, in.s);
  check_saved(saved, in.s, in.width, V);
  const at::Tensor gc = as_compute(grad, in.ct), stc = as_compute(saved, in.ct);
  at::Tensor grad_V = at::empty_like(in.V), grad_S = at::empty_like(in.S);
  AT_DISPATCH_FLOATING_TYPES(in.ct, "alignment_loss_backward_cpu", [&] {
    const int64_t k = in.s.k, d = in.s.d, width = in.width;
    const scalar_t* g = gc.const_data_ptr<scalar_t>();
    const scalar_t* v = in.V.const_data_ptr<scalar_t>();
    const scalar_t* sv = in.S.const_data_ptr<scalar_t>();
    const scalar_t* st = stc.const_data_ptr<scalar_t>();
    scalar_t* gv = grad_V.data_ptr<scalar_t>();
    scalar_t* gs = grad_S.data_ptr<scalar_t>();
    for_each_sample<scalar_t>(in.s.B, 2 * k * k * d, k, [&](const SerialContext& ctx, int64_t b, scalar_t* mix) {
      alignment_loss_backward_sample(ctx, g[b], v + b * k * d, sv + b * k, st + b * width, gv + b * k * d, gs + b * k,
                                     (int)k, (int)d, in.kind, in.weights, mix);
    });
  });
  return {grad_V.to(V.scalar_type()), grad_S.to(S.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(spectral_ops, CPU, m) {
  m.impl("alignment_loss", &alignment_loss_cpu);
  m.impl("alignment_loss_forward", &alignment_loss_forward_cpu);
  m.impl("alignment_loss_backward", &alignment_loss_backward_cpu);
}

}  // namespace spectral_ops
