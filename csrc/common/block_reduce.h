// The one block reduction behind the reductions of a thread-block context: BlockContext
// (csrc/cuda/block_context.cuh) on a CUDA thread block, and its CPU emulation on std::threads
// (tests/cpp/block_emulation.cpp), which runs this same code.
//
// A reduction folds values with a combine operation `op`: op(acc, x) is acc with one more value x,
// always called in that argument order (it decides which of two equal or unordered values is
// kept), from op.identity().  Its phases, every thread of the block taking part in each:
//   thread_fold   each thread folds its strided share j = thread, thread + threads, ... in order;
//   warp_fold     shuffles down at offsets warp_size / 2, ..., 1 fold each warp's values into its
//                 lane 0 (fixed pairs: deterministic);
//   park          lane 0 stores its warp's value in the warp's slot of a shared buffer;
//   fold_slots    every thread folds the slots in warp order (the same value on every thread).
// block_reduce runs one reduction; block_reduce_each runs m of them under one pair of barriers.
//
// Block, the hardware: thread(), threads(), lane(), warp(), warps(), warp_size() (a power of two),
// shfl_down(v, offset) (lane + offset's v, or v itself past the end of the warp; every lane of the
// warp calls it), barrier() (__syncthreads).  Slots: store(w, v) and load(w), warp w's slot.
#pragma once

#include "macros.h"

namespace spectral_ops {

// Combine operations.
template <typename T>
struct SumOp {
  SPECTRAL_HD T identity() const { return T(0); }
  template <typename X>
  SPECTRAL_HD T operator()(T acc, X x) const {
    return acc += x;
  }
};

// The largest of values >= 0 (0 for none); a NaN x is never taken (the comparison is false).
template <typename T>
struct MaxOp {
  SPECTRAL_HD T identity() const { return T(0); }
  SPECTRAL_HD T operator()(T acc, T x) const { return x > acc ? x : acc; }
};

// The lowest of indices < n (n for none).
struct LowestIndexOp {
  int n;
  SPECTRAL_HD int identity() const { return n; }
  SPECTRAL_HD int operator()(int acc, int x) const { return x < acc ? x : acc; }
};

template <typename T>
struct ValueIndex {
  T value;
  int index;
};

// The largest of values >= 0, the lowest index among equal values ((-1, n) for none); a NaN value
// is never taken.
template <typename T>
struct ArgmaxOp {
  int n;
  SPECTRAL_HD ValueIndex<T> identity() const { return {T(-1), n}; }
  SPECTRAL_HD ValueIndex<T> operator()(ValueIndex<T> acc, ValueIndex<T> x) const {
    return x.value > acc.value || (x.value == acc.value && x.index < acc.index) ? x : acc;
  }
};

// Slots: warp w's value at at[offset + w] (one index, as the kernels index their buffers), or a
// (value, index) pair in two arrays.
template <typename V>
struct SharedSlots {
  V* at;
  int offset = 0;
  SPECTRAL_HD void store(int w, V v) const { at[offset + w] = v; }
  SPECTRAL_HD V load(int w) const { return at[offset + w]; }
};

template <typename T>
struct ValueIndexSlots {
  T* values;
  int* indices;
  SPECTRAL_HD void store(int w, ValueIndex<T> v) const {
    values[w] = v.value;
    indices[w] = v.index;
  }
  SPECTRAL_HD ValueIndex<T> load(int w) const { return {values[w], indices[w]}; }
};

// This thread's share: op folded over term(j) in ascending j.
template <typename Block, typename Op, typename Term>
SPECTRAL_HD auto thread_fold(const Block& block, int n, Op op, Term term) {
  auto acc = op.identity();
  for (int j = block.thread(); j < n; j += block.threads()) acc = op(acc, term(j));
  return acc;
}

// The lowest j of this thread's share with pred(j), n if none (pred is not called past it).
template <typename Block, typename P>
SPECTRAL_HD int thread_first(const Block& block, int n, P pred) {
  for (int j = block.thread(); j < n; j += block.threads())
    if (pred(j)) return j;
  return n;
}

template <typename Block, typename V, typename Op>
SPECTRAL_HD V warp_fold(const Block& block, V v, Op op) {
  for (int offset = block.warp_size() / 2; offset > 0; offset >>= 1) v = op(v, block.shfl_down(v, offset));
  return v;
}

template <typename Block, typename V, typename Slots>
SPECTRAL_HD void park(const Block& block, V v, Slots slots) {
  if (block.lane() == 0) slots.store(block.warp(), v);
}

template <typename Block, typename Op, typename Slots>
SPECTRAL_HD auto fold_slots(const Block& block, Op op, Slots slots) {
  auto total = op.identity();
  for (int w = 0; w < block.warps(); ++w) total = op(total, slots.load(w));
  return total;
}

// The reduction of every thread's `partial`, returned to every thread.
template <typename Block, typename V, typename Op, typename Slots>
SPECTRAL_HD V block_reduce(const Block& block, V partial, Op op, Slots slots) {
  partial = warp_fold(block, partial, op);
  block.barrier();  // earlier readers of the slots are done
  park(block, partial, slots);
  block.barrier();
  return fold_slots(block, op, slots);
}

// m reductions under one pair of barriers: partial_of(c) is this thread's partial of value c (called
// once per c, in order, after the first barrier), slots_of(c) its slots (disjoint across c); then
// finish(c, total) for c = 0, 1, ..., m - 1 in order, on every thread.
template <typename Block, typename Op, typename PartialOf, typename SlotsOf, typename Finish>
SPECTRAL_HD void block_reduce_each(const Block& block, int m, Op op, PartialOf partial_of, SlotsOf slots_of,
                                   Finish finish) {
  block.barrier();  // earlier readers of the slots are done
  for (int c = 0; c < m; ++c) park(block, warp_fold(block, partial_of(c), op), slots_of(c));
  block.barrier();
  for (int c = 0; c < m; ++c) finish(c, fold_slots(block, op, slots_of(c)));
}

}  // namespace spectral_ops
