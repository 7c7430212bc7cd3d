/*
 * server/generate_cmd.c — `retune generate` and `retune merge`: offline
 * generation from a model (optionally with a LoRA adapter) and merging an
 * adapter into a full model directory.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "server/server.h"

static void generate_usage(FILE *out)
{
    fprintf(out, "usage: retune generate --model DIR [--adapter DIR] --prompt TEXT [--raw]\n"
                 "    [--max-tokens N] [--temperature X] [--top-p X] [--top-k N] [--seed N]\n"
                 "    [--device cpu|cuda]\n"
                 "  --raw   use the prompt as plain text (default: one user turn in the chat template)\n");
}

static int apply_generate_flag(engine_generate_config *c, int opt, const char *arg)
{
    double d;
    int rc = 0;
    switch (opt) {
    case 'm': c->model_dir = arg; break;
    case 'a': c->adapter_dir = arg; break;
    case 'p': c->prompt = arg; break;
    case 'r': c->raw = true; break;
    case 'n': rc = server_parse_int("generate", "--max-tokens", arg, 1, 1 << 20, &c->max_tokens); break;
    case 't': rc = server_parse_double("generate", "--temperature", arg, 0, 100, &c->temperature); break;
    case 'P': rc = server_parse_double("generate", "--top-p", arg, 1e-9, 1, &c->top_p); break;
    case 'k': rc = server_parse_int("generate", "--top-k", arg, 0, 1 << 30, &c->top_k); break;
    case 's': rc = server_parse_double("generate", "--seed", arg, 0, 9007199254740991.0, &d); c->seed = (uint64_t)d; break;
    case 'D': c->device = arg; break;
    default: rc = 2;
    }
    return rc;
}

int server_generate_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", 1, 0, 'm'}, {"adapter", 1, 0, 'a'}, {"prompt", 1, 0, 'p'}, {"raw", 0, 0, 'r'},
        {"max-tokens", 1, 0, 'n'}, {"temperature", 1, 0, 't'}, {"top-p", 1, 0, 'P'},
        {"top-k", 1, 0, 'k'}, {"seed", 1, 0, 's'}, {"device", 1, 0, 'D'}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    engine_generate_config c = {.max_tokens = 64, .temperature = 0, .top_p = 1, .device = NULL};
    int opt;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (opt == 'h') {
            generate_usage(stdout);
            return 0;
        }
        if (opt == '?' || apply_generate_flag(&c, opt, optarg)) {
            generate_usage(stderr);
            return 2;
        }
    }
    if (!c.model_dir || !c.prompt) {
        fprintf(stderr, "retune generate: %s is required\n", !c.model_dir ? "--model" : "--prompt");
        return 2;
    }
    char err[1024] = "", *text = NULL;
    int n = 0;
    int rc = engine_generate(&c, &text, &n, err, sizeof err);
    if (rc != RT_OK) {
        fprintf(stderr, "retune generate: %s\n", err[0] ? err : rt_strerror(rc));
        return rc == RT_ERR_INVALID ? 2 : 1;
    }
    printf("%s\n", text);
    free(text);
    return 0;
}

int server_merge_main(int argc, char **argv)
{
    static const struct option opts[] = {{"model", 1, 0, 'm'}, {"adapter", 1, 0, 'a'},
                                         {"out", 1, 0, 'o'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    const char *model = NULL, *adapter = NULL, *out = NULL;
    int opt;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (opt == 'm') model = optarg;
        else if (opt == 'a') adapter = optarg;
        else if (opt == 'o') out = optarg;
        else {
            fprintf(opt == 'h' ? stdout : stderr, "usage: retune merge --model DIR --adapter DIR --out DIR\n");
            return opt == 'h' ? 0 : 2;
        }
    }
    const char *missing = !model ? "--model" : !adapter ? "--adapter" : !out ? "--out" : NULL;
    if (missing) {
        fprintf(stderr, "retune merge: %s is required\n", missing);
        return 2;
    }
    char err[1024] = "";
    int rc = engine_merge(model, adapter, out, err, sizeof err);
    if (rc != RT_OK) {
        fprintf(stderr, "retune merge: %s\n", err[0] ? err : rt_strerror(rc));
        return 1;
    }
    fprintf(stderr, "merged %s + %s -> %s\n", model, adapter, out);
    return 0;
}
