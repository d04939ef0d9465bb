// Not an FFI target: threads that keep this process's idle CPUs out of their sleep state
// (e3md.cores). On a virtual machine whose CPUs halt when idle, waking a thread on another
// CPU costs tens of µs (the host has to run the halted CPU again); XLA's runtime and e3md's
// kernels wake the pool's threads several times per call, so short calls pay it many times.
// One thread per CPU, at the SCHED_IDLE policy (it runs only when nothing else wants that CPU
// and is preempted on any wake-up there), spins on `pause` until e3md_spin_stop.
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <mutex>
#include <new>
#include <vector>

namespace {

std::atomic<bool> stop_requested{false};
std::atomic<int> reported{0}, refused{0};  // threads past their set-up; those that failed it
std::mutex guard;
std::vector<pthread_t> running;

inline void relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

void* spin(void* cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(static_cast<int>(reinterpret_cast<long>(cpu)), &set);
  const sched_param param{};  // priority 0, as SCHED_IDLE requires
  // glibc's thread attributes do not take SCHED_IDLE: each thread sets it first thing
  const bool ok = pthread_setschedparam(pthread_self(), SCHED_IDLE, &param) == 0 &&
                  pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
  if (!ok) refused.fetch_add(1);
  reported.fetch_add(1);
  if (!ok) return nullptr;
  while (!stop_requested.load(std::memory_order_relaxed)) relax();
  return nullptr;
}

}  // namespace

// Starts one spinning thread on each of the n CPUs (none if threads run already). Returns the
// number of threads running, or -1 where a thread could not be created or given SCHED_IDLE
// and its CPU (then none runs).
extern "C" int e3md_spin_start(const int* cpus, int n) {
  std::lock_guard<std::mutex> lock(guard);
  if (!running.empty()) return static_cast<int>(running.size());
  stop_requested.store(false);
  reported.store(0);
  refused.store(0);
  bool ok = true;
  for (int i = 0; ok && i < n; ++i) {
    pthread_t t;
    void* cpu = reinterpret_cast<void*>(static_cast<long>(cpus[i]));
    ok = pthread_create(&t, nullptr, spin, cpu) == 0;
    if (ok) running.push_back(t);
  }
  while (reported.load() < static_cast<int>(running.size())) sched_yield();
  if (!ok || refused.load()) {
    stop_requested.store(true);
    for (pthread_t t : running) pthread_join(t, nullptr);
    running.clear();
    return -1;
  }
  return static_cast<int>(running.size());
}

// Stops and joins the threads; returns how many there were.
extern "C" int e3md_spin_stop() {
  std::lock_guard<std::mutex> lock(guard);
  stop_requested.store(true);
  for (pthread_t t : running) pthread_join(t, nullptr);
  const int n = static_cast<int>(running.size());
  running.clear();
  return n;
}

// In a child after fork: the threads stayed with the parent; forget them without joining.
extern "C" void e3md_spin_forget() {
  new (&guard) std::mutex();  // another thread may have held it at the fork
  running.clear();
}
