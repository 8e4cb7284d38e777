/* bench/common.h - clocks, order statistics and random numbers shared by the benchmarks
 * (header only: include it as "../common.h" from bench/<name>/). */
#ifndef UMG_BENCH_COMMON_H
#define UMG_BENCH_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

/* One thread each for OpenBLAS and FAISS's OpenMP unless the caller set them:
 * their spinning threads fight each other and other processes on a shared
 * 2-core machine (10x slower PQ training, most of it in barriers of tiny
 * parallel regions), and the server pins FAISS to one thread too.  Both read
 * the variables at load time, hence the re-exec (argv as main got it). */
static inline void bench_one_blas_thread(char **argv)
{
    if (!getenv("OPENBLAS_NUM_THREADS") || !getenv("OMP_NUM_THREADS")) {
        setenv("OPENBLAS_NUM_THREADS", "1", 0);
        setenv("OMP_NUM_THREADS", "1", 0);
        execv("/proc/self/exe", argv);
    }
}

/* Uniform in (0, 1) from the xorshift64 state *rng (deterministic per seed). */
static inline double bench_urand(uint64_t *rng)
{
    *rng ^= *rng << 13, *rng ^= *rng >> 7, *rng ^= *rng << 17;
    return ((*rng >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/* Standard normal (Box-Muller) from the same state. */
static inline float bench_gauss(uint64_t *rng)
{
    double u = bench_urand(rng);
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * bench_urand(rng)));
}

/* Wall-clock seconds (monotonic). */
static inline double bench_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* CPU seconds of the calling thread: the work itself, without the waits of a
 * shared machine (its cache and memory-bandwidth effects still count). */
static inline double bench_thread_cpu(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* CPU seconds of the whole process (every thread). */
static inline double bench_process_cpu(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* v[0..n) in ascending order. */
static inline void bench_sort(double *v, size_t n)
{
    qsort(v, n, sizeof *v, bench_cmp_double);
}

/* The median of v[0..n), n > 0 (the mean of the middle two for even n);
 * sorts v. */
static inline double bench_median(double *v, size_t n)
{
    bench_sort(v, n);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#endif
