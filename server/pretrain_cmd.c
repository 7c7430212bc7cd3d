/*
 * server/pretrain_cmd.c — `retune pretrain`: builds the built-in base model
 * (engine_pretrain) with a progress bar, and server_ensure_default_model(),
 * which `retune serve` uses to create that model on first start and reuse
 * it afterwards.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/engine.h"
#include "server/server.h"

/* A progress bar on stderr: [#####.....] step/total loss ETA. */
static void draw_bar(void *ctx, const engine_progress *p)
{
    (void)ctx;
    const int width = 30;
    int filled = p->total_steps ? p->step * width / p->total_steps : 0;
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < filled ? '#' : '.';
    bar[width] = '\0';
    double eta = p->step ? p->seconds * (p->total_steps - p->step) / p->step : 0;
    bool tty = isatty(STDERR_FILENO);
    if (!tty && p->step % 100 != 0 && p->step != p->total_steps)
        return; /* a log gets a line now and then, a terminal a live bar */
    fprintf(stderr, "%spre-training [%s] %d/%d loss %.3f ETA %dm%02ds%s", tty ? "\r" : "", bar,
            p->step, p->total_steps, p->train_loss, (int)eta / 60, (int)eta % 60,
            tty && p->step != p->total_steps ? "" : "\n");
    fflush(stderr);
}

int server_pretrain(const char *out_dir, const char *preset, int steps, uint64_t seed,
                    const char *device)
{
    engine_pretrain_config pc = {out_dir, preset, steps, seed, device};
    engine_callbacks cb = {.on_step = draw_bar};
    engine_train_result r;
    char err[1024] = "";
    fprintf(stderr, "building the built-in model in %s (preset %s, seed %llu)\n", out_dir,
            preset ? preset : "tiny", (unsigned long long)seed);
    int rc = engine_pretrain(&pc, &cb, &r, err, sizeof err);
    if (rc != RT_OK) {
        fprintf(stderr, "retune pretrain: %s\n", err[0] ? err : rt_strerror(rc));
        return 1;
    }
    fprintf(stderr, "done: loss %.3f after %d steps, %lld tokens in %.0f s (%lld parameters)\n",
            r.train_loss, r.steps, (long long)r.tokens, r.seconds, (long long)r.total_params);
    return 0;
}

int server_ensure_default_model(const char *dir, const char *device)
{
    char cfg[4200];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    if (access(cfg, R_OK) == 0)
        return 0;
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", dir);
    char *slash = strrchr(parent, '/');
    if (slash) {
        *slash = '\0';
        mkdir(parent, 0755);
    }
    return server_pretrain(dir, "tiny", 0, 42, device);
}

int server_pretrain_main(int argc, char **argv)
{
    static const struct option opts[] = {{"out", 1, 0, 'o'}, {"preset", 1, 0, 'p'},
                                         {"steps", 1, 0, 'n'}, {"seed", 1, 0, 's'},
                                         {"device", 1, 0, 'D'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    const char *out = NULL, *preset = "tiny", *device = NULL;
    int steps = 0, opt;
    double seed = 42;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int rc = 0;
        switch (opt) {
        case 'o': out = optarg; break;
        case 'p': preset = optarg; break;
        case 'n': rc = server_parse_int("pretrain", "--steps", optarg, 1, 10000000, &steps); break;
        case 's': rc = server_parse_double("pretrain", "--seed", optarg, 0, 9007199254740991.0, &seed); break;
        case 'D': device = optarg; break;
        case 'h':
            printf("usage: retune pretrain --out DIR [--preset tiny|micro|small] [--steps N] [--seed N]\n");
            return 0;
        default: rc = 2;
        }
        if (rc)
            return 2;
    }
    if (!out) {
        fprintf(stderr, "retune pretrain: --out is required\n");
        return 2;
    }
    if (strcmp(preset, "tiny") && strcmp(preset, "micro") && strcmp(preset, "small")) {
        fprintf(stderr, "retune pretrain: --preset must be tiny, micro or small (got '%s')\n", preset);
        return 2;
    }
    return server_pretrain(out, preset, steps, (uint64_t)seed, device);
}
