/* umgdb - one binary, subcommands dispatched from a table. */
#include "commands.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "enc_kernels.h"
#include "umg_error.h"

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
};

static const struct command commands[] = {
    {"embed", cmd_embed, "encode images or texts with a CLIP checkpoint, print JSON"},
    {"serve", cmd_serve, "run the server: ingest and search photos over TCP or a Unix socket"},
    {"ingest", cmd_ingest, "send photos (files, directories) to a running server"},
    {"query", cmd_query, "search a running server by text: photos, regions or heatmaps"},
    {"stats", cmd_stats, "a running server's counts, indexes, memory, uptime, model"},
    {"get", cmd_get, "an image's record and regions, by id or path"},
    {"delete", cmd_delete, "delete an image by id or path"},
};

static void usage(FILE *out)
{
    fprintf(out, "umgdb %s - multi-granularity image search\n\nusage: umgdb COMMAND [ARGS...]\n\ncommands:\n",
            UMG_VERSION);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n'umgdb COMMAND --help' describes a command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("umgdb %s\n", UMG_VERSION);
        return 0;
    }
    /* UMG_CPU caps the encoder's kernels (docs/benchmarks.md: kernels per ISA) */
    const char *cap = getenv("UMG_CPU");
    if (cap && *cap && enc_cpu_limit_named(cap))
        fprintf(stderr, "umgdb: UMG_CPU: %s (ignored)\n", umg_err_msg());
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "umgdb: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
