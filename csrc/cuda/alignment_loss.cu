// alignment_loss, alignment_loss_forward and alignment_loss_backward on CUDA: one thread block per
// sample (maths: common/alignment.h).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "common/alignment.h"
#include "cuda/block_context.cuh"

namespace spectral_ops {
namespace {

// saved: [B, width] or nullptr (no statistics wanted).
template <typename T>
__global__ void alignment_loss_kernel(const T* V, const T* S, T* loss, T* saved, int k, int d, int kind,
                                      int weights, int width) {
  SPECTRAL_BLOCK_CONTEXT(T);
  const T value = alignment_loss_sample(ctx, V + (int64_t)blockIdx.x * k * d, S + (int64_t)blockIdx.x * k, k, d,
                                        kind, weights, saved ? saved + (int64_t)blockIdx.x * width : nullptr);
  if (ctx.leader()) loss[blockIdx.x] = value;
}

template <typename T>
__global__ void alignment_loss_backward_kernel(const T* grad, const T* V, const T* S, const T* saved, T* grad_V,
                                               T* grad_S, int k, int d, int kind, int weights, int width) {
  SPECTRAL_BLOCK_CONTEXT(T);
  T mix[kMaxCudaK];
  const int64_t offset = (int64_t)blockIdx.x * k * d;
  alignment_loss_backward_sample(ctx, grad[blockIdx.x], V + offset, S + (int64_t)blockIdx.x * k,
                                 saved + (int64_t)blockIdx.x * width, grad_V + offset,
                                 grad_S + (int64_t)blockIdx.x * k, k, d, kind, weights, mix);
}

std::tuple<at::Tensor, at::Tensor> alignment_loss_impl(const at::Tensor& V, const at::Tensor& S,
                                                       c10::string_view kind, c10::string_view weights,
                                                       bool with_saved) {
  const RowsShape s = check_cuda_rows(V, "V");
  check_values(S, "S", s, V);
  const int kind_code = parse_loss_kind(std::string(kind));
  const int weight_code = parse_weight_kind(std::string(weights));
  const c10::cuda::CUDAGuard guard(V.device());
  const at::ScalarType ct = compute_dtype(V.scalar_type());
  const at::Tensor vc = as_compute(V, ct), sc = as_compute(S, ct);
  const int width = saved_width(kind_code, (int)s.k, (int)s.d);
  at::Tensor loss = at::empty({s.B}, vc.options());
  at::Tensor saved = with_saved ? at::empty({s.B, (int64_t)width}, vc.options()) : at::Tensor();
  if (s.B > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "alignment_loss_cuda", [&] {
      alignment_loss_kernel<scalar_t><<<s.B, threads_for(s.d), 0, c10::cuda::getCurrentCUDAStream()>>>(
          vc.const_data_ptr<scalar_t>(), sc.const_data_ptr<scalar_t>(), loss.data_ptr<scalar_t>(),
          with_saved ? saved.data_ptr<scalar_t>() : nullptr, (int)s.k, (int)s.d, kind_code, weight_code, width);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {loss.to(V.scalar_type()), saved};
}

at::Tensor alignment_loss_cuda(const at::Tensor& V, const at::Tensor& S, c10::string_view kind,
                               c10::string_view weights) {
  return std::get<0>(alignment_loss_impl(V, S, kind, weights, /*with_saved=*/false));
}

std::tuple<at::Tensor, at::Tensor> alignment_loss_forward_cuda(const at::Tensor& V, const at::Tensor& S,
                                                               c10::string_view kind, c10::string_view weights) {
  return alignment_loss_impl(V, S, kind, weights, /*with_saved=*/true);
}

std::tuple<at::Tensor, at::Tensor> alignment_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& V,
                                                                const at::Tensor& S, const at::Tensor& saved,
                                                                c10::string_view kind, c10::string_view weights) {
  const RowsShape s = check_cuda_rows(V, "V");
  check_values(S, "S", s, V);
  check_grad(grad, s);
  const int kind_code = parse_loss_kind(std::string(kind));
  const int weight_code = parse_weight_kind(std::string(weights));
  const int width = saved_width(kind_code, (int)s.k, (int)s.d);
  check_saved(saved, s, width, V);
  const c10::cuda::CUDAGuard guard(V.device());
  const at::ScalarType ct = compute_dtype(V.scalar_type());
  const at::Tensor gc = as_compute(grad, ct), vc = as_compute(V, ct), sc = as_compute(S, ct);
  const at::Tensor stc = as_compute(saved, ct);
  at::Tensor grad_V = at::empty_like(vc), grad_S = at::empty_like(sc);
  if (s.B > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "alignment_loss_backward_cuda", [&] {
      alignment_loss_backward_kernel<scalar_t><<<s.B, threads_for(s.d), 0, c10::cuda::getCurrentCUDAStream()>>>(
          gc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(), sc.const_data_ptr<scalar_t>(),
          stc.const_data_ptr<scalar_t>(), grad_V.data_ptr<scalar_t>(), grad_S.data_ptr<scalar_t>(), (int)s.k,
          (int)s.d, kind_code, weight_code, width);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_V.to(V.scalar_type()), grad_S.to(S.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(spectral_ops, CUDA, m) {
  m.impl("alignment_loss", &alignment_loss_cuda);
  m.impl("alignment_loss_forward", &alignment_loss_forward_cuda);
  m.impl("alignment_loss_backward", &alignment_loss_backward_cuda);
}

}  // namespace spectral_ops
