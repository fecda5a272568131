// The CPU backend's loop over samples: at::parallel_for, one SerialContext per sample, run by the
// baseline or the AVX2 + FMA copy of the per-sample maths (cpu_isa.h).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/serial_context.h"
#include "cpu/cpu_isa.h"

#if defined(__GNUC__) || defined(__clang__)
#define SPECTRAL_OPS_FLATTEN __attribute__((flatten))
#else
#define SPECTRAL_OPS_FLATTEN
#endif

namespace spectral_ops {

// `flatten` inlines the whole per-sample body (the maths in csrc/common) into these functions, so
// each one holds its own copy of it, compiled for its own instruction set.
template <typename T, typename Body>
SPECTRAL_OPS_FLATTEN void run_samples_baseline(int64_t begin, int64_t end, T* scratch, const Body& body) {
  SerialContext ctx;
  for (int64_t b = begin; b < end; ++b) body(ctx, b, scratch);
}

#if SPECTRAL_OPS_AVX2_CLONES
template <typename T, typename Body>
__attribute__((target("avx2,fma"), flatten)) void run_samples_avx2(int64_t begin, int64_t end, T* scratch,
                                                                   const Body& body) {
  SerialContext ctx;
  for (int64_t b = begin; b < end; ++b) body(ctx, b, scratch);
}
#endif

// Calls body(ctx, b, scratch) for every sample b in [0, B), in parallel over chunks of samples.
// `scratch` holds `scratch_per_sample` entries of T, allocated once per chunk and reused by its
// samples (a heap allocation per sample would cost as much as the maths at small shapes).
// `work_per_sample` (flops, roughly) sets the grain so that small batches stay on one thread.
template <typename T, typename Body>
void for_each_sample(int64_t B, int64_t work_per_sample, int64_t scratch_per_sample, Body body) {
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, work_per_sample));
  const CpuIsa isa = active_cpu_isa();
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(std::max<int64_t>(1, scratch_per_sample));
#if SPECTRAL_OPS_AVX2_CLONES
    if (isa == CpuIsa::kAvx2) return run_samples_avx2(begin, end, scratch.data(), body);
#endif
    run_samples_baseline(begin, end, scratch.data(), body);
  });
}

}  // namespace spectral_ops
