// Spin-then-sleep worker pool. See thread_pool.h.
#include "kernels/cpu/thread_pool.h"

#include <immintrin.h>

namespace hyco::cpu {
namespace {
constexpr int kSpinIterations = 20000;  // ~100 µs of pause instructions before sleeping
}

ThreadPool::ThreadPool(int n_threads) : n_(n_threads < 1 ? 1 : n_threads) {
  for (int i = 1; i < n_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::worker(int ith) {
  uint64_t seen = 0;
  for (;;) {
    for (int i = 0; i < kSpinIterations && generation_.load() == seen; ++i) _mm_pause();
    if (generation_.load() == seen) {
      std::unique_lock<std::mutex> lk(mu_);
      sleepers_.fetch_add(1);
      cv_.wait(lk, [&] { return generation_.load() != seen; });
      sleepers_.fetch_sub(1);
    }
    seen = generation_.load();
    if (stop_.load()) return;
    (*job_)(ith, n_);
    pending_.fetch_sub(1);
  }
}

void ThreadPool::run(const std::function<void(int, int)>& fn) {
  if (n_ == 1) {
    fn(0, 1);
    return;
  }
  job_ = &fn;
  pending_.store(n_ - 1);
  generation_.fetch_add(1);
  if (sleepers_.load() > 0) {
    std::lock_guard<std::mutex> lk(mu_);
    cv_.notify_all();
  }
  fn(0, n_);
  while (pending_.load() != 0) _mm_pause();
}

void ThreadPool::run_tasks(int64_t n_tasks, const std::function<void(int64_t, int)>& fn) {
  next_task_.store(0);
  run([&](int ith, int) {
    for (int64_t t = next_task_.fetch_add(1); t < n_tasks; t = next_task_.fetch_add(1)) fn(t, ith);
  });
}

}  // namespace hyco::cpu
