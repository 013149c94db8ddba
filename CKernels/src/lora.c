// lora.c — low-rank updates added onto a frozen projection's output.
//
// Both products go through the rank-R bottleneck, so neither side ever forms the (OC,C) matrix
// Bm · A: four thin GEMMs of N·R·(C or OC) flops each.
#include "dr_kernels.h"

int64_t dr_lora_scratch_size(int64_t N, int64_t R) { return N * R; }

void dr_lora_forward(float *out, int64_t ldo, float *restrict xa, const float *inp,
                     const float *A, const float *Bm, float scale, int64_t N, int64_t C,
                     int64_t OC, int64_t R) {
    dr_sgemm(0, 1, N, R, C, 1.0f, inp, C, A, C, 0.0f, xa, R);      // xa (N,R) = inp · Aᵀ
    dr_sgemm(0, 1, N, OC, R, scale, xa, R, Bm, R, 1.0f, out, ldo); // out += scale · xa · Bmᵀ
}

void dr_lora_backward(float *dinp, float *dA, float *dB, float *restrict scratch,
                      const float *dout, int64_t ldo, const float *xa, const float *inp,
                      const float *A, const float *Bm, float scale, int64_t N, int64_t C,
                      int64_t OC, int64_t R) {
    // dB (OC,R) += scale · doutᵀ · xa
    if (dB) dr_sgemm(1, 0, OC, R, N, scale, dout, ldo, xa, R, 1.0f, dB, R);
    if (!dinp && !dA) return;
    float *dxa = scratch; // (N,R) = scale · dout · Bm
    dr_sgemm(0, 0, N, R, OC, scale, dout, ldo, Bm, R, 0.0f, dxa, R);
    if (dA) dr_sgemm(1, 0, R, C, N, 1.0f, dxa, R, inp, C, 1.0f, dA, C);       // dA += dxaᵀ · inp
    if (dinp) dr_sgemm(0, 0, N, C, R, 1.0f, dxa, R, A, C, 1.0f, dinp, C);     // dinp += dxa · A
}
