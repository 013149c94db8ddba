// attention.c — multi-head self-attention over packed variable-length sequences.
//
// Sentences are short (T ≈ 10–30 tokens) and heads small (HS = 32 or 64), so each (sequence,
// head) is a handful of tiny matrix products: far too small for sgemm's packing, and a plain
// dot-product loop spends most of its time in horizontal reductions. The fast path instead runs
// every product through one register-blocked tile, C (≤4 rows, 16 columns) += A · B, vectorised
// along the 16 columns with the A entries broadcast; the one product whose columns are not
// contiguous in qkv (q kᵀ, and dy vᵀ in the backward pass) reads a transposed, zero-padded copy
// of K (or V) made on the stack (T <= 64). Longer sequences, and head sizes that are not a
// multiple of 16, go to sgemm in the forward pass and to plain loops in the backward pass.
#include "dr_kernels.h"
#include "dr_math.h"
#include <math.h>
#include <string.h>

int64_t dr_attention_prob_size(const int64_t *cu_seqlens, int64_t B, int64_t NH) {
    int64_t s = 0;
    for (int64_t b = 0; b < B; b++) {
        int64_t T = cu_seqlens[b + 1] - cu_seqlens[b];
        s += T * T;
    }
    return s * NH;
}

// ---------------------------------------------------------------------------------------------
// The tile. 8-lane vectors through the compiler's vector extension: one AVX register with
// -march=native, two SSE registers in a baseline x86-64 build, plain code elsewhere.

typedef float v8 __attribute__((vector_size(32), aligned(4)));

static inline v8 load8(const float *p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }

// c (RB,16) at row stride ldc: c = (accumulate ? c : 0) + Σ_{k<K} a(r,k) · b[k·ldb + 0..16),
// with a(r,k) = a[r·ars + k·aks] (either layout of A, so Aᵀ costs nothing: A is only broadcast).
#define DR_TILE16(RB)                                                                              \
    static inline void tile16_##RB(float *c, int64_t ldc, int accumulate, const float *a,         \
                                   int64_t ars, int64_t aks, const float *b, int64_t ldb,         \
                                   int64_t K) {                                                    \
        v8 acc[RB][2];                                                                             \
        for (int r = 0; r < RB; r++) acc[r][0] = acc[r][1] = (v8){0};                              \
        for (int64_t k = 0; k < K; k++) {                                                          \
            const v8 b0 = load8(b + k * ldb), b1 = load8(b + k * ldb + 8);                         \
            for (int r = 0; r < RB; r++) {                                                         \
                const v8 x = (v8){0} + a[r * ars + k * aks];                                       \
                acc[r][0] += x * b0;                                                               \
                acc[r][1] += x * b1;                                                               \
            }                                                                                      \
        }                                                                                          \
        for (int r = 0; r < RB; r++) {                                                             \
            float *cr = c + r * ldc;                                                               \
            if (accumulate) {                                                                      \
                acc[r][0] += load8(cr);                                                            \
                acc[r][1] += load8(cr + 8);                                                        \
            }                                                                                      \
            store8(cr, acc[r][0]);                                                                 \
            store8(cr + 8, acc[r][1]);                                                             \
        }                                                                                          \
    }
DR_TILE16(4)
DR_TILE16(1)

// C (M,16) (+)= A (M,K) · B (K,16), rows in blocks of 4.
static void rows16(float *c, int64_t ldc, int accumulate, const float *a, int64_t ars,
                   int64_t aks, const float *b, int64_t ldb, int64_t M, int64_t K) {
    int64_t i = 0;
    for (; i + 4 <= M; i += 4) tile16_4(c + i * ldc, ldc, accumulate, a + i * ars, ars, aks, b, ldb, K);
    for (; i < M; i++) tile16_1(c + i * ldc, ldc, accumulate, a + i * ars, ars, aks, b, ldb, K);
}

// C (M,N) (+)= A (M,K) · B (K,N), N a multiple of 16.
static void small_gemm(float *c, int64_t ldc, int accumulate, const float *a, int64_t ars,
                       int64_t aks, const float *b, int64_t ldb, int64_t M, int64_t N, int64_t K) {
    for (int64_t n0 = 0; n0 < N; n0 += 16) rows16(c + n0, ldc, accumulate, a, ars, aks, b + n0, ldb, M, K);
}

// The fast path's limits: its stack buffers hold T·T and HS·round16(T) floats.
#define DR_ATT_MAX_T 64
#define DR_ATT_BUF (DR_ATT_MAX_T * DR_ATT_MAX_T)

static inline int64_t round16(int64_t n) { return (n + 15) & ~(int64_t)15; }
static int fast_path(int64_t T, int64_t HS) {
    return T <= DR_ATT_MAX_T && HS % 16 == 0 && HS * round16(T) <= DR_ATT_BUF;
}

// xt (HS, TP) = x (T, HS) transposed (rows of x at stride ld), columns T..TP zero. In 8×8
// blocks: eight row loads, three rounds of shuffles, eight column stores (TP and HS are multiples
// of 16 here; rows past T read as zero, never from memory).
static void transpose_pad(float *restrict xt, const float *restrict x, int64_t ld, int64_t T,
                          int64_t TP, int64_t HS) {
    for (int64_t j0 = 0; j0 < TP; j0 += 8) {
        for (int64_t d0 = 0; d0 < HS; d0 += 8) {
            v8 r[8];
            for (int k = 0; k < 8; k++) r[k] = j0 + k < T ? load8(x + (j0 + k) * ld + d0) : (v8){0};
            v8 t[8], u[8];
            for (int k = 0; k < 8; k += 2) {
                t[k] = __builtin_shufflevector(r[k], r[k + 1], 0, 8, 1, 9, 4, 12, 5, 13);
                t[k + 1] = __builtin_shufflevector(r[k], r[k + 1], 2, 10, 3, 11, 6, 14, 7, 15);
            }
            for (int k = 0; k < 8; k += 4) {
                u[k] = __builtin_shufflevector(t[k], t[k + 2], 0, 1, 8, 9, 4, 5, 12, 13);
                u[k + 1] = __builtin_shufflevector(t[k], t[k + 2], 2, 3, 10, 11, 6, 7, 14, 15);
                u[k + 2] = __builtin_shufflevector(t[k + 1], t[k + 3], 0, 1, 8, 9, 4, 5, 12, 13);
                u[k + 3] = __builtin_shufflevector(t[k + 1], t[k + 3], 2, 3, 10, 11, 6, 7, 14, 15);
            }
            // u[k] holds columns k (low half: rows 0-3; high half: column k+4, rows 0-3), and
            // u[k+4] the same for rows 4-7
            for (int k = 0; k < 4; k++) {
                store8(xt + (d0 + k) * TP + j0, __builtin_shufflevector(u[k], u[k + 4], 0, 1, 2, 3, 8, 9, 10, 11));
                store8(xt + (d0 + k + 4) * TP + j0, __builtin_shufflevector(u[k], u[k + 4], 4, 5, 6, 7, 12, 13, 14, 15));
            }
        }
    }
}

// Σ x over n floats, in 8 lanes (vectorised; the order differs from a serial sum by ~1 ulp·n).
static inline float sum_lanes(const float *x, int64_t n) {
    v8 acc = (v8){0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) acc += load8(x + j);
    float s = 0.0f;
    for (; j < n; j++) s += x[j];
    for (int l = 0; l < 8; l++) s += acc[l];
    return s;
}

// p (T) = softmax(scale · s) for one row of raw scores s (room for TP >= T floats, TP a multiple
// of 16; overwritten; p is another buffer). keep (TP) is 1 for j < T and 0 beyond: the
// exponentials run as one branch-free vectorised loop over all TP entries, the padding's
// argument clamped to <= 0 (so it stays finite) and then multiplied away.
static void softmax_row(float *p, float *restrict s, const float *restrict keep, int64_t T,
                        int64_t TP, float scale) {
    float m = -INFINITY;
    for (int64_t j = 0; j < T; j++) m = s[j] > m ? s[j] : m;
    for (int64_t j = 0; j < TP; j++) {
        const float x = scale * (s[j] - m); // <= 0 for j < T (scale > 0); NaN stays NaN
        s[j] = dr_exp_nonpositive(x > 0.0f ? 0.0f : x) * keep[j];
    }
    const float inv = 1.0f / sum_lanes(s, TP);
    for (int64_t j = 0; j < T; j++) p[j] = s[j] * inv;
}

// p (T) = softmax(scale · p) in place, any T.
static void softmax_row_unpadded(float *p, int64_t T, float scale) {
    float m = -INFINITY;
    for (int64_t j = 0; j < T; j++) m = p[j] > m ? p[j] : m;
    for (int64_t j = 0; j < T; j++) p[j] = dr_exp_nonpositive(scale * (p[j] - m));
    const float inv = 1.0f / sum_lanes(p, T);
    for (int64_t j = 0; j < T; j++) p[j] *= inv;
}

// ---------------------------------------------------------------------------------------------

void dr_attention_forward(float *out, float *probs, const float *qkv,
                          const int64_t *cu_seqlens, int64_t B, int64_t C, int64_t NH) {
    // qkv (N,3C), out (N,C), probs: per sequence b, (NH, T, T) at offset NH * Σ_{b'<b} T²
    const int64_t HS = C / NH, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)HS);
    float kt[DR_ATT_BUF];      // Kᵀ of one head, (HS, TP)
    float s[4 * DR_ATT_MAX_T]; // raw scores of up to 4 query rows, (4, TP)
    float keep[DR_ATT_MAX_T];  // 1 for the T real columns of a score row, 0 for its padding
    int64_t poff = 0;
    for (int64_t b = 0; b < B; b++) {
        const int64_t t0 = cu_seqlens[b], T = cu_seqlens[b + 1] - t0;
        const float *qb = qkv + t0 * C3;
        for (int64_t j = 0; j < round16(T) && j < DR_ATT_MAX_T; j++) keep[j] = j < T ? 1.0f : 0.0f;
        for (int64_t h = 0; h < NH; h++) {
            float *P = probs + poff + h * T * T;
            const float *q = qb + h * HS, *k = qb + C + h * HS, *v = qb + 2 * C + h * HS;
            float *o = out + t0 * C + h * HS;
            if (fast_path(T, HS)) {
                const int64_t TP = round16(T);
                transpose_pad(kt, k, C3, T, TP, HS);
                for (int64_t i0 = 0; i0 < T; i0 += 4) {
                    const int64_t rb = T - i0 < 4 ? T - i0 : 4;
                    small_gemm(s, TP, 0, q + i0 * C3, C3, 1, kt, TP, rb, TP, HS); // s = q kᵀ
                    for (int64_t r = 0; r < rb; r++) softmax_row(P + (i0 + r) * T, s + r * TP, keep, T, TP, scale);
                }
                small_gemm(o, C, 0, P, T, 1, v, C3, T, HS, T); // o (T,HS) = P v
            } else {
                // Long sequences (or odd head sizes): sgemm per head. s = q kᵀ into P, softmax in
                // place (no padding: keep is never read past T), o = P v.
                dr_sgemm(0, 1, T, T, HS, 1.0f, q, C3, k, C3, 0.0f, P, T);
                for (int64_t i = 0; i < T; i++) softmax_row_unpadded(P + i * T, T, scale);
                dr_sgemm(0, 0, T, HS, T, 1.0f, P, T, v, C3, 0.0f, o, C);
            }
        }
        poff += NH * T * T;
    }
}

// One (sequence, head) of the backward pass, fast path: with dP = dy vᵀ and
// dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale:  dq += dS k,  dk += dSᵀ q,  dv += Pᵀ dy.
static void head_backward_fast(float *dq, float *dk, float *dv, const float *dy, const float *q,
                               const float *k, const float *v, const float *P, int64_t T,
                               int64_t HS, int64_t C, float scale) {
    const int64_t C3 = 3 * C, TP = round16(T);
    float vt[DR_ATT_BUF]; // vᵀ (HS, TP)
    float ds[DR_ATT_BUF]; // dP, then dS, (T, TP)
    transpose_pad(vt, v, C3, T, TP, HS);
    small_gemm(ds, TP, 0, dy, C, 1, vt, TP, T, TP, HS); // dP = dy vᵀ
    for (int64_t i = 0; i < T; i++) {
        const float *p = P + i * T;
        float *d = ds + i * TP;
        v8 acc = (v8){0};
        int64_t j = 0;
        for (; j + 8 <= T; j += 8) acc += load8(p + j) * load8(d + j);
        float dot = 0.0f;
        for (; j < T; j++) dot += p[j] * d[j];
        for (int l = 0; l < 8; l++) dot += acc[l];
        for (j = 0; j < T; j++) d[j] = p[j] * (d[j] - dot) * scale;
    }
    small_gemm(dq, C3, 1, ds, TP, 1, k, C3, T, HS, T); // dq += dS k
    small_gemm(dk, C3, 1, ds, 1, TP, q, C3, T, HS, T); // dk += dSᵀ q
    small_gemm(dv, C3, 1, P, 1, T, dy, C, T, HS, T);   // dv += Pᵀ dy
}

void dr_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                           const float *probs, const int64_t *cu_seqlens, int64_t B,
                           int64_t C, int64_t NH) {
    // scratch: max T floats (a dP row), used by the plain path only
    const int64_t HS = C / NH, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)HS);
    int64_t poff = 0;
    for (int64_t b = 0; b < B; b++) {
        const int64_t t0 = cu_seqlens[b], T = cu_seqlens[b + 1] - t0;
        for (int64_t h = 0; h < NH; h++) {
            const float *P = probs + poff + h * T * T;
            if (fast_path(T, HS)) {
                const float *qb = qkv + t0 * C3 + h * HS;
                float *db = dqkv + t0 * C3 + h * HS;
                head_backward_fast(db, db + C, db + 2 * C, dout + t0 * C + h * HS, qb, qb + C, qb + 2 * C,
                                   P, T, HS, C, scale);
                continue;
            }
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
