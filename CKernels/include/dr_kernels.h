// dr_kernels.h — the one public header of DualReplay's C kernels.
//
// Conventions (see STYLE.md):
// - Layers are pairs dr_<op>_forward / dr_<op>_backward. Arguments come in the order
//   outputs, saved values, inputs, weights, sizes.
// - Row-major; linear weights in the PyTorch (out, in) layout so safetensors load as-is.
// - Sequences are PACKED: a batch of B sequences is N = cu_seqlens[B] token rows, sequence b
//   owning rows [cu_seqlens[b], cu_seqlens[b+1]). Nothing is padded, so padding can never
//   change a result.
// - Backward functions ADD into gradient buffers; the caller zeroes them. A NULL weight
//   gradient means "frozen": that GEMM is skipped, the input gradient is still produced.
// - Kernels never allocate, print, or set thread counts; the caller plans workspaces.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------------------
// BLAS (blas.c): every BLAS call of the project goes through here.

void dr_blas_set_threads(int n);
int dr_blas_get_threads(void);
// C (M,N) = alpha * op(A) * op(B) + beta * C, row-major, transA/transB 0 or 1.
void dr_sgemm(int transA, int transB, int64_t M, int64_t N, int64_t K, float alpha,
              const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
              float *C, int64_t ldc);

// out (N,OC) = inp (N,C) · weight(OC,C)ᵀ + bias(OC); bias may be NULL. N <= DR_SMALL_MATMUL_ROWS
// goes to dr_small_matmul when it is available and on (the default), else to OpenBLAS.
#define DR_SMALL_MATMUL_ROWS 24
void dr_matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int64_t N, int64_t C, int64_t OC);
// The few-rows kernel (AVX2+FMA, chosen at run time): out = inp · weightᵀ + bias without packing.
// Returns 0 (and writes nothing) when it cannot run: no AVX2/FMA, or C not a multiple of 8. Its
// rows do not depend on N or on the other rows.
int dr_small_matmul(float *out, const float *inp, const float *weight, const float *bias,
                    int64_t N, int64_t C, int64_t OC);
int dr_small_matmul_available(void);
// Turns the few-rows path of dr_matmul_forward on or off (benchmarks and tests; on by default).
void dr_set_small_matmul(int enabled);
// The packed few-rows path for FROZEN weights. dr_pack_linear packs weight (OC,C) once into
// dr_packed_linear_size(C, OC) floats (panels of 16 output columns, (C,16) each, zero-padded).
// dr_packed_matmul: out (N,OC) = inp · weightᵀ + bias (+ resid (N,OC)); bias, resid may be NULL.
// Each element is one fused multiply-add chain over c in order from 0, then + bias, then + resid,
// exactly as dr_linear_reference computes it on the unpacked weight, so the result does not depend
// on N, on the other rows or on the instruction set. isa: 0 the best available, or DR_ISA_AVX2 /
// DR_ISA_AVX512; returns the one used, 0 (nothing written) when it is not available.
#define DR_ISA_AVX2 1
#define DR_ISA_AVX512 2
#define DR_PACKED_MAX_C 4096  // larger C: dr_packed_matmul returns 0
int64_t dr_packed_linear_size(int64_t C, int64_t OC);
void dr_pack_linear(float *packed, const float *weight, int64_t C, int64_t OC);
// The same for the other product with weight (OC,C), dinp (N,C) += dout (N,OC) · weight: packs
// weightᵀ as a (C, OC) linear weight, dr_packed_linear_size(OC, C) floats, for
// dr_packed_matmul(dinp, dout, packed, NULL, dinp, N, OC, C, isa).
void dr_pack_linear_t(float *packed, const float *weight, int64_t C, int64_t OC);
int dr_packed_matmul(float *out, const float *inp, const float *packed, const float *bias,
                     const float *resid, int64_t N, int64_t C, int64_t OC, int isa);
int dr_packed_matmul_isa(void);  // the best available: 0, DR_ISA_AVX2 or DR_ISA_AVX512
void dr_linear_reference(float *out, const float *inp, const float *weight, const float *bias,
                         const float *resid, int64_t N, int64_t C, int64_t OC);
// An executor the CALLER provides, since kernels never start threads: run(ctx, n, fn, arg) calls
// fn(arg, i) for every i in [0, n), on any threads, and returns when all have returned; at most
// `workers` run at once. Set per thread (dr_set_thread_executor; NULL: none): dr_packed_matmul then
// splits large calls over it, by rows (from 24 rows per worker) or by output panels. Every output is still the same FMA chain, so the
// result does not depend on the executor or its worker count.
typedef struct dr_executor {
    void (*run)(void *ctx, int64_t n, void (*fn)(void *arg, int64_t i), void *arg);
    void *ctx;
    int64_t workers;
} dr_executor;
void dr_set_thread_executor(const dr_executor *ex);
const dr_executor *dr_thread_executor(void);
// out = inp · weightᵀ + bias (+ resid): the packed kernel when packed is given (the caller
// decides for which N: dr_bert_params.packed_rows) and the few-rows and packed paths are on;
// otherwise dr_matmul_forward (no resid) or resid + bias followed by OpenBLAS accumulating into it.
void dr_linear_forward(float *out, const float *inp, const float *weight, const float *packed,
                       const float *bias, const float *resid, int64_t N, int64_t C, int64_t OC);
// Turns the packed path of dr_linear_forward on or off (benchmarks; on by default; the few-rows
// switch dr_set_small_matmul(0) turns both off).
void dr_set_packed_matmul(int enabled);
int dr_linear_forward_packed_ok(void);  // both switches on (the packed path may run)

// bfloat16 frozen linear layers (bf16.c; training.frozenPrecision "bf16"). The weight (OC,C) is
// rounded to bfloat16 (to nearest even) and packed into dr_packed_linear_size_bf16(C, OC) 32-bit
// words: panels of 16 outputs, inputs in pairs. dr_packed_matmul_bf16: out (N,OC) = round(inp) ·
// round(weight)ᵀ + bias (+ resid), products exact, sums in fp32, through AVX512-BF16; split over
// the calling thread's executor like dr_packed_matmul (same bits for any worker count). Returns 0
// (nothing written) without AVX512-BF16 or above DR_PACKED_MAX_C. dr_linear_reference_bf16 is the
// plain C meaning of it (pairs in order, the odd product first, as vdpbf16ps documents).
int dr_bf16_available(void);
uint32_t dr_bf16_bits(float f);
float dr_bf16_round(float f);
int64_t dr_packed_linear_size_bf16(int64_t C, int64_t OC);
void dr_pack_linear_bf16(uint32_t *packed, const float *weight, int64_t C, int64_t OC);
// weightᵀ as a (C, OC) weight (dr_packed_linear_size_bf16(OC, C) words): dinp += dout · weight is
// dr_packed_matmul_bf16(dinp, dout, packed_t, NULL, dinp, N, OC, C).
void dr_pack_linear_t_bf16(uint32_t *packed, const float *weight, int64_t C, int64_t OC);
int dr_packed_matmul_bf16(float *out, const float *inp, const uint32_t *packed, const float *bias,
                          const float *resid, int64_t N, int64_t C, int64_t OC);
void dr_linear_reference_bf16(float *out, const float *inp, const float *weight, const float *bias,
                              const float *resid, int64_t N, int64_t C, int64_t OC);
// dinp (N,C) += dout · weight; dweight (OC,C) += doutᵀ · inp; dbias (OC) += Σ_rows dout.
// Any of dinp, dweight, dbias may be NULL (skipped).
void dr_matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, int64_t N, int64_t C, int64_t OC);

// ---------------------------------------------------------------------------------------------
// Elementwise and normalisation (ops.c)

// out (N,C) = LayerNorm(inp) * w + b; mean, rstd (N) saved for backward (may be NULL).
void dr_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                          const float *w, const float *b, int64_t N, int64_t C, float eps);
// dinp (N,C) += ...; dw, db (C) += ... (dw/db may be NULL).
void dr_layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                           const float *inp, const float *w, const float *mean,
                           const float *rstd, int64_t N, int64_t C);

// Exact (erf) GELU, as BERT's "gelu".
void dr_gelu_forward(float *out, const float *inp, int64_t n);
// dinp += dout * gelu'(inp)
void dr_gelu_backward(float *dinp, const float *inp, const float *dout, int64_t n);

// out = a + b
void dr_residual_forward(float *out, const float *a, const float *b, int64_t n);

// ---------------------------------------------------------------------------------------------
// Embeddings and attention (encoder.c, attention.c)

// out (N,C) = wte[ids] + wpe[position within its sequence] + wtt[type_ids or 0].
// type_ids may be NULL (all zero).
void dr_embeddings_forward(float *out, const int32_t *ids, const int32_t *type_ids,
                           const int64_t *cu_seqlens, int64_t B, const float *wte,
                           const float *wpe, const float *wtt, int64_t C);
// Scatter-add into dwte/dwpe/dwtt (each may be NULL).
void dr_embeddings_backward(float *dwte, float *dwpe, float *dwtt, const float *dout,
                            const int32_t *ids, const int32_t *type_ids,
                            const int64_t *cu_seqlens, int64_t B, int64_t C);

// Number of floats the attention probabilities of one layer need: NH * Σ_b T_b².
int64_t dr_attention_prob_size(const int64_t *cu_seqlens, int64_t B, int64_t NH);
// qkv (N,3C) holds [q | k | v] per row, head h in columns h*HS..(h+1)*HS of each block.
// out (N,C) = softmax(q kᵀ / sqrt(HS)) v per sequence and head; probs saved (prob_size).
void dr_attention_forward(float *out, float *probs, const float *qkv,
                          const int64_t *cu_seqlens, int64_t B, int64_t C, int64_t NH);
// dqkv (N,3C) += ...; dprobs_scratch needs max_b T_b floats.
void dr_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                           const float *probs, const int64_t *cu_seqlens, int64_t B,
                           int64_t C, int64_t NH);

// ---------------------------------------------------------------------------------------------
// Pooling (encoder.c)

// out (B,C) = mean of each sequence's rows.
void dr_mean_pool_forward(float *out, const float *inp, const int64_t *cu_seqlens, int64_t B,
                          int64_t C);
void dr_mean_pool_backward(float *dinp, const float *dout, const int64_t *cu_seqlens,
                           int64_t B, int64_t C);
// out (B,C) = first row ([CLS]) of each sequence.
void dr_cls_pool_forward(float *out, const float *inp, const int64_t *cu_seqlens, int64_t B,
                         int64_t C);
// out (B,C) = inp / max(||inp||, 1e-12) row-wise (as torch.nn.functional.normalize).
void dr_l2_normalize_forward(float *out, const float *inp, int64_t B, int64_t C);

// ---------------------------------------------------------------------------------------------
// The BERT encoder (encoder.c)

typedef struct {
    int64_t n_layers;      // L
    int64_t hidden;        // C
    int64_t n_heads;       // NH
    int64_t intermediate;  // I
    int64_t vocab;         // V
    int64_t max_positions; // P
    int64_t type_vocab;    // TV
    float ln_eps;
} dr_bert_config;

#define DR_BERT_NUM_PARAMS 17
// All parameters of the frozen encoder, in ONE arena. Gradients and optimizer moments of a
// full fine-tune use the same layout (dr_bert_params_point on another base pointer).
typedef struct {
    float *wte;          // (V, C)
    float *wpe;          // (P, C)
    float *wtt;          // (TV, C)
    float *ln_e_w;       // (C)
    float *ln_e_b;       // (C)
    float *qkv_w;        // (L, 3C, C)   query, key, value stacked
    float *qkv_b;        // (L, 3C)
    float *ao_w;         // (L, C, C)    attention.output.dense
    float *ao_b;         // (L, C)
    float *ln1_w;        // (L, C)       attention.output.LayerNorm
    float *ln1_b;        // (L, C)
    float *fc_w;         // (L, I, C)    intermediate.dense
    float *fc_b;         // (L, I)
    float *proj_w;       // (L, C, I)    output.dense
    float *proj_b;       // (L, C)
    float *ln2_w;        // (L, C)       output.LayerNorm
    float *ln2_b;        // (L, C)
    // Optional packed copies of the frozen linear weights (dr_bert_pack); NULL: none. Set only
    // while the weights above do not change (never for a full fine-tune's parameters).
    const struct dr_bert_packed *packed;
    // The largest N (token rows) whose linear layers take the packed weights; 0 means
    // DR_SMALL_MATMUL_ROWS (the single-utterance path). Above it, OpenBLAS.
    int64_t packed_rows;
} dr_bert_params;

// The four linear weights of every layer, each (L, dr_packed_linear_size(in, out)).
typedef struct dr_bert_packed {
    const float *qkv, *ao, *fc, *proj;
    // For the backward pass's dinp += dout · W of the frozen layers (dr_pack_linear_t; each
    // (L, dr_packed_linear_size(out, in))); NULL: OpenBLAS.
    const float *qkv_t, *ao_t, *fc_t, *proj_t;
    // bfloat16 packs (dr_bert_pack_bf16): when set, they replace the above for the rows the
    // packed path takes, forward (qkv16..) and the backward's dinp (qkv_t16..); NULL: none.
    const uint32_t *qkv16, *ao16, *fc16, *proj16;
    const uint32_t *qkv_t16, *ao_t16, *fc_t16, *proj_t16;
} dr_bert_packed;
size_t dr_bert_packed_size(const dr_bert_config *cfg);
// Packs p's linear weights into dst (dr_bert_packed_size floats) and points pk into it.
void dr_bert_pack(dr_bert_packed *pk, float *dst, const dr_bert_params *p, const dr_bert_config *cfg);
// The transposed packs (dr_bert_packed_t_size floats) into dst, pointed to by pk's *_t.
size_t dr_bert_packed_t_size(const dr_bert_config *cfg);
void dr_bert_pack_t(dr_bert_packed *pk, float *dst, const dr_bert_params *p, const dr_bert_config *cfg);
// Both bfloat16 packs (forward and transposed; dr_bert_packed_bf16_size words) into dst.
size_t dr_bert_packed_bf16_size(const dr_bert_config *cfg);
void dr_bert_pack_bf16(dr_bert_packed *pk, uint32_t *dst, const dr_bert_params *p, const dr_bert_config *cfg);

// Fills sizes[DR_BERT_NUM_PARAMS] (floats, in struct order) and returns their sum.
size_t dr_bert_param_sizes(const dr_bert_config *cfg, size_t *sizes);
void dr_bert_params_point(dr_bert_params *p, float *base, const dr_bert_config *cfg);

#define DR_BERT_NUM_ACTS 17
// Activations saved by the forward pass for the backward pass, for N tokens.
typedef struct {
    float *emb;          // (N, C)     embedding sum before its LayerNorm
    float *emb_mean;     // (N)
    float *emb_rstd;     // (N)
    float *hidden;       // (L+1, N, C) hidden[0] = embedding output, hidden[l+1] = layer l output
    float *qkv;          // (L, N, 3C)
    float *probs;        // (L, PS)    attention probabilities, PS = dr_attention_prob_size
    float *atty;         // (L, N, C)  attention context (before attention.output.dense)
    float *res1;         // (L, N, C)  attention output + layer input (LayerNorm 1 input)
    float *ln1;          // (L, N, C)  LayerNorm 1 output
    float *ln1_mean;     // (L, N)
    float *ln1_rstd;     // (L, N)
    float *fch;          // (L, N, I)  intermediate before GELU
    float *fch_gelu;     // (L, N, I)
    float *res2;         // (L, N, C)  feed-forward output + ln1 (LayerNorm 2 input)
    float *ln2;          // (L, N, C)  LayerNorm 2 output (before an output adapter)
    float *ln2_mean;     // (L, N)
    float *ln2_rstd;     // (L, N)
} dr_bert_acts;

size_t dr_bert_act_sizes(const dr_bert_config *cfg, int64_t N, int64_t prob_size,
                         size_t *sizes);
void dr_bert_acts_point(dr_bert_acts *a, float *base, const dr_bert_config *cfg, int64_t N,
                        int64_t prob_size);

// ---------------------------------------------------------------------------------------------
// Trainable extensions of the frozen encoder (model.c): the task-conditioned gated adapter and
// LoRA sets on the attention query/value projections. Per-slot tensors are given as arrays of
// pointers so that each may live anywhere in the caller's parameter arena.

typedef enum {
    DR_ADAPTER_NONE = 0,
    DR_ADAPTER_OUTPUT = 1,  // on the layer output: hidden[l+1] = ln2 + adapter(ln2)
    DR_ADAPTER_FFN = 2,     // Houlsby: on the feed-forward output, before the residual LayerNorm
} dr_adapter_place;

typedef struct {
    // gated adapter; slot[l] = adapter slot of layer l, -1 = none; S slots
    int32_t adapter_place;           // dr_adapter_place
    int32_t adapter_act;             // dr_act
    int64_t R;                       // bottleneck size
    int64_t K;                       // rows of each gate table (domains)
    const int32_t *slot;             // (L)
    const float *const *W_down;      // (S) -> (R,C)
    const float *const *b_down;      // (S) -> (R)
    const float *const *W_up;        // (S) -> (C,R)
    const float *const *b_up;        // (S) -> (C)
    const float *const *G;           // (S) -> (K,R) gate table
    const float *P;                  // (B,K) soft routing, or NULL for hard routing by gate_ids
    const int32_t *gate_ids;         // (B)
    // LoRA sets (all active; O-LoRA freezes earlier ones through NULL gradients)
    int64_t n_lora;
    int64_t lora_R;
    const float *const *lora_A;      // (n_lora*L*2): [set][layer][0 = query, 1 = value] -> (R,C)
    const float *const *lora_B;      // same indexing -> (C,R)
    const float *lora_scale;         // (n_lora) alpha / r
} dr_bert_ext;

typedef struct {
    float *const *dW_down, *const *db_down, *const *dW_up, *const *db_up, *const *dG;  // (S), entries may be NULL
    float *dP;                       // (B,K) or NULL
    float *const *dlora_A, *const *dlora_B;  // (n_lora*L*2), entries may be NULL
} dr_bert_ext_grads;

// Saved activations of the extensions, for S adapter slots and n_lora sets.
typedef struct {
    float *a_pre;    // (S,N,R)
    float *a_act;    // (S,N,R)
    float *a_gmix;   // (S,B,R)
    float *a_inp;    // (S,N,C) adapter input (FFN placement only; the output placement uses ln2)
    float *lora_xa;  // (n_lora,L,2,N,R)
} dr_ext_acts;

size_t dr_ext_act_size(const dr_bert_config *cfg, const dr_bert_ext *ext, int64_t S, int64_t N,
                       int64_t B);
void dr_ext_acts_point(dr_ext_acts *a, float *base, const dr_bert_config *cfg,
                       const dr_bert_ext *ext, int64_t S, int64_t N, int64_t B);

// Runs the encoder on packed sequences; after it, acts->hidden holds every layer's output.
// Layers [0, first_layer) are skipped when first_layer > 0 (their output must already be in
// hidden[first_layer]: a cached frozen prefix). ext/xacts may be NULL (the plain encoder).
// scratch: dr_bert_forward_scratch_size floats (may be NULL when ext is NULL).
size_t dr_bert_forward_scratch_size(const dr_bert_config *cfg, const dr_bert_ext *ext, int64_t N,
                                    int64_t B);
void dr_bert_forward(dr_bert_acts *acts, dr_ext_acts *xacts, float *scratch,
                     const dr_bert_params *p, const dr_bert_ext *ext, const dr_bert_config *cfg,
                     const int32_t *ids, const int32_t *type_ids, const int64_t *cu_seqlens,
                     int64_t B, int64_t first_layer);

// Scratch floats dr_bert_backward needs for N tokens whose longest sequence has max_T tokens.
size_t dr_bert_backward_scratch_size(const dr_bert_config *cfg, const dr_bert_ext *ext,
                                     int64_t N, int64_t B, int64_t max_T);
// Backward from dtop (N,C) = dLoss/d hidden[L]. Output adapters are back-propagated in every
// layer that has one; the internals of layer l only for l >= stop_layer (nothing below
// trains). Weight gradients are ADDED into g's tensors (g == NULL or a NULL tensor = frozen: its
// GEMM is skipped) and into xg's. Embedding gradients (scatter-add) only when stop_layer == 0 and
// g has them. d hidden[max(stop_layer,0)] is copied to dhidden_out when non-NULL.
void dr_bert_backward(dr_bert_params *g, dr_bert_ext_grads *xg, float *dhidden_out,
                      float *scratch, const float *dtop, const dr_bert_acts *acts,
                      const dr_ext_acts *xacts, const dr_bert_params *p, const dr_bert_ext *ext,
                      const dr_bert_config *cfg, const int32_t *ids, const int32_t *type_ids,
                      const int64_t *cu_seqlens, int64_t B, int64_t stop_layer);

#ifdef __cplusplus
}
#endif

#include "dr_train.h"
