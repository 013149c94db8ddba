// bfloat16 linear layers for FROZEN weights (training.frozenPrecision "bf16"): the weights are
// rounded to bfloat16 once and packed in panels of 16 output columns whose inputs come in pairs,
// the layout AVX512-BF16's dot product (vdpbf16ps) reads; each row block of the input is rounded
// the same way (round to nearest even) as it is transposed. Products of two bfloat16 values are
// exact in fp32 and every sum is accumulated in fp32, so the only loss is the rounding of the two
// operands: about 3 significant digits of each, not of the sum. vdpbf16ps does twice the
// multiply-adds of an fp32 FMA per instruction.
//
// Without AVX512-BF16 (cpuid leaf 7.1 EAX bit 5) dr_packed_matmul_bf16 returns 0 and does
// nothing; the Swift side refuses the option on such a CPU rather than fall back silently.
#include "dr_kernels.h"
#include "dr_packed.h"
#include <math.h>
#include <string.h>

uint32_t dr_bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;  // NaN stays a (quiet) NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                 // to nearest, ties to even
    return u >> 16;
}

float dr_bf16_round(float f) {
    const uint32_t u = dr_bf16_bits(f) << 16;
    float r;
    memcpy(&r, &u, sizeof r);
    return r;
}

int64_t dr_packed_linear_size_bf16(int64_t C, int64_t OC) { return (OC + 15) / 16 * 16 * ((C + 1) / 2); }

// Element (j, c) of the weight (output j, input c) is w[j * sj + c * sc]; word (p, c2, q) holds
// inputs 2 c2 (low half) and 2 c2 + 1 (high half) of output 16 p + q.
static void pack_bf16(uint32_t *dst, const float *w, int64_t sj, int64_t sc, int64_t C, int64_t OC) {
    const int64_t P = (OC + 15) / 16, C2 = (C + 1) / 2;
    for (int64_t p = 0; p < P; p++)
        for (int64_t c2 = 0; c2 < C2; c2++)
            for (int64_t q = 0; q < 16; q++) {
                const int64_t j = p * 16 + q, c = 2 * c2;
                const uint32_t lo = j < OC ? dr_bf16_bits(w[j * sj + c * sc]) : 0;
                const uint32_t hi = j < OC && c + 1 < C ? dr_bf16_bits(w[j * sj + (c + 1) * sc]) : 0;
                dst[(p * C2 + c2) * 16 + q] = lo | hi << 16;
            }
}

void dr_pack_linear_bf16(uint32_t *packed, const float *weight, int64_t C, int64_t OC) {
    pack_bf16(packed, weight, C, 1, C, OC);
}

// weightᵀ as a (C outputs, OC inputs) linear weight: element (c, o) is weight[o * C + c].
void dr_pack_linear_t_bf16(uint32_t *packed, const float *weight, int64_t C, int64_t OC) {
    pack_bf16(packed, weight, 1, C, OC, C);
}

void dr_linear_reference_bf16(float *out, const float *inp, const float *weight, const float *bias,
                              const float *resid, int64_t N, int64_t C, int64_t OC) {
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < OC; j++) {
            float acc = 0.0f;
            for (int64_t c = 0; c < C; c += 2) {
                const float xe = dr_bf16_round(inp[i * C + c]), we = dr_bf16_round(weight[j * C + c]);
                const float xo = c + 1 < C ? dr_bf16_round(inp[i * C + c + 1]) : 0.0f;
                const float wo = c + 1 < C ? dr_bf16_round(weight[j * C + c + 1]) : 0.0f;
                acc = fmaf(xo, wo, acc);  // the order vdpbf16ps documents: the odd pair first
                acc = fmaf(xe, we, acc);
            }
            if (bias) acc = acc + bias[j];
            if (resid) acc = acc + resid[i * OC + j];
            out[i * OC + j] = acc;
        }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#define DR_HAVE_BF16_KERNEL 1

static int cpu_has_avx512bf16(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return 0;  // OSXSAVE
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 0xE6) != 0xE6) return 0;  // the OS saves the ZMM state
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((b >> 16) & 1) || !((b >> 30) & 1)) return 0;  // F, BW
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return 0;
    return (a >> 5) & 1;  // AVX512_BF16
}

#define DR_TBF __attribute__((target("avx512f,avx512bw,avx512bf16")))
#define DR_INLINE static inline __attribute__((always_inline))
#if defined(__clang__)
#define DR_UNROLL _Pragma("clang loop unroll(full)")
#else
#define DR_UNROLL _Pragma("GCC unroll 12")
#endif

// A row block's input in bfloat16 pairs: xt[c2 * 12 + r] = (x[r][2 c2], x[r][2 c2 + 1]).
static _Thread_local uint32_t bf_xt[(DR_PACKED_MAX_C / 2) * 12];

static void transpose_block_bf16(uint32_t *xt, const float *x, int64_t nr, int64_t C) {
    const int64_t C2 = (C + 1) / 2;
    for (int64_t c2 = 0; c2 < C2; c2++)
        for (int64_t r = 0; r < 12; r++) {
            uint32_t v = 0;
            if (r < nr) {
                v = dr_bf16_bits(x[r * C + 2 * c2]);
                if (2 * c2 + 1 < C) v |= dr_bf16_bits(x[r * C + 2 * c2 + 1]) << 16;
            }
            xt[c2 * 12 + r] = v;
        }
}

DR_INLINE DR_TBF void pkbf(const int nr, const int np, float *out, const uint32_t *xt, const uint32_t *pa,
                           const float *bias, const float *resid, int64_t j, int64_t C2, int64_t OC) {
    __m512 acc[8][12];
    DR_UNROLL for (int q = 0; q < np; q++)
        DR_UNROLL for (int r = 0; r < nr; r++) acc[q][r] = _mm512_setzero_ps();
    for (int64_t c2 = 0; c2 < C2; c2++) {
        __m512i w[8];
        DR_UNROLL for (int q = 0; q < np; q++) w[q] = _mm512_loadu_si512((const void *)(pa + (q * C2 + c2) * 16));
        DR_UNROLL for (int r = 0; r < nr; r++) {
            const __m512i xv = _mm512_set1_epi32((int)xt[c2 * 12 + r]);
            DR_UNROLL for (int q = 0; q < np; q++)
                acc[q][r] = _mm512_dpbf16_ps(acc[q][r], (__m512bh)xv, (__m512bh)w[q]);
        }
    }
    DR_UNROLL for (int q = 0; q < np; q++) {
        const int64_t jj = j + 16 * q;
        const int64_t nv = OC - jj < 16 ? OC - jj : 16;
        const __mmask16 m = (__mmask16)((1u << nv) - 1u);
        const __m512 bv = bias ? _mm512_maskz_loadu_ps(m, bias + jj) : _mm512_setzero_ps();
        DR_UNROLL for (int r = 0; r < nr; r++) {
            __m512 v = acc[q][r];
            if (bias) v = _mm512_add_ps(v, bv);
            if (resid) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, resid + r * OC + jj));
            _mm512_mask_storeu_ps(out + r * OC + jj, m, v);
        }
    }
}

#define DR_PKBF_ROW(nr, NPMAX)                                                                      \
    static DR_TBF void pkbf_rows_##nr(float *o, const uint32_t *xt, const uint32_t *packed,          \
                                      const float *bias, const float *rs, int64_t p, int64_t P,       \
                                      int64_t C2, int64_t OC) {                                       \
        for (; p + NPMAX <= P; p += NPMAX) pkbf(nr, NPMAX, o, xt, packed + p * 16 * C2, bias, rs, p * 16, C2, OC); \
        if (NPMAX > 2) for (; p + 2 <= P; p += 2) pkbf(nr, NPMAX > 2 ? 2 : 1, o, xt, packed + p * 16 * C2, bias, rs, p * 16, C2, OC); \
        for (; p < P; p++) pkbf(nr, 1, o, xt, packed + p * 16 * C2, bias, rs, p * 16, C2, OC);      \
    }
DR_PKBF_ROW(1, 8) DR_PKBF_ROW(2, 8) DR_PKBF_ROW(3, 4) DR_PKBF_ROW(4, 4) DR_PKBF_ROW(5, 4)
DR_PKBF_ROW(6, 4) DR_PKBF_ROW(7, 2) DR_PKBF_ROW(8, 2) DR_PKBF_ROW(9, 2) DR_PKBF_ROW(10, 2)
DR_PKBF_ROW(11, 2) DR_PKBF_ROW(12, 2)
#undef DR_PKBF_ROW

// Rows [0, N), panels [p0, P). As in the fp32 kernel, with more than two row blocks the panels go
// in column blocks of about 384 KB swept over every row block (which outputs are summed together
// never changes).
static DR_TBF void packed_bf16_rows(float *out, const float *inp, const uint32_t *packed, const float *bias,
                                    const float *resid, int64_t N, int64_t C, int64_t OC, int64_t p0, int64_t P) {
    uint32_t *xt = bf_xt;
    const int64_t C2 = (C + 1) / 2;
    const int64_t pb = dr_panel_block(N, C2, P - p0);
    for (int64_t q0 = p0; q0 < P; q0 += pb) {
        const int64_t q1 = q0 + pb < P ? q0 + pb : P;
        for (int64_t i = 0; i < N;) {
            const int64_t nr = dr_even_block(N - i, 12);
            transpose_block_bf16(xt, inp + i * C, nr, C);
            float *o = out + i * OC;
            const float *rs = resid ? resid + i * OC : NULL;
#define PKBF(n) case n: pkbf_rows_##n(o, xt, packed, bias, rs, q0, q1, C2, OC); break;
            switch (nr) { PKBF(1) PKBF(2) PKBF(3) PKBF(4) PKBF(5) PKBF(6) PKBF(7) PKBF(8) PKBF(9) PKBF(10) PKBF(11) PKBF(12) }
#undef PKBF
            i += nr;
        }
    }
}

typedef struct {
    float *out;
    const float *inp;
    const uint32_t *packed;
    const float *bias, *resid;
    int64_t N, C, OC, P, tasks;
    int by_rows;
} bf16_job;

// Task t: an even share of the rows (every panel) or of the panels (dr_packed_task_range).
static void bf16_task(void *arg, int64_t t) {
    const bf16_job *j = (const bf16_job *)arg;
    int64_t a, b;
    dr_packed_task_range(t, j->tasks, j->by_rows, j->N, j->P, &a, &b);
    if (j->by_rows)
        packed_bf16_rows(j->out + a * j->OC, j->inp + a * j->C, j->packed, j->bias,
                         j->resid ? j->resid + a * j->OC : NULL, b - a, j->C, j->OC, 0, j->P);
    else
        packed_bf16_rows(j->out, j->inp, j->packed, j->bias, j->resid, j->N, j->C, j->OC, a, b);
}
#endif

int dr_bf16_available(void) {
#ifdef DR_HAVE_BF16_KERNEL
    static int probed = -1;
    if (probed < 0) probed = cpu_has_avx512bf16();
    return probed;
#else
    return 0;
#endif
}

int dr_packed_matmul_bf16(float *out, const float *inp, const uint32_t *packed, const float *bias,
                          const float *resid, int64_t N, int64_t C, int64_t OC) {
#ifdef DR_HAVE_BF16_KERNEL
    if (!dr_bf16_available() || N < 0 || C < 0 || C > DR_PACKED_MAX_C || OC < 0) return 0;
    bf16_job j = {out, inp, packed, bias, resid, N, C, OC, (OC + 15) / 16, 1, 0};
    const dr_executor *ex = dr_thread_executor();
    if ((j.tasks = dr_packed_split(ex, N, C, OC, j.P, &j.by_rows)) > 1) {
        ex->run(ex->ctx, j.tasks, bf16_task, &j);
    } else {
        packed_bf16_rows(out, inp, packed, bias, resid, N, C, OC, 0, j.P);
    }
    return 1;
#else
    (void)out; (void)inp; (void)packed; (void)bias; (void)resid; (void)N; (void)C; (void)OC;
    return 0;
#endif
}
