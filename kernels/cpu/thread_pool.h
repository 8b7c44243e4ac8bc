// A fixed pool of worker threads for data-parallel kernels: run(fn) calls fn(ith, nth) on every
// thread (the caller is thread 0) and returns when all are done. Workers spin briefly between
// jobs (ops come microseconds apart during a step) and sleep when idle.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace hyco::cpu {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_; }
  void run(const std::function<void(int ith, int nth)>& fn);
  // Tasks [0, n_tasks) handed out dynamically (for uneven costs, e.g. causal attention).
  void run_tasks(int64_t n_tasks, const std::function<void(int64_t task, int ith)>& fn);

 private:
  void worker(int ith);

  int n_;
  std::vector<std::thread> threads_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> next_task_{0};
  const std::function<void(int, int)>* job_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace hyco::cpu
