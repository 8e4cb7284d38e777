/* blas_probe - which OpenBLAS kernel this machine gets and its one-thread
 * sgemm speed (1024^3, 5 repetitions).  Compare runs with and without
 * OPENBLAS_CORETYPE=Haswell / SkylakeX: OpenBLAS may detect a VM's CPU as an
 * old core and pick slow kernels (it matters for FAISS training and
 * bench_index's ground truth).
 *
 *   OPENBLAS_NUM_THREADS=1 [OPENBLAS_CORETYPE=SkylakeX] bench_blas_probe */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

char *openblas_get_corename(void);

int main(void)
{
    const int n = 1024, reps = 5;
    float *a = malloc(sizeof *a * n * n), *b = malloc(sizeof *b * n * n), *c = malloc(sizeof *c * n * n);
    if (!a || !b || !c)
        return 1;
    for (int i = 0; i < n * n; i++) {
        a[i] = (float)(i % 7);
        b[i] = (float)(i % 5);
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int r = 0; r < reps; r++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    printf("sgemm %d^3 x %d: %.1f GFLOP/s, OpenBLAS core %s\n", n, reps, reps * 2.0 * n * n * n / s / 1e9,
           openblas_get_corename());
    free(a);
    free(b);
    free(c);
    return 0;
}
