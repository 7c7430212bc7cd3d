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
            "  train     fine-tune a model from the command line (LoRA or full)\n"
            "  generate  generate text from a model, optionally with a LoRA adapter\n"
            "  merge     merge a LoRA adapter into a full model directory\n"
            "  pretrain  build a small model from scratch on retune's synthetic corpus\n"
            "  keys      add, list and revoke API keys (each belongs to a project)\n"
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
    static const struct {
        const char *name;
        int (*run)(int, char **);
    } commands[] = {{"serve", server_serve_main}, {"train", server_train_main},
                    {"generate", server_generate_main}, {"merge", server_merge_main},
                    {"pretrain", server_pretrain_main},
                    {"keys", server_keys_main}};
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(cmd, commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "retune: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
