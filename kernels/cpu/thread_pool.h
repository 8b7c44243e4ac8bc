// A fixed pool of worker threads for data-parallel kernels. Work is a list of tasks handed out
// through one atomic ticket, and the caller takes tasks too: when another process holds a core
// and a worker is descheduled, the caller (or the other workers) simply do its share — no
// barrier waits for a thread that is not running. Workers spin briefly between jobs (ops come
// microseconds apart during a step), yielding the core every few hundred cycles, and then sleep.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace hyco::cpu {

// Flushes subnormal floats to zero on the calling thread (MXCSR FTZ and DAZ). Subnormals cost
// microcode assists of ~100 cycles each (peaked softmax weights times values produce them) and
// carry no information at these magnitudes.
void flush_denormals();

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_; }
  // Runs fn(task, ith) for every task in [0, n_tasks), on the caller (ith 0) and the workers
  // (ith 1..size-1); returns when all tasks have finished. One caller at a time.
  void run_tasks(int64_t n_tasks, const std::function<void(int64_t task, int ith)>& fn);

 private:
  struct Job {  // atomics: a late worker may read a slot while the caller refills it
    std::atomic<const std::function<void(int64_t, int)>*> fn{nullptr};
    std::atomic<int64_t> n_tasks{0};
  };
  void worker(int ith);
  // Claims the next task of generation `gen`; -1 when there is none (or the job moved on).
  int64_t claim(uint64_t gen);
  void work(uint64_t gen, int ith);

  int n_;
  std::vector<std::thread> threads_;
  uint64_t generation_ = 0;               // caller side only
  Job jobs_[2];                           // by generation parity; a job's slot is reused two jobs later
  std::atomic<uint64_t> ticket_{0};       // generation << 32 | next task
  std::atomic<int64_t> done_{0};          // tasks finished in the current generation
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace hyco::cpu
