// adapter.c — the task-conditioned gated bottleneck adapter.
//
// One bottleneck (W_down, W_up) is shared by every domain; what a domain owns is one row of the
// gate table G, which scales the bottleneck's R channels. A sequence's gate is either the row of
// its domain (hard routing, gate_ids) or the router's probability-weighted mix of rows (soft
// routing, P). The gate is per sequence, so it is applied per block of packed rows.
#include "dr_kernels.h"
#include <math.h>
#include <string.h>


int64_t dr_adapter_scratch_size(int64_t N, int64_t R, int64_t B) { return N * R + B * R; }

#include "dr_math.h"

// a (n) = act(pre)
static void act_forward(float *restrict a, const float *restrict pre, int64_t n, dr_act act) {
    switch (act) {
    case DR_ACT_RELU:
        for (int64_t i = 0; i < n; i++) a[i] = pre[i] < 0.0f ? 0.0f : pre[i]; // NaN stays NaN
        break;
    case DR_ACT_IDENTITY:
        memcpy(a, pre, (size_t)n * sizeof(float));
        break;
    default:
        for (int64_t i = 0; i < n; i++) {
            const float x = pre[i];
            a[i] = x * dr_normal_cdf(x, dr_exp_nonpositive(-0.5f * x * x));
        }
        break;
    }
}

// gmix (B,R) = P (B,K) · G (K,R), or the rows G[gate_ids[b]] when P is NULL.
static void gate_mix(float *restrict gmix, const float *P, const int32_t *gate_ids,
                     const float *G, int64_t B, int64_t R, int64_t K) {
    if (P) {
        dr_sgemm(0, 0, B, R, K, 1.0f, P, K, G, R, 0.0f, gmix, R);
    } else {
        for (int64_t b = 0; b < B; b++)
            memcpy(gmix + b * R, G + (int64_t)gate_ids[b] * R, (size_t)R * sizeof(float));
    }
}

// z (N,R) = gmix[b] ⊙ a for the rows of each sequence b.
static void gate_rows(float *restrict z, const float *restrict a, const float *restrict gmix,
                      const int64_t *cu_seqlens, int64_t B, int64_t R) {
    for (int64_t b = 0; b < B; b++) {
        const float *g = gmix + b * R;
        for (int64_t i = cu_seqlens[b]; i < cu_seqlens[b + 1]; i++) {
            const float *ai = a + i * R;
            float *zi = z + i * R;
            for (int64_t r = 0; r < R; r++) zi[r] = g[r] * ai[r];
        }
    }
}

void dr_adapter_forward(float *restrict out, float *restrict pre, float *restrict act_out,
                        float *restrict gmix, float *restrict scratch, const float *inp,
                        const int64_t *cu_seqlens, const float *P, const int32_t *gate_ids,
                        const float *W_down, const float *b_down, const float *W_up,
                        const float *b_up, const float *G, dr_act act, int64_t B, int64_t C,
                        int64_t R, int64_t K) {
    const int64_t N = cu_seqlens[B];
    float *z = scratch; // (N,R)

    dr_matmul_forward(pre, inp, W_down, b_down, N, C, R); // pre (N,R)
    act_forward(act_out, pre, N * R, act);
    gate_mix(gmix, P, gate_ids, G, B, R, K);
    gate_rows(z, act_out, gmix, cu_seqlens, B, R);

    // out = h + b_up, then out += z · W_upᵀ in one GEMM.
    for (int64_t i = 0; i < N; i++) {
        const float *x = inp + i * C;
        float *o = out + i * C;
        if (b_up) {
            for (int64_t j = 0; j < C; j++) o[j] = x[j] + b_up[j];
        } else {
            memcpy(o, x, (size_t)C * sizeof(float));
        }
    }
    dr_sgemm(0, 1, N, C, R, 1.0f, z, R, W_up, R, 1.0f, out, C);
}

// d (N,R) *= gmix[b] ⊙ act'(pre), turning dz into dpre in place.
static void dz_to_dpre(float *restrict d, const float *restrict pre, const float *restrict gmix,
                       const int64_t *cu_seqlens, int64_t B, int64_t R, dr_act act) {
    for (int64_t b = 0; b < B; b++) {
        const float *g = gmix + b * R;
        const int64_t r0 = cu_seqlens[b] * R, r1 = cu_seqlens[b + 1] * R;
        switch (act) {
        case DR_ACT_RELU:
            for (int64_t i = r0; i < r1; i += R) {
                for (int64_t r = 0; r < R; r++) d[i + r] *= g[r] * (float)(pre[i + r] > 0.0f);
            }
            break;
        case DR_ACT_IDENTITY:
            for (int64_t i = r0; i < r1; i += R) {
                for (int64_t r = 0; r < R; r++) d[i + r] *= g[r];
            }
            break;
        default:
            for (int64_t i = r0; i < r1; i += R) {
                for (int64_t r = 0; r < R; r++) {
                    // GELU'(x) = Φ(x) + x·φ(x), both from one exponential
                    const float x = pre[i + r];
                    const float e = dr_exp_nonpositive(-0.5f * x * x);
                    d[i + r] *= g[r] * (dr_normal_cdf(x, e) + x * (DR_INV_SQRT_2PI * e));
                }
            }
            break;
        }
    }
}

void dr_adapter_backward(float *dinp, float *dW_down, float *db_down, float *dW_up, float *db_up,
                         float *dG, float *dP, float *restrict scratch, const float *dout,
                         const float *pre, const float *act_out, const float *gmix,
                         const float *inp, const int64_t *cu_seqlens, const float *P,
                         const int32_t *gate_ids, const float *W_down, const float *W_up,
                         const float *G, dr_act act, int64_t B, int64_t C, int64_t R,
                         int64_t K) {
    const int64_t N = cu_seqlens[B];
    float *dz = scratch;        // (N,R): z, then dz, then dpre
    float *dg = scratch + N * R; // (B,R): gradient of each sequence's gate
    if (!P) dP = NULL;

    // Up projection: dW_up (C,R) += doutᵀ · z, z rebuilt from the saved a and gmix.
    if (dW_up) {
        gate_rows(dz, act_out, gmix, cu_seqlens, B, R);
        dr_sgemm(1, 0, C, R, N, 1.0f, dout, C, dz, R, 1.0f, dW_up, R);
    }
    if (db_up) {
        for (int64_t i = 0; i < N; i++) {
            const float *d = dout + i * C;
            for (int64_t j = 0; j < C; j++) db_up[j] += d[j];
        }
    }
    // Residual path.
    if (dinp) {
        for (int64_t i = 0; i < N * C; i++) dinp[i] += dout[i];
    }

    const int need_gate = dG != NULL || dP != NULL;
    const int need_down = dinp != NULL || dW_down != NULL || db_down != NULL;
    if (!need_gate && !need_down) return;

    dr_sgemm(0, 0, N, R, C, 1.0f, dout, C, W_up, R, 0.0f, dz, R); // dz (N,R) = dout · W_up

    if (need_gate) {
        // dg_b (R) = Σ_{rows of b} dz ⊙ a
        for (int64_t b = 0; b < B; b++) {
            float *g = dg + b * R;
            for (int64_t r = 0; r < R; r++) g[r] = 0.0f;
            for (int64_t i = cu_seqlens[b]; i < cu_seqlens[b + 1]; i++) {
                const float *di = dz + i * R;
                const float *ai = act_out + i * R;
                for (int64_t r = 0; r < R; r++) g[r] += di[r] * ai[r];
            }
        }
        if (dG) {
            if (P) {
                dr_sgemm(1, 0, K, R, B, 1.0f, P, K, dg, R, 1.0f, dG, R); // dG += Pᵀ · dg
            } else {
                for (int64_t b = 0; b < B; b++) {
                    float *row = dG + (int64_t)gate_ids[b] * R;
                    const float *g = dg + b * R;
                    for (int64_t r = 0; r < R; r++) row[r] += g[r];
                }
            }
        }
        if (dP) dr_sgemm(0, 1, B, K, R, 1.0f, dg, R, G, R, 1.0f, dP, K); // dP += dg · Gᵀ
    }

    if (need_down) {
        dz_to_dpre(dz, pre, gmix, cu_seqlens, B, R, act);
        dr_matmul_backward(dinp, dW_down, db_down, dz, inp, W_down, N, C, R);
    }
}
