#pragma once
// Open MPI through pkg-config `ompi-c`. Only the C shim (Sources/CMPIShim) includes this: MPI's
// handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_IN_PLACE) are macros Swift cannot import.
#include <mpi.h>
