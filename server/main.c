/*
 * server/main.c — retune's entry point: picks the subcommand.
 */
#include "server/server.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: retune <command> [options]\n"
            "\n"
            "commands:\n"
            "  serve     run the HTTP API (files, fine-tuning jobs, completions)\n"
            "\n"
            "Run 'retune <command> --help' for the options of a command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0)
        return server_serve_main(argc - 1, argv + 1);
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "retune: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
