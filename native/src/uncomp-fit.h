// A KV cache fitted to a compressed layout: each layer allocates only the rows its heads hold.
//
// After compression a layer's KV heads hold the cells [first start, n) (uncomp-layout.h), and layers
// with smaller budgets start later. llama.cpp gives every layer kv_size rows, so a cache allocates the
// largest layer's rows for all of them. A fitted cache places the layers' tensors in one buffer so that
// the rows below a layer's first row (which attention never reads: they are masked, or skipped as
// whole tiles) lie on memory that other layers' held rows use. Only the held rows take memory.
//
// The order matters because llama.cpp's state load writes every cell of every layer: the K rows of
// each layer in ascending order, then the V rows likewise. A layer's unallocated rows overlap only
// layers written after it, so a state load leaves every held row right. Nothing else may write a
// fitted layer below its first row: a new compression, a re-evaluation from an earlier cell, a pruned
// prefill or a position shift needs an unfitted cache first (the engine refuses the first three).
//
// This header is also included by llama.cpp's llama-kv-cache.cpp (patch 0007): keep it free of
// llama.cpp internals.
#pragma once

#include <cstdint>

struct ggml_context;
struct ggml_tensor;
typedef struct ggml_backend_buffer * ggml_backend_buffer_t;
typedef struct ggml_backend_buffer_type * ggml_backend_buffer_type_t;

// uncomp hook, called by llama_kv_cache's constructor for each buffer type in place of
// ggml_backend_alloc_ctx_tensors_from_buft: while this thread has a plan (llama_uncomp_fit_next_cache)
// it allocates ctx's layer tensors (cache_k_l<il>, cache_v_l<il> [row, kv_size]) fitted to it and
// returns the buffer; nullptr lets llama.cpp allocate as usual. Fitting needs one stream and V stored
// by rows (v_trans false: flash attention).
ggml_backend_buffer_t uncomp_kv_alloc_fitted(ggml_context * ctx, ggml_backend_buffer_type_t buft, bool v_trans, uint32_t n_stream);

// The first row a layer's K or V storage tensor has memory of its own for (0: not fitted).
uint32_t uncomp_fitted_first_row(const ggml_tensor * storage);
