// The logistic function, shared by the CPU kernels' SiLU gates and softplus derivatives.

#pragma once

#include <cmath>

namespace seqarena {

// 1 / (1 + exp(-x)) from exp(-|x|) only, so that nothing overflows: the kernels are built with
// -ffast-math, under which 1 / (1 + inf) is not 0 but NaN (a reciprocal estimate of inf), as a
// model that drives a gate or delta's pre-activation below -88 found.
template <typename T>
inline T sigmoid(T x) {
  const T e = std::exp(-std::abs(x));
  return (x >= T(0) ? T(1) : e) / (T(1) + e);
}

}  // namespace seqarena
