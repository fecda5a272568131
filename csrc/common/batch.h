// Batched block reductions (the `sums` primitive of the context interface): limits, and the
// enumeration of a lower triangle that the Gram-type callers batch over.
#pragma once

#include "macros.h"

namespace spectral_ops {

// Most values one sums() call reduces (the GPU parks that many warp totals per warp in shared
// memory, and callers keep that many results per thread).
constexpr int kMaxBatchedSums = 32;

// The largest m the maths in csrc/common passes to sums() for a given k (the CUDA kernels size
// their shared reduction buffer from it): chunks of the k(k+1)/2 entries of a lower triangle,
// up to two sums per entry.
SPECTRAL_HD int batched_sums_width(int k) {
  const int need = k * (k + 1);
  return need < kMaxBatchedSums ? need : kMaxBatchedSums;
}

// Walks the lower triangle (i, l), l <= i, of a k x k matrix in row order, one entry at a time
// (the batched callers advance one copy per term and one per result: sums() visits c in order).
struct TriangleCursor {
  int i = 0, l = 0;

  SPECTRAL_HD void advance() {
    if (++l > i) { ++i; l = 0; }
  }
};

}  // namespace spectral_ops
