// The compressed cache's layout: after compression, the KV heads of a layer may keep different
// numbers of prompt tokens. Every head's kept rows end at the same cell (the last kept cell, so new
// tokens follow all heads alike); a head that keeps fewer starts later. Head h of layer il is valid
// in the cells [head_start[h], ...) of the sequence and attention for it reads only those rows.
// A compressed sequence owns its cache stream (a non-unified cache gives each sequence one), so the
// layout is kept per layer and stream.
//
// This header is also included by llama.cpp's llama-graph.cpp (patch 0003): keep it free of
// llama.cpp internals.
#pragma once

#include <cstdint>
#include <vector>

struct ggml_tensor;
struct llm_graph_context;
class llama_kv_cache;

// uncomp hook, called first by llm_graph_context::build_attn_mha with its arguments (k, v: views of
// one layer's cache over the ubatch's streams, [head_dim, n_head_kv, n_kv, n_stream]; q: [head_dim,
// n_head, n_tokens]). When the layer's heads start at different cells in one of those streams it builds
// llama.cpp's attention once over rows [first start, n_kv) with a per-head, per-stream mask (-INF below
// each head's start) and returns its output ([head_dim_v * n_head, n_tokens]); nullptr lets llama.cpp
// build its usual attention.
ggml_tensor * uncomp_build_attn_heads(
        const llm_graph_context & gctx,
        ggml_tensor * q,
        ggml_tensor * k,
        ggml_tensor * v,
        ggml_tensor * kq_b,
        ggml_tensor * kq_mask,
        ggml_tensor * sinks,
        ggml_tensor * v_mla,
        int64_t       n_kv_max,
        float         kq_scale,
        int           il);

// Makes sure layer il has its per-head attention bias for n_head query heads (kv_size x n_head f16 on
// the cache's device, all streams; allocated once, kept while the layer has a layout): false when it
// cannot be allocated. Needed before recording a layout (not all zero) in any stream of the layer.
bool uncomp_layout_reserve(const llama_kv_cache * cache, int32_t il, int64_t n_head);

// Records where each KV head of layer il starts in a stream (one cell index per head); all zero
// forgets the layer's layout in that stream.
void uncomp_layout_set(const llama_kv_cache * cache, int32_t il, uint32_t stream, const std::vector<uint32_t> & head_start);

// The first cell valid for each KV head of layer il in a stream; empty when it has no layout (all at 0).
std::vector<uint32_t> uncomp_layout_get(const llama_kv_cache * cache, int32_t il, uint32_t stream);

// uncomp hook, called by llama_kv_cache::find_slot (patch 0008): whether a new token may take a cell of
// the stream that the sliding window masks (llama.cpp's reuse of an iSWA cache's old cells). Not while a
// layer of the cache has a layout there: its heads read only the cells from their start on, and a token
// placed below that would be invisible to them (a pruned prefill gives the sliding layers after it one).
bool uncomp_swa_cell_reusable(const llama_kv_cache * cache, uint32_t stream);

// Forgets the layout of every layer of a cache in one stream (its cells were cleared or re-evaluated),
// or in all streams when stream < 0.
void uncomp_layout_clear(const llama_kv_cache * cache, int32_t stream);
