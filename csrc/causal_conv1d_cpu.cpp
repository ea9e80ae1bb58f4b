// Mamba's short causal depthwise convolution (+ optional SiLU) on the CPU, forward and
// backward, with causal_conv1d's semantics: out[t] = bias + sum_k w[k] * x[t - (W-1) + k].
//
// x rows may be strided (a slice of in_proj's output: (batch, channel) strides, time
// contiguous); outputs are contiguous. Each (batch, channel) row is copied once into a
// zero-padded per-thread buffer so the tap loop runs branch-free and vectorises over time.
// The SiLU's input is recomputed in the backward rather than stored.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

template <typename T>
struct Conv {
  const T *x, *w, *bias;
  int64_t batch, dim, L, W, x_sb, x_sd;
  bool silu;
};

// pre[t] = bias + sum_k w[k] * xp[t + k], where xp is the row with W-1 zeros in front.
template <typename T>
void convolve_row(const Conv<T>& c, int64_t b, int64_t d, T* xp, T* pre) {
  const T* row = c.x + b * c.x_sb + d * c.x_sd;
  std::fill(xp, xp + c.W - 1, T(0));
  std::copy(row, row + c.L, xp + c.W - 1);
  const T* w = c.w + d * c.W;
  const T bias = c.bias ? c.bias[d] : T(0);
#pragma omp simd
  for (int64_t t = 0; t < c.L; ++t) pre[t] = bias;
  for (int64_t k = 0; k < c.W; ++k) {
    const T wk = w[k];
    const T* xk = xp + k;
#pragma omp simd
    for (int64_t t = 0; t < c.L; ++t) pre[t] += wk * xk[t];
  }
}

template <typename T>
void forward_kernel(const Conv<T>& c, T* out) {
  at::parallel_for(0, c.batch * c.dim, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> xp(c.L + c.W - 1);
    for (int64_t i = begin; i < end; ++i) {
      T* o = out + i * c.L;
      convolve_row(c, i / c.dim, i % c.dim, xp.data(), o);
      if (c.silu) {
#pragma omp simd
        for (int64_t t = 0; t < c.L; ++t) o[t] = o[t] / (T(1) + std::exp(-o[t]));
      }
    }
  });
}

// dx (contiguous), and per-(b, d) partial sums of dw (batch, dim, W) and dbias (batch, dim).
template <typename T>
void backward_kernel(const Conv<T>& c, const T* gout, T* dx, T* dw, T* dbias) {
  at::parallel_for(0, c.batch * c.dim, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> xp(c.L + c.W - 1), gp(c.L + c.W - 1);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t d = i % c.dim;
      T* g = gp.data();  // g[t] = d loss / d pre[t], followed by W-1 zeros
      convolve_row(c, i / c.dim, d, xp.data(), g);
      const T* go = gout + i * c.L;
      if (c.silu) {
#pragma omp simd
        for (int64_t t = 0; t < c.L; ++t) {
          const T sig = T(1) / (T(1) + std::exp(-g[t]));
          g[t] = go[t] * sig * (T(1) + g[t] * (T(1) - sig));
        }
      } else {
        std::copy(go, go + c.L, g);
      }
      std::fill(g + c.L, g + c.L + c.W - 1, T(0));
      T gb = 0;
#pragma omp simd reduction(+ : gb)
      for (int64_t t = 0; t < c.L; ++t) gb += g[t];
      dbias[i] = gb;
      const T* w = c.w + d * c.W;
      T* dxr = dx + i * c.L;
      std::fill(dxr, dxr + c.L, T(0));
      for (int64_t k = 0; k < c.W; ++k) {
        // pre[t] uses x[t - (W-1) + k]: x[s] receives w[k] * g[s + (W-1) - k]
        const T wk = w[k];
        const T* gk = g + (c.W - 1 - k);
        const T* xk = xp.data() + k;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t t = 0; t < c.L; ++t) {
          dxr[t] += wk * gk[t];
          acc += g[t] * xk[t];
        }
        dw[i * c.W + k] = acc;
      }
    }
  });
}

template <typename T>
Conv<T> make_conv(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, bool silu) {
  return Conv<T>{x.data_ptr<T>(), weight.data_ptr<T>(), bias ? bias->data_ptr<T>() : nullptr,
                 x.size(0),       x.size(1),           x.size(2),
                 weight.size(1),  x.stride(0),         x.stride(1),
                 silu};
}

void check(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 3 && (x.size(2) <= 1 || x.stride(2) == 1) && !x.is_cuda(),
              "x must be a (batch, dim, L) CPU tensor, contiguous along L");
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == x.size(1) && weight.is_contiguous(), "weight must be (dim, width)");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() && (!bias || bias->scalar_type() == x.scalar_type()),
              "x, weight and bias must have one dtype");
}

}  // namespace

at::Tensor conv_fwd(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, bool silu) {
  check(x, weight, bias);
  auto out = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_cpu_fwd", [&] {
    forward_kernel<scalar_t>(make_conv<scalar_t>(x, weight, bias, silu), out.data_ptr<scalar_t>());
  });
  return out;
}

// Returns (dx, dweight, dbias); dbias undefined without a bias.
std::vector<at::Tensor> conv_bwd(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                 bool silu, const at::Tensor& gout) {
  check(x, weight, bias);
  TORCH_CHECK(gout.is_contiguous() && gout.sizes() == x.sizes(), "gout must be contiguous like x");
  auto dx = at::empty(x.sizes(), x.options());
  auto dw = at::empty({x.size(0), x.size(1), weight.size(1)}, x.options());
  auto dbias = at::empty({x.size(0), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_cpu_bwd", [&] {
    backward_kernel<scalar_t>(make_conv<scalar_t>(x, weight, bias, silu), gout.data_ptr<scalar_t>(),
                              dx.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(), dbias.data_ptr<scalar_t>());
  });
  return {dx, dw.sum(0), bias ? dbias.sum(0) : at::Tensor()};
}
