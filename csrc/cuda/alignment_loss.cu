// alignment_loss, alignment_loss_forward and alignment_loss_backward on CUDA: one thread block per
// sample (maths: common/alignment.h).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <tuple>

#include "common/alignment.h"
#include "cuda/block_context.cuh"

namespace spectral_ops {
namespace {

// saved: [B, width] or nullptr (no statistics wanted).
template <typename T>
__global__ void alignment_loss_kernel(const T* V, const T* S, T* loss, T* saved, int k, int d, int kind, int weights,
                                      int width) {
  SharedCarver carver{dynamic_shared()};
  SPECTRAL_BLOCK_CONTEXT(T, carver, k);
  const T value = alignment_loss_sample(ctx, V + (int64_t)blockIdx.x * k * d, S + (int64_t)blockIdx.x * k, k, d, kind,
                                        weights, saved ? saved + (int64_t)blockIdx.x * width : nullptr);
  if (ctx.leader()) loss[blockIdx.x] = value;
}

template <typename T>
__global__ void alignment_loss_backward_kernel(const T* grad, const T* V, const T* S, const T* saved, T* grad_V,
                                               T* grad_S, int k, int d, int kind, int weights, int width) {
  SharedCarver carver{dynamic_shared()};
  SPECTRAL_BLOCK_CONTEXT(T, carver, k);
  T mix[kMaxCudaK];  // per-thread: row i of diag(S^2) G
  const int64_t offset = (int64_t)blockIdx.x * k * d;
  alignment_loss_backward_sample(ctx, grad[blockIdx.x], V + offset, S + (int64_t)blockIdx.x * k,
                                 saved + (int64_t)blockIdx.x * width, grad_V + offset, grad_S + (int64_t)blockIdx.x * k,
                                 k, d, kind, weights, mix);
}

std::tuple<at::Tensor, at::Tensor> alignment_loss_impl(const at::Tensor& V, const at::Tensor& S, c10::string_view kind,
                                                       c10::string_view weights, bool with_saved) {
  const AlignmentInputs in = alignment_inputs(check_cuda_rows(V, "V"), V, S, kind, weights);
  const c10::cuda::CUDAGuard guard(V.device());
  at::Tensor loss = at::empty({in.s.B}, in.V.options());
  at::Tensor saved = with_saved ? at::empty({in.s.B, in.width}, in.V.options()) : at::Tensor();
  if (in.s.B > 0) {
    AT_DISPATCH_FLOATING_TYPES(in.ct, "alignment_loss_cuda", [&] {
      const int threads = threads_for(in.s.d);
      SharedCarver carver{nullptr};
      take_batch_buffer<scalar_t>(carver, (int)in.s.k, threads);
      alignment_loss_kernel<scalar_t>
          <<<in.s.B, threads, checked_shared_bytes(carver), c10::cuda::getCurrentCUDAStream()>>>(
              in.V.const_data_ptr<scalar_t>(), in.S.const_data_ptr<scalar_t>(), loss.data_ptr<scalar_t>(),
              with_saved ? saved.data_ptr<scalar_t>() : nullptr, (int)in.s.k, (int)in.s.d, in.kind, in.weights,
              (int)in.width);
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
  const AlignmentInputs in = alignment_inputs(check_cuda_rows(V, "V"), V, S, kind, weights);
  check_grad(grad, in.s);
  check_saved(saved, in.s, in.width, V);
  const c10::cuda::CUDAGuard guard(V.device());
  const at::Tensor gc = as_compute(grad, in.ct), stc = as_compute(saved, in.ct);
  at::Tensor grad_V = at::empty_like(in.V), grad_S = at::empty_like(in.S);
  if (in.s.B > 0) {
    AT_DISPATCH_FLOATING_TYPES(in.ct, "alignment_loss_backward_cuda", [&] {
      const auto stream = c10::cuda::getCurrentCUDAStream();
      const int threads = threads_for(in.s.d);
      SharedCarver carver{nullptr};
      take_batch_buffer<scalar_t>(carver, (int)in.s.k, threads);
      alignment_loss_backward_kernel<scalar_t><<<in.s.B, threads, checked_shared_bytes(carver), stream>>>(
          gc.const_data_ptr<scalar_t>(), in.V.const_data_ptr<scalar_t>(), in.S.const_data_ptr<scalar_t>(),
          stc.const_data_ptr<scalar_t>(), grad_V.data_ptr<scalar_t>(), grad_S.data_ptr<scalar_t>(), (int)in.s.k,
          (int)in.s.d, in.kind, in.weights, (int)in.width);
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
