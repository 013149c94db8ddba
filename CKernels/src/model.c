// model.c — the encoder forward and backward with its trainable extensions (gated adapter,
// LoRA) composed layer by layer. Post-LN BERT layer:
//   qkv = x·Wqkvᵀ + b (+ LoRA on q, v);  atty = attention(qkv)
//   res1 = atty·Woᵀ + bo + x;            ln1 = LN1(res1)
//   fo = gelu(ln1·Wfcᵀ + bfc)·Wprojᵀ + bproj   (FFN adapter: fo <- fo + adapter(fo))
//   res2 = fo + ln1;                     ln2 = LN2(res2)
//   hidden[l+1] = ln2                    (output adapter: ln2 + adapter(ln2))
#include "dr_kernels.h"
#include <math.h>
#include "dr_math.h"
#include <string.h>

#define OFF(ptr, o) ((ptr) ? (ptr) + (o) : NULL)
#define AT(arr, i) ((arr) ? (arr)[i] : NULL)

static int64_t ext_slot(const dr_bert_ext *ext, int64_t l) {
    if (!ext || ext->adapter_place == DR_ADAPTER_NONE || !ext->slot) return -1;
    return ext->slot[l];
}

size_t dr_ext_act_size(const dr_bert_config *cfg, const dr_bert_ext *ext, int64_t S, int64_t N,
                       int64_t B) {
    if (!ext) return 0;
    const size_t R = ext->R, C = cfg->hidden, L = cfg->n_layers;
    size_t s = 0;
    if (ext->adapter_place != DR_ADAPTER_NONE) {
        s += 2 * S * N * R + S * B * R;
        if (ext->adapter_place == DR_ADAPTER_FFN) s += S * N * C;
    }
    s += ext->n_lora * L * 2 * N * ext->lora_R;
    return s;
}

void dr_ext_acts_point(dr_ext_acts *a, float *base, const dr_bert_config *cfg,
                       const dr_bert_ext *ext, int64_t S, int64_t N, int64_t B) {
    memset(a, 0, sizeof(*a));
    if (!ext) return;
    const int64_t R = ext->R, C = cfg->hidden;
    if (ext->adapter_place != DR_ADAPTER_NONE) {
        a->a_pre = base; base += S * N * R;
        a->a_act = base; base += S * N * R;
        a->a_gmix = base; base += S * B * R;
        if (ext->adapter_place == DR_ADAPTER_FFN) { a->a_inp = base; base += S * N * C; }
    }
    if (ext->n_lora > 0) a->lora_xa = base;
}

size_t dr_bert_forward_scratch_size(const dr_bert_config *cfg, const dr_bert_ext *ext, int64_t N,
                                    int64_t B) {
    if (!ext || ext->adapter_place == DR_ADAPTER_NONE) return 0;
    return (size_t)dr_adapter_scratch_size(N, ext->R, B) + (size_t)(N * cfg->hidden);
}

// Whether a call of N rows takes the packed weights (dr_bert_params.packed_rows).
#define PACKED_ROWS(p, N) ((p)->packed && (N) <= ((p)->packed_rows > 0 ? (p)->packed_rows : DR_SMALL_MATMUL_ROWS))
// Layer l's packed copy of one linear weight (NULL without packing or above the packed rows).
#define PACKED(p, field, l, in, out) \
    (PACKED_ROWS(p, N) && (p)->packed->field ? (p)->packed->field + (l) * dr_packed_linear_size(in, out) : NULL)

// out = inp · Wᵀ + bias (+ resid) of a frozen linear layer: its bfloat16 pack (name##16) when
// there is one for these rows, else dr_linear_forward (the fp32 pack `name`, or OpenBLAS).
#define PACKED16(p, field, l, in, out) \
    (PACKED_ROWS(p, N) && (p)->packed->field ? (p)->packed->field + (l) * dr_packed_linear_size_bf16(in, out) : NULL)
static int bf16_linear(const uint32_t *pk16, float *out, const float *inp, const float *bias, const float *resid,
                       int64_t N, int64_t C, int64_t OC) {
    return pk16 && dr_linear_forward_packed_ok() && dr_packed_matmul_bf16(out, inp, pk16, bias, resid, N, C, OC);
}
#define FROZEN_LINEAR(p, name, l, out, inp, W, bias, resid, C, OC)                                   \
    do {                                                                                           \
        if (!bf16_linear(PACKED16(p, name##16, l, C, OC), out, inp, bias, resid, N, C, OC))          \
            dr_linear_forward(out, inp, W, PACKED(p, name, l, C, OC), bias, resid, N, C, OC);        \
    } while (0)

// dinp (N,C) += dout (N,OC) · W (OC,C) of a frozen weight: the same choice over its transposed
// packs (name##_t16, name##_t), with OpenBLAS's dinp product as the last resort.
#define FROZEN_DINP(p, name, l, dinp, dout, W, C, OC)                                               \
    do {                                                                                           \
        if (bf16_linear(PACKED16(p, name##_t16, l, OC, C), dinp, dout, NULL, dinp, N, OC, C)) break; \
        const float *p32_ = PACKED(p, name##_t, l, OC, C);                                          \
        if (!p32_ || !dr_linear_forward_packed_ok() || !dr_packed_matmul(dinp, dout, p32_, NULL, dinp, N, OC, C, 0)) \
            dr_matmul_backward(dinp, NULL, NULL, dout, NULL, W, N, C, OC);                         \
    } while (0)

static void adapter_fwd(float *out, const dr_ext_acts *xa, float *scratch, const float *inp,
                        const dr_bert_ext *ext, int64_t s, const int64_t *cu, int64_t B,
                        int64_t N, int64_t C) {
    const int64_t R = ext->R;
    dr_adapter_forward(out, xa->a_pre + s * N * R, xa->a_act + s * N * R, xa->a_gmix + s * B * R,
                       scratch, inp, cu, ext->P, ext->gate_ids, ext->W_down[s], AT(ext->b_down, s),
                       ext->W_up[s], AT(ext->b_up, s), ext->G[s], (dr_act)ext->adapter_act, B, C, R,
                       ext->K);
}

void dr_bert_forward(dr_bert_acts *a, dr_ext_acts *xa, float *scratch, const dr_bert_params *p,
                     const dr_bert_ext *ext, const dr_bert_config *cfg, const int32_t *ids,
                     const int32_t *type_ids, const int64_t *cu_seqlens, int64_t B,
                     int64_t first_layer) {
    const int64_t L = cfg->n_layers, C = cfg->hidden, I = cfg->intermediate, NH = cfg->n_heads;
    const int64_t N = cu_seqlens[B];
    const int64_t PS = dr_attention_prob_size(cu_seqlens, B, NH);
    const float eps = cfg->ln_eps;
    float *ad_scratch = scratch;
    float *tmp = scratch ? scratch + dr_adapter_scratch_size(N, ext ? ext->R : 0, B) : NULL;  // (N,C)
    if (first_layer <= 0) {
        dr_embeddings_forward(a->emb, ids, type_ids, cu_seqlens, B, p->wte, p->wpe, p->wtt, C);
        dr_layernorm_forward(a->hidden, a->emb_mean, a->emb_rstd, a->emb, p->ln_e_w, p->ln_e_b,
                             N, C, eps);
        first_layer = 0;
    }
    for (int64_t l = first_layer; l < L; l++) {
        const float *x = a->hidden + l * N * C;  // (N,C)
        float *qkv = a->qkv + l * N * 3 * C;     // (N,3C)
        float *atty = a->atty + l * N * C;
        float *res1 = a->res1 + l * N * C;
        float *ln1 = a->ln1 + l * N * C;
        float *fch = a->fch + l * N * I;         // (N,I)
        float *fchg = a->fch_gelu + l * N * I;
        float *res2 = a->res2 + l * N * C;
        float *ln2 = a->ln2 + l * N * C;
        float *out = a->hidden + (l + 1) * N * C;
        const int64_t s = ext_slot(ext, l);

        FROZEN_LINEAR(p, qkv, l, qkv, x, p->qkv_w + l * 3 * C * C, p->qkv_b + l * 3 * C, NULL, C, 3 * C);
        for (int64_t k = 0; ext && k < ext->n_lora; k++) {
            for (int64_t j = 0; j < 2; j++) {  // query columns [0,C), value columns [2C,3C)
                const int64_t idx = (k * L + l) * 2 + j;
                dr_lora_forward(qkv + (j == 0 ? 0 : 2 * C), 3 * C, xa->lora_xa + idx * N * ext->lora_R,
                                x, ext->lora_A[idx], ext->lora_B[idx], ext->lora_scale[k], N, C, C,
                                ext->lora_R);
            }
        }
        dr_attention_forward(atty, a->probs + l * PS, qkv, cu_seqlens, B, C, NH);
        FROZEN_LINEAR(p, ao, l, res1, atty, p->ao_w + l * C * C, p->ao_b + l * C, x, C, C);
        dr_layernorm_forward(ln1, a->ln1_mean + l * N, a->ln1_rstd + l * N, res1,
                             p->ln1_w + l * C, p->ln1_b + l * C, N, C, eps);
        FROZEN_LINEAR(p, fc, l, fch, ln1, p->fc_w + l * I * C, p->fc_b + l * I, NULL, C, I);
        dr_gelu_forward(fchg, fch, N * I);
        if (s >= 0 && ext->adapter_place == DR_ADAPTER_FFN) {
            float *fo = xa->a_inp + s * N * C;
            FROZEN_LINEAR(p, proj, l, fo, fchg, p->proj_w + l * C * I, p->proj_b + l * C, NULL, I, C);
            adapter_fwd(tmp, xa, ad_scratch, fo, ext, s, cu_seqlens, B, N, C);
            dr_residual_forward(res2, tmp, ln1, N * C);
        } else {
            FROZEN_LINEAR(p, proj, l, res2, fchg, p->proj_w + l * C * I, p->proj_b + l * C, ln1, I, C);
        }
        dr_layernorm_forward(ln2, a->ln2_mean + l * N, a->ln2_rstd + l * N, res2,
                             p->ln2_w + l * C, p->ln2_b + l * C, N, C, eps);
        if (s >= 0 && ext->adapter_place == DR_ADAPTER_OUTPUT) {
            adapter_fwd(out, xa, ad_scratch, ln2, ext, s, cu_seqlens, B, N, C);
        } else {
            memcpy(out, ln2, N * C * sizeof(float));
        }
    }
}

size_t dr_bert_backward_scratch_size(const dr_bert_config *cfg, const dr_bert_ext *ext,
                                     int64_t N, int64_t B, int64_t max_T) {
    const size_t C = cfg->hidden, I = cfg->intermediate;
    size_t s = 8 * N * C + N * I + (size_t)max_T;
    if (ext && ext->adapter_place != DR_ADAPTER_NONE) s += dr_adapter_scratch_size(N, ext->R, B) + N * C;
    if (ext && ext->n_lora > 0) s += dr_lora_scratch_size(N, ext->lora_R);
    return s;
}

static void adapter_bwd(float *dinp, const dr_bert_ext_grads *xg, float *scratch,
                        const float *dout, const dr_ext_acts *xa, const float *inp,
                        const dr_bert_ext *ext, int64_t s, const int64_t *cu, int64_t B,
                        int64_t N, int64_t C) {
    const int64_t R = ext->R;
    dr_adapter_backward(dinp, xg ? AT(xg->dW_down, s) : NULL, xg ? AT(xg->db_down, s) : NULL,
                        xg ? AT(xg->dW_up, s) : NULL, xg ? AT(xg->db_up, s) : NULL,
                        xg ? AT(xg->dG, s) : NULL, xg ? xg->dP : NULL, scratch, dout,
                        xa->a_pre + s * N * R, xa->a_act + s * N * R, xa->a_gmix + s * B * R, inp,
                        cu, ext->P, ext->gate_ids, ext->W_down[s], ext->W_up[s], ext->G[s],
                        (dr_act)ext->adapter_act, B, C, R, ext->K);
}

void dr_bert_backward(dr_bert_params *g, dr_bert_ext_grads *xg, float *dhidden_out,
                      float *scratch, const float *dtop, const dr_bert_acts *a,
                      const dr_ext_acts *xa, const dr_bert_params *p, const dr_bert_ext *ext,
                      const dr_bert_config *cfg, const int32_t *ids, const int32_t *type_ids,
                      const int64_t *cu_seqlens, int64_t B, int64_t stop_layer) {
    const int64_t L = cfg->n_layers, C = cfg->hidden, I = cfg->intermediate, NH = cfg->n_heads;
    const int64_t N = cu_seqlens[B];
    const int64_t PS = dr_attention_prob_size(cu_seqlens, B, NH);
    float *dcur = scratch;              // (N,C) gradient w.r.t. the current layer's output
    float *dnext = dcur + N * C;        // (N,C) gradient w.r.t. its input
    float *dres = dnext + N * C;        // (N,C)
    float *datty = dres + N * C;        // (N,C)
    float *dln1 = datty + N * C;        // (N,C)
    float *dqkv = dln1 + N * C;         // (N,3C)
    float *dfch = dqkv + 3 * N * C;     // (N,I)
    float *att_scratch = dfch + N * I;  // (max T) — sized by the caller; the rest follows it
    int64_t maxT = 0;
    for (int64_t b = 0; b < B; b++) {
        int64_t T = cu_seqlens[b + 1] - cu_seqlens[b];
        if (T > maxT) maxT = T;
    }
    float *ad_scratch = att_scratch + maxT;
    float *dtmp = ext && ext->adapter_place != DR_ADAPTER_NONE ? ad_scratch + dr_adapter_scratch_size(N, ext->R, B) : ad_scratch;
    float *lora_scratch = ext && ext->adapter_place != DR_ADAPTER_NONE ? dtmp + N * C : dtmp;
    if (stop_layer < 0) stop_layer = 0;

    memcpy(dcur, dtop, N * C * sizeof(float));
    for (int64_t l = L - 1; l >= 0; l--) {
        const int64_t s = ext_slot(ext, l);
        if (s >= 0 && ext->adapter_place == DR_ADAPTER_OUTPUT) {
            // hidden[l+1] = ln2 + adapter(ln2): d ln2 = dcur + adapter input gradient
            memset(dtmp, 0, N * C * sizeof(float));
            adapter_bwd(dtmp, xg, ad_scratch, dcur, xa, a->ln2 + l * N * C, ext, s, cu_seqlens, B, N, C);
            memcpy(dcur, dtmp, N * C * sizeof(float));
        }
        if (l < stop_layer) break;
        const float *x = a->hidden + l * N * C;
        const float *qkv = a->qkv + l * N * 3 * C;
        const float *atty = a->atty + l * N * C;
        const float *res1 = a->res1 + l * N * C;
        const float *ln1 = a->ln1 + l * N * C;
        const float *fch = a->fch + l * N * I;
        const float *fchg = a->fch_gelu + l * N * I;
        const float *res2 = a->res2 + l * N * C;

        memset(dres, 0, N * C * sizeof(float));
        dr_layernorm_backward(dres, g ? OFF(g->ln2_w, l * C) : NULL, g ? OFF(g->ln2_b, l * C) : NULL,
                              dcur, res2, p->ln2_w + l * C, a->ln2_mean + l * N, a->ln2_rstd + l * N, N, C);
        memcpy(dln1, dres, N * C * sizeof(float));  // residual into ln1
        const float *dfo = dres;
        if (s >= 0 && ext->adapter_place == DR_ADAPTER_FFN) {
            memset(dtmp, 0, N * C * sizeof(float));
            adapter_bwd(dtmp, xg, ad_scratch, dres, xa, xa->a_inp + s * N * C, ext, s, cu_seqlens, B, N, C);
            dfo = dtmp;
        }
        memset(dfch, 0, N * I * sizeof(float));  // holds d gelu-output first
        if (g) dr_matmul_backward(dfch, OFF(g->proj_w, l * C * I), OFF(g->proj_b, l * C), dfo, fchg, p->proj_w + l * C * I, N, I, C);
        else FROZEN_DINP(p, proj, l, dfch, dfo, p->proj_w + l * C * I, I, C);
        for (int64_t i = 0; i < N * I; i++) dfch[i] *= dr_gelu_grad(fch[i]);  // GELU backward in place
        if (g) dr_matmul_backward(dln1, OFF(g->fc_w, l * I * C), OFF(g->fc_b, l * I), dfch, ln1, p->fc_w + l * I * C, N, C, I);
        else FROZEN_DINP(p, fc, l, dln1, dfch, p->fc_w + l * I * C, C, I);
        memset(dres, 0, N * C * sizeof(float));
        dr_layernorm_backward(dres, g ? OFF(g->ln1_w, l * C) : NULL, g ? OFF(g->ln1_b, l * C) : NULL,
                              dln1, res1, p->ln1_w + l * C, a->ln1_mean + l * N, a->ln1_rstd + l * N, N, C);
        memcpy(dnext, dres, N * C * sizeof(float));  // residual into x
        memset(datty, 0, N * C * sizeof(float));
        if (g) dr_matmul_backward(datty, OFF(g->ao_w, l * C * C), OFF(g->ao_b, l * C), dres, atty, p->ao_w + l * C * C, N, C, C);
        else FROZEN_DINP(p, ao, l, datty, dres, p->ao_w + l * C * C, C, C);
        memset(dqkv, 0, N * 3 * C * sizeof(float));
        dr_attention_backward(dqkv, att_scratch, datty, qkv, a->probs + l * PS, cu_seqlens, B, C, NH);
        for (int64_t k = 0; ext && k < ext->n_lora; k++) {
            for (int64_t j = 0; j < 2; j++) {
                const int64_t idx = (k * L + l) * 2 + j;
                dr_lora_backward(dnext, xg ? AT(xg->dlora_A, idx) : NULL, xg ? AT(xg->dlora_B, idx) : NULL,
                                 lora_scratch, dqkv + (j == 0 ? 0 : 2 * C), 3 * C,
                                 xa->lora_xa + idx * N * ext->lora_R, x, ext->lora_A[idx],
                                 ext->lora_B[idx], ext->lora_scale[k], N, C, C, ext->lora_R);
            }
        }
        if (g) dr_matmul_backward(dnext, OFF(g->qkv_w, l * 3 * C * C), OFF(g->qkv_b, l * 3 * C), dqkv, x, p->qkv_w + l * 3 * C * C, N, C, 3 * C);
        else FROZEN_DINP(p, qkv, l, dnext, dqkv, p->qkv_w + l * 3 * C * C, C, 3 * C);
        float *t = dcur; dcur = dnext; dnext = t;
    }
    if (stop_layer == 0 && g && (g->wte || g->wpe || g->wtt || g->ln_e_w || g->ln_e_b)) {
        memset(dres, 0, N * C * sizeof(float));
        dr_layernorm_backward(dres, g->ln_e_w, g->ln_e_b, dcur, a->emb, p->ln_e_w, a->emb_mean,
                              a->emb_rstd, N, C);
        dr_embeddings_backward(g->wte, g->wpe, g->wtt, dres, ids, type_ids, cu_seqlens, B, C);
    }
    if (dhidden_out) memcpy(dhidden_out, dcur, N * C * sizeof(float));
}
