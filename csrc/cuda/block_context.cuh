// Execution context for one sample on one CUDA thread block (see common/serial_context.h for the
// interface), plus the launch helpers shared by the CUDA op files.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common/batch.h"
#include "common/block_reduce.h"
#include "common/checks.h"
#include "common/macros.h"

namespace spectral_ops {

// A CUDA thread block as the hardware of common/block_reduce.h: warps of 32 lanes, shuffles,
// __syncthreads.  Device code only (BlockContext calls it under __CUDA_ARCH__).  thread() and
// threads() keep the unsigned type of threadIdx.x and blockDim.x, as the strided loops of for_each.
struct CudaBlock {
  __device__ unsigned thread() const { return threadIdx.x; }
  __device__ unsigned threads() const { return blockDim.x; }
  __device__ int lane() const { return (int)(threadIdx.x & 31); }
  __device__ int warp() const { return (int)(threadIdx.x >> 5); }
  __device__ int warps() const { return (int)(blockDim.x >> 5); }
  __device__ int warp_size() const { return 32; }
  template <typename V>
  __device__ V shfl_down(V v, int offset) const {
    return __shfl_down_sync(0xffffffffu, v, offset);
  }
  template <typename V>
  __device__ ValueIndex<V> shfl_down(ValueIndex<V> v, int offset) const {
    return {shfl_down(v.value, offset), shfl_down(v.index, offset)};
  }
  __device__ void barrier() const { __syncthreads(); }
};

// Reductions are deterministic: fixed strided partials, warp shuffles, then warp totals combined
// in order by every thread (common/block_reduce.h, all five reductions).  blockDim.x must be a
// multiple of 32 (at most 1024).
template <typename T>
struct BlockContext {
  static constexpr bool kSerial = false;

  T* value_buffer;    // __shared__ [32]: sum, max_abs, argmax_abs
  int* index_buffer;  // __shared__ [32]: first_index, argmax_abs
  T* batch_buffer;    // __shared__ [batched_sums_width(k) * warps]: sums(), value c of warp w at c * warps + w

  template <typename F>
  __host__ __device__ void for_each(int n, F f) const {
#ifdef __CUDA_ARCH__
    for (int j = threadIdx.x; j < n; j += blockDim.x) f(j);
#endif
  }

  template <typename U, typename F>
  __host__ __device__ U sum(int n, F f) const {
    static_assert(sizeof(U) == sizeof(T), "BlockContext<T>::sum reduces values of type T");
#ifdef __CUDA_ARCH__
    const CudaBlock block;
    const SumOp<U> op;
    return block_reduce(block, thread_fold(block, n, op, f), op, SharedSlots<T>{value_buffer});
#else
    return U(0);
#endif
  }

  // m <= batched_sums_width(k) sums with one pair of barriers: value after value, each thread's
  // strided partial sum and a warp shuffle (one accumulator live, no register array), the warp
  // totals parked in batch_buffer; after the barrier every thread adds them up in warp order.
  template <typename U, typename TermOf, typename Finish>
  __host__ __device__ void sums(int m, int n, TermOf term_of, Finish finish) const {
    static_assert(sizeof(U) == sizeof(T), "BlockContext<T>::sums reduces values of type T");
#ifdef __CUDA_ARCH__
    const CudaBlock block;
    const SumOp<U> op;
    const int warps = block.warps();
    block_reduce_each(
        block, m, op, [&](int c) { return thread_fold(block, n, op, term_of(c)); },
        [&](int c) { return SharedSlots<T>{batch_buffer, c * warps}; }, finish);
#endif
  }

  // Each thread owns columns j and sums the rows in ascending order (as the CPU does).
  template <typename U, typename Term, typename Finish>
  __host__ __device__ void for_each_row_sum(int n, int rows, Term term, Finish finish) const {
    for_each(n, [&](int j) {
      U acc = U(0);
      for (int l = 0; l < rows; ++l) acc += term(l, j);
      finish(j, acc);
    });
  }

  template <typename U, typename Term, typename G>
  __host__ __device__ U sum_row_sums(int n, int rows, Term term, G g) const {
    return sum<U>(n, [&](int j) {
      U acc = U(0);
      for (int l = 0; l < rows; ++l) acc += term(l, j);
      return g(j, acc);
    });
  }

  template <typename P>
  __host__ __device__ int first_index(int n, P pred) const {
#ifdef __CUDA_ARCH__
    const CudaBlock block;
    return block_reduce(block, thread_first(block, n, pred), LowestIndexOp{n}, SharedSlots<int>{index_buffer});
#else
    return n;
#endif
  }

  template <typename U, typename F>
  __host__ __device__ int argmax_abs(int n, F f) const {
#ifdef __CUDA_ARCH__
    const CudaBlock block;
    const ArgmaxOp<T> op{n};
    const ValueIndex<T> best =
        block_reduce(block, thread_fold(block, n, op, [&](int j) { return ValueIndex<T>{abs_(T(f(j))), j}; }), op,
                     ValueIndexSlots<T>{value_buffer, index_buffer});
    return best.index < n ? best.index : 0;
#else
    return 0;
#endif
  }

  template <typename U, typename F>
  __host__ __device__ U max_abs(int n, F f) const {
    static_assert(sizeof(U) == sizeof(T), "BlockContext<T>::max_abs reduces values of type T");
#ifdef __CUDA_ARCH__
    const CudaBlock block;
    const MaxOp<U> op;
    return block_reduce(block, thread_fold(block, n, op, [&](int j) { return abs_(U(f(j))); }), op,
                        SharedSlots<T>{value_buffer});
#else
    return U(0);
#endif
  }

  __host__ __device__ void sync() const {
#ifdef __CUDA_ARCH__
    __syncthreads();
#endif
  }

  __host__ __device__ bool leader() const {
#ifdef __CUDA_ARCH__
    return threadIdx.x == 0;
#else
    return true;
#endif
  }
};

// Carves typed arrays out of the kernel's dynamic shared memory in a fixed order; the host runs
// the same carve with a null base to get the byte count to launch with.
struct SharedCarver {
  unsigned char* base;
  size_t bytes = 0;

  template <typename U>
  __host__ __device__ U* take(long count) {
    bytes = (bytes + alignof(U) - 1) / alignof(U) * alignof(U);
    U* p = base != nullptr ? reinterpret_cast<U*>(base + bytes) : nullptr;
    bytes += (size_t)count * sizeof(U);
    return p;
  }
};

// The dynamic shared memory of the running kernel (its size is the launch's byte count).
__device__ inline unsigned char* dynamic_shared() {
  extern __shared__ __align__(16) unsigned char spectral_dynamic_shared[];
  return spectral_dynamic_shared;
}

// The batch buffer of BlockContext::sums, the first array of every kernel's carve.
template <typename T>
__host__ __device__ T* take_batch_buffer(SharedCarver& carver, int k, int threads) {
  return carver.template take<T>((long)batched_sums_width(k) * (threads / 32));
}

// Declares the shared reduction buffers and a BlockContext<T> named `ctx` inside a kernel; its
// batch buffer comes first out of `carver` (see take_batch_buffer).
#define SPECTRAL_BLOCK_CONTEXT(T, carver, k)                                                       \
  __shared__ T spectral_value_buffer[32];                                                          \
  __shared__ int spectral_index_buffer[32];                                                        \
  const BlockContext<T> ctx {                                                                      \
    spectral_value_buffer, spectral_index_buffer, take_batch_buffer<T>(carver, k, (int)blockDim.x) \
  }

// Checks a carve's byte count against the default per-block limit of dynamic shared memory.
inline size_t checked_shared_bytes(const SharedCarver& carver) {
  TORCH_CHECK(carver.bytes <= 48 * 1024, "spectral_ops: ", carver.bytes, " bytes of shared memory per block");
  return carver.bytes;
}

// Threads per block: enough to cover d in one stride up to 256, in whole warps.
inline int threads_for(int64_t d) {
  const int64_t warps = (d + 31) / 32;
  return (int)(32 * (warps < 1 ? 1 : (warps > 8 ? 8 : warps)));
}

// The CUDA kernels keep k x k scratch in shared memory (sized by k at launch).
inline RowsShape check_cuda_rows(const at::Tensor& t, const char* name) {
  const RowsShape s = check_rows(t, name);
  TORCH_CHECK_VALUE(t.is_cuda(), name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK_VALUE(s.k <= kMaxCudaK, name, ": the CUDA kernels support k <= ", kMaxCudaK, ", got k=", s.k);
  return s;
}

}  // namespace spectral_ops
