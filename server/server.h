/*
 * server/server.h — the command-line programs of retune, one per subcommand.
 * Each takes main's argc/argv after the subcommand name and returns the
 * process exit status (0 ok, 1 runtime failure, 2 usage error).
 */
#ifndef RT_SERVER_H
#define RT_SERVER_H

int server_serve_main(int argc, char **argv);

#endif
