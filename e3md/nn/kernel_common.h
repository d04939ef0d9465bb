// What e3md's CPU kernels (*_kernel.cc, built by e3md/nn/cpu_kernels.py) share: the buffer
// types of the compiled-in float type, a parallel loop on XLA's intra-op thread pool,
// explicit vectors of the float type (GCC/clang vector types) with a many-sums reduction, and
// exp of nonpositive arguments on vectors.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace e3md {

namespace ffi = xla::ffi;

using real = E3MD_REAL;
constexpr ffi::DataType kDtype = ffi::DataType::E3MD_DTYPE;
using Buf = ffi::Buffer<kDtype>;
using Out = ffi::ResultBuffer<kDtype>;
using Idx = ffi::Buffer<ffi::DataType::S32>;

// The tasks parallel_for runs for n items in blocks of `block`.
inline int64_t tasks_for(ffi::ThreadPool& pool, int64_t n, int64_t block) {
  return std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), (n + block - 1) / block));
}

// body(begin, end, task) over the items [0, n) in blocks of `block`, on this thread and the
// pool's; blocks are taken dynamically, so a thread slowed by other work does not hold the
// call up. `task` < tasks_for(pool, n, block) numbers the thread (for per-thread sums).
//
// The call returns once every block is done; it does not wait for helpers that have not
// started. A pool thread that wakes late (tens to hundreds of µs in a VM) finds no block left
// and touches nothing of the caller's, so at small sizes the caller does the blocks alone
// instead of idling until the helper wakes. The counters live on the heap, shared with the
// helpers; `body` is reached only through a claimed block, and the caller waits for each helper
// that announced itself (`active`) before claiming, so none can claim after the caller saw
// the last block taken and `active` at zero (all seq_cst).
template <class Body>
void parallel_for(ffi::ThreadPool& pool, int64_t n, int64_t block, Body body) {
  const int64_t blocks = (n + block - 1) / block;
  const int64_t tasks = tasks_for(pool, n, block);
  struct Counters {
    std::atomic<int64_t> next{0};    // the next block to claim
    std::atomic<int64_t> active{0};  // helpers that may still claim or run a block
  };
  const auto counters = std::make_shared<Counters>();
  Body* const run = &body;
  for (int64_t t = 1; t < tasks; ++t) {
    pool.Schedule([counters, run, blocks, block, n, t] {
      counters->active.fetch_add(1);
      for (int64_t b = counters->next.fetch_add(1); b < blocks; b = counters->next.fetch_add(1)) {
        (*run)(b * block, std::min(n, (b + 1) * block), t);
      }
      counters->active.fetch_sub(1);
    });
  }
  for (int64_t b = counters->next.fetch_add(1); b < blocks; b = counters->next.fetch_add(1)) {
    body(b * block, std::min(n, (b + 1) * block), 0);
  }
  while (counters->active.load() > 0) std::this_thread::yield();
}

// body(begin, end, o) over the items [0, n) as parallel_for runs them, where `o` is the
// running thread's own copy of out [size] to add into: the calling thread's is out itself, the
// others' are summed into it at the end (scatter-adds without atomics). out starts at zero.
template <class Body>
void parallel_sum(ffi::ThreadPool& pool, int64_t n, int64_t block, real* out, int64_t size,
                  Body body) {
  const int64_t tasks = tasks_for(pool, n, block);
  std::vector<real> copies((tasks - 1) * size, real(0));
  std::fill(out, out + size, real(0));
  parallel_for(pool, n, block, [&](int64_t begin, int64_t end, int64_t task) {
    body(begin, end, task == 0 ? out : copies.data() + (task - 1) * size);
  });
  for (int64_t t = 1; t < tasks; ++t) {
    const real* copy = copies.data() + (t - 1) * size;
    for (int64_t q = 0; q < size; ++q) out[q] += copy[q];
  }
}

// The lanes of the widest vector of at most 64 bytes whose lanes divide n.
constexpr int lanes_for(int n) {
  int w = 64 / int(sizeof(real));
  while (w > 1 && n % w) w /= 2;
  return w;
}

template <int W>
struct VecOf {
  typedef real type __attribute__((vector_size(W * sizeof(real))));
};
template <int W>
using Vec = typename VecOf<W>::type;  // W lanes of real

template <int W>
inline Vec<W> load(const real* p) {
  Vec<W> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <int W>
inline void store(real* p, Vec<W> v) {
  std::memcpy(p, &v, sizeof v);
}

// Output lane p of fold<W, g>(a, b): the inputs hold W / g sums of g lanes each (a's, then b's
// in the output); each output sum has g / 2 lanes, the first half of its input lanes plus the
// second.
template <int W>
constexpr int fold_index(int g, int p) {
  const int half = g / 2, groups = W / g, group = p / half;
  return (group < groups ? 0 : W) + (group % groups) * g + p % half;
}
template <int W, int g, std::size_t... P>
inline Vec<W> fold(Vec<W> a, Vec<W> b, std::index_sequence<P...>) {
  return __builtin_shufflevector(a, b, fold_index<W>(g, P)...) +
         __builtin_shufflevector(a, b, (fold_index<W>(g, P) + g / 2)...);
}

// The lane sums of n vectors at once: afterwards lane p of v[q] is the sum of the lanes of input
// v[q * W + p]. A transposing tree, about 3 instructions per input vector: a horizontal sum of
// each on its own is a chain of ~10 (g: lanes per sum so far, for the recursion).
template <int W, int n, int g = W>
inline void reduce_lanes(Vec<W>* v) {
  if constexpr (g > 1) {
    constexpr int m = (n + 1) / 2;
#pragma GCC unroll 64
    for (int q = 0; q < m; ++q) {
      const Vec<W> b = 2 * q + 1 < n ? v[2 * q + 1] : Vec<W>{};
      v[q] = fold<W, g>(v[2 * q], b, std::make_index_sequence<W>{});
    }
    reduce_lanes<W, m, g / 2>(v);
  }
}

// exp(x) for x <= 0 on a vector of float or double lanes: 2^n times the Taylor series of the
// remainder f = x - n ln 2, |f| <= ln(2)/2 (float: degree 8, error < 1e-9; double: degree 12,
// error < 3e-16; ln 2 split in two so that n ln 2 is exact); 0 below kMin; NaN stays NaN.
template <class T>
struct ExpConstants;
template <>
struct ExpConstants<float> {
  using Int = int32_t;
  static constexpr int kMantissa = 23, kBias = 127, kDegree = 8;
  static constexpr float kMin = -87.0f, kLn2Hi = 6.93145751953125e-1f,
                         kLn2Lo = 1.42860682030941723212e-6f;
};
template <>
struct ExpConstants<double> {
  using Int = int64_t;
  static constexpr int kMantissa = 52, kBias = 1023, kDegree = 12;
  static constexpr double kMin = -700.0, kLn2Hi = 6.93147180369123816490e-01,
                          kLn2Lo = 1.90821492927058770002e-10;
};
template <class T>
struct InvFactorials {
  T c[ExpConstants<T>::kDegree + 1];
};
template <class T>
constexpr InvFactorials<T> inv_factorials() {
  InvFactorials<T> out{};
  double f = 1;  // 1 / n!, in double for both types
  for (int n = 0; n <= ExpConstants<T>::kDegree; ++n) {
    out.c[n] = T(f);
    f /= double(n + 1);
  }
  return out;
}
template <class V>
inline V exp_nonpositive(V x) {
  using T = std::decay_t<decltype(x[0])>;
  using C = ExpConstants<T>;
  using Int = typename C::Int;
  typedef Int VI __attribute__((vector_size(sizeof(V) / sizeof(T) * sizeof(Int))));
  constexpr InvFactorials<T> kCoef = inv_factorials<T>();
  constexpr T kRound = T(1.5) * T(Int(1) << C::kMantissa);  // x + kRound - kRound rounds x
  const V y = x < C::kMin ? V{} + C::kMin : x;
  const V n = (y * T(1.4426950408889634) + kRound) - kRound;
  const V f = (y - n * C::kLn2Hi) - n * C::kLn2Lo;
  V p = V{};
  for (int i = C::kDegree; i >= 0; --i) p = p * f + kCoef.c[i];
  const VI bits = (__builtin_convertvector(n, VI) + C::kBias) << C::kMantissa;
  return x < C::kMin ? V{} : p * (V)bits;
}

}  // namespace e3md
