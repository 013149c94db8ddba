#pragma once
// dr_train.h — training kernels (adapter, LoRA, heads and losses, router, AdamW). Included by
// dr_kernels.h; the conventions written there hold here too: arguments come as outputs, saved
// values (and caller-planned scratch), inputs, weights, sizes; backward ADDS into gradients; a
// NULL weight gradient means "frozen" (that GEMM is skipped); nothing allocates or prints.
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Error codes returned by the kernels that validate index ranges (0 = success).
#define DR_OK 0
#define DR_ERR_RANGE 1  // a [lo, hi) range is empty or does not lie inside [0, V)
#define DR_ERR_LABEL 2  // a label lies outside its [lo, hi) range
#define DR_ERR_SET 3    // a label set is empty, lists a label twice, or its offsets do not start at 0

// ---------------------------------------------------------------------------------------------
// Task-conditioned gated adapter (adapter.c)
//
// For the packed tokens h (N,C) of B sequences (N = cu_seqlens[B], cu_seqlens[0] = 0):
//   pre  = h · W_downᵀ + b_down                       (N,R)
//   a    = act(pre)                                   (N,R)
//   g_b  = Σ_k P[b,k] · G[k,:]   (soft routing)       (B,R)  gmix
//        = G[gate_ids[b],:]      (hard, P == NULL)
//   z    = g_b ⊙ a   for every row of sequence b      (N,R)
//   out  = h + z · W_upᵀ + b_up                       (N,C)

// The bottleneck activation; any value other than RELU or IDENTITY means GELU.
typedef enum {
    DR_ACT_GELU = 0,      // exact (erf) GELU, computed in vectorisable float (error ~1e-7)
    DR_ACT_RELU = 1,
    DR_ACT_IDENTITY = 2,
} dr_act;

// Floats of scratch dr_adapter_forward and dr_adapter_backward need: N*R + B*R.
int64_t dr_adapter_scratch_size(int64_t N, int64_t R, int64_t B);

// out (N,C); saved: pre (N,R), act_out (N,R), gmix (B,R); scratch (dr_adapter_scratch_size).
// inp (N,C); cu_seqlens (B+1); P (B,K) routing probabilities or NULL; gate_ids (B) in [0,K),
// read only when P is NULL. W_down (R,C), b_down (R), W_up (C,R), b_up (C), G (K,R); the biases
// may be NULL (zero). out must not alias any other argument.
void dr_adapter_forward(float *out, float *pre, float *act_out, float *gmix, float *scratch,
                        const float *inp, const int64_t *cu_seqlens, const float *P,
                        const int32_t *gate_ids, const float *W_down, const float *b_down,
                        const float *W_up, const float *b_up, const float *G, dr_act act,
                        int64_t B, int64_t C, int64_t R, int64_t K);

// Adds: dinp (N,C) += dout + (da ⊙ act'(pre)) · W_down; dW_down (R,C), db_down (R), dW_up (C,R),
// db_up (C), dG (K,R) (hard routing: only the selected rows), dP (B,K) (soft routing only).
// Every gradient pointer may be NULL (skipped); dP is ignored when P is NULL. No gradient may
// alias dout or another gradient.
// scratch (dr_adapter_scratch_size) is overwritten; dout (N,C); pre, act_out, gmix as saved by
// the forward pass; the other inputs exactly as given to it.
void dr_adapter_backward(float *dinp, float *dW_down, float *db_down, float *dW_up, float *db_up,
                         float *dG, float *dP, float *scratch, const float *dout,
                         const float *pre, const float *act_out, const float *gmix,
                         const float *inp, const int64_t *cu_seqlens, const float *P,
                         const int32_t *gate_ids, const float *W_down, const float *W_up,
                         const float *G, dr_act act, int64_t B, int64_t C, int64_t R, int64_t K);

// ---------------------------------------------------------------------------------------------
// LoRA (lora.c)
//
// out[i, 0:OC] += scale · (inp · Aᵀ) · Bmᵀ, with out read and written at row stride ldo >= OC,
// so a LoRA on the query or value projection adds straight into the q or v columns of a fused
// (N,3C) qkv buffer (pass out = qkv + offset, ldo = 3C).

// Floats of scratch dr_lora_backward needs: N*R.
int64_t dr_lora_scratch_size(int64_t N, int64_t R);

// out (N, ldo) accumulated; saved: xa (N,R) = inp · Aᵀ. inp (N,C), A (R,C), Bm (OC,R).
void dr_lora_forward(float *out, int64_t ldo, float *xa, const float *inp, const float *A,
                     const float *Bm, float scale, int64_t N, int64_t C, int64_t OC, int64_t R);

// dinp (N,C) += scale · (dout · Bm) · A; dA (R,C) += scale · (dout · Bm)ᵀ · inp;
// dB (OC,R) += scale · doutᵀ · xa. Any gradient may be NULL (frozen, e.g. O-LoRA's earlier
// sets). dout (N, ldo) read at row stride ldo; scratch (dr_lora_scratch_size) overwritten.
void dr_lora_backward(float *dinp, float *dA, float *dB, float *scratch, const float *dout,
                      int64_t ldo, const float *xa, const float *inp, const float *A,
                      const float *Bm, float scale, int64_t N, int64_t C, int64_t OC,
                      int64_t R);

// ---------------------------------------------------------------------------------------------
// Losses (loss.c)

// Softmax cross-entropy of each row of logits (B,V) restricted to the label range
// [lo[b], hi[b]) (per-domain heads are row ranges of one head matrix; lo/hi NULL = whole row).
// losses (B): the UNWEIGHTED per-example loss, logsumexp(range) - logit[label].
// dlogits (B,V) or NULL: WRITTEN (not added) = w_b · (softmax - onehot) inside the range, 0
// outside, so it is the gradient of Σ_b w_b · losses[b]. probs (B,V) or NULL: the softmax inside
// the range, 0 outside. weights (B) or NULL = 1/B. dlogits and probs may not alias logits.
// Returns DR_OK, or DR_ERR_RANGE / DR_ERR_LABEL before writing anything.
int dr_softmax_xent_forward_backward(float *losses, float *dlogits, float *probs,
                                     const float *logits, const int32_t *labels,
                                     const int32_t *lo, const int32_t *hi, const float *weights,
                                     int64_t B, int64_t V);

// Soft-target (multi-label) cross-entropy: as dr_softmax_xent_forward_backward, but row b's
// target is the uniform distribution q_b over its gold SET S_b (multi-intent utterances):
//   losses[b] = logsumexp(range) - (1/|S_b|) Σ_{t in S_b} logit[t]     (UNWEIGHTED)
//   dlogits[b,j] = w_b · (softmax_j - q_bj) inside the range, 0 outside  (WRITTEN, not added)
// A set of one label is exactly the single-label loss (same operations, same bits), so a batch
// of single-intent rows trains as before. Sets as CSR: row b's labels are
// set_labels[set_offsets[b] .. set_offsets[b+1]), set_offsets (B+1) with set_offsets[0] == 0,
// every label inside row b's [lo[b], hi[b]) and listed once. logits, dlogits, probs (B,V);
// lo/hi (B) or NULL = whole row; weights (B) or NULL = 1/B. Returns DR_OK, or DR_ERR_RANGE /
// DR_ERR_LABEL / DR_ERR_SET before writing anything.
int dr_softmax_set_xent_forward_backward(float *losses, float *dlogits, float *probs,
                                         const float *logits, const int64_t *set_offsets,
                                         const int32_t *set_labels, const int32_t *lo,
                                         const int32_t *hi, const float *weights, int64_t B,
                                         int64_t V);

// Mean squared error over per-example column ranges (DER's logit replay, the general-stream
// anchoring loss): loss = Σ_b w_b · (1/D_b) Σ_{j in [lo_b,hi_b)} (x_bj - t_bj)², D_b = hi_b - lo_b
// (lo/hi NULL = all D columns). x, target (B,D); weights (B) or NULL = 1/B.
// dx (B,D) or NULL: ADDS the gradient (nothing outside the ranges). Returns the loss, or NAN
// (before writing anything) when a range is empty or outside [0, D).
double dr_mse_forward_backward(float *dx, const float *x, const float *target, const int32_t *lo,
                               const int32_t *hi, const float *weights, int64_t B, int64_t D);

// Floats of scratch dr_olora_penalty_forward_backward needs: R_old*R.
int64_t dr_olora_scratch_size(int64_t R_old, int64_t R);

// O-LoRA orthogonality penalty: returns weight · Σ_{i,j} |M_ij|, M = A_old · A_newᵀ (R_old,R).
// dA_new (R,C) or NULL: += weight · sign(M)ᵀ · A_old (sign(0) = 0). A_old (R_old,C) holds the
// frozen A matrices of all earlier tasks stacked row-wise; A_new (R,C); scratch overwritten.
double dr_olora_penalty_forward_backward(float *dA_new, float *scratch, const float *A_old,
                                         const float *A_new, float weight, int64_t R_old,
                                         int64_t R, int64_t C);

// ---------------------------------------------------------------------------------------------
// Router MLP (router.c): Linear(C,Hd) -> GELU -> dropout -> Linear(Hd,K) on pooled inputs.

// Floats of scratch dr_router_backward needs: B*Hd.
int64_t dr_router_scratch_size(int64_t B, int64_t Hd);

// logits (B,K); saved: h_pre (B,Hd) before GELU, h_act (B,Hd) after GELU and dropout.
// inp (B,C); W1 (Hd,C), b1 (Hd), W2 (K,Hd), b2 (K) (biases may be NULL);
// dropout_mask (B,Hd) of 0 or 1/(1-p), made by the caller; NULL = eval (no dropout).
void dr_router_forward(float *logits, float *h_pre, float *h_act, const float *inp,
                       const float *W1, const float *b1, const float *W2, const float *b2,
                       const float *dropout_mask, int64_t B, int64_t C, int64_t Hd, int64_t K);

// dinp (B,C), dW1 (Hd,C), db1 (Hd), dW2 (K,Hd), db2 (K): each added to, each may be NULL.
// scratch (dr_router_scratch_size) overwritten; dlogits (B,K); the rest as in the forward pass.
void dr_router_backward(float *dinp, float *dW1, float *db1, float *dW2, float *db2,
                        float *scratch, const float *dlogits, const float *h_pre,
                        const float *h_act, const float *inp, const float *W1, const float *W2,
                        const float *dropout_mask, int64_t B, int64_t C, int64_t Hd, int64_t K);

// Prototype routing: out[b,d] = log Σ_{c: class_domain[c]=d} softmax_c(cos(x_b, P_c) / tau), the
// log-probability of domain d when every seen class c has a prototype P_c (a mean frozen feature).
// out (B,K); x (B,C); protos (V,C); class_domain (V) in [0,K); scratch (dr_prototype_scratch_size).
// A zero row (of x or P) has cosine 0; a domain without classes gets -1e30.
int64_t dr_prototype_scratch_size(int64_t B, int64_t V, int64_t K);
void dr_prototype_logprob(float *out, float *scratch, const float *x, const float *protos,
                          const int32_t *class_domain, float tau, int64_t B, int64_t C, int64_t V,
                          int64_t K);

// ---------------------------------------------------------------------------------------------
// Optimizer and gradient utilities (adamw.c). All flat loops over one arena.

// AdamW with decoupled weight decay and bias correction, step t >= 1 (the first step is 1):
//   m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²
//   p -= lr · ( (m / (1-β1^t)) / (sqrt(v / (1-β2^t)) + eps) + weight_decay · p )
// params, m, v (n) updated in place; grads (n).
void dr_adamw_update(float *params, const float *grads, float *m, float *v, int64_t n, float lr,
                     float beta1, float beta2, float eps, float weight_decay, int64_t t);

// Σ x² accumulated in double (global-norm clipping).
double dr_sum_squares(const float *x, int64_t n);
// x *= s
void dr_scale(float *x, int64_t n, float s);
// 1 when no entry is NaN or ±Inf, else 0.
int dr_all_finite(const float *x, int64_t n);

#ifdef __cplusplus
}
#endif
