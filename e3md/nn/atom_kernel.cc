// The per-atom layers of one e3md model iteration (potentials/model.py: the update, the
// self-product and the mix, for an iteration whose output has degrees > 0) as two fused CPU
// kernels called through XLA's FFI (e3md/nn/cpu_kernels.py builds and registers them).
//
// Why: as XLA operations these are 43 (L = 1) to 86 (L = 2) operations, forward and backward
// -- one matmul per degree and Dense layer, the slices that cut the (L+1)^2 rows into degrees,
// the concatenates and pads that join them again, the self-product's element-wise loops --
// each a pass over [N, (L+1)^2, F] arrays and a thunk of XLA's runtime (BENCHMARKS.md,
// session 14). Here a block of 8 atoms goes through all of them in arrays that stay in cache.
//
// The function, per atom, rows r of (L+1)^2 with degree l(r), features f (Dense: one [F, F]
// matrix per degree, the bias on row 0 only):
//   x1 = x0 + Dense_u(m)                     (x0 may have fewer rows: the rest are 0)
//   a  = Dense_a(x1),  b = Dense_b(x1)
//   x2[k] = x1[k] + sum_{e: k_e = k} t[e] a[i_e] b[j_e]        (the self-product, FusedTensor)
//   s  = sigmoid(x2[0]) x2                   (the gated SiLU: the scalar row gates every row)
//   out = Dense_m(s)
// Two handlers:
//   e3md_atom_fwd: out
//   e3md_atom_bwd: dx0, dm (the input cotangents; the parameters' come from the XLA
//                  formulation, which XLA removes where they are unused, as in MD)
// The backward recomputes the forward per block (nothing is stored between the calls).
//
// Compiled in (-D flags): E3MD_REAL, E3MD_DTYPE, E3MD_F (features), E3MD_L (degree), E3MD_NNZ
// and the self-product's support E3MD_SI, E3MD_SJ, E3MD_SK.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernel_common.h"

namespace {

using namespace e3md;

constexpr int F = E3MD_F, L1 = E3MD_L + 1, LM = L1 * L1, NNZ = E3MD_NNZ;
constexpr int SI[NNZ] = {E3MD_SI};
constexpr int SJ[NNZ] = {E3MD_SJ};
constexpr int SK[NNZ] = {E3MD_SK};
constexpr int kW = lanes_for(F), NV = F / kW;
using V = Vec<kW>;
constexpr int B = 8;              // atoms per block: block arrays are [LM][B][F]
constexpr int64_t kTask = 4 * B;  // atoms per block of parallel_for
constexpr int kUpdate = 0, kA = 1, kB = 2, kMix = 3;  // the Dense layers in w [4, L1, F, F]

// y[r] (+)= x[r] W for `rows` consecutive rows of F (W [F, F], input-major), two rows at a time.
template <bool kAdd>
inline void gemm(const real* x, int rows, const real* W, real* y) {
  int r = 0;
  for (; r + 2 <= rows; r += 2) {
    const real *x0 = x + r * F, *x1 = x0 + F;
    real *y0 = y + r * F, *y1 = y0 + F;
    V a0[NV], a1[NV];
    for (int v = 0; v < NV; ++v) {
      a0[v] = kAdd ? load<kW>(y0 + v * kW) : V{};
      a1[v] = kAdd ? load<kW>(y1 + v * kW) : V{};
    }
    for (int k = 0; k < F; ++k) {
      const real c0 = x0[k], c1 = x1[k];
      for (int v = 0; v < NV; ++v) {
        const V w = load<kW>(W + k * F + v * kW);
        a0[v] += c0 * w;
        a1[v] += c1 * w;
      }
    }
    for (int v = 0; v < NV; ++v) {
      store<kW>(y0 + v * kW, a0[v]);
      store<kW>(y1 + v * kW, a1[v]);
    }
  }
  if (r < rows) {
    const real* x0 = x + r * F;
    real* y0 = y + r * F;
    V a0[NV];
    for (int v = 0; v < NV; ++v) a0[v] = kAdd ? load<kW>(y0 + v * kW) : V{};
    for (int k = 0; k < F; ++k)
      for (int v = 0; v < NV; ++v) a0[v] += x0[k] * load<kW>(W + k * F + v * kW);
    for (int v = 0; v < NV; ++v) store<kW>(y0 + v * kW, a0[v]);
  }
}

// One Dense layer on a block of nb atoms ([LM][B][F] arrays: each row's atoms are
// contiguous); W [L1, F, F] (transposed for a backward pass).
template <bool kAdd>
inline void dense(const real* x, int nb, const real* W, real* y) {
  for (int l = 0; l < L1; ++l)
    for (int r = l * l; r < (l + 1) * (l + 1); ++r)
      gemm<kAdd>(x + r * B * F, nb, W + l * F * F, y + r * B * F);
}

inline void add_bias(real* y, int nb, const real* bias) {  // row 0 of each atom
  for (int b = 0; b < nb; ++b)
    for (int f = 0; f < F; ++f) y[b * F + f] += bias[f];
}

// Between [N][rows][F] (atoms n0.. of the call's arrays) and a block's [LM][B][F].
inline void to_block(const real* src, int rows, int nb, real* blk) {
  for (int b = 0; b < nb; ++b)
    for (int r = 0; r < LM; ++r) {
      real* d = blk + (r * B + b) * F;
      if (r < rows)
        std::memcpy(d, src + (int64_t(b) * rows + r) * F, F * sizeof(real));
      else
        std::fill(d, d + F, real(0));
    }
}
inline void from_block(const real* blk, int rows, int nb, real* dst) {
  for (int b = 0; b < nb; ++b)
    for (int r = 0; r < rows; ++r)
      std::memcpy(dst + (int64_t(b) * rows + r) * F, blk + (r * B + b) * F, F * sizeof(real));
}

// The LM rows of one atom's vector chunk of a block array (p = array + atom * F + chunk).
inline void rows_at(const real* p, V* out) {
  for (int r = 0; r < LM; ++r) out[r] = load<kW>(p + r * B * F);
}

inline V sigmoid(V x) {  // 1 / (1 + exp(-x)) without overflow
  const V e = exp_nonpositive(x < 0 ? x : -x), q = real(1) / (real(1) + e);
  return x < 0 ? e * q : q;
}

struct Params {
  const real *w, *bias, *t;
  const real* wt;  // w transposed per matrix (backward only)
};

// A task's block arrays ([LM][B][F], the gate [B][F]), on the heap (166 KiB at F = 64, L = 2);
// each thread keeps one between calls (thread_block): allocating and zeroing them for every
// block of every call was 12 mallocs and memsets of 38 KiB per 192-atom call.
struct Block {
  static constexpr int kSize = LM * B * F;
  std::vector<real> mem = std::vector<real>(9 * kSize + B * F);
  real *x1 = &mem[0], *a = x1 + kSize, *b = a + kSize, *x2 = b + kSize, *s = x2 + kSize;
  real *d2 = s + kSize, *da = d2 + kSize, *db = da + kSize, *y = db + kSize, *g = y + kSize;
};

// The calling thread's block, shared by the forward and the backward (a thread runs one task
// at a time, so the two never hold it together).
Block& thread_block() {
  thread_local Block k;
  return k;
}

// The forward up to s (x1, a, b, x2, the gate g and s) for the nb atoms from x0 and m.
void forward_block(const Params& p, const real* x0, int rows0, const real* m, int nb, Block& k) {
  real* mb = k.s;  // s is free until the gate
  to_block(m, LM, nb, mb);
  to_block(x0, rows0, nb, k.x1);
  dense<true>(mb, nb, p.w + kUpdate * L1 * F * F, k.x1);
  add_bias(k.x1, nb, p.bias + kUpdate * F);
  dense<false>(k.x1, nb, p.w + kA * L1 * F * F, k.a);
  add_bias(k.a, nb, p.bias + kA * F);
  dense<false>(k.x1, nb, p.w + kB * L1 * F * F, k.b);
  add_bias(k.b, nb, p.bias + kB * F);
  for (int at = 0; at < nb; ++at)
    for (int v = 0; v < NV; ++v) {
      const int o = at * F + v * kW;
      V a[LM], b[LM], z[LM];
      rows_at(k.a + o, a);
      rows_at(k.b + o, b);
      rows_at(k.x1 + o, z);
#pragma GCC unroll 1024
      for (int e = 0; e < NNZ; ++e)
        z[SK[e]] += load<kW>(p.t + e * F + v * kW) * a[SI[e]] * b[SJ[e]];
      const V g = sigmoid(z[0]);
      store<kW>(k.g + o, g);
      for (int r = 0; r < LM; ++r) {
        store<kW>(k.x2 + r * B * F + o, z[r]);
        store<kW>(k.s + r * B * F + o, g * z[r]);
      }
    }
}

ffi::Error Forward(ffi::ThreadPool pool, Buf x0_b, Buf m_b, Buf w_b, Buf bias_b, Buf t_b,
                   Out out_b) {
  const int64_t n = m_b.element_count() / (LM * F);
  const int rows0 = int(x0_b.element_count() / std::max<int64_t>(1, n * F));
  const real *x0 = x0_b.typed_data(), *m = m_b.typed_data();
  const Params p{w_b.typed_data(), bias_b.typed_data(), t_b.typed_data(), nullptr};
  real* out = out_b->typed_data();
  parallel_for(pool, n, kTask, [&](int64_t begin, int64_t end, int64_t) {
    Block& k = thread_block();
    for (int64_t n0 = begin; n0 < end; n0 += B) {
      const int nb = int(std::min<int64_t>(B, end - n0));
      forward_block(p, x0 + n0 * rows0 * F, rows0, m + n0 * LM * F, nb, k);
      dense<false>(k.s, nb, p.w + kMix * L1 * F * F, k.y);
      add_bias(k.y, nb, p.bias + kMix * F);
      from_block(k.y, LM, nb, out + n0 * LM * F);
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, Buf x0_b, Buf m_b, Buf w_b, Buf bias_b, Buf t_b,
                    Buf g_b, Out dx0_b, Out dm_b) {
  const int64_t n = m_b.element_count() / (LM * F);
  const int rows0 = int(x0_b.element_count() / std::max<int64_t>(1, n * F));
  const real *x0 = x0_b.typed_data(), *m = m_b.typed_data(), *w = w_b.typed_data();
  thread_local std::vector<real> wt(4 * L1 * F * F);  // read by the helpers during this call
  for (int q = 0; q < 4 * L1; ++q)
    for (int i = 0; i < F; ++i)
      for (int o = 0; o < F; ++o) wt[(q * F + o) * F + i] = w[(q * F + i) * F + o];
  const Params p{w, bias_b.typed_data(), t_b.typed_data(), wt.data()};
  const real* g = g_b.typed_data();
  real *dx0 = dx0_b->typed_data(), *dm = dm_b->typed_data();
  parallel_for(pool, n, kTask, [&](int64_t begin, int64_t end, int64_t) {
    Block& k = thread_block();
    real *d2 = k.d2, *da = k.da, *db = k.db;
    for (int64_t n0 = begin; n0 < end; n0 += B) {
      const int nb = int(std::min<int64_t>(B, end - n0));
      forward_block(p, x0 + n0 * rows0 * F, rows0, m + n0 * LM * F, nb, k);
      real* ds = da;  // da is free until the self-product's cotangents
      to_block(g + n0 * LM * F, LM, nb, db);
      dense<false>(db, nb, p.wt + kMix * L1 * F * F, ds);
      for (int at = 0; at < nb; ++at)
        for (int v = 0; v < NV; ++v) {
          const int o = at * F + v * kW;
          // s = g x2: d x2 = g ds, and the gate's own cotangent on row 0
          V d[LM], x[LM], acc[LM];
          rows_at(ds + o, d);
          rows_at(k.x2 + o, x);
          const V g = load<kW>(k.g + o);
          V dg{};
          for (int r = 0; r < LM; ++r) {
            dg += d[r] * x[r];
            d[r] *= g;
          }
          d[0] += dg * g * (1 - g);
          for (int r = 0; r < LM; ++r) store<kW>(d2 + r * B * F + o, d[r]);
          // the self-product's cotangents, one factor at a time (fewer live vectors)
          rows_at(k.b + o, x);
          for (int r = 0; r < LM; ++r) acc[r] = V{};
#pragma GCC unroll 1024
          for (int e = 0; e < NNZ; ++e)
            acc[SI[e]] += load<kW>(p.t + e * F + v * kW) * x[SJ[e]] * d[SK[e]];
          for (int r = 0; r < LM; ++r) store<kW>(da + r * B * F + o, acc[r]);
          rows_at(k.a + o, x);
          for (int r = 0; r < LM; ++r) acc[r] = V{};
#pragma GCC unroll 1024
          for (int e = 0; e < NNZ; ++e)
            acc[SJ[e]] += load<kW>(p.t + e * F + v * kW) * x[SI[e]] * d[SK[e]];
          for (int r = 0; r < LM; ++r) store<kW>(db + r * B * F + o, acc[r]);
        }
      real* d1 = d2;  // x2 = x1 + ...: d x1 = d x2 + (the a and b layers)
      dense<true>(da, nb, p.wt + kA * L1 * F * F, d1);
      dense<true>(db, nb, p.wt + kB * L1 * F * F, d1);
      dense<false>(d1, nb, p.wt + kUpdate * L1 * F * F, da);
      from_block(da, LM, nb, dm + n0 * LM * F);
      from_block(d1, rows0, nb, dx0 + n0 * rows0 * F);
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(e3md_atom_fwd, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Buf>()  // x0 [N, R0, F], R0 <= LM
                                  .Arg<Buf>()  // m [N, LM, F]
                                  .Arg<Buf>()  // w [4, L1, F, F]: update, a, b, mix
                                  .Arg<Buf>()  // bias [4, F]
                                  .Arg<Buf>()  // t [NNZ, F]
                                  .Ret<Buf>()  // out [N, LM, F]
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(e3md_atom_bwd, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Buf>()
                                  .Arg<Buf>()
                                  .Arg<Buf>()
                                  .Arg<Buf>()
                                  .Arg<Buf>()
                                  .Arg<Buf>()  // g = d out [N, LM, F]
                                  .Ret<Buf>()  // dx0 [N, R0, F]
                                  .Ret<Buf>()  // dm [N, LM, F]
);
