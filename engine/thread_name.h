// Names the calling thread (Linux: at most 15 characters), so that `top -H`, perf and
// /proc/PID/task/*/comm tell hyco's threads apart: hyco-sched (the scheduler loop), hyco-pool
// (CPU kernel workers), hyco-http (HTTP connections), hyco-load (model loading).
#pragma once

#include <pthread.h>

namespace hyco {

inline void name_this_thread(const char* name) { pthread_setname_np(pthread_self(), name); }

}  // namespace hyco
