// Host-side argument checks shared by the CPU and CUDA op implementations.
// TORCH_CHECK_VALUE / TORCH_CHECK_TYPE surface in Python as ValueError / TypeError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

#include "alignment.h"

namespace spectral_ops {

struct RowsShape {
  int64_t B, k, d;
};

// A [B, k, d] floating-point tensor with 1 <= k <= d.
inline RowsShape check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 3, name, " must be 3-D [B, k, d], got shape ", t.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, " must be a floating-point tensor, got ",
                   t.scalar_type());
  const int64_t k = t.size(1), d = t.size(2);
  TORCH_CHECK_VALUE(k >= 1 && k <= d, name, " must have 1 <= k <= d, got k=", k, ", d=", d);
  return {t.size(0), k, d};
}

inline void check_same_shape(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_VALUE(t.sizes() == like.sizes(), name, " must have the shape of ", like_name, " ", like.sizes(), ", got ",
                    t.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, " must be a floating-point tensor, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == like.device(), name, " must be on ", like.device(), ", got ", t.device());
}

inline void check_values(const at::Tensor& S, const char* name, const RowsShape& shape, const at::Tensor& V) {
  TORCH_CHECK_VALUE(S.dim() == 2 && S.size(0) == shape.B && S.size(1) == shape.k, name, " must be [B, k] = [", shape.B,
                    ", ", shape.k, "], got shape ", S.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(S.scalar_type()), name, " must be a floating-point tensor, got ",
                   S.scalar_type());
  TORCH_CHECK_VALUE(S.device() == V.device(), name, " must be on ", V.device(), ", got ", S.device());
}

// The upstream gradient of a [B] loss.
inline void check_grad(const at::Tensor& grad, const RowsShape& shape) {
  TORCH_CHECK_VALUE(grad.dim() == 1 && grad.size(0) == shape.B, "grad must be [B] = [", shape.B, "], got shape ",
                    grad.sizes());
}

// The statistics alignment_loss_forward saved: [B, width] (width = saved_width(kind, k, d)).
inline void check_saved(const at::Tensor& saved, const RowsShape& shape, int64_t width, const at::Tensor& V) {
  TORCH_CHECK_VALUE(saved.dim() == 2 && saved.size(0) == shape.B && saved.size(1) == width, "saved must be [B, ", width,
                    "] = [", shape.B, ", ", width, "] as returned by alignment_loss_forward for this kind, got shape ",
                    saved.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(saved.scalar_type()), "saved must be a floating-point tensor, got ",
                   saved.scalar_type());
  TORCH_CHECK_VALUE(saved.device() == V.device(), "saved must be on ", V.device(), ", got ", saved.device());
}

inline int parse_loss_kind(const std::string& kind) {
  if (kind == "l1") return kLossL1;
  if (kind == "assigned") return kLossAssigned;
  if (kind == "offdiag") return kLossOffdiag;
  TORCH_CHECK_VALUE(false, "kind must be one of ('l1', 'assigned', 'offdiag'), got '", kind, "'");
}

inline int parse_weight_kind(const std::string& weights) {
  if (weights == "uniform") return kWeightsUniform;
  if (weights == "singular") return kWeightsSingular;
  TORCH_CHECK_VALUE(false, "weights must be one of ('uniform', 'singular'), got '", weights, "'");
}

// float64 stays float64; every other floating dtype is computed in float32 (reference.compute_dtype).
inline at::ScalarType compute_dtype(at::ScalarType dtype) { return dtype == at::kDouble ? at::kDouble : at::kFloat; }

inline at::Tensor as_compute(const at::Tensor& t, at::ScalarType compute) { return t.to(compute).contiguous(); }

// The checked inputs of the alignment_loss ops, in the compute dtype (shared by CPU and CUDA).
struct AlignmentInputs {
  RowsShape s;
  int kind, weights;
  int64_t width;  // saved_width(kind, k, d): the columns of the forward's saved statistics
  at::ScalarType ct;
  at::Tensor V, S;  // contiguous, compute dtype
};

// `s` is V's shape as checked by the backend (check_rows, or check_cuda_rows with its k limit).
inline AlignmentInputs alignment_inputs(const RowsShape& s, const at::Tensor& V, const at::Tensor& S,
                                        c10::string_view kind, c10::string_view weights) {
  check_values(S, "S", s, V);
  AlignmentInputs in{s,           parse_loss_kind(std::string(kind)), parse_weight_kind(std::string(weights)),
                     0,           compute_dtype(V.scalar_type()),     at::Tensor(),
                     at::Tensor()};
  in.width = saved_width(in.kind, (int)s.k, (int)s.d);
  in.V = as_compute(V, in.ct);
  in.S = as_compute(S, in.ct);
  return in;
}

}  // namespace spectral_ops
