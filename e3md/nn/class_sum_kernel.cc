// The per-(receiver, sender class) basis sums of the first message pass
// (e3md/nn/message_pass.py, _class_messages) as CPU kernels called through XLA's FFI
// (e3md/nn/cpu_kernels.py builds and registers them):
//
//   out[q, lm, k] = sum_{e: seg[e] = q} w[e] y[e, lm] rad[e, k]       (q < Q; others dropped)
//
// and its reverse mode (a gather per edge):
//
//   dy[e, lm] = w[e] sum_k g[seg[e], lm, k] rad[e, k],   drad[e, k] = w[e] sum_lm g[...] y[e, lm],
//   dw[e] = sum_{lm, k} g[seg[e], lm, k] y[e, lm] rad[e, k]          (0 where seg[e] >= Q)
//
// On XLA CPU the forward is a scatter-add of [E, LM, K] products after padding the edges into
// blocks, and its backward a gather with dynamic-update-slices (~35 ms of the medium model at
// 1536 atoms, BENCHMARKS.md session 11); here each edge's LM x K products go straight into
// the sum. Compiled in (-D flags): E3MD_REAL, E3MD_DTYPE, E3MD_LM, E3MD_K.

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernel_common.h"

namespace {

using namespace e3md;

constexpr int LM = E3MD_LM, K = E3MD_K;
constexpr int kW = lanes_for(K);  // explicit vectors over the radial functions
constexpr int NC = K / kW;
using V = Vec<kW>;

ffi::Error Forward(Buf rad_b, Buf y_b, Buf w_b, Idx seg_b, Out out_b) {
  const int64_t edges = seg_b.element_count();
  const int64_t q_max = out_b->element_count() / (LM * K);
  const real *rad = rad_b.typed_data(), *y = y_b.typed_data(), *w = w_b.typed_data();
  const int32_t* seg = seg_b.typed_data();
  real* out = out_b->typed_data();
  std::fill(out, out + q_max * LM * K, real(0));
  // one thread: a scatter; LM x K multiply-adds per edge, memory-bound on the inputs
  for (int64_t e = 0; e < edges; ++e) {
    const int64_t q = seg[e];
    const real we = w[e];
    if (q < 0 || q >= q_max || we == 0) continue;
    real* o = out + q * LM * K;
    V r[NC];
    for (int c = 0; c < NC; ++c) r[c] = load<kW>(rad + e * K + c * kW);
    for (int lm = 0; lm < LM; ++lm) {
      const real a = we * y[e * LM + lm];
      for (int c = 0; c < NC; ++c) {
        real* oc = o + lm * K + c * kW;
        store<kW>(oc, load<kW>(oc) + a * r[c]);
      }
    }
  }
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, Buf rad_b, Buf y_b, Buf w_b, Idx seg_b, Buf g_b,
                    Out drad_b, Out dy_b, Out dw_b) {
  const int64_t edges = seg_b.element_count();
  const int64_t q_max = g_b.element_count() / (LM * K);
  const real *rad = rad_b.typed_data(), *y = y_b.typed_data(), *w = w_b.typed_data();
  const real* g = g_b.typed_data();
  const int32_t* seg = seg_b.typed_data();
  real *drad = drad_b->typed_data(), *dy = dy_b->typed_data(), *dw = dw_b->typed_data();
  parallel_for(pool, edges, 4096, [&](int64_t begin, int64_t end, int64_t) {
    for (int64_t e = begin; e < end; ++e) {
      const int64_t q = seg[e];
      if (q < 0 || q >= q_max) {
        std::fill(drad + e * K, drad + (e + 1) * K, real(0));
        std::fill(dy + e * LM, dy + (e + 1) * LM, real(0));
        dw[e] = 0;
        continue;
      }
      const real* gq = g + q * LM * K;
      const real* ye = y + e * LM;
      const real we = w[e];
      // sums over k, together: d[lm] = sum_k g[lm, k] rad[k] (lm < LM), then
      // dw = sum_k acc[k] rad[k] with acc[k] = sum_lm g[lm, k] y[lm]
      V r[NC], acc[NC] = {}, red[LM + 1] = {};
      for (int c = 0; c < NC; ++c) r[c] = load<kW>(rad + e * K + c * kW);
      for (int lm = 0; lm < LM; ++lm) {
        for (int c = 0; c < NC; ++c) {
          const V gc = load<kW>(gq + lm * K + c * kW);
          red[lm] += gc * r[c];
          acc[c] += ye[lm] * gc;
        }
      }
      for (int c = 0; c < NC; ++c) {
        red[LM] += acc[c] * r[c];
        store<kW>(drad + e * K + c * kW, we * acc[c]);
      }
      reduce_lanes<kW, LM + 1>(red);
      real sums[(LM + kW) / kW * kW];
      std::memcpy(sums, red, sizeof(sums));
      for (int lm = 0; lm < LM; ++lm) dy[e * LM + lm] = we * sums[lm];
      dw[e] = sums[LM];
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(e3md_class_sum_fwd, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<Buf>()  // rad [E, K]
                                  .Arg<Buf>()  // y [E, LM]
                                  .Arg<Buf>()  // w [E]
                                  .Arg<Idx>()  // seg [E]
                                  .Ret<Buf>()  // out [Q, LM, K]
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(e3md_class_sum_bwd, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Buf>()
                                  .Arg<Buf>()
                                  .Arg<Buf>()
                                  .Arg<Idx>()
                                  .Arg<Buf>()  // g [Q, LM, K]
                                  .Ret<Buf>()  // drad [E, K]
                                  .Ret<Buf>()  // dy [E, LM]
                                  .Ret<Buf>()  // dw [E]
);
