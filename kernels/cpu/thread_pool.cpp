// Ticketed task pool. See thread_pool.h.
// NOTE: a task can only be claimed through a ticket of its own generation, and the caller of a
// generation waits until every claimed task has finished, so a late worker never runs a task of
// a job whose caller has returned.
#include "kernels/cpu/thread_pool.h"

#include "engine/thread_name.h"

#include <immintrin.h>

#include <chrono>

namespace hyco::cpu {

namespace {
constexpr auto kSpin = std::chrono::microseconds(200);
}

void flush_denormals() { _mm_setcsr(_mm_getcsr() | 0x8040); }  // FTZ | DAZ

ThreadPool::ThreadPool(int n_threads) : n_(n_threads < 1 ? 1 : n_threads) {
  flush_denormals();
  for (int i = 1; i < n_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
    ticket_.fetch_add(uint64_t(1) << 32);
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

int64_t ThreadPool::claim(uint64_t gen) {
  uint64_t cur = ticket_.load(std::memory_order_acquire);
  for (;;) {
    if ((cur >> 32) != (gen & 0xffffffffu)) return -1;
    const int64_t idx = int64_t(cur & 0xffffffffu);
    if (idx >= jobs_[gen & 1].n_tasks.load(std::memory_order_relaxed)) return -1;
    if (ticket_.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel)) return idx;
  }
}

void ThreadPool::work(uint64_t gen, int ith) {
  for (int64_t t = claim(gen); t >= 0; t = claim(gen)) {
    // Read after the claim: the slot cannot be refilled while a claimed task is unfinished.
    (*jobs_[gen & 1].fn.load(std::memory_order_relaxed))(t, ith);
    done_.fetch_add(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::worker(int ith) {
  name_this_thread("hyco-pool");
  flush_denormals();
  // Generation 0 is the constructor's: a thread that starts late must still see every later
  // generation, the destructor's included (reading the ticket here could miss it).
  uint64_t seen = 0;
  for (;;) {
    auto gen_now = [&] { return ticket_.load(std::memory_order_acquire) >> 32; };
    const auto until = std::chrono::steady_clock::now() + kSpin;
    while (gen_now() == seen) {
      for (int i = 0; i < 32 && gen_now() == seen; ++i) _mm_pause();
      if (std::chrono::steady_clock::now() > until) break;
      // A thread waiting for a core (the server's HTTP threads, woken by the tokens a step has
      // just produced) runs now rather than after the spin: 1-client inter-token p99 went from
      // ~4 ms to ~1 ms in scripts/bench_server.py, decode speed unchanged.
      std::this_thread::yield();
    }
    if (gen_now() == seen) {
      std::unique_lock<std::mutex> lk(mu_);
      sleepers_.fetch_add(1);
      cv_.wait(lk, [&] { return gen_now() != seen; });
      sleepers_.fetch_sub(1);
    }
    if (stop_.load()) return;
    seen = gen_now();
    work(seen, ith);
  }
}

void ThreadPool::run_tasks(int64_t n_tasks, const std::function<void(int64_t, int)>& fn) {
  if (n_tasks <= 0) return;
  if (n_ == 1 || n_tasks == 1) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
    return;
  }
  const uint64_t gen = ++generation_;
  jobs_[gen & 1].fn.store(&fn, std::memory_order_relaxed);
  jobs_[gen & 1].n_tasks.store(n_tasks, std::memory_order_relaxed);
  done_.store(0, std::memory_order_relaxed);
  ticket_.store((gen & 0xffffffffu) << 32, std::memory_order_release);
  if (sleepers_.load() > 0) {
    std::lock_guard<std::mutex> lk(mu_);
    cv_.notify_all();
  }
  work(gen, 0);
  while (done_.load(std::memory_order_acquire) < n_tasks) _mm_pause();
}

}  // namespace hyco::cpu
