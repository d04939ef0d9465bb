// The edge vectors of the rows of a jax-md Dense neighbour list under a minimum image, and their
// reverse mode, as CPU kernels called through XLA's FFI (e3md/graph.py, row_edge_vectors, for
// the periodic spaces of e3md/space.py; e3md/nn/cpu_kernels.py builds and registers them).
// Row i of idx [N, M] holds the senders of receiver i, padding N; edge e = i * M + s:
//
//   forward:  r[e] = A (u - rint(u)),   u = B (R[j] - R[i]),   j = idx[i, s]
//             (r[e] = 0 where j is outside [0, N): padding)
//   backward: dR[a] = sum_{e: j = a} dr[e] - sum_s dr[a * M + s]      (real edges only)
//
// A and B are 3 x 3 matrices from the space (e3md.space.*.minimum_image_transform): the sides
// and their inverses for a box, the cell and its inverse for a general cell with Cartesian
// positions (A B = 1), the cell and 1 for fractional positions. The reverse mode is the same
// for all three: the wrap's derivative is zero where it is defined, A B = 1 in the first two,
// and in the third jax-md's transform passes the positions' cotangent through unchanged (the
// gradient with respect to fractional positions is then the Cartesian one, as e3md's MD
// expects).
//
// On XLA CPU the forward is a loop fusion over [E, 3] that gathers the senders' positions one
// element at a time, and the reverse mode four more thunks around e3md's gather kernel
// (BENCHMARKS.md, session 19). Here a row is a scalar gather into a local buffer and a vector
// loop, and the reverse mode one pass that adds each row into its receiver and each edge into
// its sender, in one copy of dR per thread.
// Compiled in (-D flags): E3MD_REAL, E3MD_DTYPE, E3MD_M (slots per row).

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernel_common.h"

namespace {

using namespace e3md;

constexpr int M = E3MD_M;
constexpr int64_t kRows = 16;  // rows per block of parallel_for

ffi::Error Forward(ffi::ThreadPool pool, Buf pos_b, Idx idx_b, Buf a_b, Buf b_b, Out r_b) {
  const int64_t n = pos_b.element_count() / 3;
  const real* pos = pos_b.typed_data();
  const int32_t* idx = idx_b.typed_data();
  real* out = r_b->typed_data();
  real a[9], b[9];  // row-major [3, 3], in locals so that nothing aliases the output
  std::copy_n(a_b.typed_data(), 9, a);
  std::copy_n(b_b.typed_data(), 9, b);
  parallel_for(pool, n, kRows, [&](int64_t begin, int64_t end, int64_t) {
    real d[3][M], w[3][M];
    for (int64_t i = begin; i < end; ++i) {
      const int32_t* row = idx + i * M;
      const real* ri = pos + i * 3;
      // the senders' gather, scalar (GCC tunes vector gathers off on this kind of CPU);
      // padding gets d = 0 and so r = 0 exactly, whatever the positions hold
      for (int s = 0; s < M; ++s) {
        const int64_t j = row[s];
        const bool pad = j < 0 || j >= n;
        const real* rj = pos + (pad ? i : j) * 3;
        for (int c = 0; c < 3; ++c) d[c][s] = pad ? real(0) : rj[c] - ri[c];
      }
#pragma omp simd
      for (int s = 0; s < M; ++s) {
        const real dx = d[0][s], dy = d[1][s], dz = d[2][s];
        real u0 = b[0] * dx + b[1] * dy + b[2] * dz;
        real u1 = b[3] * dx + b[4] * dy + b[5] * dz;
        real u2 = b[6] * dx + b[7] * dy + b[8] * dz;
        u0 -= std::rint(u0);
        u1 -= std::rint(u1);
        u2 -= std::rint(u2);
        w[0][s] = a[0] * u0 + a[1] * u1 + a[2] * u2;
        w[1][s] = a[3] * u0 + a[4] * u1 + a[5] * u2;
        w[2][s] = a[6] * u0 + a[7] * u1 + a[8] * u2;
      }
      real* o = out + i * M * 3;
      for (int s = 0; s < M; ++s) {
        for (int c = 0; c < 3; ++c) o[s * 3 + c] = w[c][s];
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, Idx idx_b, Buf g_b, Out out_b) {
  const int64_t n = out_b->element_count() / 3;
  const int32_t* idx = idx_b.typed_data();
  const real* g = g_b.typed_data();
  real* out = out_b->typed_data();
  parallel_sum(pool, n, kRows, out, n * 3, [&](int64_t begin, int64_t end, real* o) {
    for (int64_t i = begin; i < end; ++i) {
      const int32_t* row = idx + i * M;
      const real* gi = g + i * M * 3;
      real sum[3] = {0, 0, 0};
      for (int s = 0; s < M; ++s) {
        const int64_t j = row[s];
        if (j < 0 || j >= n) continue;
        for (int c = 0; c < 3; ++c) {
          sum[c] += gi[s * 3 + c];
          o[j * 3 + c] += gi[s * 3 + c];
        }
      }
      for (int c = 0; c < 3; ++c) o[i * 3 + c] -= sum[c];
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(e3md_edge_fwd, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Buf>()  // positions R [N, 3]
                                  .Arg<Idx>()  // idx [N, M]
                                  .Arg<Buf>()  // A [3, 3]
                                  .Arg<Buf>()  // B [3, 3]
                                  .Ret<Buf>()  // r [N * M, 3]
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(e3md_edge_bwd, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Idx>()  // idx [N, M]
                                  .Arg<Buf>()  // dr [N * M, 3]
                                  .Ret<Buf>()  // dR [N, 3]
);
