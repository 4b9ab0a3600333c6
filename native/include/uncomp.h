// pyuncomp native API: uncertainty-aware KV-cache compression (UNComp) for llama.cpp.
//
// A flat C API compiled into libllama next to llama.cpp's own symbols. Every symbol carries the
// llama_uncomp_ prefix. Python binds it with cffi, which reads this header as installed.
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "llama.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LLAMA_UNCOMP_API_VERSION 2

enum llama_uncomp_method {
    LLAMA_UNCOMP_METHOD_FULL         = 0, // no eviction
    LLAMA_UNCOMP_METHOD_STREAMINGLLM = 1, // attention sinks + most recent tokens
    LLAMA_UNCOMP_METHOD_SNAPKV       = 2, // window scoring, same budget for every layer and head
    LLAMA_UNCOMP_METHOD_PYRAMIDKV    = 3, // window scoring, linear layer schedule
    LLAMA_UNCOMP_METHOD_UNCOMP       = 4, // window scoring, entropy-grouped layer and head budgets
    LLAMA_UNCOMP_METHOD_COUNT,
};

struct llama_uncomp_params {
    int32_t method;      // enum llama_uncomp_method
    float   ratio;       // fraction of prompt tokens kept, averaged over layers and KV heads, in (0, 1]
    int32_t budget;      // absolute average tokens per KV head; 0 = use ratio
    int32_t window;      // observation window: last prompt queries that score the prefix, >= 1
    int32_t pool_kernel; // 1-D pooling kernel over token scores, odd, >= 1
    int32_t n_sink;      // first tokens always kept (attention sinks), >= 0
    int32_t n_head_groups; // UNComp head groups per layer, >= 1
};

LLAMA_API struct llama_uncomp_params llama_uncomp_default_params(void);

// NULL when every field is in range, else a static message naming the first bad field and its range.
LLAMA_API const char * llama_uncomp_params_check(const struct llama_uncomp_params * params);

// Name of a method ("full", "snapkv", ...), or NULL when out of range.
LLAMA_API const char * llama_uncomp_method_name(int32_t method);

// One cache layer of a context's memory, as seen by sequence seq_id.
struct llama_uncomp_layer_stats {
    int32_t  il;          // model layer index
    int32_t  n_head_kv;   // KV heads of the layer
    int32_t  is_swa;      // 1 if the layer is a sliding-window layer (held in the SWA cache)
    int32_t  n_cells;     // cache cells of this layer holding tokens of seq_id
    uint64_t bytes_held;  // K + V bytes of the rows its KV heads hold (heads may hold different counts)
    uint64_t bytes_alloc; // K + V bytes allocated for the layer (all sequences)
    uint64_t bytes_per_token; // K + V bytes one token occupies in this layer
    int32_t  n_embd_k_gqa;    // key values per token: n_head_kv * head_dim
    int32_t  first_row;       // rows below it have no memory of their own (a fitted cache), else 0
};

// Fills up to n_max entries of out (ordered by model layer) and returns the number of cache layers,
// or -1 when the context's memory is not a KV cache (recurrent models). out may be NULL to count.
LLAMA_API int32_t llama_uncomp_layer_stats(
        const struct llama_context * ctx,
                    llama_seq_id   seq_id,
      struct llama_uncomp_layer_stats * out,
                         int32_t   n_max);

// Tokens held by each KV head of model layer il for seq_id: out[h], h < n_head_kv.
// Returns n_head_kv, or -1 when il is not a cache layer.
LLAMA_API int32_t llama_uncomp_tokens_kept(
        const struct llama_context * ctx,
                    llama_seq_id   seq_id,
                         int32_t   il,
                         int32_t * out,
                         int32_t   n_max);

// Keys of model layer il held for seq_id, ordered by position and converted to float:
// out[t*n_embd_k_gqa + j], needing n_max >= tokens * n_embd_k_gqa. out = NULL counts. KV head h holds
// the last llama_uncomp_tokens_kept rows; its slice of earlier rows is zero. Keys of a quantized cache
// come as llama.cpp stores them, rotated by its Walsh-Hadamard matrix (their entropy is unchanged).
// Returns the number of tokens, or a negative enum llama_uncomp_error.
LLAMA_API int32_t llama_uncomp_read_keys(
        const struct llama_context * ctx,
                    llama_seq_id   seq_id,
                         int32_t   il,
                           float * out,
                         int64_t   n_max);

// Truncated matrix entropy (uncomp-spec section 1) of each KV head's keys for seq_id, for every cache
// layer as llama_uncomp_layer_stats lists them (n_head_kv values each, sliding-window layers too);
// k_trunc <= 0 keeps every eigenvalue. The layers on one device are done in one pass. Returns the
// number of values (n_max too small: LLAMA_UNCOMP_ERR_PARAMS) or < 0.
LLAMA_API int32_t llama_uncomp_key_entropy(
        const struct llama_context * ctx,
                    llama_seq_id   seq_id,
                         int32_t   k_trunc,
                           float * out,
                         int64_t   n_max);

// llama_uncomp_key_entropy for a compression of seq_id that follows at once (a policy turns the entropy
// into budgets): on a GPU cache it also starts that compression's window scoring on the device, which
// then runs while the host solves the eigenvalues. llama_uncomp_compress_budgets uses those scores when
// the sequence's cells and window queries have not changed since; otherwise it scores again.
LLAMA_API int32_t llama_uncomp_key_entropy_for_compress(
        const struct llama_context * ctx,
                    llama_seq_id   seq_id,
                         int32_t   k_trunc,
                           float * out,
                         int64_t   n_max);

//
// Compression engine. Attach parameters to a context, observe the prompt's evaluation (it records
// each layer's last `window` post-RoPE queries), then compress a sequence: each KV head of each layer
// keeps its budget of tokens (scored by the method: streamingllm keeps sinks and recent tokens, the
// others the window's attention), moved into the sequence's first cells so that later graphs attend
// over them only. Heads keeping fewer tokens start at a later cell; all end at the same one. Of an
// iSWA cache (Gemma 3) the full-attention layers are compressed. The sequence must be the only one in
// its cache stream: several sequences of one context (n_seq_max > 1) are compressed independently when
// the cache is not unified (kv_unified = false, llama.cpp's default: one stream per sequence). The
// window queries are those of the last evaluations observed: observe one sequence's prompt at a time.
//

enum llama_uncomp_error {
    LLAMA_UNCOMP_ERR_PARAMS       = -1, // bad arguments (see llama_uncomp_params_check)
    LLAMA_UNCOMP_ERR_MEMORY       = -2, // the context's memory is not a KV cache (recurrent, hybrid)
    LLAMA_UNCOMP_ERR_NOT_ATTACHED = -3, // llama_uncomp_attach was not called on this context
    LLAMA_UNCOMP_ERR_METHOD       = -4, // the method does not compress (full)
    LLAMA_UNCOMP_ERR_NO_QUERIES   = -5, // no observed window queries for a layer
    LLAMA_UNCOMP_ERR_SHARED       = -6, // the sequence shares its cells or its cache stream with another one
    LLAMA_UNCOMP_ERR_DEVICE       = -7, // the cache's device could not run a step (out of memory); the cache is unchanged
    LLAMA_UNCOMP_ERR_FITTED       = -8, // the cache is fitted to its layout (llama_uncomp_fit_next_cache): rebuild it unfitted first
};

LLAMA_API int32_t llama_uncomp_attach(struct llama_context * ctx, const struct llama_uncomp_params * params);
LLAMA_API void    llama_uncomp_detach(struct llama_context * ctx);

// Replaces the parameters of an attached context, keeping what it observed and its layout: the same
// prompt can then be compressed again under other parameters (after a state reload). Observed window
// queries beyond the new window are dropped; a larger window needs a new observation.
LLAMA_API int32_t llama_uncomp_set_params(struct llama_context * ctx, const struct llama_uncomp_params * params);

// on = true: record window queries of the next evaluations (clears earlier ones); false: stop
LLAMA_API int32_t llama_uncomp_observe(struct llama_context * ctx, bool on);

// The window queries last observed for model layer il: out[t*n_embd_q + j] (n_embd_q = n_head * head_dim,
// post-RoPE, oldest first). Returns the number of rows (<= window), or a negative enum llama_uncomp_error.
LLAMA_API int32_t llama_uncomp_window_queries(
        const struct llama_context * ctx,
                         int32_t   il,
                           float * out,
                         int64_t   n_max);

// Replaces the window queries observed for model layer il with n_rows rows of q (the layout of
// llama_uncomp_window_queries; n_rows <= window): a saved state restored with its observation can be
// compressed as if it had just been evaluated. Returns n_rows, or a negative enum llama_uncomp_error.
LLAMA_API int32_t llama_uncomp_set_window_queries(
        struct llama_context * ctx,
                     int32_t   il,
                 const float * q,
                     int32_t   n_rows);

// Evicts tokens of seq_id down to one budget for every layer and head (params budget, or ratio x
// positions). Every budget is at least window + n_sink: the last `window` tokens are always kept, in the
// last cells at their true positions. Returns the cells the sequence holds, or a negative enum llama_uncomp_error.
LLAMA_API int32_t llama_uncomp_compress(struct llama_context * ctx, llama_seq_id seq_id);

// Same with a budget per KV head: budgets[i] for the i-th KV head of the cache layers in the order of
// llama_uncomp_layer_stats (n_head_kv entries per layer, those of sliding-window layers unused; each
// >= 1), n_budgets their total.
LLAMA_API int32_t llama_uncomp_compress_budgets(
        struct llama_context * ctx,
                llama_seq_id   seq_id,
               const int32_t * budgets,
                     int64_t   n_budgets);

// Forgets the per-head layout of seq_id (of every sequence when seq_id < 0): call before the
// compressed sequence's cells are cleared or re-evaluated.
LLAMA_API void llama_uncomp_forget(struct llama_context * ctx, llama_seq_id seq_id);

// The first cell each KV head of model layer il reads for seq_id (0 for all until a compression gives
// heads different budgets): out[h], h < n_head_kv. Returns n_head_kv or < 0. set restores a saved
// layout after a state load (n = n_head_kv); LLAMA_UNCOMP_ERR_DEVICE when the device has no room for
// the layer's per-head attention bias (kv_size x n_head f16; the layout is then unchanged).
LLAMA_API int32_t llama_uncomp_head_start(const struct llama_context * ctx, llama_seq_id seq_id, int32_t il, uint32_t * out, int32_t n_max);
LLAMA_API int32_t llama_uncomp_set_head_start(struct llama_context * ctx, llama_seq_id seq_id, int32_t il, const uint32_t * start, int32_t n);

// Fitting a cache to a compressed layout. After a compression a layer's KV heads hold only the cells
// from their first start on (llama_uncomp_head_start), yet llama.cpp allocates every layer the same
// kv_size rows. While a plan is set, the KV caches this thread creates (llama_init_from_model) allocate
// each model layer il only its rows from first_row[il] on (layers past n_layer: all): rows below are
// placed on memory other layers hold, so they must never be written. A context rebuilt for a compressed
// sequence with first_row[il] <= its heads' first start then holds the sequence's state (restored with
// llama_state_set_data) and decodes after it in about the memory its kept rows take. Compressing,
// setting a head layout below a fitted row, a pruned prefill, re-evaluating the sequence from an earlier
// cell and shifting positions need an unfitted cache: the first three return LLAMA_UNCOMP_ERR_FITTED.
// Fitting needs flash attention (V stored by rows) and one cache stream; other caches allocate as
// usual (their layers' first_row stats stay 0). n_layer = 0 clears the plan. Returns 0 or < 0.
LLAMA_API int32_t llama_uncomp_fit_next_cache(const int32_t * first_row, int32_t n_layer);

//
// Hidden-state pruning during prefill (UNComp's first stage), for sequence 0 of an attached context
// whose memory is a plain KV cache (llama, qwen2 and qwen3 architectures): begin, evaluate the whole
// prompt of n_tokens tokens from an empty sequence as usual (observing its last max(window, params'
// window) tokens: the pruning window), then finish.
// Between them evaluations run layers 0..layer only (their logits are not the model's) and write layer
// `layer`'s output rows into a buffer of n_tokens rows on that layer's device (f32, freed at the end).
// finish ranks the prompt's tokens by that layer's attention from the pruning window's queries (summed
// over KV heads, pooled as SnapKV does), keeps about keep x n of them (the pruning window and sinks
// always; rounded up so that the dropped count is a multiple of 256) and evaluates layers layer+1.. on
// them only, in batches of n_batch, at their own positions: those layers then hold only the kept tokens,
// as if compressed to them, and the context's logits are the prompt's last token's. keep = 1 runs both
// phases on every token.
// begin: 0, LLAMA_UNCOMP_ERR_MEMORY (not a plain KV cache or not one of those architectures),
// LLAMA_UNCOMP_ERR_PARAMS (layer not in [0, n_layer - 2], n_tokens < 1, window not in [1, 4096], or a
// prefill already begun), LLAMA_UNCOMP_ERR_SHARED (sequence 0 is not empty), LLAMA_UNCOMP_ERR_DEVICE
// (no memory for the rows). finish: the number of tokens the later layers hold, or < 0, after which
// sequence 0 is empty again (as after abort).
LLAMA_API int32_t llama_uncomp_prefill_begin(struct llama_context * ctx, int32_t layer, int32_t n_tokens, int32_t window);
LLAMA_API int32_t llama_uncomp_prefill_finish(struct llama_context * ctx, float keep, int32_t n_batch);
// Ends a begun prefill without finishing it (an evaluation failed or was interrupted): sequence 0 is cleared.
LLAMA_API void    llama_uncomp_prefill_abort(struct llama_context * ctx);

#ifdef __cplusplus
}
#endif
