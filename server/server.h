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

/* Copies bytes of rank 0's data to data on every rank of c's group
 * (MPI_Bcast); every rank calls it. RT_OK, RT_ERR_INVALID (c NULL, or over
 * INT_MAX bytes), RT_ERR_COMM; RT_ERR_UNSUPPORTED in a build without MPI. */
int server_mpi_bcast(struct engine_collective *c, void *data, size_t bytes);

/* Ends MPI (MPI_Finalize) and frees c; NULL is a no-op. */
void server_mpi_close(struct engine_collective *c);

/* Ends every process of c's group with status (MPI_Abort): what a rank that
 * fails does, since the others may be waiting for it in a sum. Returns only
 * when c is NULL. */
void server_mpi_abort(struct engine_collective *c, int status);

/* ---- the same on GPUs over NCCL (server/nccl_comm.c, CUDA=1 builds only) ----
 * `mpirun -np N retune train --device cuda ...`: one rank per GPU. */

#ifdef RT_WITH_CUDA
/* For mpi, an MPI group of more than one rank (server_mpi_open), training
 * on device ("cuda" or "cuda:K"; NULL: the default device, cuda when this
 * machine has a GPU): picks this rank's GPU (K when named, else the rank's
 * index on this machine, OMPI_COMM_WORLD_LOCAL_RANK, modulo its GPUs),
 * makes it current, starts an NCCL communicator on it (rank 0 creates the
 * id, server_mpi_bcast carries it) and sets *out to a group with mpi's
 * rank, size and host sums and a device sum over NCCL (sum_f32_device), to
 * be closed with server_nccl_close before mpi; *device_out = "cuda:K", the
 * device to train on, owned by *out. Sets *out = NULL and does nothing
 * when mpi is NULL or alone, or the device is another (the cpu: mpi's
 * path), or is NULL and there is no GPU. Every rank of mpi calls it; on
 * failure the caller ends the group (server_mpi_abort), since the others
 * may wait in NCCL's start. RT_ERR_UNSUPPORTED (no GPU), RT_ERR_NOT_FOUND
 * (no GPU K), RT_ERR_DEVICE (CUDA failed), RT_ERR_COMM (NCCL or MPI
 * failed), RT_ERR_NOMEM; err says which. */
int server_nccl_open(struct engine_collective *mpi, const char *device,
                     struct engine_collective **out, const char **device_out, char *err,
                     size_t errsize);

/* Ends the NCCL communicator and frees c; NULL is a no-op. */
void server_nccl_close(struct engine_collective *c);
#else
/* Without CUDA there is no GPU path: mpi's group trains alone. */
static inline int server_nccl_open(struct engine_collective *mpi, const char *device,
                                   struct engine_collective **out, const char **device_out,
                                   char *err, size_t errsize)
{
    (void)mpi;
    (void)device;
    (void)device_out;
    (void)err;
    (void)errsize;
    *out = NULL;
    return 0; /* RT_OK */
}

static inline void server_nccl_close(struct engine_collective *c)
{
    (void)c;
}
#endif

#endif
