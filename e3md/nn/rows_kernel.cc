// The last message pass of e3md's rows rule (e3md/nn/rows.py, coupling_row_messages) as three
// fused CPU kernels called through XLA's FFI (e3md/nn/cpu_kernels.py builds and registers them).
//
// Why: on XLA CPU this layer streams its per-edge intermediates ([B, M, nnz, F] filter rows,
// gathered sender features, their products) through memory several times; its element-wise
// work then runs at < 0.5 FLOP/byte, 5-9 % of the matmul peak (BENCHMARKS.md, session 10).
// Here each edge's intermediates live in a few KiB of stack (L1) and are used at once.
//
// The function (all per feature f; sums over the nonzero couplings e = (i_e, j_e, k_e)):
//   r[l]      = sum_k rad[n, s, k] wk[l, k]                      radial part per degree
//   out[n, k] = sum_s w[n, s] sum_{e: k_e = k} te[e] r[l(i_e)] y[n, s, i_e] x[adj[n, s], j_e]
// and its reverse mode over a symmetric list (the cotangent of x as a sum over the atom's own
// row, filter rows signed by (-1)^l; see rows.py). Three handlers:
//   e3md_rows_fwd:  out
//   e3md_rows_bwd:  dx, drad, dy (what forces need; padding slots, w == 0, are skipped: every
//                   term carries the factor w)
//   e3md_rows_grad: dwk, dte, dw (parameter and weight cotangents; a separate call so that
//                   XLA removes it when they are unused, as in MD)
//
// The configuration is compiled in (-D flags, see cpu_kernels.py): E3MD_REAL, E3MD_DTYPE,
// E3MD_F (features), E3MD_K (radial functions), E3MD_L1 (filter degrees + 1), E3MD_N1, E3MD_N2,
// E3MD_N3 (filter, input and output rows), E3MD_NNZ and the support E3MD_SI, E3MD_SJ, E3MD_SK.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernel_common.h"

namespace {

using namespace e3md;

constexpr int F = E3MD_F, K = E3MD_K, L1 = E3MD_L1;
constexpr int N1 = E3MD_N1, N2 = E3MD_N2, N3 = E3MD_N3, NNZ = E3MD_NNZ;
constexpr int SI[NNZ] = {E3MD_SI};
constexpr int SJ[NNZ] = {E3MD_SJ};
constexpr int SK[NNZ] = {E3MD_SK};
static_assert(N1 == L1 * L1, "filter rows are (Lb+1)**2");

constexpr int degree_of(int row) {
  int l = 0;
  while ((l + 1) * (l + 1) <= row) ++l;
  return l;
}
// the degree of each entry's filter row and its sign (-1)^l (the reversed edge's filter)
struct EntryTables {
  int deg[NNZ];
  real sign[NNZ];
};
constexpr EntryTables kEntry = [] {
  EntryTables t{};
  for (int e = 0; e < NNZ; ++e) {
    t.deg[e] = degree_of(SI[e]);
    t.sign[e] = t.deg[e] % 2 ? -1 : 1;
  }
  return t;
}();

constexpr int64_t kBlock = 16;  // receivers per block of parallel_for

// The inputs all three kernels take.
struct Inputs {
  int64_t n, m;  // receivers, slots
  const real *wk, *te, *x, *rad, *y, *w;
  const int32_t* adj;
  Inputs(Buf wk_b, Buf te_b, Buf x_b, Buf rad_b, Buf y_b, Buf w_b, Idx adj_b)
      : n(adj_b.dimensions()[0]),
        m(adj_b.dimensions()[1]),
        wk(wk_b.typed_data()),
        te(te_b.typed_data()),
        x(x_b.typed_data()),
        rad(rad_b.typed_data()),
        y(y_b.typed_data()),
        w(w_b.typed_data()),
        adj(adj_b.typed_data()) {}
};

inline int64_t sender(const int32_t* adj, int64_t slot, int64_t n) {
  return std::clamp<int64_t>(adj[slot], 0, n - 1);  // as jnp.take(mode="clip")
}

// The kernels work on explicit vectors of kW features (kernel_common.h). Per edge the backward
// needs N1 + K sums over the features (dy and drad), summed together by reduce_lanes: as
// separate horizontal sums they made the backward 5-6x the forward (BENCHMARKS.md, session 13).
constexpr int kW = lanes_for(F);
constexpr int NC = F / kW;  // vectors per feature row
using V = Vec<kW>;

inline V at(const real* row, int c) { return load<kW>(row + c * kW); }  // chunk c of a row

// r[l] = sum_k rad[k] wk[l][k], as vectors
inline void radial(const real* rad, const real* wk, V (&r)[L1][NC]) {
  for (int l = 0; l < L1; ++l) {
    for (int c = 0; c < NC; ++c) {
      V acc = rad[0] * at(wk + l * K * F, c);
      for (int k = 1; k < K; ++k) acc += rad[k] * at(wk + (l * K + k) * F, c);
      r[l][c] = acc;
    }
  }
}

ffi::Error Forward(ffi::ThreadPool pool, Buf wk_b, Buf te_b, Buf x_b, Buf rad_b, Buf y_b, Buf w_b,
                   Idx adj_b, Out out_b) {
  const Inputs in(wk_b, te_b, x_b, rad_b, y_b, w_b, adj_b);
  const int64_t n = in.n, m = in.m;
  const real *wk = in.wk, *te = in.te, *x = in.x, *rad = in.rad, *y = in.y, *w = in.w;
  const int32_t* adj = in.adj;
  real* out = out_b->typed_data();
  parallel_for(pool, n, kBlock, [&](int64_t begin, int64_t end, int64_t) {
    V r[L1][NC], acc[N3][NC];
    for (int64_t a = begin; a < end; ++a) {
      std::memset(acc, 0, sizeof(acc));
      for (int64_t s = a * m; s < (a + 1) * m; ++s) {
        const real ws = w[s];
        if (ws == 0) continue;
        const real* xj = x + sender(adj, s, n) * N2 * F;
        const real* ys = y + s * N1;
        radial(rad + s * K, wk, r);
#pragma GCC unroll 64
        for (int e = 0; e < NNZ; ++e) {
          const real coef = ws * ys[SI[e]];
          for (int c = 0; c < NC; ++c) {
            const V tr = at(te + e * F, c) * r[kEntry.deg[e]][c];
            acc[SK[e]][c] += coef * tr * at(xj + SJ[e] * F, c);
          }
        }
      }
      std::memcpy(out + a * N3 * F, acc, sizeof(acc));
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, Buf wk_b, Buf te_b, Buf x_b, Buf rad_b, Buf y_b, Buf w_b,
                    Idx adj_b, Buf g_b, Out dx_b, Out drad_b, Out dy_b) {
  const Inputs in(wk_b, te_b, x_b, rad_b, y_b, w_b, adj_b);
  const int64_t n = in.n, m = in.m;
  const real *wk = in.wk, *te = in.te, *x = in.x, *rad = in.rad, *y = in.y, *w = in.w;
  const int32_t* adj = in.adj;
  const real* g = g_b.typed_data();
  real *dx = dx_b->typed_data(), *drad = drad_b->typed_data(), *dy = dy_b->typed_data();
  constexpr int NR = N1 + K;  // sums per edge: dy (N1), then drad (K)
  parallel_for(pool, n, kBlock, [&](int64_t begin, int64_t end, int64_t) {
    V tg[NNZ][NC], r[L1][NC], df[N1][NC], dxa[N2][NC], red[NR];
    for (int64_t a = begin; a < end; ++a) {
      const real* ga = g + a * N3 * F;
      for (int e = 0; e < NNZ; ++e) {
        for (int c = 0; c < NC; ++c) tg[e][c] = at(te + e * F, c) * at(ga + SK[e] * F, c);
      }
      std::memset(dxa, 0, sizeof(dxa));
      for (int64_t s = a * m; s < (a + 1) * m; ++s) {
        const real ws = w[s];
        if (ws == 0) {
          std::fill(drad + s * K, drad + (s + 1) * K, real(0));
          std::fill(dy + s * N1, dy + (s + 1) * N1, real(0));
          continue;
        }
        const int64_t j = sender(adj, s, n);
        const real* xj = x + j * N2 * F;
        const real* gj = g + j * N3 * F;
        const real* ys = y + s * N1;
        const real* rs = rad + s * K;
        radial(rs, wk, r);
        std::memset(df, 0, sizeof(df));
#pragma GCC unroll 64
        for (int e = 0; e < NNZ; ++e) {
          // the receiver side: d out / d filter; the sender side: this atom's reversed edge,
          // filter signed by (-1)^l
          const real coef = kEntry.sign[e] * ws * ys[SI[e]];
          for (int c = 0; c < NC; ++c) {
            df[SI[e]][c] += tg[e][c] * at(xj + SJ[e] * F, c);
            const V tr = at(te + e * F, c) * r[kEntry.deg[e]][c];
            dxa[SJ[e]][c] += coef * tr * at(gj + SK[e] * F, c);
          }
        }
        // dy[i] = ws sum_f df[i] r[l(i)];  drad[k] = sum_{l, f} dr[l] wk[l, k],
        // dr[l] = ws sum_{i of degree l} y[i] df[i]
        for (int l = 0; l < L1; ++l) {
          V dr[NC] = {};
          for (int i = l * l; i < (l + 1) * (l + 1); ++i) {
            V acc = df[i][0] * r[l][0];
            for (int c = 1; c < NC; ++c) acc += df[i][c] * r[l][c];
            red[i] = ws * acc;
            for (int c = 0; c < NC; ++c) dr[c] += (ws * ys[i]) * df[i][c];
          }
          for (int k = 0; k < K; ++k) {
            V acc = dr[0] * at(wk + (l * K + k) * F, 0);
            for (int c = 1; c < NC; ++c) acc += dr[c] * at(wk + (l * K + k) * F, c);
            red[N1 + k] = l ? red[N1 + k] + acc : acc;
          }
        }
        reduce_lanes<kW, NR>(red);
        real sums[(NR + kW - 1) / kW * kW];
        std::memcpy(sums, red, sizeof(sums));
        std::copy_n(sums, N1, dy + s * N1);
        std::copy_n(sums + N1, K, drad + s * K);
      }
      std::memcpy(dx + a * N2 * F, dxa, sizeof(dxa));
    }
  });
  return ffi::Error::Success();
}

ffi::Error Grad(ffi::ThreadPool pool, Buf wk_b, Buf te_b, Buf x_b, Buf rad_b, Buf y_b, Buf w_b,
                Idx adj_b, Buf g_b, Out dwk_b, Out dte_b, Out dw_b) {
  const Inputs in(wk_b, te_b, x_b, rad_b, y_b, w_b, adj_b);
  const int64_t n = in.n, m = in.m;
  const real *wk = in.wk, *te = in.te, *x = in.x, *rad = in.rad, *y = in.y, *w = in.w;
  const int32_t* adj = in.adj;
  const real* g = g_b.typed_data();
  real* dw = dw_b->typed_data();
  // per-task partial sums of the parameter cotangents, added up at the end
  const int64_t tasks = tasks_for(pool, n, kBlock);
  std::vector<real> dwk_t(tasks * L1 * K * F, 0), dte_t(tasks * NNZ * F, 0);
  parallel_for(pool, n, kBlock, [&](int64_t begin, int64_t end, int64_t task) {
    V r[L1][NC], df[N1][NC], dwk[L1][K][NC] = {}, dte[NNZ][NC] = {};
    for (int64_t a = begin; a < end; ++a) {
      const real* ga = g + a * N3 * F;
      for (int64_t s = a * m; s < (a + 1) * m; ++s) {
        const real ws = w[s];
        const real* xj = x + sender(adj, s, n) * N2 * F;
        const real* ys = y + s * N1;
        const real* rs = rad + s * K;
        radial(rs, wk, r);
        std::memset(df, 0, sizeof(df));
#pragma GCC unroll 64
        for (int e = 0; e < NNZ; ++e) {
          const real coef = ws * ys[SI[e]];
          for (int c = 0; c < NC; ++c) {
            const V p = at(xj + SJ[e] * F, c) * at(ga + SK[e] * F, c);
            df[SI[e]][c] += at(te + e * F, c) * p;
            dte[e][c] += coef * r[kEntry.deg[e]][c] * p;
          }
        }
        // dw = sum_{i, f} y[i] df[i] r[l(i)];  dwk[l, k] += rad[k] dr[l],
        // dr[l] = ws sum_{i of degree l} y[i] df[i]
        V dws = {};
        for (int l = 0; l < L1; ++l) {
          for (int c = 0; c < NC; ++c) {
            V yd = {};
            for (int i = l * l; i < (l + 1) * (l + 1); ++i) yd += ys[i] * df[i][c];
            dws += yd * r[l][c];
            for (int k = 0; k < K; ++k) dwk[l][k][c] += (ws * rs[k]) * yd;
          }
        }
        reduce_lanes<kW, 1>(&dws);
        dw[s] = dws[0];
      }
    }
    // this block's parameter cotangents, into the task's partial sums
    real* dwk_task = dwk_t.data() + task * L1 * K * F;
    real* dte_task = dte_t.data() + task * NNZ * F;
    const real* dwk_block = &dwk[0][0][0][0];
    const real* dte_block = &dte[0][0][0];
    for (int q = 0; q < L1 * K * F; ++q) dwk_task[q] += dwk_block[q];
    for (int q = 0; q < NNZ * F; ++q) dte_task[q] += dte_block[q];
  });
  real *dwk = dwk_b->typed_data(), *dte = dte_b->typed_data();
  std::fill(dwk, dwk + L1 * K * F, real(0));
  std::fill(dte, dte + NNZ * F, real(0));
  for (int64_t t = 0; t < tasks; ++t) {
    for (int64_t q = 0; q < L1 * K * F; ++q) dwk[q] += dwk_t[t * L1 * K * F + q];
    for (int64_t q = 0; q < NNZ * F; ++q) dte[q] += dte_t[t * NNZ * F + q];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(e3md_rows_fwd, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Buf>()  // wk [L1, K, F]
                                  .Arg<Buf>()  // te [NNZ, F]
                                  .Arg<Buf>()  // x [N, N2, F]
                                  .Arg<Buf>()  // rad [N, M, K]
                                  .Arg<Buf>()  // y [N, M, N1]
                                  .Arg<Buf>()  // w [N, M]
                                  .Arg<Idx>()  // adj [N, M]
                                  .Ret<Buf>()  // out [N, N3, F]
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(e3md_rows_bwd, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Buf>()
                                  .Arg<Buf>()
                                  .Arg<Buf>()
                                  .Arg<Buf>()
                                  .Arg<Buf>()
                                  .Arg<Buf>()
                                  .Arg<Idx>()
                                  .Arg<Buf>()  // g = d out [N, N3, F]
                                  .Ret<Buf>()  // dx [N, N2, F]
                                  .Ret<Buf>()  // drad [N, M, K]
                                  .Ret<Buf>()  // dy [N, M, N1]
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(e3md_rows_grad, Grad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Buf>()
                                  .Arg<Buf>()
                                  .Arg<Buf>()
                                  .Arg<Buf>()
                                  .Arg<Buf>()
                                  .Arg<Buf>()
                                  .Arg<Idx>()
                                  .Arg<Buf>()  // g
                                  .Ret<Buf>()  // dwk [L1, K, F]
                                  .Ret<Buf>()  // dte [NNZ, F]
                                  .Ret<Buf>()  // dw [N, M]
);
