// dr_mpi.c — the MPI shim (dr_mpi.h). MPI_COMM_WORLD only; errors are returned, never fatal.
#include "dr_mpi.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <mpi.h>

int dr_mpi_init(int *provided) {
    int level = MPI_THREAD_SINGLE;
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &level);
    if (rc != MPI_SUCCESS) return rc;
    if (provided) {
        *provided = level == MPI_THREAD_MULTIPLE ? 3 : level == MPI_THREAD_SERIALIZED ? 2 : level == MPI_THREAD_FUNNELED ? 1 : 0;
    }
    return MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}

int dr_mpi_active(void) {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    return init && !fin;
}

int dr_mpi_finalize(void) { return MPI_Finalize(); }

int dr_mpi_rank(int *rank) { return MPI_Comm_rank(MPI_COMM_WORLD, rank); }

int dr_mpi_size(int *size) { return MPI_Comm_size(MPI_COMM_WORLD, size); }

void dr_mpi_library_version(char *buf, size_t cap) {
    if (cap == 0) return;
    char v[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    if (MPI_Get_library_version(v, &len) != MPI_SUCCESS) len = 0;
    v[len < MPI_MAX_LIBRARY_VERSION_STRING ? len : MPI_MAX_LIBRARY_VERSION_STRING - 1] = '\0';
    snprintf(buf, cap, "%s", v);
}

void dr_mpi_error_string(int code, char *buf, size_t cap) {
    if (cap == 0) return;
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, s, &len) != MPI_SUCCESS) {
        snprintf(buf, cap, "MPI error %d", code);
        return;
    }
    s[len < MPI_MAX_ERROR_STRING ? len : MPI_MAX_ERROR_STRING - 1] = '\0';
    snprintf(buf, cap, "%s", s);
}

int dr_mpi_allgatherv_float(const float *send, int count, float *recv, const int *counts, const int *displs) {
    return MPI_Allgatherv(send, count, MPI_FLOAT, recv, counts, displs, MPI_FLOAT, MPI_COMM_WORLD);
}

int dr_mpi_allgather_u64(uint64_t value, uint64_t *recv) {
    return MPI_Allgather(&value, 1, MPI_UINT64_T, recv, 1, MPI_UINT64_T, MPI_COMM_WORLD);
}

int dr_mpi_bcast_bytes(void *buf, size_t count, int root) {
    unsigned char *p = buf;
    const size_t piece = (size_t)1 << 30;
    while (count > 0) {
        size_t n = count < piece ? count : piece;
        int rc = MPI_Bcast(p, (int)n, MPI_BYTE, root, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return rc;
        p += n;
        count -= n;
    }
    return MPI_SUCCESS;
}

int dr_mpi_barrier(void) { return MPI_Barrier(MPI_COMM_WORLD); }

int dr_mpi_barrier_sleeping(int sleep_us) {
    MPI_Request req;
    int rc = MPI_Ibarrier(MPI_COMM_WORLD, &req);
    if (rc != MPI_SUCCESS) return rc;
    struct timespec pause = {sleep_us / 1000000, (long)(sleep_us % 1000000) * 1000};
    for (;;) {
        int done = 0;
        rc = MPI_Test(&req, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS || done) return rc;
        nanosleep(&pause, NULL);
    }
}

void dr_mpi_abort(int code) { MPI_Abort(MPI_COMM_WORLD, code); }
