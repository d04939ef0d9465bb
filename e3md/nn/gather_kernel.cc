// The reverse mode of a row gather x[idx] (e3md/graph.py, take_rows: the senders' positions
// of every edge) as a CPU kernel called through XLA's FFI (e3md/nn/cpu_kernels.py builds and
// registers it):
//
//   out[a, c] = sum_{e: idx[e] = a} g[e, c]      (a < N; indices outside [0, N) dropped)
//
// XLA's CPU scatter-add runs as a loop of dynamic-update-slices, one edge per iteration; here
// blocks of edges add into one copy of `out` per thread, summed at the end (small model's
// energy+forces 1.6-2.4 % faster, BENCHMARKS.md session 16). Compiled in (-D flags):
// E3MD_REAL, E3MD_DTYPE, E3MD_C (columns).

#include <cstdint>

#include "kernel_common.h"

namespace {

using namespace e3md;

constexpr int C = E3MD_C;
constexpr int64_t kBlock = 4096;  // edges per block of parallel_for

ffi::Error Backward(ffi::ThreadPool pool, Idx idx_b, Buf g_b, Out out_b) {
  const int64_t edges = idx_b.element_count();
  const int64_t n = out_b->element_count() / C;
  const int32_t* idx = idx_b.typed_data();
  const real* g = g_b.typed_data();
  real* out = out_b->typed_data();
  parallel_sum(pool, edges, kBlock, out, n * C, [&](int64_t begin, int64_t end, real* o) {
    for (int64_t e = begin; e < end; ++e) {
      const int64_t a = idx[e];
      if (a < 0 || a >= n) continue;
      for (int c = 0; c < C; ++c) o[a * C + c] += g[e * C + c];
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(e3md_gather_bwd, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Idx>()  // idx [E]
                                  .Arg<Buf>()  // g [E, C]
                                  .Ret<Buf>()  // out [N, C]
);
