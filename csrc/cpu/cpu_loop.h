// The CPU backend's loop over samples: at::parallel_for, one SerialContext per sample.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "common/serial_context.h"

namespace spectral_ops {

// Calls body(ctx, b) for every sample b in [0, B), in parallel over chunks of samples.
// `work_per_sample` (flops, roughly) sets the grain so that small batches stay on one thread.
template <typename Body>
void for_each_sample(int64_t B, int64_t work_per_sample, Body body) {
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, work_per_sample));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    SerialContext ctx;
    for (int64_t b = begin; b < end; ++b) body(ctx, b);
  });
}

}  // namespace spectral_ops
