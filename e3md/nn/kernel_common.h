// What e3md's CPU kernels (*_kernel.cc, built by e3md/nn/cpu_kernels.py) share: the buffer
// types of the compiled-in float type and a parallel loop on XLA's intra-op thread pool.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>

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
template <class Body>
void parallel_for(ffi::ThreadPool& pool, int64_t n, int64_t block, Body body) {
  const int64_t blocks = (n + block - 1) / block;
  const int64_t tasks = tasks_for(pool, n, block);
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  auto work = [&](int64_t task) {
    for (int64_t b = next.fetch_add(1); b < blocks; b = next.fetch_add(1)) {
      body(b * block, std::min(n, (b + 1) * block), task);
    }
  };
  for (int64_t t = 1; t < tasks; ++t) {
    pool.Schedule([&, t] {
      work(t);
      done.fetch_add(1, std::memory_order_release);
    });
  }
  work(0);
  while (done.load(std::memory_order_acquire) < tasks - 1) std::this_thread::yield();
}

}  // namespace e3md
