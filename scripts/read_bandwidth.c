// Read bandwidth of this machine's cache hierarchy: each of T threads sums its own buffer of
// MB mebibytes with 512-bit loads, 20 times over; prints the aggregate GB/s. The README's bounds
// on decode speed (weights and keys streamed from L3 or memory) come from it.
//   cc -O2 -mavx512f -pthread scripts/read_bandwidth.c -o /tmp/read_bandwidth
//   for mb in 1 8 24 64; do /tmp/read_bandwidth $mb 1; /tmp/read_bandwidth $mb 2; done
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { kPasses = 20, kMaxThreads = 64 };
static size_t n_bytes;
static char* bufs[kMaxThreads];
static volatile int sink;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void* reader(void* arg) {
  const char* b = bufs[(long)arg];
  __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
  for (int pass = 0; pass < kPasses; ++pass)
    for (size_t i = 0; i < n_bytes; i += 256) {
      acc0 = _mm512_add_epi32(acc0, _mm512_load_si512(b + i));
      acc1 = _mm512_add_epi32(acc1, _mm512_load_si512(b + i + 64));
      acc0 = _mm512_add_epi32(acc0, _mm512_load_si512(b + i + 128));
      acc1 = _mm512_add_epi32(acc1, _mm512_load_si512(b + i + 192));
    }
  sink = _mm512_reduce_add_epi32(_mm512_add_epi32(acc0, acc1));
  return NULL;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s MB THREADS\n", argv[0]);
    return 2;
  }
  const long mb = atol(argv[1]), threads = atol(argv[2]);
  if (mb < 1 || threads < 1 || threads > kMaxThreads) {
    fprintf(stderr, "MB must be >= 1 and THREADS in 1..%d\n", kMaxThreads);
    return 2;
  }
  n_bytes = (size_t)mb << 20;
  for (long t = 0; t < threads; ++t) {
    bufs[t] = aligned_alloc(64, n_bytes);
    if (!bufs[t]) {
      fprintf(stderr, "out of memory\n");
      return 1;
    }
    for (size_t i = 0; i < n_bytes; ++i) bufs[t][i] = (char)i;  // touch every page first
  }
  pthread_t th[kMaxThreads];
  const double t0 = now();
  for (long t = 0; t < threads; ++t) pthread_create(&th[t], NULL, reader, (void*)t);
  for (long t = 0; t < threads; ++t) pthread_join(th[t], NULL);
  const double s = now() - t0;
  printf("%ld MiB x %ld threads: %.1f GB/s\n", mb, threads, (double)kPasses * (double)n_bytes * (double)threads / s / 1e9);
  return 0;
}
