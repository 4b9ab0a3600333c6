// The compressed cache's per-head layout (see uncomp-layout.h) and the attention hook that reads it.
#include "uncomp-layout.h"

#include "llama-graph.h"
#include "llama-kv-cache.h"

#include "ggml.h"

#include <algorithm>
#include <mutex>
#include <unordered_map>

namespace {

// keyed by the layer's K storage tensor: the hook sees views of it (k->view_src)
std::mutex g_layout_mutex;
std::unordered_map<const ggml_tensor *, std::vector<uint32_t>> g_head_start;

// set while the hook builds its per-head attentions, which call build_attn_mha again
thread_local bool t_in_hook = false;

std::vector<uint32_t> head_start_of(const ggml_tensor * storage) {
    std::lock_guard<std::mutex> lock(g_layout_mutex);
    auto it = g_head_start.find(storage);
    return it == g_head_start.end() ? std::vector<uint32_t>() : it->second;
}

// view of rows [s, ne[axis]) and heads [h0, h1) of a cache view; axis is the cell axis (1 or 2 after
// no permutation: 2 for K and V, 0 for a transposed V)
ggml_tensor * view_heads(ggml_context * ctx, ggml_tensor * t, int head_axis, int cell_axis,
                         int64_t h0, int64_t h1, int64_t s) {
    int64_t ne[4] = { t->ne[0], t->ne[1], t->ne[2], t->ne[3] };
    ne[head_axis] = h1 - h0;
    ne[cell_axis] -= s;
    return ggml_view_4d(ctx, t, ne[0], ne[1], ne[2], ne[3], t->nb[1], t->nb[2], t->nb[3],
                        h0 * t->nb[head_axis] + s * t->nb[cell_axis]);
}

} // namespace

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
        int           il) {
    if (t_in_hook || k->view_src == nullptr) {
        return nullptr;
    }
    const std::vector<uint32_t> start = head_start_of(k->view_src);
    if (start.empty()) {
        return nullptr;
    }
    // the engine records layouts only for what this split handles: one stream, no per-head bias or
    // ALiBi slopes (a head subset would get the wrong slopes), no MLA
    GGML_ASSERT(k->ne[3] == 1 && kq_b == nullptr && v_mla == nullptr && gctx.hparams.f_max_alibi_bias == 0.0f);
    GGML_ASSERT(kq_mask != nullptr && kq_mask->ne[2] == 1 && (int64_t) start.size() == k->ne[1]);

    ggml_context * ctx = gctx.ctx0;
    const int64_t n_head_kv = k->ne[1];
    const int64_t n_kv      = k->ne[2];
    const int64_t gqa       = q->ne[1] / n_head_kv;
    const bool    v_trans   = v->nb[1] > v->nb[2]; // [n_kv, n_head_kv, head_dim_v] instead of [head_dim_v, n_head_kv, n_kv]

    t_in_hook = true;
    ggml_tensor * out = nullptr;
    for (int64_t h0 = 0; h0 < n_head_kv;) {
        int64_t h1 = h0 + 1;
        while (h1 < n_head_kv && start[h1] == start[h0]) {
            ++h1;
        }
        // the ubatch's own cells follow every head's start, so s < n_kv; the clamp only guards
        const int64_t s = std::min<int64_t>(start[h0], n_kv - 1);

        // q_g: [head_dim, (h1 - h0) * gqa, n_tokens]; k_g, v_g: rows [s, n_kv) of heads [h0, h1)
        ggml_tensor * q_g = ggml_view_4d(ctx, q, q->ne[0], (h1 - h0) * gqa, q->ne[2], q->ne[3],
                                         q->nb[1], q->nb[2], q->nb[3], h0 * gqa * q->nb[1]);
        ggml_tensor * k_g = view_heads(ctx, k, 1, 2, h0, h1, s);
        ggml_tensor * v_g = v_trans ? view_heads(ctx, v, 1, 0, h0, h1, s) : view_heads(ctx, v, 1, 2, h0, h1, s);
        // mask: [n_kv - s, n_tokens_pad, 1, 1], made contiguous as the kernels require
        ggml_tensor * mask_g = ggml_cont(ctx, ggml_view_4d(ctx, kq_mask, n_kv - s, kq_mask->ne[1], kq_mask->ne[2], kq_mask->ne[3],
                                                           kq_mask->nb[1], kq_mask->nb[2], kq_mask->nb[3], s * kq_mask->nb[0]));
        ggml_tensor * sinks_g = sinks ? ggml_view_1d(ctx, sinks, (h1 - h0) * gqa, h0 * gqa * sinks->nb[0]) : nullptr;

        // [head_dim_v * (h1 - h0) * gqa, n_tokens] -> [head_dim_v, (h1 - h0) * gqa, n_tokens]
        ggml_tensor * cur = gctx.build_attn_mha(q_g, k_g, v_g, nullptr, mask_g, sinks_g, nullptr, n_kv_max, kq_scale, il);
        cur = ggml_reshape_3d(ctx, cur, cur->ne[0] / ((h1 - h0) * gqa), (h1 - h0) * gqa, cur->ne[1]);
        out = out == nullptr ? cur : ggml_concat(ctx, out, cur, 1);
        h0 = h1;
    }
    t_in_hook = false;
    return ggml_reshape_2d(ctx, out, out->ne[0] * out->ne[1], out->ne[2]);
}

void uncomp_layout_set(const llama_kv_cache * cache, int32_t il, const std::vector<uint32_t> & head_start) {
    const ggml_tensor * storage = cache->get_k_storage(il);
    std::lock_guard<std::mutex> lock(g_layout_mutex);
    if (std::all_of(head_start.begin(), head_start.end(), [](uint32_t s) { return s == 0; })) {
        g_head_start.erase(storage);
    } else {
        g_head_start[storage] = head_start;
    }
}

std::vector<uint32_t> uncomp_layout_get(const llama_kv_cache * cache, int32_t il) {
    return head_start_of(cache->get_k_storage(il));
}

void uncomp_layout_clear(const llama_kv_cache * cache) {
    for (uint32_t il : cache->get_layer_ids()) {
        uncomp_layout_set(cache, (int32_t) il, {});
    }
}
