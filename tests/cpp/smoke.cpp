// C++ smoke test: the shared maths directly (both small eigensolvers, on known and random
// matrices: the CUDA blocks use Jacobi, which the Python tests reach only on a GPU), and the
// registered CPU ops through the dispatcher (orthonormality, Ritz values, loss range).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <tuple>
#include <vector>
#include <algorithm>

#include "common/jacobi.h"
#include "common/tridiagonal_eigh.h"
#include "common/serial_context.h"

static int failures = 0;

static void expect(bool ok, const char* what) {
  std::printf("%s: %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) ++failures;
}

// A = U^T diag U with orthonormal rows of U, eigenvalues sorted descending by `order`: the
// contract of both small eigensolvers, checked on a random symmetric k x k matrix in precision T
// (entries in [-0.5, 0.5]; the bound is a few hundred eps).
template <typename T, typename Solve>
static bool eigh_contract_holds(int k, Solve solve) {
  std::vector<T> A0(k * k), A(k * k), U(k * k);
  std::vector<int> order(k);
  unsigned state = 12345u + k;
  auto uniform = [&] {
    state = state * 1664525u + 1013904223u;
    return T((state >> 8) / double(1 << 24) - 0.5);
  };
  for (int i = 0; i < k; ++i)
    for (int j = 0; j <= i; ++j) A0[i * k + j] = A0[j * k + i] = uniform();
  A = A0;
  solve(A.data(), U.data(), order.data());
  double err = 0;
  for (int i = 0; i < k; ++i)
    for (int j = 0; j < k; ++j) {
      double rebuilt = 0, gram = 0;
      for (int m = 0; m < k; ++m) {
        rebuilt += double(U[m * k + i]) * A[m * k + m] * U[m * k + j];
        gram += double(U[i * k + m]) * U[j * k + m];
      }
      err = std::max(err, std::max(std::fabs(rebuilt - A0[i * k + j]), std::fabs(gram - (i == j ? 1.0 : 0.0))));
    }
  for (int i = 1; i < k; ++i)
    if (A[order[i] * (k + 1)] > A[order[i - 1] * (k + 1)]) return false;
  return err < 500 * spectral_ops::machine_eps<T>();
}

template <typename T>
static void check_eigensolvers(const char* precision) {
  bool jacobi_ok = true, tridiagonal_ok = true;
  for (int k : {1, 2, 3, 4, 7, 8, 17, 32}) {
    std::vector<T> scratch(2 * k + 1);
    jacobi_ok &= eigh_contract_holds<T>(k, [&](T* a, T* u, int* o) {
      spectral_ops::jacobi_eigh(spectral_ops::SerialContext{}, a, u, o, scratch.data(), k);
    });
    tridiagonal_ok &= eigh_contract_holds<T>(
        k, [&](T* a, T* u, int* o) { spectral_ops::tridiagonal_eigh(a, u, o, scratch.data(), k); });
  }
  std::printf("%s: %s: jacobi_eigh (the CUDA solver): A = U^T diag U, orthonormal U, sorted, k = 1..32\n",
              jacobi_ok ? "ok  " : "FAIL", precision);
  std::printf("%s: %s: tridiagonal_eigh (the CPU solver): the same contract\n", tridiagonal_ok ? "ok  " : "FAIL",
              precision);
  if (!jacobi_ok) ++failures;
  if (!tridiagonal_ok) ++failures;
}

int main() {
  // 1. Both eigensolvers: a known 3x3 matrix, then the contract on random ones (k = 1 .. 32).
  double A[9] = {2, 1, 0, 1, 2, 0, 0, 0, 5}, U[9], work[7];
  int order[3];
  spectral_ops::jacobi_eigh(spectral_ops::SerialContext{}, A, U, order, work, 3);
  const double expected[3] = {5, 3, 1};
  bool values_ok = true;
  for (int i = 0; i < 3; ++i) values_ok &= std::fabs(A[order[i] * 4] - expected[i]) < 1e-14;
  expect(values_ok, "jacobi_eigh eigenvalues of a 3x3 matrix, descending");
  check_eigensolvers<double>("float64");
  check_eigensolvers<float>("float32");

  // 2. The ops through the dispatcher.
  auto& dispatcher = c10::Dispatcher::singleton();
  auto orthonormalize =
      dispatcher.findSchemaOrThrow("spectral_ops::orthonormalize", "").typed<at::Tensor(const at::Tensor&)>();
  auto ritz_step = dispatcher.findSchemaOrThrow("spectral_ops::ritz_step", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&)>();
  auto alignment_loss =
      dispatcher.findSchemaOrThrow("spectral_ops::alignment_loss", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, c10::string_view)>();
  at::manual_seed(0);
  const at::Tensor W = at::randn({4, 3, 17}, at::kDouble);
  const at::Tensor Q = orthonormalize.call(W);
  const at::Tensor eye = at::eye(3, at::kDouble).expand({4, 3, 3});
  expect(at::allclose(at::matmul(Q, Q.transpose(1, 2)), eye, 0, 1e-12), "orthonormalize gives orthonormal rows");

  const at::Tensor scales = at::tensor({3.0, 2.0, 1.0}, at::kDouble).view({1, 3, 1});
  const auto [V, lam, res, Q_next] = ritz_step.call(Q, Q * scales, std::nullopt);
  const at::Tensor sorted_ok = lam.diff(1, 1).le(0).all();
  expect(sorted_ok.item<bool>() && res.abs().max().item<double>() < 1e-10, "ritz_step values sorted, residuals ~0");

  const at::Tensor loss = alignment_loss.call(Q, at::rand({4, 3}, at::kDouble), "offdiag", "singular");
  expect(loss.ge(0).all().item<bool>() && loss.le(1).all().item<bool>(), "alignment_loss in [0, 1]");

  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
