// Selective scan on the CPU: forward, backward and the single-step decode update, with
// mamba_ssm's semantics (see src/seqarena/ops/scan.py for the recurrence).
//
// Layout: u, delta, z are (batch, dim, L) with any strides: Mamba's mixer passes views of
// (batch, L, dim) activations (channels contiguous), the layout nn.Linear reads and writes,
// so nothing is transposed into a copy. Outputs and gradients take u's layout. A is
// (dim, N); B and C arrive either as (batch, groups, L, N) or time-invariant as (dim, N).
//
// Vectorisation runs over W channels at once (one AVX-512 vector of floats): the state of
// a block is (N, W), every step is N independent vector FMAs with the decays' exponentials
// inlined (decay_exp), so no step waits on a horizontal sum or a library call. Each block's
// inputs pass through small (CHUNK, W) tiles, so any input layout is read in cache-sized
// pieces.
//
// Memory: no (batch, dim, L, N) tensor is ever made. The forward keeps the state only at
// the start of every CHUNK steps; the backward walks the chunks in reverse, recomputes
// the states of one chunk, and runs the adjoint recurrence over it. dB and dC (shared by
// the channels of a group) are summed over a group's blocks per chunk, then over lanes,
// into per-thread buffers that are added at the end, so no two threads write one address.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

constexpr int64_t CHUNK = 32;  // steps between checkpoints, and per tile
constexpr int64_t W = seqarena::LANES;  // channels per block

template <typename T>
inline T softplus(T x) {
  return x > T(20) ? x : std::log1p(std::exp(x));  // torch's threshold
}

// exp for the decays, whose arguments dt * A are <= 0 in Mamba (clamped to float's range), inline
// in the recurrence (a call would clobber the registers that hold the state):
// Cody-Waite reduction to r in [-ln2/2, ln2/2], a degree-6 polynomial, the power of two put
// into the exponent bits. Within 6e-7 of exp in float (as the vector libm's), and about 1.5x
// its speed in the vector loop; double keeps std::exp.
inline float decay_exp(float x) {
  x = std::fmin(std::fmax(x, -87.0f), 88.0f);
  const float n = std::nearbyint(x * 1.44269504f);
  const float r = std::fma(n, -1.428606765330187e-06f, std::fma(n, -0.693145751953125f, x));
  float p = std::fma(1.0f / 720, r, 1.0f / 120);
  p = std::fma(p, r, 1.0f / 24);
  p = std::fma(p, r, 1.0f / 6);
  p = std::fma(p, r, 0.5f);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline double decay_exp(double x) { return std::exp(x); }

// tile[k * W + w] = x(b, d0 + w, t0 + k) for k < nk; zero in the lanes past wn.
template <typename T>
void load_tile(const Strided<const T>& x, int64_t b, int64_t d0, int64_t wn, int64_t t0, int64_t nk, T* tile) {
  for (int64_t k = 0; k < nk; ++k) read_lanes(x, b, d0, wn, t0 + k, tile + k * W);
}

template <typename T>
void store_tile(const Strided<T>& x, int64_t b, int64_t d0, int64_t wn, int64_t t0, int64_t nk, const T* tile) {
  for (int64_t k = 0; k < nk; ++k) write_lanes(tile + k * W, b, d0, wn, t0 + k, x);
}

// A block's per-channel (N,) rows, row w at rows + w * row_stride, as (N, W) lanes; zero past wn.
template <typename T>
void rows_to_lanes(const T* rows, int64_t row_stride, int64_t wn, int64_t N, T* lanes) {
  std::fill(lanes, lanes + N * W, T(0));
  for (int64_t w = 0; w < wn; ++w)
    for (int64_t n = 0; n < N; ++n) lanes[n * W + w] = rows[w * row_stride + n];
}

template <typename T>
void lanes_to_rows(const T* lanes, int64_t wn, int64_t N, T* rows, int64_t row_stride) {
  for (int64_t w = 0; w < wn; ++w)
    for (int64_t n = 0; n < N; ++n) rows[w * row_stride + n] = lanes[n * W + w];
}

// Pointers and sizes shared by the forward and the backward.
template <typename T>
struct Scan {
  Strided<const T> u, delta, z;  // z.p null without a gate
  const T *A, *B, *C, *D, *delta_bias;
  int64_t batch, dim, L, N, groups;  // groups: 1 where B, C are time-invariant (dim, N)
  bool invariant, softplus;
  const T* initial_state = nullptr;  // (batch, dim, N) the state before step 0 (forward only); else 0

  int64_t per_group() const { return dim / groups; }
  int64_t blocks_per_group() const { return (per_group() + W - 1) / W; }
  int64_t nchunks() const { return (L + CHUNK - 1) / CHUNK; }
  // B or C of batch b, group g at time 0 (time-varying); time t is t * N further.
  int64_t bc(int64_t b, int64_t g) const { return (b * groups + g) * L * N; }
};

// One block of W channels (d0 .. d0 + wn - 1) of batch b: its per-channel constants as lanes.
template <typename T>
struct Block {
  int64_t b, g, d0, wn;
  std::vector<T> A, B, C, D, bias;  // A (N, W); B, C (N, W) if time-invariant; D, bias (W)

  Block(const Scan<T>& s, int64_t b_, int64_t g_, int64_t j)
      : b(b_), g(g_), d0(g_ * s.per_group() + j * W), wn(std::min(W, (g_ + 1) * s.per_group() - d0)),
        A(s.N * W, T(0)), B(s.invariant ? s.N * W : 0, T(0)), C(B.size(), T(0)), D(W, T(0)), bias(W, T(0)) {
    for (int64_t w = 0; w < wn; ++w) {
      const int64_t d = d0 + w;
      for (int64_t n = 0; n < s.N; ++n) {
        A[n * W + w] = s.A[d * s.N + n];
        if (s.invariant) {
          B[n * W + w] = s.B[d * s.N + n];
          C[n * W + w] = s.C[d * s.N + n];
        }
      }
      if (s.D) D[w] = s.D[d];
      if (s.delta_bias) bias[w] = s.delta_bias[d];
    }
  }
};

// dt = softplus(delta + bias) (or without softplus) of nk steps in one vector pass; dpre, if
// given, receives d dt / d delta.
template <typename T>
void discretise(const Scan<T>& s, const Block<T>& blk, const T* delta, int64_t nk, T* dt, T* dpre) {
  for (int64_t k = 0; k < nk; ++k) {
#pragma omp simd
    for (int64_t w = 0; w < W; ++w) {
      const T pre = delta[k * W + w] + blk.bias[w];
      dt[k * W + w] = s.softplus ? softplus(pre) : pre;
      if (dpre) dpre[k * W + w] = s.softplus ? sigmoid(pre) : T(1);
    }
  }
}

// B or C of step t as the (N, W) operand of the recurrence: element (n, w) is rows[n] (the
// group's row, broadcast over lanes) or, time-invariant (INV), rows[n * W + w] (the block's tile).
template <bool INV, typename T>
inline const T* state_input(const Scan<T>& s, const Block<T>& blk, const T* bc, const std::vector<T>& tile,
                            int64_t t) {
  return INV ? tile.data() : bc + s.bc(blk.b, blk.g) + t * s.N;
}

template <bool INV, typename T>
inline T lane(const T* rows, int64_t n, int64_t w) {
  return INV ? rows[n * W + w] : rows[n];
}

// Work items: one group of one batch row, cut into parts (runs of its blocks) where there are
// fewer groups than threads. Within an item the chunks run in time order (reversed in the
// backward), each over all of the item's blocks, so a tile's rows are read beside the previous
// block's: memory is walked along its rows, not down a column of them.
struct Split {
  int64_t groups, bpg, parts;
  template <typename T>
  explicit Split(const Scan<T>& s)
      : groups(s.groups), bpg(s.blocks_per_group()),
        parts(std::min(bpg, std::max<int64_t>(1, (at::get_num_threads() + s.batch * s.groups - 1) /
                                                      (s.batch * s.groups)))) {}
  int64_t items(int64_t batch) const { return batch * groups * parts; }
  int64_t b(int64_t item) const { return item / (groups * parts); }
  int64_t g(int64_t item) const { return item / parts % groups; }
  int64_t j0(int64_t item) const { return item % parts * bpg / parts; }
  int64_t j1(int64_t item) const { return (item % parts + 1) * bpg / parts; }
};

// NC is N when known at compile time, else 0; INV: B and C are time-invariant.
template <typename T, int64_t NC, bool INV>
void forward_kernel(const Scan<T>& s, const Strided<T>& out, T* checkpoints, T* last_state) {
  const int64_t N = NC ? NC : s.N, nchunks = s.nchunks();
  const Split split(s);
  at::parallel_for(0, split.items(s.batch), 1, [&](int64_t begin, int64_t end) {
    std::vector<T> u(CHUNK * W), delta(CHUNK * W), z(CHUNK * W), y(CHUNK * W), dt(CHUNK * W);
    for (int64_t item = begin; item < end; ++item) {
      std::vector<Block<T>> blocks;
      for (int64_t j = split.j0(item); j < split.j1(item); ++j) blocks.emplace_back(s, split.b(item), split.g(item), j);
      std::vector<T> states(blocks.size() * N * W, T(0));
      if (s.initial_state)
        for (size_t jb = 0; jb < blocks.size(); ++jb)
          rows_to_lanes(s.initial_state + (blocks[jb].b * s.dim + blocks[jb].d0) * N, N, blocks[jb].wn, N,
                        states.data() + jb * N * W);
      for (int64_t c = 0; c < nchunks; ++c) {
        const int64_t t0 = c * CHUNK, nk = std::min(CHUNK, s.L - t0);
        for (size_t jb = 0; jb < blocks.size(); ++jb) {
          const Block<T>& blk = blocks[jb];
          T* state = states.data() + jb * N * W;
          lanes_to_rows(state, blk.wn, N, checkpoints + ((blk.b * s.dim + blk.d0) * nchunks + c) * N, nchunks * N);
          load_tile(s.u, blk.b, blk.d0, blk.wn, t0, nk, u.data());
          load_tile(s.delta, blk.b, blk.d0, blk.wn, t0, nk, delta.data());
          discretise(s, blk, delta.data(), nk, dt.data(), static_cast<T*>(nullptr));
          // With N known, the state lives in a local array the compiler can keep in registers.
          alignas(64) T x_fixed[NC ? NC * W : 1];
          T* x = NC ? x_fixed : state;
          if (NC) std::copy(state, state + N * W, x_fixed);
          for (int64_t k = 0; k < nk; ++k) {
            const int64_t t = t0 + k;
            const T* uk = u.data() + k * W;
            const T* dtk = dt.data() + k * W;
            const T* Bt = state_input<INV>(s, blk, s.B, blk.B, t);
            const T* Ct = state_input<INV>(s, blk, s.C, blk.C, t);
            alignas(64) T du[W], acc[W];  // locals, so that they stay in registers
#pragma omp simd
            for (int64_t w = 0; w < W; ++w) {
              du[w] = dtk[w] * uk[w];
              acc[w] = blk.D[w] * uk[w];
            }
#pragma GCC unroll 16
            for (int64_t n = 0; n < N; ++n) {
#pragma omp simd
              for (int64_t w = 0; w < W; ++w) {
                const T a = decay_exp(dtk[w] * blk.A[n * W + w]);
                x[n * W + w] = a * x[n * W + w] + du[w] * lane<INV>(Bt, n, w);
                acc[w] += x[n * W + w] * lane<INV>(Ct, n, w);
              }
            }
            T* yk = y.data() + k * W;
#pragma omp simd
            for (int64_t w = 0; w < W; ++w) yk[w] = acc[w];
          }
          if (NC) std::copy(x_fixed, x_fixed + N * W, state);
          if (s.z.p) {
            load_tile(s.z, blk.b, blk.d0, blk.wn, t0, nk, z.data());
#pragma omp simd
            for (int64_t k = 0; k < nk * W; ++k) y[k] *= z[k] * sigmoid(z[k]);
          }
          store_tile(out, blk.b, blk.d0, blk.wn, t0, nk, y.data());
        }
      }
      if (last_state)
        for (size_t jb = 0; jb < blocks.size(); ++jb)
          lanes_to_rows(states.data() + jb * N * W, blocks[jb].wn, N,
                        last_state + (blocks[jb].b * s.dim + blocks[jb].d0) * N, N);
    }
  });
}

// Gradients: du, ddelta, dz in u's layout; per-(b, d) dA (batch, dim, N), dD and d(delta_bias)
// (batch, dim), reduced over b by the caller; dB, dC one private copy per thread.
template <typename T>
struct Grads {
  Strided<T> du, ddelta, dz;
  T *dA, *dD, *dbias;
  T *dB, *dC;          // (threads, *B.shape)
  int64_t per_thread;  // elements of one thread's dB / dC
};

// What one block carries from chunk to chunk of the backward.
template <typename T>
struct Adjoint {
  std::vector<T> h, dA, dB, dC, dD, dbias;  // h, dA (N, W); dB, dC (N, W) if time-invariant
  Adjoint(int64_t N, bool invariant)
      : h(N * W, T(0)), dA(N * W, T(0)), dB(invariant ? N * W : 0, T(0)), dC(dB.size(), T(0)), dD(W, T(0)),
        dbias(W, T(0)) {}
};

template <typename T, int64_t NC, bool INV>
void backward_kernel(const Scan<T>& s, const Strided<const T>& gout, const T* glast, const T* checkpoints,
                     const Grads<T>& g) {
  const int64_t N = NC ? NC : s.N, nchunks = s.nchunks();
  const Split split(s);
  at::parallel_for(0, split.items(s.batch), 1, [&](int64_t begin, int64_t end) {
    const int64_t tid = at::get_thread_num();
    std::vector<T> states((CHUNK + 1) * N * W), decay(CHUNK * N * W), sumB(CHUNK * N * W),
        sumC(CHUNK * N * W), u(CHUNK * W), delta(CHUNK * W), z(CHUNK * W), go(CHUNK * W), dt(CHUNK * W),
        dpre(CHUNK * W), du(CHUNK * W), ddelta(CHUNK * W), dz(CHUNK * W);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = split.b(item), grp = split.g(item);
      std::vector<Block<T>> blocks;
      std::vector<Adjoint<T>> adj;
      for (int64_t j = split.j0(item); j < split.j1(item); ++j) {
        blocks.emplace_back(s, b, grp, j);
        adj.emplace_back(N, s.invariant);
        if (glast)
          rows_to_lanes(glast + (b * s.dim + blocks.back().d0) * N, N, blocks.back().wn, N, adj.back().h.data());
      }
      T* dB = g.dB + tid * g.per_thread;
      T* dC = g.dC + tid * g.per_thread;
      for (int64_t c = nchunks - 1; c >= 0; --c) {
        const int64_t t0 = c * CHUNK, nk = std::min(CHUNK, s.L - t0);
        std::fill(sumB.begin(), sumB.end(), T(0));
        std::fill(sumC.begin(), sumC.end(), T(0));
        for (size_t jb = 0; jb < blocks.size(); ++jb) {
          const Block<T>& blk = blocks[jb];
          Adjoint<T>& a = adj[jb];
          load_tile(s.u, b, blk.d0, blk.wn, t0, nk, u.data());
          load_tile(s.delta, b, blk.d0, blk.wn, t0, nk, delta.data());
          load_tile(gout, b, blk.d0, blk.wn, t0, nk, go.data());
          if (s.z.p) load_tile(s.z, b, blk.d0, blk.wn, t0, nk, z.data());
          discretise(s, blk, delta.data(), nk, dt.data(), dpre.data());
          // Recompute the chunk: states[k] is the state before step t0 + k (states[k + 1] after
          // it), decay[k] = exp(dt_k A).
          rows_to_lanes(checkpoints + ((b * s.dim + blk.d0) * nchunks + c) * N, nchunks * N, blk.wn, N,
                        states.data());
          for (int64_t k = 0; k < nk; ++k) {
            T* ak = decay.data() + k * N * W;
            const T* pk = states.data() + k * N * W;
            T* xk = states.data() + (k + 1) * N * W;
            const T* Bt = state_input<INV>(s, blk, s.B, blk.B, t0 + k);
            for (int64_t n = 0; n < N; ++n) {
#pragma omp simd
              for (int64_t w = 0; w < W; ++w) {
                ak[n * W + w] = decay_exp(dt[k * W + w] * blk.A[n * W + w]);
                xk[n * W + w] = ak[n * W + w] * pk[n * W + w] + dt[k * W + w] * u[k * W + w] * lane<INV>(Bt, n, w);
              }
            }
          }
          // Adjoint, last step first: x is the state after the step being undone, pk the one before.
          for (int64_t k = nk - 1; k >= 0; --k) {
            const int64_t t = t0 + k;
            const T* ak = decay.data() + k * N * W;
            const T* pk = states.data() + k * N * W;
            const T* x = states.data() + (k + 1) * N * W;
            const T* uk = u.data() + k * W;
            const T* dtk = dt.data() + k * W;
            T* sBk = sumB.data() + k * N * W;
            T* sCk = sumC.data() + k * N * W;
            const T* Bt = state_input<INV>(s, blk, s.B, blk.B, t);
            const T* Ct = state_input<INV>(s, blk, s.C, blk.C, t);
            alignas(64) T gy[W], duk[W], ddt[W];
#pragma omp simd
            for (int64_t w = 0; w < W; ++w) gy[w] = go[k * W + w];
            if (s.z.p) {
              alignas(64) T y[W];
#pragma omp simd
              for (int64_t w = 0; w < W; ++w) y[w] = blk.D[w] * uk[w];
              for (int64_t n = 0; n < N; ++n) {
#pragma omp simd
                for (int64_t w = 0; w < W; ++w) y[w] += x[n * W + w] * lane<INV>(Ct, n, w);
              }
#pragma omp simd
              for (int64_t w = 0; w < W; ++w) {
                const T zt = z[k * W + w], sig = sigmoid(zt);
                dz[k * W + w] = gy[w] * y[w] * sig * (T(1) + zt * (T(1) - sig));
                gy[w] *= zt * sig;
              }
            }
#pragma omp simd
            for (int64_t w = 0; w < W; ++w) {
              a.dD[w] += gy[w] * uk[w];
              duk[w] = gy[w] * blk.D[w];
              ddt[w] = 0;
            }
            for (int64_t n = 0; n < N; ++n) {
              T* h = a.h.data() + n * W;
              T* dA = a.dA.data() + n * W;
              T* dBn = INV ? a.dB.data() + n * W : sBk + n * W;
              T* dCn = INV ? a.dC.data() + n * W : sCk + n * W;
              const T* An = blk.A.data() + n * W;
#pragma omp simd
              for (int64_t w = 0; w < W; ++w) {
                const T Bv = lane<INV>(Bt, n, w), hh = h[w] + gy[w] * lane<INV>(Ct, n, w);
                dCn[w] += gy[w] * x[n * W + w];
                const T ga = hh * pk[n * W + w] * ak[n * W + w];  // d/d(dt*A[n]) through the decay
                ddt[w] += ga * An[w] + hh * uk[w] * Bv;
                dA[w] += ga * dtk[w];
                dBn[w] += hh * dtk[w] * uk[w];
                duk[w] += hh * dtk[w] * Bv;
                h[w] = hh * ak[n * W + w];  // on to the previous state
              }
            }
#pragma omp simd
            for (int64_t w = 0; w < W; ++w) {
              du[k * W + w] = duk[w];
              ddelta[k * W + w] = ddt[w] * dpre[k * W + w];
              a.dbias[w] += ddelta[k * W + w];
            }
          }
          store_tile(g.du, b, blk.d0, blk.wn, t0, nk, du.data());
          store_tile(g.ddelta, b, blk.d0, blk.wn, t0, nk, ddelta.data());
          if (s.z.p) store_tile(g.dz, b, blk.d0, blk.wn, t0, nk, dz.data());
        }
        if (!s.invariant) {  // the group's sums over its channels: lanes last
          T* dBg = dB + s.bc(b, grp) + t0 * N;
          T* dCg = dC + s.bc(b, grp) + t0 * N;
          for (int64_t kn = 0; kn < nk * N; ++kn) {
            T sb = 0, sc = 0;
#pragma omp simd reduction(+ : sb, sc)
            for (int64_t w = 0; w < W; ++w) {
              sb += sumB[kn * W + w];
              sc += sumC[kn * W + w];
            }
            dBg[kn] += sb;
            dCg[kn] += sc;
          }
        }
      }
      for (size_t jb = 0; jb < blocks.size(); ++jb) {
        const Block<T>& blk = blocks[jb];
        const Adjoint<T>& a = adj[jb];
        lanes_to_rows(a.dA.data(), blk.wn, N, g.dA + (b * s.dim + blk.d0) * N, N);
        for (int64_t w = 0; w < blk.wn; ++w) {
          const int64_t i = b * s.dim + blk.d0 + w;
          g.dD[i] = a.dD[w];
          g.dbias[i] = a.dbias[w];
          if (INV)  // per channel: added into the thread's copy, which other batch rows share
            for (int64_t n = 0; n < N; ++n) {
              dB[(blk.d0 + w) * N + n] += a.dB[n * W + w];
              dC[(blk.d0 + w) * N + n] += a.dC[n * W + w];
            }
        }
      }
    }
  });
}

template <typename T>
Scan<T> make_scan(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& C, const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
                  const c10::optional<at::Tensor>& delta_bias, bool delta_softplus) {
  TORCH_CHECK(!z || z->sizes() == u.sizes(), "z must be shaped like u");
  const bool invariant = B.dim() == 2;  // (dim, N): no batch or time axis
  const Strided<const T> none{nullptr, 0, 0, 0};
  return Scan<T>{strided<const T>(u),
                 strided<const T>(delta),
                 z ? strided<const T>(*z) : none,
                 A.data_ptr<T>(),
                 B.data_ptr<T>(),
                 C.data_ptr<T>(),
                 D ? D->data_ptr<T>() : nullptr,
                 delta_bias ? delta_bias->data_ptr<T>() : nullptr,
                 u.size(0),
                 u.size(1),
                 u.size(2),
                 A.size(1),
                 invariant ? 1 : B.size(1),
                 invariant,
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
  auto out = empty_like_layout(u);
  auto checkpoints = at::empty({u.size(0), u.size(1), nchunks, A.size(1)}, u.options());
  auto last_state = at::empty({u.size(0), u.size(1), A.size(1)}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_fwd", [&] {
    auto s = make_scan<scalar_t>(u, delta, A, B, C, D, z, delta_bias, delta_softplus);
    if (initial_state) s.initial_state = initial_state->data_ptr<scalar_t>();
    auto kernel = s.invariant ? (s.N == 16 ? forward_kernel<scalar_t, 16, true> : forward_kernel<scalar_t, 0, true>)
                              : (s.N == 16 ? forward_kernel<scalar_t, 16, false> : forward_kernel<scalar_t, 0, false>);
    kernel(s, strided<scalar_t>(out), checkpoints.data_ptr<scalar_t>(), last_state.data_ptr<scalar_t>());
  });
  return {out, checkpoints, last_state};
}

// Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias); undefined where the input was absent. dz is
// written into dz_out if given (a view of a larger gradient, so that no caller concatenates).
std::vector<at::Tensor> bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& C, const c10::optional<at::Tensor>& D,
                            const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& delta_bias,
                            bool delta_softplus, const at::Tensor& checkpoints, const at::Tensor& gout,
                            const c10::optional<at::Tensor>& glast, const c10::optional<at::Tensor>& dz_out) {
  check_inputs(u, delta, A, B, C);
  TORCH_CHECK(gout.sizes() == u.sizes() && gout.scalar_type() == u.scalar_type(), "gout must be shaped like u");
  TORCH_CHECK(!dz_out || (z && dz_out->sizes() == u.sizes() && dz_out->scalar_type() == u.scalar_type()),
              "dz_out must be shaped like u, with a z");
  const int64_t batch = u.size(0), dim = u.size(1), N = A.size(1), threads = at::get_num_threads();
  auto du = empty_like_layout(u), ddelta = empty_like_layout(u);
  auto dz = dz_out ? *dz_out : z ? empty_like_layout(u) : at::Tensor();
  auto dA = at::empty({batch, dim, N}, u.options());
  auto dD = at::empty({batch, dim}, u.options()), dbias = at::empty({batch, dim}, u.options());
  std::vector<int64_t> per_thread_shape{threads};
  per_thread_shape.insert(per_thread_shape.end(), B.sizes().begin(), B.sizes().end());
  auto dB = at::zeros(per_thread_shape, u.options());
  auto dC = at::zeros_like(dB);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_bwd", [&] {
    auto s = make_scan<scalar_t>(u, delta, A, B, C, D, z, delta_bias, delta_softplus);
    const Strided<scalar_t> none{nullptr, 0, 0, 0};
    Grads<scalar_t> g{strided<scalar_t>(du),    strided<scalar_t>(ddelta),  z ? strided<scalar_t>(dz) : none,
                      dA.data_ptr<scalar_t>(),  dD.data_ptr<scalar_t>(),    dbias.data_ptr<scalar_t>(),
                      dB.data_ptr<scalar_t>(),  dC.data_ptr<scalar_t>(),    B.numel()};
    auto kernel = s.invariant ? (s.N == 16 ? backward_kernel<scalar_t, 16, true> : backward_kernel<scalar_t, 0, true>)
                              : (s.N == 16 ? backward_kernel<scalar_t, 16, false> : backward_kernel<scalar_t, 0, false>);
    const auto glast_c = glast ? glast->contiguous() : at::Tensor();
    kernel(s, strided<const scalar_t>(gout), glast ? glast_c.data_ptr<scalar_t>() : nullptr,
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
                                 bool silu, const at::Tensor& gout, const c10::optional<at::Tensor>& dx_out);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fwd", &fwd, "selective scan forward (CPU)");
  m.def("bwd", &bwd, "selective scan backward (CPU)");
  m.def("step", &step, "selective scan single decoding step (CPU)");
  m.def("conv_fwd", &conv_fwd, "causal depthwise conv1d (+SiLU) forward (CPU)");
  m.def("conv_bwd", &conv_bwd, "causal depthwise conv1d (+SiLU) backward (CPU)");
}
