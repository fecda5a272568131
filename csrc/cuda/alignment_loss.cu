// alignment_loss / alignment_loss_backward on CUDA: one thread block per sample
// (maths: common/alignment.h).
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

template <typename T>
__global__ void alignment_loss_kernel(const T* V, const T* S, T* loss, int k, int d, int kind, int weights) {
  SPECTRAL_BLOCK_CONTEXT(T);
  const T value = alignment_loss_sample(ctx, V + (int64_t)blockIdx.x * k * d, S + (int64_t)blockIdx.x * k, k, d,
                                        kind, weights);
  if (ctx.leader()) loss[blockIdx.x] = value;
}

template <typename T>
__global__ void alignment_loss_backward_kernel(const T* grad, const T* V, const T* S, T* grad_V, T* grad_S, int k,
                                               int d, int kind, int weights, T* work) {
  SPECTRAL_BLOCK_CONTEXT(T);
  __shared__ T gram[kMaxCudaK * kMaxCudaK];
  T per_vector[kMaxCudaK];
  const int64_t offset = (int64_t)blockIdx.x * k * d;
  alignment_loss_backward_sample(ctx, grad[blockIdx.x], V + offset, S + (int64_t)blockIdx.x * k, grad_V + offset,
                                 grad_S + (int64_t)blockIdx.x * k, k, d, kind, weights, gram, per_vector,
                                 work != nullptr ? work + (int64_t)blockIdx.x * d : nullptr);
}

at::Tensor alignment_loss_cuda(const at::Tensor& V, const at::Tensor& S, c10::string_view kind,
                               c10::string_view weights) {
  const RowsShape s = check_cuda_rows(V, "V");
  check_values(S, "S", s, V);
  const int kind_code = parse_loss_kind(std::string(kind));
  const int weight_code = parse_weight_kind(std::string(weights));
  const c10::cuda::CUDAGuard guard(V.device());
  const at::ScalarType ct = compute_dtype(V.scalar_type());
  const at::Tensor vc = as_compute(V, ct), sc = as_compute(S, ct);
  at::Tensor loss = at::empty({s.B}, vc.options());
  if (s.B > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "alignment_loss_cuda", [&] {
      alignment_loss_kernel<scalar_t><<<s.B, threads_for(s.d), 0, c10::cuda::getCurrentCUDAStream()>>>(
          vc.const_data_ptr<scalar_t>(), sc.const_data_ptr<scalar_t>(), loss.data_ptr<scalar_t>(), (int)s.k,
          (int)s.d, kind_code, weight_code);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return loss.to(V.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> alignment_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& V,
                                                                const at::Tensor& S, c10::string_view kind,
                                                                c10::string_view weights) {
  const RowsShape s = check_cuda_rows(V, "V");
  check_values(S, "S", s, V);
  TORCH_CHECK_VALUE(grad.dim() == 1 && grad.size(0) == s.B, "grad must be [B] = [", s.B, "], got shape ",
                    grad.sizes());
  const int kind_code = parse_loss_kind(std::string(kind));
  const int weight_code = parse_weight_kind(std::string(weights));
  const c10::cuda::CUDAGuard guard(V.device());
  const at::ScalarType ct = compute_dtype(V.scalar_type());
  const at::Tensor gc = as_compute(grad, ct), vc = as_compute(V, ct), sc = as_compute(S, ct);
  at::Tensor grad_V = at::empty_like(vc), grad_S = at::empty_like(sc);
  // offdiag keeps the d-vector diag(A) per sample in global memory (d is not bounded).
  const at::Tensor work = kind_code == kLossOffdiag ? at::empty({s.B, s.d}, vc.options()) : at::Tensor();
  if (s.B > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "alignment_loss_backward_cuda", [&] {
      alignment_loss_backward_kernel<scalar_t><<<s.B, threads_for(s.d), 0, c10::cuda::getCurrentCUDAStream()>>>(
          gc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(), sc.const_data_ptr<scalar_t>(),
          grad_V.data_ptr<scalar_t>(), grad_S.data_ptr<scalar_t>(), (int)s.k, (int)s.d, kind_code, weight_code,
          work.defined() ? work.data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_V.to(V.scalar_type()), grad_S.to(S.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(spectral_ops, CUDA, m) {
  m.impl("alignment_loss", &alignment_loss_cuda);
  m.impl("alignment_loss_backward", &alignment_loss_backward_cuda);
}

}  // namespace spectral_ops
