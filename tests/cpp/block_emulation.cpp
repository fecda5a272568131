// The CUDA code path of csrc/common, run on the CPU: a thread-block emulator with the semantics of
// csrc/cuda/block_context.cuh (strided for_each, the reductions of common/block_reduce.h on
// emulated warps with lockstep shuffles and a shared buffer, __syncthreads as a barrier, one
// leader), driven by real std::threads.  Each per-sample function runs on emulated blocks of
// several sizes and is compared with the single-thread SerialContext, which the Python tests check
// against the pure-torch reference.  This is how the CUDA kernels' synchronisation and work split
// are tested without a GPU; ritz_step here also takes the Jacobi eigensolver (Ctx::kSerial ==
// false) that only the GPU uses.
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <thread>
#include <type_traits>
#include <vector>

#include "common/alignment.h"
#include "common/block_reduce.h"
#include "common/gram_schmidt.h"
#include "common/ritz.h"
#include "common/serial_context.h"

namespace {

using spectral_ops::abs_;
using spectral_ops::ArgmaxOp;
using spectral_ops::block_reduce;
using spectral_ops::block_reduce_each;
using spectral_ops::LowestIndexOp;
using spectral_ops::MaxOp;
using spectral_ops::SharedSlots;
using spectral_ops::SumOp;
using spectral_ops::thread_first;
using spectral_ops::thread_fold;
using spectral_ops::ValueIndex;
using spectral_ops::ValueIndexSlots;

// What the threads of one emulated block share: the barrier, the reduction buffers (one slot per
// warp) and, per warp, the barrier and exchange of the emulated shuffles.
struct BlockShared {
  BlockShared(int threads, int capacity, int warp_size)
      : sync(threads),
        values(threads),
        indices(threads),
        batch((size_t)threads * capacity),
        capacity(capacity),
        warp_size(warp_size),
        lanes(2 * (size_t)threads),
        shuffles(threads) {
    for (int w = 0; w < threads / warp_size; ++w) warp_sync.push_back(std::make_unique<std::barrier<>>(warp_size));
  }
  void wait(int tid) {
    if (tid == 0) ++barriers;
    sync.arrive_and_wait();
  }
  std::barrier<> sync;
  long barriers = 0;  // barrier phases, counted by thread 0
  std::vector<double> values;
  std::vector<int> indices;
  std::vector<double> batch;             // sums(): value c of warp w at c * warps + w
  int capacity;                          // the most values one sums() may reduce (the kernels' buffer size)
  long sums_calls = 0, sums_values = 0;  // counted by thread 0
  int warp_size;
  std::vector<std::unique_ptr<std::barrier<>>> warp_sync;  // shuffles only: not counted in `barriers`
  struct alignas(16) Lane {
    unsigned char bytes[16];
  };
  // The value thread t offers to its s-th shuffle, at lanes[(s % 2) * threads + t]: two sets, so
  // that one warp barrier per shuffle suffices (a lane offers again in set s % 2 only after the
  // barrier of shuffle s + 1, which every lane reaches after its read of shuffle s).
  std::vector<Lane> lanes;
  std::vector<long> shuffles;  // per thread, each written by its own thread only
};

// One thread of an emulated block as the hardware of common/block_reduce.h: warps of
// shared->warp_size threads, shuffles through `lanes` and a warp barrier (lockstep: every lane of
// the warp must take part), the block barrier.
struct EmulatedBlock {
  int tid, n_threads;
  BlockShared* shared;
  int thread() const { return tid; }
  int threads() const { return n_threads; }
  int lane() const { return tid % shared->warp_size; }
  int warp() const { return tid / shared->warp_size; }
  int warps() const { return n_threads / shared->warp_size; }
  int warp_size() const { return shared->warp_size; }
  template <typename V>
  V shfl_down(V v, int offset) const {
    static_assert(std::is_trivially_copyable_v<V> && sizeof(V) <= sizeof(BlockShared::Lane));
    const size_t set = (size_t)(shared->shuffles[(size_t)tid]++ % 2) * (size_t)n_threads;
    std::memcpy(shared->lanes[set + (size_t)tid].bytes, &v, sizeof(V));
    shared->warp_sync[(size_t)warp()]->arrive_and_wait();
    V other = v;  // past the end of the warp: its own value, as __shfl_down_sync
    if (lane() + offset < warp_size())
      std::memcpy(&other, shared->lanes[set + (size_t)(tid + offset)].bytes, sizeof(V));
    return other;
  }
  void barrier() const { shared->wait(tid); }
};

// One thread of an emulated block (the interface of serial_context.h, the semantics of
// BlockContext): every thread calls every method, in the same order.  The reductions are written
// as BlockContext's, the same calls into common/block_reduce.h, on the emulated hardware.
struct EmulatedBlockContext {
  static constexpr bool kSerial = false;
  int tid, threads;
  BlockShared* shared;

  EmulatedBlock block() const { return EmulatedBlock{tid, threads, shared}; }

  template <typename F>
  void for_each(int n, F f) const {
    for (int j = tid; j < n; j += threads) f(j);
  }

  template <typename U, typename F>
  U sum(int n, F f) const {
    static_assert(std::is_same_v<U, double>, "the emulator reduces doubles");
    const SumOp<U> op;
    return block_reduce(block(), thread_fold(block(), n, op, f), op, SharedSlots<double>{shared->values.data()});
  }

  template <typename U, typename TermOf, typename Finish>
  void sums(int m, int n, TermOf term_of, Finish finish) const {
    static_assert(std::is_same_v<U, double>, "the emulator reduces doubles");
    if (m < 0 || m > shared->capacity) {  // the CUDA kernel's batch buffer would overflow
      std::fprintf(stderr, "sums: m = %d outside [0, %d]\n", m, shared->capacity);
      std::abort();
    }
    if (tid == 0) {
      ++shared->sums_calls;
      shared->sums_values += m;
    }
    const EmulatedBlock b = block();
    const SumOp<U> op;
    block_reduce_each(
        b, m, op, [&](int c) { return thread_fold(b, n, op, term_of(c)); },
        [&](int c) { return SharedSlots<double>{shared->batch.data(), c * b.warps()}; }, finish);
  }

  template <typename U, typename Term, typename Finish>
  void for_each_row_sum(int n, int rows, Term term, Finish finish) const {
    for_each(n, [&](int j) {
      U acc = U(0);
      for (int l = 0; l < rows; ++l) acc += term(l, j);
      finish(j, acc);
    });
  }

  template <typename U, typename Term, typename G>
  U sum_row_sums(int n, int rows, Term term, G g) const {
    return sum<U>(n, [&](int j) {
      U acc = U(0);
      for (int l = 0; l < rows; ++l) acc += term(l, j);
      return g(j, acc);
    });
  }

  template <typename P>
  int first_index(int n, P pred) const {
    return block_reduce(block(), thread_first(block(), n, pred), LowestIndexOp{n},
                        SharedSlots<int>{shared->indices.data()});
  }

  template <typename U, typename F>
  int argmax_abs(int n, F f) const {
    const ArgmaxOp<double> op{n};
    const ValueIndex<double> best = block_reduce(
        block(), thread_fold(block(), n, op, [&](int j) { return ValueIndex<double>{abs_(double(f(j))), j}; }), op,
        ValueIndexSlots<double>{shared->values.data(), shared->indices.data()});
    return best.index < n ? best.index : 0;
  }

  template <typename U, typename F>
  U max_abs(int n, F f) const {
    static_assert(std::is_same_v<U, double>, "the emulator reduces doubles");
    const MaxOp<U> op;
    return block_reduce(block(), thread_fold(block(), n, op, [&](int j) { return abs_(U(f(j))); }), op,
                        SharedSlots<double>{shared->values.data()});
  }

  void sync() const { shared->wait(tid); }
  bool leader() const { return tid == 0; }
};

// Barriers and sums() calls of the last run_block (thread 0's count).
long last_barriers = 0, last_sums_calls = 0, last_sums_values = 0;

// The emulated warp size of a block: the largest power of two up to 32 that divides `threads`
// (40 threads: 5 warps of 8; 7 threads: 7 warps of 1, no shuffles).
int default_warp_size(int threads) {
  int w = 32;
  while (threads % w != 0) w /= 2;
  return w;
}

// Runs body(ctx) on `threads` std::threads forming one emulated block for a sample with k rows,
// in warps of warp_size threads (0: default_warp_size).
void run_block(int threads, int k, const std::function<void(const EmulatedBlockContext&)>& body, int warp_size = 0) {
  BlockShared shared(threads, spectral_ops::batched_sums_width(k),
                     warp_size > 0 ? warp_size : default_warp_size(threads));
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { body(EmulatedBlockContext{t, threads, &shared}); });
  for (auto& thread : pool) thread.join();
  last_barriers = shared.barriers;
  last_sums_calls = shared.sums_calls;
  last_sums_values = shared.sums_values;
}

int failures = 0;

void expect_close(const std::vector<double>& block, const std::vector<double>& serial, double tol, const char* what,
                  int threads, int k, int d) {
  double err = 0;
  for (size_t i = 0; i < block.size(); ++i) err = std::max(err, std::fabs(block[i] - serial[i]));
  const bool ok = err <= tol && std::isfinite(err);
  if (!ok) ++failures;
  std::printf("%s: %-34s threads=%-2d k=%-2d d=%-3d max |block - serial| = %.1e\n", ok ? "ok  " : "FAIL", what, threads,
              k, d, err);
}

std::vector<double> random_rows(int k, int d, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<double> W(k * d);
  for (auto& w : W) w = normal(rng);
  return W;
}

// float64.  The two contexts only sum in different orders: seen <= 2e-14 outside ritz_step; the
// ritz_step outputs also compare Jacobi with QL, whose vectors differ by up to 4e-13 at k = d = 31
// (eps over the smallest eigenvalue gap).
constexpr double kTight = 1e-13;
constexpr double kTol = 1e-12;

void check_orthonormalize(int threads, int k, int d, bool dependent) {
  std::vector<double> W = random_rows(k, d, 7u + k + d);
  if (dependent && k >= 3) {  // a repeated row and a zero row exercise the replacement branch
    std::copy(W.begin(), W.begin() + d, W.begin() + d);
    std::fill(W.begin() + 2 * d, W.begin() + 3 * d, 0.0);
  }
  std::vector<double> serial(k * d), block(k * d), coef(k);
  spectral_ops::orthonormalize_rows(spectral_ops::SerialContext{}, W.data(), serial.data(), k, d, coef.data());
  run_block(threads, k, [&](const EmulatedBlockContext& ctx) {
    std::vector<double> local(k);  // per-thread, like the CUDA kernel's register array
    spectral_ops::orthonormalize_rows(ctx, W.data(), block.data(), k, d, local.data());
  });
  expect_close(block, serial, kTight, dependent ? "orthonormalize (dependent rows)" : "orthonormalize", threads, k, d);

  // Backward at the forward's output.
  const std::vector<double> G = random_rows(k, d, 11u + k);
  std::vector<double> gs(k * d), gb(k * d), L(k * k), M(k * k);
  spectral_ops::orthonormalize_backward_rows(spectral_ops::SerialContext{}, G.data(), serial.data(), W.data(),
                                             gs.data(), k, d, L.data(), M.data());
  run_block(threads, k, [&](const EmulatedBlockContext& ctx) {
    spectral_ops::orthonormalize_backward_rows(ctx, G.data(), serial.data(), W.data(), gb.data(), k, d, L.data(),
                                               M.data());
  });
  expect_close(gb, gs, kTight, "orthonormalize_backward", threads, k, d);
}

// Q orthonormal; MQ = Q M for a symmetric M with a well-separated spectrum (decaying diagonal
// plus a small symmetric perturbation), so the Ritz vectors are unique up to sign.
void make_ritz_inputs(int k, int d, std::vector<double>& Q, std::vector<double>& MQ) {
  Q.assign(k * d, 0.0);
  MQ.assign(k * d, 0.0);
  std::vector<double> coef(k);
  const std::vector<double> W = random_rows(k, d, 3u + k + d);
  spectral_ops::orthonormalize_rows(spectral_ops::SerialContext{}, W.data(), Q.data(), k, d, coef.data());
  const std::vector<double> P = random_rows(d, d, 5u + d);
  for (int i = 0; i < k; ++i)
    for (int j = 0; j < d; ++j) {
      double acc = Q[i * d + j] * 10.0 * std::pow(0.7, j);
      for (int l = 0; l < d; ++l) acc += Q[i * d + l] * 0.01 * (P[l * d + j] + P[j * d + l]);
      MQ[i * d + j] = acc;
    }
}

struct RitzOut {
  std::vector<double> V, lam, res, Q_next;
};

// ritz_step_sample on one thread (threads == 0: SerialContext) or on an emulated block.
RitzOut run_ritz(int threads, const std::vector<double>& Q, const std::vector<double>& MQ, const double* V_prev, int k,
                 int d) {
  RitzOut out{std::vector<double>(k * d), std::vector<double>(k), std::vector<double>(k), std::vector<double>(k * d)};
  std::vector<double> H(k * k), U(k * k), work(2 * k + 1);  // shared, like the kernel's __shared__ arrays
  std::vector<int> order(k);
  auto body = [&](const auto& ctx) {
    std::vector<double> local(k);  // per-thread
    spectral_ops::ritz_step_sample(
        ctx, Q.data(), MQ.data(), V_prev, out.V.data(), out.lam.data(), out.res.data(), out.Q_next.data(), k, d,
        spectral_ops::RitzScratch<double>{H.data(), U.data(), order.data(), work.data(), local.data()});
  };
  if (threads == 0) {
    body(spectral_ops::SerialContext{});
  } else {
    run_block(threads, k, [&](const EmulatedBlockContext& ctx) { body(ctx); });
  }
  return out;
}

void check_ritz_step(int threads, int k, int d, bool with_prev) {
  std::vector<double> Q, MQ;
  make_ritz_inputs(k, d, Q, MQ);
  const std::vector<double> prev = random_rows(k, d, 9u);
  const double* V_prev = with_prev ? prev.data() : nullptr;
  const RitzOut serial = run_ritz(0, Q, MQ, V_prev, k, d);
  const RitzOut block = run_ritz(threads, Q, MQ, V_prev, k, d);
  expect_close(block.lam, serial.lam, kTol, "ritz_step values (Jacobi vs QL)", threads, k, d);
  expect_close(block.V, serial.V, kTol, "ritz_step vectors", threads, k, d);
  expect_close(block.res, serial.res, kTol, "ritz_step residuals", threads, k, d);
  expect_close(block.Q_next, serial.Q_next, kTol, "ritz_step next basis", threads, k, d);
}

void expect_all_nan(const std::vector<double>& values, const char* what, int threads, int k, int d) {
  const bool ok = std::all_of(values.begin(), values.end(), [](double x) { return std::isnan(x); });
  if (!ok) ++failures;
  std::printf("%s: %-34s threads=%-2d k=%-2d d=%-3d all NaN\n", ok ? "ok  " : "FAIL", what, threads, k, d);
}

std::vector<double> scaled(std::vector<double> x, double c) {
  for (auto& v : x) v *= c;
  return x;
}

// The scale and non-finite paths (the per-row / per-sample max-abs reductions, the NaN branches)
// on emulated blocks, against the single-thread result at scale 1.
void check_extreme_inputs(int threads, int k, int d) {
  const std::vector<double> W = random_rows(k, d, 17u + k + d);
  const std::vector<double> G = random_rows(k, d, 19u + k);
  std::vector<double> Q1(k * d), g1(k * d), coef(k), L(k * k), M(k * k);
  spectral_ops::orthonormalize_rows(spectral_ops::SerialContext{}, W.data(), Q1.data(), k, d, coef.data());
  spectral_ops::orthonormalize_backward_rows(spectral_ops::SerialContext{}, G.data(), Q1.data(), W.data(), g1.data(), k,
                                             d, L.data(), M.data());
  std::vector<double> Q0, MQ;
  make_ritz_inputs(k, d, Q0, MQ);
  const RitzOut r1 = run_ritz(0, Q0, MQ, nullptr, k, d);
  for (double c : {1e-300, 1e-200, 1e200, 1e300}) {
    const std::vector<double> Wc = scaled(W, c);
    std::vector<double> Qc(k * d), gc(k * d);
    run_block(threads, k, [&](const EmulatedBlockContext& ctx) {
      std::vector<double> local(k);
      spectral_ops::orthonormalize_rows(ctx, Wc.data(), Qc.data(), k, d, local.data());
      spectral_ops::orthonormalize_backward_rows(ctx, G.data(), Qc.data(), Wc.data(), gc.data(), k, d, L.data(),
                                                 M.data());
    });
    expect_close(Qc, Q1, kTight, c < 1 ? "orthonormalize(tiny W) = at 1" : "orthonormalize(huge W) = at 1", threads, k,
                 d);
    expect_close(scaled(gc, c), g1, 1e-10, "  c * backward at c = at 1", threads, k, d);
    const RitzOut rc = run_ritz(threads, Q0, scaled(MQ, c), nullptr, k, d);
    expect_close(scaled(rc.lam, 1 / c), r1.lam, kTol,
                 c < 1 ? "ritz_step(Q, tiny MQ) values / c" : "ritz_step(Q, huge MQ) values / c", threads, k, d);
    expect_close(rc.V, r1.V, kTol, "  vectors", threads, k, d);
    expect_close(rc.res, r1.res, kTol, "  residuals", threads, k, d);
    expect_close(rc.Q_next, r1.Q_next, kTol, "  next basis", threads, k, d);
  }
  const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
  {  // a NaN in row 0 of V_prev: vector 0 takes the sign rule without V_prev, the others follow V_prev
    std::vector<double> prev = random_rows(k, d, 23u);
    prev[d / 2] = nan;
    const RitzOut serial = run_ritz(0, Q0, MQ, prev.data(), k, d);
    const RitzOut block = run_ritz(threads, Q0, MQ, prev.data(), k, d);
    expect_close(block.V, serial.V, kTol, "ritz_step(NaN in V_prev) vectors", threads, k, d);
    expect_close(std::vector<double>(block.V.begin(), block.V.begin() + d),
                 std::vector<double>(r1.V.begin(), r1.V.begin() + d), kTol, "  vector 0 = without V_prev", threads, k,
                 d);
  }
  for (double bad : {nan, inf, -inf}) {
    std::vector<double> Wb = W, Qb(k * d);
    Wb[(k - 1) * d + d / 2] = bad;  // in the last row: the rows before it are already written
    run_block(threads, k, [&](const EmulatedBlockContext& ctx) {
      std::vector<double> local(k);
      spectral_ops::orthonormalize_rows(ctx, Wb.data(), Qb.data(), k, d, local.data());
    });
    expect_all_nan(Qb, "orthonormalize(non-finite W)", threads, k, d);
    std::vector<double> Qn = Q0, MQn = MQ;
    (bad == inf ? MQn : Qn)[d - 1] = bad;
    const RitzOut rn = run_ritz(threads, Qn, MQn, nullptr, k, d);
    expect_all_nan(rn.V, "ritz_step(non-finite) vectors", threads, k, d);
    expect_all_nan(rn.lam, "  values", threads, k, d);
    expect_all_nan(rn.res, "  residuals", threads, k, d);
    expect_all_nan(rn.Q_next, "  next basis", threads, k, d);
  }
}

void check_alignment(int threads, int k, int d, int kind) {
  std::vector<double> V(k * d), coef(k);
  const std::vector<double> W = random_rows(k, d, 13u + k + d);
  spectral_ops::orthonormalize_rows(spectral_ops::SerialContext{}, W.data(), V.data(), k, d, coef.data());
  std::vector<double> S(k);
  for (int i = 0; i < k; ++i) S[i] = 1.0 / (1.0 + i);
  const int width = spectral_ops::saved_width(kind, k, d);
  std::vector<double> saved_serial(width), saved_block(width), loss_serial(1), loss_block(1);
  loss_serial[0] = spectral_ops::alignment_loss_sample(spectral_ops::SerialContext{}, V.data(), S.data(), k, d, kind,
                                                       spectral_ops::kWeightsSingular, saved_serial.data());
  run_block(threads, k, [&](const EmulatedBlockContext& ctx) {
    const double value = spectral_ops::alignment_loss_sample(ctx, V.data(), S.data(), k, d, kind,
                                                             spectral_ops::kWeightsSingular, saved_block.data());
    if (ctx.leader()) loss_block[0] = value;
  });
  const char* names[] = {"alignment_loss[l1]", "alignment_loss[assigned]", "alignment_loss[offdiag]"};
  expect_close(loss_block, loss_serial, kTight, names[kind], threads, k, d);
  expect_close(saved_block, saved_serial, kTight, "  saved statistics", threads, k, d);

  std::vector<double> gv_serial(k * d), gs_serial(k), gv_block(k * d), gs_block(k);
  spectral_ops::alignment_loss_backward_sample(spectral_ops::SerialContext{}, 0.7, V.data(), S.data(),
                                               saved_serial.data(), gv_serial.data(), gs_serial.data(), k, d, kind,
                                               spectral_ops::kWeightsSingular, coef.data());
  run_block(threads, k, [&](const EmulatedBlockContext& ctx) {
    std::vector<double> mix(k);
    spectral_ops::alignment_loss_backward_sample(ctx, 0.7, V.data(), S.data(), saved_block.data(), gv_block.data(),
                                                 gs_block.data(), k, d, kind, spectral_ops::kWeightsSingular,
                                                 mix.data());
  });
  expect_close(gv_block, gv_serial, kTight, "  backward, grad V", threads, k, d);
  expect_close(gs_block, gs_serial, kTight, "  backward, grad S", threads, k, d);
}

// sums() on its own: m = the full batch width of k, against SerialContext, on every thread.
void check_sums(int threads, int k, int d) {
  const int m = spectral_ops::batched_sums_width(k);
  const std::vector<double> X = random_rows(m + 1, d, 29u + k + d);
  const auto term_of = [&](int c) {
    const double *a = X.data() + (size_t)c * d, *b = X.data() + (size_t)(c + 1) * d;
    return [=](int j) { return a[j] * b[j] + 0.25 * a[j]; };
  };
  std::vector<double> serial(m), block((size_t)m * threads);
  spectral_ops::SerialContext{}.sums<double>(m, d, term_of, [&](int c, double v) { serial[c] = v; });
  std::vector<int> order_ok(threads, 1);
  run_block(threads, k, [&](const EmulatedBlockContext& ctx) {
    int expected = 0;
    ctx.sums<double>(m, d, term_of, [&](int c, double v) {
      order_ok[ctx.tid] &= c == expected++;
      block[(size_t)ctx.tid * m + c] = v;
    });
    order_ok[ctx.tid] &= expected == m;
  });
  std::vector<double> every(block.size());
  for (int t = 0; t < threads; ++t) std::copy(serial.begin(), serial.end(), every.begin() + (size_t)t * m);
  expect_close(block, every, kTight, "sums (every thread, full batch)", threads, k, d);
  const bool ordered = std::all_of(order_ok.begin(), order_ok.end(), [](int ok) { return ok != 0; });
  if (!ordered) ++failures;
  std::printf("%s: %-34s threads=%-2d k=%-2d d=%-3d m=%d\n", ordered ? "ok  " : "FAIL",
              "  finish(c) once each, in order", threads, k, d, m);
}

// The block reducer (common/block_reduce.h) through the five reductions, on `threads` threads in
// warps of warp_size, over n terms with ties and a NaN: every thread gets the value of the
// single-thread SerialContext (sums to rounding; the lowest index of a tie, the NaN skipped and
// the maxima exactly).
void check_reductions(int threads, int warp_size, int n) {
  std::vector<double> x = random_rows(1, n, 37u + n);
  if (n >= 4) {  // the largest |x| three times (across threads and warps), and a NaN
    x[n / 4] = 9.0;
    x[n / 2] = -9.0;
    x[n - 1] = 9.0;
    x[n / 3 + 1] = std::numeric_limits<double>::quiet_NaN();
  }
  const auto f = [&](int j) { return x[j]; };
  const auto finite = [&](int j) { return std::isnan(x[j]) ? 0.0 : x[j]; };
  const auto positive = [&](int j) { return x[j] > 1.0; };
  const auto never = [](int) { return false; };
  const spectral_ops::SerialContext serial{};
  std::vector<double> expected = {serial.sum<double>(n, finite),
                                  double(serial.argmax_abs<double>(n, f)),
                                  double(serial.first_index(n, positive)),
                                  double(serial.first_index(n, never)),
                                  0.0,
                                  serial.sum<double>(n, [&](int j) { return finite(j) * finite(j); })};
  for (int j = 0; j < n; ++j) expected[4] = std::isnan(x[j]) ? expected[4] : std::max(expected[4], std::fabs(x[j]));
  const size_t width = expected.size();
  std::vector<double> got(width * threads);
  run_block(
      threads, 1,
      [&](const EmulatedBlockContext& ctx) {
        double* out = got.data() + (size_t)ctx.tid * width;
        out[0] = ctx.sum<double>(n, finite);
        out[1] = ctx.argmax_abs<double>(n, f);
        out[2] = ctx.first_index(n, positive);
        out[3] = ctx.first_index(n, never);
        out[4] = ctx.max_abs<double>(n, f);
        ctx.sums<double>(
            1, n, [&](int) { return [&](int j) { return finite(j) * finite(j); }; },
            [&](int, double v) { out[5] = v; });
      },
      warp_size);
  std::vector<double> every(got.size());
  for (int t = 0; t < threads; ++t) std::copy(expected.begin(), expected.end(), every.begin() + (size_t)t * width);
  const char* what = "reductions (ties, NaN), warps of";
  double err = 0;
  bool exact = true;
  for (size_t i = 0; i < got.size(); ++i) {
    const size_t which = i % width;
    if (which == 0 || which == 5) {
      err = std::max(err, std::fabs(got[i] - every[i]) / std::max(1.0, std::fabs(every[i])));
    } else {
      exact = exact && got[i] == every[i];
    }
  }
  const bool ok = exact && err <= kTight;
  if (!ok) ++failures;
  std::printf("%s: %-31s %-2d threads=%-2d n=%-3d sums to %.1e (relative), indices and max %s\n", ok ? "ok  " : "FAIL",
              what, warp_size, threads, n, err, exact ? "equal" : "DIFFER");
}

// The parallel-order Jacobi on an emulated block against the same solver on one thread (the same
// rotations in the same rounds: equal to rounding of the norm's sum order) and against the
// tridiagonal QL of the CPU path (eigenvalues, and A = U^T diag U).
void check_jacobi(int threads, int k) {
  std::vector<double> A0 = random_rows(k, k, 31u + k);
  for (int i = 0; i < k; ++i)
    for (int l = 0; l < i; ++l) A0[l * k + i] = A0[i * k + l];
  std::vector<double> As = A0, Us(k * k), Ab = A0, Ub(k * k), At = A0, Ut(k * k), ws(2 * k + 1), wb(2 * k + 1),
                      wt(2 * k + 1);
  std::vector<int> os(k), ob(k), ot(k);
  spectral_ops::jacobi_eigh(spectral_ops::SerialContext{}, As.data(), Us.data(), os.data(), ws.data(), k);
  run_block(threads, k, [&](const EmulatedBlockContext& ctx) {
    spectral_ops::jacobi_eigh(ctx, Ab.data(), Ub.data(), ob.data(), wb.data(), k);
  });
  spectral_ops::tridiagonal_eigh(At.data(), Ut.data(), ot.data(), wt.data(), k);
  double norm = 0;
  for (double a : A0) norm = std::max(norm, std::fabs(a));
  std::vector<double> lb(k), ls(k), lt(k), rebuilt(k * k);
  for (int i = 0; i < k; ++i) {
    lb[i] = Ab[ob[i] * (k + 1)];
    ls[i] = As[os[i] * (k + 1)];
    lt[i] = At[ot[i] * (k + 1)];
  }
  for (int r = 0; r < k; ++r)
    for (int c = 0; c < k; ++c) {
      double acc = 0;
      for (int i = 0; i < k; ++i) acc += Ub[i * k + r] * Ab[i * (k + 1)] * Ub[i * k + c];
      rebuilt[r * k + c] = acc;
    }
  const double eps = std::numeric_limits<double>::epsilon();
  expect_close(Ab, As, 0.0, "jacobi: block = one thread (A)", threads, k, k);
  expect_close(Ub, Us, 0.0, "  (U)", threads, k, k);
  expect_close(lb, lt, 8 * k * eps * norm, "  values = tridiagonal QL", threads, k, k);
  expect_close(rebuilt, A0, 8 * k * eps * norm, "  A = U^T diag U", threads, k, k);
}

}  // namespace

void report_barriers() {
  for (int k : {4, 16, 32}) {
    const int d = 64, threads = 8;
    std::vector<double> Q, MQ;
    make_ritz_inputs(k, d, Q, MQ);
    const std::vector<double> prev = random_rows(k, d, 9u);
    run_ritz(threads, Q, MQ, nullptr, k, d);
    const long ritz0 = last_barriers;
    run_ritz(threads, Q, MQ, prev.data(), k, d);
    const long ritz1 = last_barriers;
    std::vector<double> W = random_rows(k, d, 1u), out(k * d), G = random_rows(k, d, 2u), gw(k * d), L(k * k), M(k * k);
    run_block(threads, k, [&](const EmulatedBlockContext& ctx) {
      std::vector<double> local(k);
      spectral_ops::orthonormalize_rows(ctx, W.data(), out.data(), k, d, local.data());
    });
    const long orth = last_barriers;
    run_block(threads, k, [&](const EmulatedBlockContext& ctx) {
      spectral_ops::orthonormalize_backward_rows(ctx, G.data(), out.data(), W.data(), gw.data(), k, d, L.data(),
                                                 M.data());
    });
    const long back = last_barriers;
    std::vector<double> S(k, 1.0), saved(spectral_ops::saved_width(spectral_ops::kLossOffdiag, k, d));
    run_block(threads, k, [&](const EmulatedBlockContext& ctx) {
      spectral_ops::alignment_loss_sample(ctx, out.data(), S.data(), k, d, spectral_ops::kLossOffdiag,
                                          spectral_ops::kWeightsUniform, saved.data());
    });
    const long align = last_barriers;
    std::vector<double> A = random_rows(k, k, 4u), U(k * k), work(2 * k + 1);
    for (int i = 0; i < k; ++i)
      for (int l = 0; l < i; ++l) A[l * k + i] = A[i * k + l];
    std::vector<int> order(k);
    run_block(threads, k, [&](const EmulatedBlockContext& ctx) {
      spectral_ops::jacobi_eigh(ctx, A.data(), U.data(), order.data(), work.data(), k);
    });
    const long jac = last_barriers;
    std::printf(
        "barriers k=%-2d d=%d: ritz_step %ld (with V_prev %ld), orthonormalize %ld, backward %ld, "
        "offdiag loss %ld, jacobi (random A) %ld\n",
        k, d, ritz0, ritz1, orth, back, align, jac);
  }
}

int main() {
  report_barriers();
  // The reducer alone, on warp layouts the ritz_step loop below does not use: the CUDA warp of 32
  // (one and two warps), warps of 2 and 4, fewer terms than threads.
  for (auto [threads, warp_size] : {std::pair{32, 32}, {64, 32}, {8, 2}, {12, 4}, {40, 8}, {7, 1}})
    for (int n : {0, 1, 5, 31, 33, 100}) check_reductions(threads, warp_size, n);
  // Block sizes: one thread, fewer threads than d, non-powers of two (not dividing k), more
  // threads than d.
  for (int threads : {1, 4, 7, 40}) {
    for (auto [k, d] : {std::pair{1, 1},
                        {1, 3},
                        {2, 2},
                        {2, 5},
                        {3, 3},
                        {3, 7},
                        {4, 4},
                        {4, 9},
                        {5, 5},
                        {5, 11},
                        {8, 8},
                        {8, 33},
                        {16, 16},
                        {16, 40},
                        {31, 31},
                        {31, 45},
                        {32, 32},
                        {32, 64}}) {
      check_sums(threads, k, d);
      check_orthonormalize(threads, k, d, /*dependent=*/false);
      check_ritz_step(threads, k, d, /*with_prev=*/threads % 2 == 0);
      for (int kind = 0; kind < 3; ++kind) check_alignment(threads, k, d, kind);
    }
    for (int k : {1, 2, 3, 4, 5, 8, 16, 31, 32}) check_jacobi(threads, k);
    check_orthonormalize(threads, 5, 9, /*dependent=*/true);
    check_orthonormalize(threads, 32, 40, /*dependent=*/true);
    check_extreme_inputs(threads, 3, 7);
    check_extreme_inputs(threads, 8, 33);
  }
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
