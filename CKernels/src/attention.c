// attention.c — multi-head self-attention over packed variable-length sequences.
#include "dr_kernels.h"
#include <math.h>

int64_t dr_attention_prob_size(const int64_t *cu_seqlens, int64_t B, int64_t NH) {
    int64_t s = 0;
    for (int64_t b = 0; b < B; b++) {
        int64_t T = cu_seqlens[b + 1] - cu_seqlens[b];
        s += T * T;
    }
    return s * NH;
}

void dr_attention_forward(float *out, float *probs, const float *qkv,
                          const int64_t *cu_seqlens, int64_t B, int64_t C, int64_t NH) {
    // qkv (N,3C), out (N,C), probs: per sequence b, (NH, T, T) at offset NH * Σ_{b'<b} T²
    const int64_t HS = C / NH, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)HS);
    int64_t poff = 0;
    for (int64_t b = 0; b < B; b++) {
        const int64_t t0 = cu_seqlens[b], T = cu_seqlens[b + 1] - t0;
        for (int64_t h = 0; h < NH; h++) {
            float *P = probs + poff + h * T * T;
            for (int64_t i = 0; i < T; i++) {
                const float *q = qkv + (t0 + i) * C3 + h * HS;
                float *p = P + i * T;
                float maxv = -INFINITY;
                for (int64_t j = 0; j < T; j++) {
                    const float *k = qkv + (t0 + j) * C3 + C + h * HS;
                    float s = 0.0f;
                    for (int64_t d = 0; d < HS; d++) s += q[d] * k[d];
                    s *= scale;
                    p[j] = s;
                    if (s > maxv) maxv = s;
                }
                float sum = 0.0f;
                for (int64_t j = 0; j < T; j++) {
                    p[j] = expf(p[j] - maxv);
                    sum += p[j];
                }
                float inv = 1.0f / sum;
                for (int64_t j = 0; j < T; j++) p[j] *= inv;
                float *o = out + (t0 + i) * C + h * HS;
                for (int64_t d = 0; d < HS; d++) o[d] = 0.0f;
                for (int64_t j = 0; j < T; j++) {
                    const float *v = qkv + (t0 + j) * C3 + 2 * C + h * HS;
                    const float pj = p[j];
                    for (int64_t d = 0; d < HS; d++) o[d] += pj * v[d];
                }
            }
        }
        poff += NH * T * T;
    }
}

void dr_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                           const float *probs, const int64_t *cu_seqlens, int64_t B,
                           int64_t C, int64_t NH) {
    // scratch: max T floats (dP row, then dS row)
    const int64_t HS = C / NH, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)HS);
    int64_t poff = 0;
    for (int64_t b = 0; b < B; b++) {
        const int64_t t0 = cu_seqlens[b], T = cu_seqlens[b + 1] - t0;
        for (int64_t h = 0; h < NH; h++) {
            const float *P = probs + poff + h * T * T;
            for (int64_t i = 0; i < T; i++) {
                const float *p = P + i * T;
                const float *dy = dout + (t0 + i) * C + h * HS;
                float *ds = scratch;
                // dV_j += p_ij dy_i ; dP_ij = dy_i · v_j
                float dot = 0.0f;
                for (int64_t j = 0; j < T; j++) {
                    const float *v = qkv + (t0 + j) * C3 + 2 * C + h * HS;
                    float *dv = dqkv + (t0 + j) * C3 + 2 * C + h * HS;
                    float dp = 0.0f;
                    for (int64_t d = 0; d < HS; d++) {
                        dp += dy[d] * v[d];
                        dv[d] += p[j] * dy[d];
                    }
                    ds[j] = dp;
                    dot += dp * p[j];
                }
                // softmax backward: dS_ij = p_ij (dP_ij - Σ_k p_ik dP_ik), then the scale
                const float *q = qkv + (t0 + i) * C3 + h * HS;
                float *dq = dqkv + (t0 + i) * C3 + h * HS;
                for (int64_t j = 0; j < T; j++) {
                    float g = p[j] * (ds[j] - dot) * scale;
                    const float *k = qkv + (t0 + j) * C3 + C + h * HS;
                    float *dk = dqkv + (t0 + j) * C3 + C + h * HS;
                    for (int64_t d = 0; d < HS; d++) {
                        dq[d] += g * k[d];
                        dk[d] += g * q[d];
                    }
                }
            }
        }
        poff += NH * T * T;
    }
}
