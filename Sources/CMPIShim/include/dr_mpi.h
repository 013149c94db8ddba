#pragma once
// dr_mpi.h — the few MPI operations DualReplay uses, behind plain C types (Swift never sees
// mpi.h: MPI_COMM_WORLD, MPI_FLOAT and MPI_IN_PLACE are macros). Everything works on
// MPI_COMM_WORLD, whose error handler is MPI_ERRORS_RETURN after dr_mpi_init: every function
// returns 0 (DR_MPI_OK) or an MPI error code (dr_mpi_error_string names it), never aborts by
// itself. Nothing here allocates or prints.
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DR_MPI_OK 0

// MPI_Init_thread asking for MPI_THREAD_SERIALIZED (one thread at a time calls MPI), then
// MPI_ERRORS_RETURN on MPI_COMM_WORLD. *provided: the thread level granted (0 single,
// 1 funneled, 2 serialized, 3 multiple). Call once, only in a process started by a launcher.
int dr_mpi_init(int *provided);
// 1 after MPI_Init and before MPI_Finalize, else 0.
int dr_mpi_active(void);
int dr_mpi_finalize(void);
int dr_mpi_rank(int *rank);
int dr_mpi_size(int *size);
// The library's version string (MPI_Get_library_version) into buf (NUL-terminated, cap bytes).
void dr_mpi_library_version(char *buf, size_t cap);
// MPI_Error_string of `code` into buf (NUL-terminated, cap bytes).
void dr_mpi_error_string(int code, char *buf, size_t cap);

// recv (sum of counts floats) = concatenation over ranks r of rank r's send (counts[r] floats),
// placed at displs[r]. counts and displs have one entry per rank.
int dr_mpi_allgatherv_float(const float *send, int count, float *recv, const int *counts, const int *displs);
// recv (size values) = every rank's value, in rank order.
int dr_mpi_allgather_u64(uint64_t value, uint64_t *recv);
// buf (count bytes) on every rank = buf on `root`; counts above INT_MAX go in pieces.
int dr_mpi_bcast_bytes(void *buf, size_t count, int root);
int dr_mpi_barrier(void);
// A barrier whose waiting rank sleeps `sleep_us` microseconds between polls (MPI_Ibarrier +
// MPI_Test) instead of spinning on a core: for ranks that may wait minutes for a slower one.
int dr_mpi_barrier_sleeping(int sleep_us);
// MPI_Abort(MPI_COMM_WORLD, code): the launcher stops every rank of the job.
void dr_mpi_abort(int code);

#ifdef __cplusplus
}
#endif
