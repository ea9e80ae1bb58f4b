// Selective scan on the CPU: forward, backward and the single-step decode update, with
// mamba_ssm's semantics (see src/seqarena/ops/scan.py for the recurrence).
//
// Layout: u, delta, z are (batch, dim, L); A is (dim, N); B and C arrive either as
// (batch, groups, L, N), so that the N values of one time step are contiguous (the inner,
// vectorised loop runs over N), or time-invariant as (dim, N). Work is split over
// batch x dim with at::parallel_for.
//
// Memory: no (batch, dim, L, N) tensor is ever made. The forward keeps the state only at
// the start of every CHUNK steps; the backward walks the chunks in reverse, recomputes
// the states of one chunk into a small per-thread buffer, and runs the adjoint
// recurrence over it. Gradients of B and C (shared by the channels of a group) go to
// per-thread buffers that are summed at the end, so no two threads write one address.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

constexpr int64_t CHUNK = 64;

template <typename T>
inline T softplus(T x) {
  return x > T(20) ? x : std::log1p(std::exp(x));  // torch's threshold
}

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// dt = softplus(delta + bias) (or without softplus) for n consecutive steps, in one
// vectorised pass; dpre, if given, receives d(dt)/d(delta). Scalar transcendentals inside
// the time loop would cost more than the scan itself.
template <typename T>
void discretise(const T* delta, T bias, bool use_softplus, int64_t n, T* dt, T* dpre) {
  if (!use_softplus) {
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) dt[k] = delta[k] + bias;
    if (dpre) std::fill(dpre, dpre + n, T(1));
    return;
  }
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    const T pre = delta[k] + bias;
    dt[k] = pre > T(20) ? pre : std::log1p(std::exp(pre));
    if (dpre) dpre[k] = T(1) / (T(1) + std::exp(-pre));
  }
}

// decay[k * N + n] = exp(dt[k] * A[n]) for n_steps steps: all exponentials of a chunk in
// one flat vectorised loop, so the recurrence that follows makes no calls (a vector math
// call clobbers every vector register, which would spill the state at every step).
template <typename T, int64_t NC>
void decays(const T* dt, const T* A, int64_t n_steps, int64_t N_runtime, T* decay) {
  const int64_t N = NC ? NC : N_runtime;
  for (int64_t k = 0; k < n_steps; ++k) {
    T* out = decay + k * N;
    const T dtk = dt[k];
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) out[n] = std::exp(dtk * A[n]);
  }
}

// Pointers and sizes shared by the forward and the backward.
template <typename T>
struct Scan {
  const T *u, *delta, *A, *B, *C, *D, *z, *delta_bias;
  int64_t batch, dim, L, N, groups;
  int64_t bc_batch_stride, bc_group_stride, bc_time_stride;  // 0 where B, C do not vary
  // u, delta and z rows may sit anywhere (a slice of a bigger tensor): (batch, channel)
  // strides; time is contiguous. Outputs and gradients are contiguous: row(b, d).
  int64_t u_sb, u_sd, delta_sb, delta_sd, z_sb, z_sd;
  bool softplus;
  const T* initial_state = nullptr;  // (batch, dim, N) the state before step 0 (forward only); else 0

  int64_t row(int64_t b, int64_t d) const { return (b * dim + d) * L; }
  // Offset of channel d's B (or C) at time 0; time t is t * bc_time_stride further.
  int64_t bc(int64_t b, int64_t d) const {
    return b * bc_batch_stride + d / (dim / groups) * bc_group_stride;
  }
  T bias(int64_t d) const { return delta_bias ? delta_bias[d] : T(0); }
};

// NC is N when known at compile time (the state then stays in registers), else 0.
template <typename T, int64_t NC>
void forward_kernel(const Scan<T>& s, T* out, T* checkpoints, T* last_state) {
  const int64_t N = NC ? NC : s.N, nchunks = (s.L + CHUNK - 1) / CHUNK;
  at::parallel_for(0, s.batch * s.dim, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> x_heap(NC ? 0 : N), dts(s.L), decay(CHUNK * N);
    alignas(64) T x_fixed[NC ? NC : 1];
    T* xs = NC ? x_fixed : x_heap.data();
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / s.dim, d = i % s.dim, r = s.row(b, d);
      const T* u = s.u + b * s.u_sb + d * s.u_sd;
      const T* zr = s.z ? s.z + b * s.z_sb + d * s.z_sd : nullptr;
      const T* A = s.A + d * N;
      const T* B = s.B + s.bc(b, d);
      const T* C = s.C + s.bc(b, d);
      const T Dd = s.D ? s.D[d] : T(0);
      if (s.initial_state) {
        std::copy(s.initial_state + i * N, s.initial_state + (i + 1) * N, xs);
      } else {
        std::fill(xs, xs + N, T(0));
      }
      discretise(s.delta + b * s.delta_sb + d * s.delta_sd, s.bias(d), s.softplus, s.L, dts.data(),
                 static_cast<T*>(nullptr));
      for (int64_t t = 0; t < s.L; ++t) {
        if (t % CHUNK == 0) {
          std::copy(xs, xs + N, checkpoints + (i * nchunks + t / CHUNK) * N);
          decays<T, NC>(dts.data() + t, A, std::min(CHUNK, s.L - t), N, decay.data());
        }
        const T du = dts[t] * u[t];
        const T* Bt = B + t * s.bc_time_stride;
        const T* Ct = C + t * s.bc_time_stride;
        const T* as = decay.data() + (t % CHUNK) * N;
        T y = 0;
#pragma omp simd reduction(+ : y)
        for (int64_t n = 0; n < N; ++n) {
          xs[n] = as[n] * xs[n] + du * Bt[n];
          y += xs[n] * Ct[n];
        }
        out[r + t] = y + Dd * u[t];
      }
      if (zr) {
        T* o = out + r;
#pragma omp simd
        for (int64_t t = 0; t < s.L; ++t) o[t] *= zr[t] / (T(1) + std::exp(-zr[t]));
      }
      if (last_state) std::copy(xs, xs + N, last_state + i * N);
    }
  });
}

// Gradients; per-(b, d) partial sums of dA, dD, d(delta_bias) are reduced over b by the caller.
template <typename T>
struct Grads {
  T *du, *ddelta, *dz;          // (batch, dim, L)
  T *dA, *dD, *dbias;           // (batch, dim, N), (batch, dim), (batch, dim)
  T *dB, *dC;                   // (threads, *B.shape): one private copy per thread
  int64_t per_thread;           // elements of one thread's dB / dC
};

template <typename T, int64_t NC>
void backward_kernel(const Scan<T>& s, const T* gout, const T* glast, const T* checkpoints, Grads<T> g) {
  const int64_t N = NC ? NC : s.N, nchunks = (s.L + CHUNK - 1) / CHUNK;
  at::parallel_for(0, s.batch * s.dim, 1, [&](int64_t begin, int64_t end) {
    const int64_t tid = at::get_thread_num();
    std::vector<T> h_heap(NC ? 0 : N), x_heap(NC ? 0 : N), dA_heap(NC ? 0 : N);
    alignas(64) T h_fixed[NC ? NC : 1], x_fixed[NC ? NC : 1], dA_fixed[NC ? NC : 1];
    T* hs = NC ? h_fixed : h_heap.data();
    T* xs = NC ? x_fixed : x_heap.data();
    T* dA = NC ? dA_fixed : dA_heap.data();
    std::vector<T> prev(CHUNK * N), decay(CHUNK * N), dts(CHUNK), dpre(CHUNK), sz(CHUNK);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / s.dim, d = i % s.dim, r = s.row(b, d);
      const T* u = s.u + b * s.u_sb + d * s.u_sd;
      const T* delta = s.delta + b * s.delta_sb + d * s.delta_sd;
      const T* zr = s.z ? s.z + b * s.z_sb + d * s.z_sd : nullptr;
      const int64_t bc_offset = s.bc(b, d), bt = s.bc_time_stride;
      const T* A = s.A + d * N;
      const T* B = s.B + bc_offset;
      const T* C = s.C + bc_offset;
      T* dB = g.dB + tid * g.per_thread + bc_offset;
      T* dC = g.dC + tid * g.per_thread + bc_offset;
      const T Dd = s.D ? s.D[d] : T(0);
      T dD = 0, dbias = 0;
      if (glast) std::copy(glast + i * N, glast + (i + 1) * N, hs);
      else std::fill(hs, hs + N, T(0));
      std::fill(dA, dA + N, T(0));
      for (int64_t c = nchunks - 1; c >= 0; --c) {
        const int64_t t0 = c * CHUNK, t1 = std::min(s.L, t0 + CHUNK);
        // Recompute the chunk: prev[t] is the state before step t, decay[t] = exp(dt_t A).
        std::copy(checkpoints + (i * nchunks + c) * N, checkpoints + (i * nchunks + c + 1) * N, xs);
        discretise(delta + t0, s.bias(d), s.softplus, t1 - t0, dts.data(), dpre.data());
        decays<T, NC>(dts.data(), A, t1 - t0, N, decay.data());
        if (s.z) {
          const T* zc = zr + t0;
          T* szp = sz.data();
#pragma omp simd
          for (int64_t k = 0; k < t1 - t0; ++k) szp[k] = T(1) / (T(1) + std::exp(-zc[k]));
        }
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t k = t - t0;
          const T dt = dts[k], du = dt * u[t];
          const T* Bt = B + t * bt;
          const T* ak = decay.data() + k * N;
          T* pk = prev.data() + k * N;
#pragma omp simd
          for (int64_t n = 0; n < N; ++n) {
            pk[n] = xs[n];
            xs[n] = ak[n] * xs[n] + du * Bt[n];
          }
        }
        // Adjoint, t1-1 down to t0; x holds the state after the step being undone.
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const int64_t k = t - t0;
          const T ut = u[t], dt = dts[k];
          const T* Bt = B + t * bt;
          const T* Ct = C + t * bt;
          const T* pk = prev.data() + k * N;
          const T* ak = decay.data() + k * N;
          T* dBt = dB + t * bt;
          T* dCt = dC + t * bt;
          T gy = gout[r + t];
          if (s.z) {
            T y = Dd * ut;
#pragma omp simd reduction(+ : y)
            for (int64_t n = 0; n < N; ++n) y += xs[n] * Ct[n];
            const T zt = zr[t], sig = sz[k];
            g.dz[r + t] = gy * y * sig * (T(1) + zt * (T(1) - sig));
            gy *= zt * sig;
          }
          dD += gy * ut;
          T du = gy * Dd, ddt = 0;
#pragma omp simd reduction(+ : du, ddt)
          for (int64_t n = 0; n < N; ++n) {
            hs[n] += gy * Ct[n];
            dCt[n] += gy * xs[n];
            const T ga = hs[n] * pk[n] * ak[n];  // d/d(dt*A[n]) through the decay
            ddt += ga * A[n] + hs[n] * ut * Bt[n];
            dA[n] += ga * dt;
            dBt[n] += hs[n] * dt * ut;
            du += hs[n] * dt * Bt[n];
            hs[n] *= ak[n];  // on to the previous state
            xs[n] = pk[n];
          }
          g.du[r + t] = du;
          const T dpre_t = ddt * dpre[k];
          g.ddelta[r + t] = dpre_t;
          dbias += dpre_t;
        }
      }
      std::copy(dA, dA + N, g.dA + i * N);
      g.dD[i] = dD;
      g.dbias[i] = dbias;
    }
  });
}

// Time is read with stride 1; a length-1 axis may carry any stride.
inline bool time_contiguous(const at::Tensor& t) { return t.size(2) <= 1 || t.stride(2) == 1; }

template <typename T>
Scan<T> make_scan(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& C, const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
                  const c10::optional<at::Tensor>& delta_bias, bool delta_softplus) {
  TORCH_CHECK(!z || (z->sizes() == u.sizes() && time_contiguous(*z)), "z must be shaped like u, contiguous along time");
  const bool invariant = B.dim() == 2;  // (dim, N): one group per channel, no batch or time axis
  const int64_t N = A.size(1);
  return Scan<T>{u.data_ptr<T>(),
                 delta.data_ptr<T>(),
                 A.data_ptr<T>(),
                 B.data_ptr<T>(),
                 C.data_ptr<T>(),
                 D ? D->data_ptr<T>() : nullptr,
                 z ? z->data_ptr<T>() : nullptr,
                 delta_bias ? delta_bias->data_ptr<T>() : nullptr,
                 u.size(0),
                 u.size(1),
                 u.size(2),
                 N,
                 invariant ? u.size(1) : B.size(1),
                 invariant ? 0 : B.size(1) * B.size(2) * N,
                 invariant ? N : B.size(2) * N,
                 invariant ? 0 : N,
                 u.stride(0),
                 u.stride(1),
                 delta.stride(0),
                 delta.stride(1),
                 z ? z->stride(0) : 0,
                 z ? z->stride(1) : 0,
                 delta_softplus};
}

void check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& C) {
  TORCH_CHECK(u.dim() == 3 && u.sizes() == delta.sizes(), "u and delta must be (batch, dim, L) alike");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == u.size(1), "A must be (dim, N)");
  TORCH_CHECK(B.sizes() == C.sizes(), "B and C must have one shape");
  if (B.dim() == 2) {
    TORCH_CHECK(B.sizes() == A.sizes(), "time-invariant B and C must be (dim, N) like A");
  } else {
    TORCH_CHECK(B.dim() == 4 && B.size(0) == u.size(0) && B.size(2) == u.size(2) && B.size(3) == A.size(1),
                "B and C must be (batch, groups, L, N) matching u's batch and length and A's N");
    TORCH_CHECK(u.size(1) % B.size(1) == 0, "dim must be a multiple of the number of groups");
  }
  TORCH_CHECK(time_contiguous(u) && time_contiguous(delta), "u and delta must be contiguous along time");
  for (const auto* t : {&A, &B, &C}) {
    TORCH_CHECK(t->is_contiguous(), "A, B and C must be contiguous");
  }
  for (const auto* t : {&u, &delta, &A, &B, &C}) {
    TORCH_CHECK(!t->is_cuda() && t->scalar_type() == u.scalar_type(),
                "selective_scan_cpu takes CPU tensors of one dtype");
  }
}

}  // namespace

// Returns (out, checkpoints, last_state); checkpoints feed the backward (which assumes no
// initial_state: a scan continuing a sequence is for inference).
std::vector<at::Tensor> fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& C, const c10::optional<at::Tensor>& D,
                            const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& delta_bias,
                            bool delta_softplus, const c10::optional<at::Tensor>& initial_state) {
  check_inputs(u, delta, A, B, C);
  TORCH_CHECK(!initial_state || (initial_state->sizes() == at::IntArrayRef({u.size(0), u.size(1), A.size(1)}) &&
                                 initial_state->is_contiguous() && initial_state->scalar_type() == u.scalar_type()),
              "initial_state must be a contiguous (batch, dim, N) tensor of u's dtype");
  const int64_t nchunks = (u.size(2) + CHUNK - 1) / CHUNK;
  auto out = at::empty_like(u);
  auto checkpoints = at::empty({u.size(0), u.size(1), nchunks, A.size(1)}, u.options());
  auto last_state = at::empty({u.size(0), u.size(1), A.size(1)}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_fwd", [&] {
    auto s = make_scan<scalar_t>(u, delta, A, B, C, D, z, delta_bias, delta_softplus);
    if (initial_state) s.initial_state = initial_state->data_ptr<scalar_t>();
    auto kernel = s.N == 16 ? forward_kernel<scalar_t, 16> : forward_kernel<scalar_t, 0>;
    kernel(s, out.data_ptr<scalar_t>(), checkpoints.data_ptr<scalar_t>(), last_state.data_ptr<scalar_t>());
  });
  return {out, checkpoints, last_state};
}

// Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias); undefined where the input was absent.
std::vector<at::Tensor> bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& C, const c10::optional<at::Tensor>& D,
                            const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& delta_bias,
                            bool delta_softplus, const at::Tensor& checkpoints, const at::Tensor& gout,
                            const c10::optional<at::Tensor>& glast) {
  check_inputs(u, delta, A, B, C);
  TORCH_CHECK(gout.sizes() == u.sizes() && gout.is_contiguous(), "gout must be contiguous like u");
  const int64_t batch = u.size(0), dim = u.size(1), N = A.size(1), threads = at::get_num_threads();
  auto du = at::empty_like(u), ddelta = at::empty_like(u);
  auto dz = z ? at::empty_like(u) : at::Tensor();
  auto dA = at::empty({batch, dim, N}, u.options());
  auto dD = at::empty({batch, dim}, u.options()), dbias = at::empty({batch, dim}, u.options());
  std::vector<int64_t> per_thread_shape{threads};
  per_thread_shape.insert(per_thread_shape.end(), B.sizes().begin(), B.sizes().end());
  auto dB = at::zeros(per_thread_shape, u.options());
  auto dC = at::zeros_like(dB);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_bwd", [&] {
    auto s = make_scan<scalar_t>(u, delta, A, B, C, D, z, delta_bias, delta_softplus);
    Grads<scalar_t> g{du.data_ptr<scalar_t>(),    ddelta.data_ptr<scalar_t>(),
                      z ? dz.data_ptr<scalar_t>() : nullptr,
                      dA.data_ptr<scalar_t>(),    dD.data_ptr<scalar_t>(),
                      dbias.data_ptr<scalar_t>(), dB.data_ptr<scalar_t>(),
                      dC.data_ptr<scalar_t>(),    B.numel()};
    auto kernel = s.N == 16 ? backward_kernel<scalar_t, 16> : backward_kernel<scalar_t, 0>;
    kernel(s, gout.data_ptr<scalar_t>(),
                              glast ? glast->contiguous().data_ptr<scalar_t>() : nullptr,
                              checkpoints.data_ptr<scalar_t>(), g);
  });
  return {du,
          ddelta,
          dA.sum(0),
          dB.sum(0),
          dC.sum(0),
          D ? dD.sum(0) : at::Tensor(),
          dz,
          delta_bias ? dbias.sum(0) : at::Tensor()};
}

namespace {

template <typename T>
void step_kernel(T* state, const T* x, const T* dt, const T* A, const T* B, const T* C, const T* D, const T* z,
                 const T* dt_bias, bool dt_softplus, T* y, int64_t batch, int64_t dim, int64_t N) {
  at::parallel_for(0, batch * dim, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / dim, d = i % dim;
      const T pre = dt[i] + (dt_bias ? dt_bias[d] : T(0));
      const T dtv = dt_softplus ? softplus(pre) : pre, du = dtv * x[i];
      const T* An = A + d * N;
      const T* Bn = B + b * N;
      const T* Cn = C + b * N;
      T* sn = state + i * N;
      T out = 0;
#pragma omp simd reduction(+ : out)
      for (int64_t n = 0; n < N; ++n) {
        sn[n] = std::exp(dtv * An[n]) * sn[n] + du * Bn[n];
        out += sn[n] * Cn[n];
      }
      if (D) out += D[d] * x[i];
      if (z) out *= z[i] * sigmoid(z[i]);
      y[i] = out;
    }
  });
}

}  // namespace

// One decoding step: state (batch, dim, N) is updated in place; returns y (batch, dim).
at::Tensor step(at::Tensor state, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                const at::Tensor& B, const at::Tensor& C, const c10::optional<at::Tensor>& D,
                const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& dt_bias, bool dt_softplus) {
  TORCH_CHECK(state.is_contiguous() && state.dim() == 3 && !state.is_cuda(),
              "state must be a contiguous (batch, dim, N) CPU tensor");
  const auto as_state = [&](const at::Tensor& t) { return t.to(state.scalar_type()).contiguous(); };
  const auto opt = [&](const c10::optional<at::Tensor>& t) { return t ? as_state(*t) : at::Tensor(); };
  auto xc = as_state(x), dtc = as_state(dt), Ac = as_state(A), Bc = as_state(B), Cc = as_state(C);
  auto Dc = opt(D), zc = opt(z), biasc = opt(dt_bias);
  auto y = at::empty({state.size(0), state.size(1)}, state.options());
  AT_DISPATCH_FLOATING_TYPES(state.scalar_type(), "selective_scan_cpu_step", [&] {
    const auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    step_kernel<scalar_t>(state.data_ptr<scalar_t>(), ptr(xc), ptr(dtc), ptr(Ac), ptr(Bc), ptr(Cc), ptr(Dc),
                          ptr(zc), ptr(biasc), dt_softplus, y.data_ptr<scalar_t>(), state.size(0), state.size(1),
                          state.size(2));
  });
  return y.to(x.scalar_type());
}

// causal_conv1d_cpu.cpp
at::Tensor conv_fwd(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, bool silu);
std::vector<at::Tensor> conv_bwd(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                 bool silu, const at::Tensor& gout);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fwd", &fwd, "selective scan forward (CPU)");
  m.def("bwd", &bwd, "selective scan backward (CPU)");
  m.def("step", &step, "selective scan single decoding step (CPU)");
  m.def("conv_fwd", &conv_fwd, "causal depthwise conv1d (+SiLU) forward (CPU)");
  m.def("conv_bwd", &conv_bwd, "causal depthwise conv1d (+SiLU) backward (CPU)");
}
