// Mamba's short causal depthwise convolution (+ optional SiLU) on the CPU, forward and
// backward, with causal_conv1d's semantics: out[t] = bias + sum_k w[k] * x[t - (K-1) + k].
//
// x is (batch, dim, L) with any strides (Mamba's mixer passes a view of (batch, L, dim)
// activations); outputs and gradients take x's layout. Work is split over (batch, tile of
// TILE steps); within a tile, blocks of WB channels run side by side, so memory is walked
// along its rows. A block's inputs (with the K-1 steps before the tile) are copied into a
// small buffer, so the tap loop runs branch-free over channel lanes. The SiLU's input is
// recomputed in the backward rather than stored.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "activations.h"
#include "strided.h"

namespace {

using seqarena::empty_like_layout;
using seqarena::read_lanes;
using seqarena::sigmoid;
using seqarena::Strided;
using seqarena::strided;
using seqarena::write_lanes;

constexpr int64_t WB = seqarena::LANES;  // channels per block
constexpr int64_t TILE = 64;             // steps per work item

// Work items per batch row: tiles of TILE steps, the last one partial.
inline int64_t tile_count(int64_t L) { return (L + TILE - 1) / TILE; }

// buf[(t - t0) * WB + w] = x(b, d0 + w, t) for t0 <= t < t1, zero outside [0, L) and past lane wn.
template <typename T>
void read_block(const Strided<const T>& x, int64_t L, int64_t b, int64_t d0, int64_t wn, int64_t t0, int64_t t1,
                T* buf) {
  for (int64_t t = t0; t < t1; ++t) {
    if (t < 0 || t >= L) {
      std::fill(buf + (t - t0) * WB, buf + (t - t0 + 1) * WB, T(0));
    } else {
      read_lanes(x, b, d0, wn, t, buf + (t - t0) * WB);
    }
  }
}

template <typename T>
void write_block(const T* buf, int64_t b, int64_t d0, int64_t wn, int64_t t0, int64_t t1, const Strided<T>& x) {
  for (int64_t t = t0; t < t1; ++t) write_lanes(buf + (t - t0) * WB, b, d0, wn, t, x);
}

template <typename T>
struct Conv {
  Strided<const T> x;
  const T *w, *bias;
  int64_t batch, dim, L, K;
  bool silu;

  int64_t tiles() const { return tile_count(L); }
  // A block's taps (K, WB) and bias (WB) as lanes, zero past lane wn.
  void block_weights(int64_t d0, int64_t wn, T* wt, T* b) const {
    std::fill(wt, wt + K * WB, T(0));
    std::fill(b, b + WB, T(0));
    for (int64_t w = 0; w < wn; ++w) {
      for (int64_t k = 0; k < K; ++k) wt[k * WB + w] = this->w[(d0 + w) * K + k];
      if (bias) b[w] = bias[d0 + w];
    }
  }
};

// pre[(t - t0) * WB + w] for t0 <= t < t1, from xp holding the inputs of steps t0 - (K-1) .. t1 - 1.
template <typename T>
void convolve(int64_t K, int64_t n, const T* xp, const T* wt, const T* bias, T* pre) {
  for (int64_t i = 0; i < n; ++i) {
    alignas(64) T acc[WB];
#pragma omp simd
    for (int64_t w = 0; w < WB; ++w) acc[w] = bias[w];
    for (int64_t k = 0; k < K; ++k) {
      const T* xk = xp + (i + k) * WB;
#pragma omp simd
      for (int64_t w = 0; w < WB; ++w) acc[w] += wt[k * WB + w] * xk[w];
    }
#pragma omp simd
    for (int64_t w = 0; w < WB; ++w) pre[i * WB + w] = acc[w];
  }
}

template <typename T>
void forward_kernel(const Conv<T>& c, const Strided<T>& out) {
  const int64_t tiles = c.tiles();
  at::parallel_for(0, c.batch * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> xp((TILE + c.K - 1) * WB), pre(TILE * WB), wt(c.K * WB), bias(WB);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / tiles, t0 = item % tiles * TILE, t1 = std::min(c.L, t0 + TILE), n = t1 - t0;
      for (int64_t d0 = 0; d0 < c.dim; d0 += WB) {
        const int64_t wn = std::min(WB, c.dim - d0);
        c.block_weights(d0, wn, wt.data(), bias.data());
        read_block(c.x, c.L, b, d0, wn, t0 - (c.K - 1), t1, xp.data());
        convolve(c.K, n, xp.data(), wt.data(), bias.data(), pre.data());
        if (c.silu) {
#pragma omp simd
          for (int64_t i = 0; i < n * WB; ++i) pre[i] *= sigmoid(pre[i]);
        }
        write_block(pre.data(), b, d0, wn, t0, t1, out);
      }
    }
  });
}

// dx (in x's layout), and per-(b, tile, d) partial sums of dw (batch, tiles, dim, K) and dbias
// (batch, tiles, dim). Step s of x reaches outputs s .. s + K-1: the tile's gradient g runs K-1
// steps past it, whose pre-activations are recomputed from the inputs K-1 steps before them.
template <typename T>
void backward_kernel(const Conv<T>& c, const Strided<const T>& gout, const Strided<T>& dx, T* dw, T* dbias) {
  const int64_t tiles = c.tiles(), K = c.K;
  at::parallel_for(0, c.batch * tiles, 1, [&](int64_t begin, int64_t end) {
    const int64_t span = TILE + K - 1;  // outputs t0 .. t1 + K-2
    std::vector<T> xp((span + K - 1) * WB), g(span * WB), go(span * WB), wt(K * WB), bias(WB), dxb(TILE * WB);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / tiles, tile = item % tiles, t0 = tile * TILE, t1 = std::min(c.L, t0 + TILE);
      const int64_t n = t1 - t0, ng = std::min(c.L, t1 + K - 1) - t0;  // outputs whose gradient reaches the tile
      for (int64_t d0 = 0; d0 < c.dim; d0 += WB) {
        const int64_t wn = std::min(WB, c.dim - d0);
        c.block_weights(d0, wn, wt.data(), bias.data());
        read_block(c.x, c.L, b, d0, wn, t0 - (K - 1), t0 + ng, xp.data());
        convolve(K, ng, xp.data(), wt.data(), bias.data(), g.data());
        read_block(gout, c.L, b, d0, wn, t0, t0 + ng, go.data());
        for (int64_t i = 0; i < ng * WB; ++i) {
          if (c.silu) {
            const T sig = sigmoid(g[i]);
            g[i] = go[i] * sig * (T(1) + g[i] * (T(1) - sig));
          } else {
            g[i] = go[i];
          }
        }
        std::fill(g.begin() + ng * WB, g.end(), T(0));
        alignas(64) T gb[WB] = {};
        for (int64_t i = 0; i < n; ++i) {
#pragma omp simd
          for (int64_t w = 0; w < WB; ++w) gb[w] += g[i * WB + w];
        }
        std::fill(dxb.begin(), dxb.end(), T(0));
        for (int64_t k = 0; k < K; ++k) {
          // pre[t] uses x[t - (K-1) + k]: x[s] receives w[k] * g[s + (K-1) - k]
          const T* wk = wt.data() + k * WB;
          alignas(64) T acc[WB] = {};
          for (int64_t i = 0; i < n; ++i) {
            const T* gk = g.data() + (i + K - 1 - k) * WB;
            const T* gi = g.data() + i * WB;
            const T* xk = xp.data() + (i + k) * WB;
            T* d = dxb.data() + i * WB;
#pragma omp simd
            for (int64_t w = 0; w < WB; ++w) {
              d[w] += wk[w] * gk[w];
              acc[w] += gi[w] * xk[w];
            }
          }
          for (int64_t w = 0; w < wn; ++w) dw[((b * tiles + tile) * c.dim + d0 + w) * K + k] = acc[w];
        }
        for (int64_t w = 0; w < wn; ++w) dbias[(b * tiles + tile) * c.dim + d0 + w] = gb[w];
        write_block(dxb.data(), b, d0, wn, t0, t1, dx);
      }
    }
  });
}

template <typename T>
Conv<T> make_conv(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, bool silu) {
  return Conv<T>{strided<const T>(x), weight.data_ptr<T>(), bias ? bias->data_ptr<T>() : nullptr,
                 x.size(0),           x.size(1),           x.size(2),
                 weight.size(1),      silu};
}

void check(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 3 && !x.is_cuda(), "x must be a (batch, dim, L) CPU tensor");
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == x.size(1) && weight.is_contiguous(), "weight must be (dim, width)");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() && (!bias || bias->scalar_type() == x.scalar_type()),
              "x, weight and bias must have one dtype");
}

}  // namespace

at::Tensor conv_fwd(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, bool silu) {
  check(x, weight, bias);
  auto out = empty_like_layout(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_cpu_fwd", [&] {
    forward_kernel<scalar_t>(make_conv<scalar_t>(x, weight, bias, silu), strided<scalar_t>(out));
  });
  return out;
}

// Returns (dx, dweight, dbias); dbias undefined without a bias. dx is written into dx_out if given
// (a view of a larger gradient, so that no caller concatenates).
std::vector<at::Tensor> conv_bwd(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                 bool silu, const at::Tensor& gout, const c10::optional<at::Tensor>& dx_out) {
  check(x, weight, bias);
  TORCH_CHECK(gout.sizes() == x.sizes() && gout.scalar_type() == x.scalar_type(), "gout must be shaped like x");
  TORCH_CHECK(!dx_out || (dx_out->sizes() == x.sizes() && dx_out->scalar_type() == x.scalar_type()),
              "dx_out must be shaped like x");
  const int64_t tiles = tile_count(x.size(2));
  auto dx = dx_out ? *dx_out : empty_like_layout(x);
  auto dw = at::empty({x.size(0) * tiles, x.size(1), weight.size(1)}, x.options());
  auto dbias = at::empty({x.size(0) * tiles, x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_cpu_bwd", [&] {
    backward_kernel<scalar_t>(make_conv<scalar_t>(x, weight, bias, silu), strided<const scalar_t>(gout),
                              strided<scalar_t>(dx), dw.data_ptr<scalar_t>(), dbias.data_ptr<scalar_t>());
  });
  return {dx, dw.sum(0), bias ? dbias.sum(0) : at::Tensor()};
}
