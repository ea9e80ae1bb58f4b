// (batch, dim, L) tensors in any layout, as both CPU kernels read and write them: Mamba's mixer
// passes views of (batch, L, dim) activations (channels contiguous); tests and other callers may
// pass time-contiguous rows or slices. The kernels work on blocks of LANES channels at a time.

#pragma once

#include <torch/extension.h>

#include <algorithm>

namespace seqarena {

constexpr int64_t LANES = 16;  // channels per block: one AVX-512 vector of floats

template <typename T>
struct Strided {
  T* p;
  int64_t sb, sd, st;
  T* at(int64_t b, int64_t d, int64_t t) const { return p + b * sb + d * sd + t * st; }
};

template <typename T>
Strided<T> strided(const at::Tensor& t) {
  return {static_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2)};
}

// to[w] = x(b, d0 + w, t) for w < wn, zero in the lanes past wn. A full block of contiguous
// channels moves as one vector.
template <typename T>
inline void read_lanes(const Strided<const T>& x, int64_t b, int64_t d0, int64_t wn, int64_t t, T* to) {
  const T* row = x.at(b, d0, t);
  if (x.sd == 1 && wn == LANES) {
#pragma omp simd
    for (int64_t w = 0; w < LANES; ++w) to[w] = row[w];
  } else {
    std::fill(to, to + LANES, T(0));
    for (int64_t w = 0; w < wn; ++w) to[w] = row[w * x.sd];
  }
}

template <typename T>
inline void write_lanes(const T* from, int64_t b, int64_t d0, int64_t wn, int64_t t, const Strided<T>& x) {
  T* row = x.at(b, d0, t);
  if (x.sd == 1 && wn == LANES) {
#pragma omp simd
    for (int64_t w = 0; w < LANES; ++w) row[w] = from[w];
  } else {
    for (int64_t w = 0; w < wn; ++w) row[w * x.sd] = from[w];
  }
}

// A tensor shaped like u in u's layout: channels contiguous if u's are, else time contiguous.
inline at::Tensor empty_like_layout(const at::Tensor& u) {
  if (u.size(1) > 1 && u.stride(1) == 1)
    return at::empty({u.size(0), u.size(2), u.size(1)}, u.options()).transpose(1, 2);
  return at::empty(u.sizes(), u.options());
}

}  // namespace seqarena
