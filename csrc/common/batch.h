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
    if (++l > i) {
      ++i;
      l = 0;
    }
  }
};

// Batched sums over the lower triangle (i, l), l <= i, of a k x k matrix, kPer sums per entry,
// in row order: term(i, l, r) gives the column function j -> term of sum r of entry (i, l), and
// finish(i, l, r, value) receives that sum.  One sums() call per chunk of the triangle.
template <int kPer, typename T, typename Ctx, typename Term, typename Finish>
SPECTRAL_HD void triangle_sums(const Ctx& ctx, int k, int d, Term term, Finish finish) {
  const int entries = k * (k + 1) / 2, width = batched_sums_width(k) / kPer;
  TriangleCursor start;
  for (int e0 = 0; e0 < entries; e0 += width) {
    const int count = entries - e0 < width ? entries - e0 : width;
    TriangleCursor term_at = start, result_at = start;  // sums() visits the values in order
    ctx.template sums<T>(
        kPer * count, d,
        [&](int c) {
          const int r = c % kPer;
          const auto f = term(term_at.i, term_at.l, r);
          if (r == kPer - 1) term_at.advance();
          return f;
        },
        [&](int c, T value) {
          const int r = c % kPer;
          finish(result_at.i, result_at.l, r, value);
          if (r == kPer - 1) result_at.advance();
        });
    start = result_at;
  }
}

}  // namespace spectral_ops
