/* bench_heif_threads - a HEIC's decode time on 1, 2, ... tile threads against
 * libheif's own decode (`heif-convert FILE out.y4m`), interleaved rep by rep
 * (issue 17, "HEIC tiles decoded on all threads"):
 *
 *   bench_heif_threads FILE [--reps 5] [--threads 1,2] [--startup SMALL.heic]
 *
 * Ours: enc_image_decode_ex with opts.threads = T (the decoded RGB image, no
 * preprocessing), wall time and process CPU.  heif-convert: wall and CPU of the
 * child, minus the same for SMALL.heic (its process start-up), when given.
 * Medians; one JSON object on stdout. */
#include "../common.h"
#include "enc_image.h"
#include "umg_error.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_REPS 50
#define MAX_T 8

/* Milliseconds: wall (monotonic) or the process's CPU time. */
static double wall_ms(void) { return bench_now() * 1e3; }
static double cpu_ms(void) { return bench_process_cpu() * 1e3; }
static double median(double *v, int n) { return bench_median(v, (size_t)n); }
/* heif-convert FILE OUT.y4m as a child: its wall and CPU ms. */
static void run_peer(const char *file, double *wall, double *cpu)
{
    char out[] = "/tmp/umg-heif-bench-XXXXXX.y4m";
    int fd = mkstemps(out, 4);
    if (fd < 0) {
        perror("mkstemps");
        exit(1);
    }
    close(fd);
    double t0 = wall_ms();
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execlp("heif-convert", "heif-convert", file, out, (char *)NULL);
        _exit(127);
    }
    int status;
    struct rusage ru;
    if (pid < 0 || wait4(pid, &status, 0, &ru) < 0 || !WIFEXITED(status) || WEXITSTATUS(status)) {
        fprintf(stderr, "bench_heif_threads: heif-convert %s failed\n", file);
        exit(1);
    }
    *wall = wall_ms() - t0;
    *cpu = ru.ru_utime.tv_sec * 1e3 + ru.ru_utime.tv_usec / 1e3 + ru.ru_stime.tv_sec * 1e3 + ru.ru_stime.tv_usec / 1e3;
    unlink(out);
}

int main(int argc, char **argv)
{
    const char *file = NULL, *startup = NULL;
    int reps = 5, threads[MAX_T] = {1, 2}, n_t = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--startup") && i + 1 < argc)
            startup = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            n_t = 0;
            for (char *s = strtok(argv[++i], ","); s && n_t < MAX_T; s = strtok(NULL, ","))
                threads[n_t++] = atoi(s);
        } else
            file = argv[i];
    }
    if (!file || reps < 1 || reps > MAX_REPS || n_t < 1) {
        fprintf(stderr, "usage: bench_heif_threads FILE [--reps N] [--threads 1,2] [--startup SMALL.heic]\n");
        return 2;
    }
    double wall[MAX_T][MAX_REPS], cpu[MAX_T][MAX_REPS], pw[MAX_REPS], pc[MAX_REPS], sw[MAX_REPS], sc[MAX_REPS];
    int width = 0, height = 0;
    for (int r = 0; r < reps; r++) {
        for (int t = 0; t < n_t; t++) {
            enc_decode_opts o = {.threads = threads[t]};
            enc_image im;
            double w0 = wall_ms(), c0 = cpu_ms();
            if (enc_image_load_ex(file, &o, &im, NULL)) {
                fprintf(stderr, "bench_heif_threads: %s: %s\n", file, umg_err_msg());
                return 1;
            }
            wall[t][r] = wall_ms() - w0;
            cpu[t][r] = cpu_ms() - c0;
            width = im.width;
            height = im.height;
            enc_image_free(&im);
        }
        run_peer(file, &pw[r], &pc[r]);
        sw[r] = sc[r] = 0;
        if (startup)
            run_peer(startup, &sw[r], &sc[r]);
    }
    printf("{\"file\": \"%s\", \"width\": %d, \"height\": %d, \"reps\": %d, \"ours\": [", file, width, height, reps);
    for (int t = 0; t < n_t; t++)
        printf("%s{\"threads\": %d, \"wall_ms\": %.1f, \"cpu_ms\": %.1f}", t ? ", " : "", threads[t],
               median(wall[t], reps), median(cpu[t], reps));
    double psw = median(pw, reps), psc = median(pc, reps), ssw = median(sw, reps), ssc = median(sc, reps);
    printf("], \"heif_convert\": {\"wall_ms\": %.1f, \"cpu_ms\": %.1f, \"startup_wall_ms\": %.1f, "
           "\"startup_cpu_ms\": %.1f}}\n",
           psw - ssw, psc - ssc, ssw, ssc);
    return 0;
}
