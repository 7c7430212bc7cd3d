/*
 * server/server.h — the command-line programs of retune, one per subcommand.
 * Each takes main's argc/argv after the subcommand name and returns the
 * process exit status (0 ok, 1 runtime failure, 2 usage error).
 */
#ifndef RT_SERVER_H
#define RT_SERVER_H

#include <stdint.h>

int server_serve_main(int argc, char **argv);
int server_train_main(int argc, char **argv);
int server_generate_main(int argc, char **argv);
int server_merge_main(int argc, char **argv);
int server_pretrain_main(int argc, char **argv);
int server_keys_main(int argc, char **argv);

/* Builds a pre-trained model in out_dir (0 ok, 1 failure). */
int server_pretrain(const char *out_dir, const char *preset, int steps, uint64_t seed,
                    const char *device);

/* Makes sure the built-in model exists in dir, pre-training it on first use. */
int server_ensure_default_model(const char *dir, const char *device);

/* Parse a numeric flag within [lo, hi]; print "retune CMD: NAME must ..." and
 * return 2 on a bad value, 0 on success. */
int server_parse_double(const char *cmd, const char *name, const char *text, double lo, double hi,
                        double *out);
int server_parse_int(const char *cmd, const char *name, const char *text, long lo, long hi, int *out);

#endif
