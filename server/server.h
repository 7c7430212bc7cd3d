/*
 * server/server.h — the command-line programs of retune, one per subcommand.
 * Each takes main's argc/argv after the subcommand name and returns the
 * process exit status (0 ok, 1 runtime failure, 2 usage error).
 */
#ifndef RT_SERVER_H
#define RT_SERVER_H

#include <stddef.h>
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

/* Opens storage for command cmd ("retune serve") on data_dir and database
 * (--database; NULL: SQLite in data_dir). On failure prints why, naming
 * --database when the database is at fault, and returns 1 (0 ok); the
 * caller closes *out with storage_close. */
struct storage;
int server_storage_open(const char *cmd, const char *data_dir, const char *database,
                        struct storage **out);

/* Makes sure the built-in model exists in dir, pre-training it on first use. */
int server_ensure_default_model(const char *dir, const char *device);

/* Parse a numeric flag within [lo, hi]; print "retune CMD: NAME must ..." and
 * return 2 on a bad value, 0 on success. */
int server_parse_double(const char *cmd, const char *name, const char *text, double lo, double hi,
                        double *out);
int server_parse_int(const char *cmd, const char *name, const char *text, long lo, long hi, int *out);

/* ---- data-parallel training over MPI (server/mpi_comm.c) -------------------
 * `mpirun -np N retune train ...` trains one job with N processes. MPI is
 * started only in a process that mpirun launched; `retune serve` and a
 * plain `retune train` never touch it. */
struct engine_collective;

/* When mpirun launched this process (Open MPI's OMPI_COMM_WORLD_SIZE, or
 * PMI_SIZE / PMIX_RANK), initialises MPI and sets *out to the group
 * (MPI_COMM_WORLD: rank, size, sums), to be closed with server_mpi_close;
 * also sets RETUNE_CPU_THREADS, unless it is set, to this machine's CPUs
 * shared out among the ranks on it. Otherwise sets *out = NULL and starts
 * nothing. RT_ERR_UNSUPPORTED (launched by mpirun but built without MPI),
 * RT_ERR_COMM (MPI failed to start); err says which. */
int server_mpi_open(struct engine_collective **out, char *err, size_t errsize);

/* Ends MPI (MPI_Finalize) and frees c; NULL is a no-op. */
void server_mpi_close(struct engine_collective *c);

/* Ends every process of c's group with status (MPI_Abort): what a rank that
 * fails does, since the others may be waiting for it in a sum. Returns only
 * when c is NULL. */
void server_mpi_abort(struct engine_collective *c, int status);

#endif
