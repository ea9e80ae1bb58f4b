// Mamba's short causal depthwise convolution (+ optional SiLU) on the CPU, forward and
// backward, with causal_conv1d's semantics: out[t] = bias + sum_k w[k] * x[t - (K-1) + k].
//
// x is (batch, dim, L) with any strides (Mamba's mixer passes a view of (batch, L, dim)
// activations); outputs and gradients take x's layout. Vectorisation runs over WB channels
// at once: a block's inputs are copied once into a zero-padded (K-1+L, WB) buffer, so the
// tap loop runs branch-free over channel lanes. The SiLU's input is recomputed in the
// backward rather than stored.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t WB = 16;  // channels per block

template <typename T>
struct Conv {
  const T *x, *w, *bias;
  int64_t batch, dim, L, K, x_sb, x_sd, x_st;
  bool silu;
};

// to[w] = from[w * stride] for w < n; a full row of contiguous lanes (Mamba's layout) as one vector.
template <typename T>
void read_lanes(const T* from, int64_t stride, int64_t n, T* to) {
  if (stride == 1 && n == WB) {
#pragma omp simd
    for (int64_t w = 0; w < WB; ++w) to[w] = from[w];
  } else {
    for (int64_t w = 0; w < n; ++w) to[w] = from[w * stride];
  }
}

template <typename T>
void write_lanes(const T* from, int64_t n, T* to, int64_t stride) {
  if (stride == 1 && n == WB) {
#pragma omp simd
    for (int64_t w = 0; w < WB; ++w) to[w] = from[w];
  } else {
    for (int64_t w = 0; w < n; ++w) to[w * stride] = from[w];
  }
}

// xp[(K-1 + t) * WB + w] = x(b, d0 + w, t), zeros before t = 0 and past lane wn; then
// pre[t * WB + w] = bias + sum_k w[k] * xp[(t + k) * WB + w].
template <typename T>
void convolve_block(const Conv<T>& c, int64_t b, int64_t d0, int64_t wn, T* xp, T* pre, T* wt, T* bias) {
  std::fill(xp, xp + (c.K - 1 + c.L) * WB, T(0));
  for (int64_t t = 0; t < c.L; ++t) read_lanes(c.x + b * c.x_sb + d0 * c.x_sd + t * c.x_st, c.x_sd, wn, xp + (c.K - 1 + t) * WB);
  std::fill(wt, wt + c.K * WB, T(0));
  std::fill(bias, bias + WB, T(0));
  for (int64_t w = 0; w < wn; ++w) {
    for (int64_t k = 0; k < c.K; ++k) wt[k * WB + w] = c.w[(d0 + w) * c.K + k];
    if (c.bias) bias[w] = c.bias[d0 + w];
  }
  for (int64_t t = 0; t < c.L; ++t) {
    T* p = pre + t * WB;
#pragma omp simd
    for (int64_t w = 0; w < WB; ++w) p[w] = bias[w];
    for (int64_t k = 0; k < c.K; ++k) {
      const T* xk = xp + (t + k) * WB;
#pragma omp simd
      for (int64_t w = 0; w < WB; ++w) p[w] += wt[k * WB + w] * xk[w];
    }
  }
}

// out and dx take x's layout: (b, d, t) at these strides.
struct Layout {
  int64_t sb, sd, st;
};

Layout layout(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

at::Tensor empty_like_layout(const at::Tensor& x) {
  if (x.size(1) > 1 && x.stride(1) == 1)
    return at::empty({x.size(0), x.size(2), x.size(1)}, x.options()).transpose(1, 2);
  return at::empty(x.sizes(), x.options());
}

template <typename T>
void forward_kernel(const Conv<T>& c, T* out, Layout o) {
  const int64_t blocks = (c.dim + WB - 1) / WB;
  at::parallel_for(0, c.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> xp((c.K - 1 + c.L) * WB), pre(c.L * WB), wt(c.K * WB), bias(WB);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / blocks, d0 = i % blocks * WB, wn = std::min(WB, c.dim - d0);
      convolve_block(c, b, d0, wn, xp.data(), pre.data(), wt.data(), bias.data());
      if (c.silu) {
#pragma omp simd
        for (int64_t k = 0; k < c.L * WB; ++k) pre[k] = pre[k] / (T(1) + std::exp(-pre[k]));
      }
      for (int64_t t = 0; t < c.L; ++t) write_lanes(pre.data() + t * WB, wn, out + b * o.sb + d0 * o.sd + t * o.st, o.sd);
    }
  });
}

// dx (in x's layout), and per-(b, d) partial sums of dw (batch, dim, K) and dbias (batch, dim).
template <typename T>
void backward_kernel(const Conv<T>& c, const T* gout, Layout go, T* dx, Layout o, T* dw, T* dbias) {
  const int64_t blocks = (c.dim + WB - 1) / WB;
  at::parallel_for(0, c.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> xp((c.K - 1 + c.L) * WB), gp((c.L + c.K - 1) * WB), wt(c.K * WB), bias(WB), dxb(c.L * WB);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / blocks, d0 = i % blocks * WB, wn = std::min(WB, c.dim - d0);
      T* g = gp.data();  // g[t] = d loss / d pre[t], followed by K-1 zero steps
      convolve_block(c, b, d0, wn, xp.data(), g, wt.data(), bias.data());
      std::fill(g + c.L * WB, g + (c.L + c.K - 1) * WB, T(0));
      for (int64_t t = 0; t < c.L; ++t) {
        alignas(64) T gt[WB] = {};
        read_lanes(gout + b * go.sb + d0 * go.sd + t * go.st, go.sd, wn, gt);
        T* gr = g + t * WB;
        if (c.silu) {
#pragma omp simd
          for (int64_t w = 0; w < WB; ++w) {
            const T sig = T(1) / (T(1) + std::exp(-gr[w]));
            gr[w] = gt[w] * sig * (T(1) + gr[w] * (T(1) - sig));
          }
        } else {
          std::copy(gt, gt + WB, gr);
        }
      }
      alignas(64) T gb[WB] = {}, acc[WB];
      for (int64_t t = 0; t < c.L; ++t) {
#pragma omp simd
        for (int64_t w = 0; w < WB; ++w) gb[w] += g[t * WB + w];
      }
      std::fill(dxb.begin(), dxb.end(), T(0));
      for (int64_t k = 0; k < c.K; ++k) {
        // pre[t] uses x[t - (K-1) + k]: x[s] receives w[k] * g[s + (K-1) - k]
        const T* wk = wt.data() + k * WB;
        std::fill(acc, acc + WB, T(0));
        for (int64_t t = 0; t < c.L; ++t) {
          const T* gk = g + (t + c.K - 1 - k) * WB;
          const T* gt = g + t * WB;
          const T* xk = xp.data() + (t + k) * WB;
          T* d = dxb.data() + t * WB;
#pragma omp simd
          for (int64_t w = 0; w < WB; ++w) {
            d[w] += wk[w] * gk[w];
            acc[w] += gt[w] * xk[w];
          }
        }
        for (int64_t w = 0; w < wn; ++w) dw[(b * c.dim + d0 + w) * c.K + k] = acc[w];
      }
      for (int64_t w = 0; w < wn; ++w) dbias[b * c.dim + d0 + w] = gb[w];
      for (int64_t t = 0; t < c.L; ++t) write_lanes(dxb.data() + t * WB, wn, dx + b * o.sb + d0 * o.sd + t * o.st, o.sd);
    }
  });
}

template <typename T>
Conv<T> make_conv(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, bool silu) {
  return Conv<T>{x.data_ptr<T>(), weight.data_ptr<T>(), bias ? bias->data_ptr<T>() : nullptr,
                 x.size(0),       x.size(1),           x.size(2),
                 weight.size(1),  x.stride(0),         x.stride(1),
                 x.stride(2),     silu};
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
    forward_kernel<scalar_t>(make_conv<scalar_t>(x, weight, bias, silu), out.data_ptr<scalar_t>(), layout(out));
  });
  return out;
}

// Returns (dx, dweight, dbias); dbias undefined without a bias.
std::vector<at::Tensor> conv_bwd(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                 bool silu, const at::Tensor& gout) {
  check(x, weight, bias);
  TORCH_CHECK(gout.sizes() == x.sizes() && gout.scalar_type() == x.scalar_type(), "gout must be shaped like x");
  auto dx = empty_like_layout(x);
  auto dw = at::empty({x.size(0), x.size(1), weight.size(1)}, x.options());
  auto dbias = at::empty({x.size(0), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_cpu_bwd", [&] {
    backward_kernel<scalar_t>(make_conv<scalar_t>(x, weight, bias, silu), gout.data_ptr<scalar_t>(), layout(gout),
                              dx.data_ptr<scalar_t>(), layout(dx), dw.data_ptr<scalar_t>(),
                              dbias.data_ptr<scalar_t>());
  });
  return {dx, dw.sum(0), bias ? dbias.sum(0) : at::Tensor()};
}
