// Shared by the fp32 (blas.c) and bfloat16 (bf16.c) packed kernels: how a call is blocked and
// split. None of it changes which products are summed together, so neither changes a bit.
#ifndef DR_PACKED_H
#define DR_PACKED_H
#include "dr_kernels.h"

// Rows in blocks of at most `most`, as even as possible (13 rows: 7 + 6, not 12 + 1).
static inline int64_t dr_even_block(int64_t left, int64_t most) {
    const int64_t blocks = (left + most - 1) / most;
    return (left + blocks - 1) / blocks;
}

// The panels one sweep over the rows reuses. With more than two row blocks, the weights go in
// column blocks of about 384 KB, each swept over every row block while it sits in the L2 cache.
// `words` is the 32-bit words of one panel column: C (fp32), (C + 1) / 2 (bf16 pairs). Multiples
// of 8, the widest panel group.
static inline int64_t dr_panel_block(int64_t N, int64_t words, int64_t P) {
    if (N <= 24) return P;
    int64_t pb = (384 * 1024) / (16 * 4 * (words > 0 ? words : 1)) / 8 * 8;
    return pb < 8 ? 8 : pb;
}

// Whether a call of N rows and P panels goes over the executor (work worth a hand-off, about
// 1 MFLOP per task), and how: by rows from 24 rows per worker, else by groups of 8 panels
// (groups alone balance badly: 72 panels are 5 + 4 groups, 24 panels 2 + 1). 0: run it serially.
static inline int64_t dr_packed_split(const dr_executor *ex, int64_t N, int64_t C, int64_t OC, int64_t P, int *by_rows) {
    *by_rows = 0;
    if (!ex || !ex->run || ex->workers <= 1 || N * C * OC < (int64_t)ex->workers * (1 << 19)) return 0;
    *by_rows = N >= 24 * (int64_t)ex->workers;
    if (!*by_rows && P < 16) return 0;
    const int64_t most = *by_rows ? N / 12 : (P + 7) / 8;
    return ex->workers < most ? ex->workers : most;
}

// Task t of `tasks`: rows [*a, *b) (by rows) or panels [*a, *b).
static inline void dr_packed_task_range(int64_t t, int64_t tasks, int by_rows, int64_t N, int64_t P, int64_t *a, int64_t *b) {
    if (by_rows) {
        *a = N * t / tasks;
        *b = N * (t + 1) / tasks;
        return;
    }
    const int64_t groups = (P + 7) / 8, g0 = groups * t / tasks, g1 = groups * (t + 1) / tasks;
    *a = g0 * 8;
    *b = g1 * 8 < P ? g1 * 8 : P;
}
#endif
