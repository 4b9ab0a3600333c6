// The compressed cache's per-head layout (see uncomp-layout.h) and the attention hook that reads it.
#include "uncomp-layout.h"

#include "llama-graph.h"
#include "llama-kv-cache.h"

#include "ggml.h"
#include "ggml-backend.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <unordered_map>

namespace {

// keyed by the layer's K storage tensor: the hook sees views of it (k->view_src)
std::mutex g_layout_mutex;
std::unordered_map<const ggml_tensor *, std::vector<uint32_t>> g_head_start;

// set while the hook builds its attention, which calls build_attn_mha again
thread_local bool t_in_hook = false;

std::vector<uint32_t> head_start_of(const ggml_tensor * storage) {
    std::lock_guard<std::mutex> lock(g_layout_mutex);
    auto it = g_head_start.find(storage);
    return it == g_head_start.end() ? std::vector<uint32_t>() : it->second;
}

// The per-head part of the attention mask, a graph input: bias[j, 0, h] = -INF where query head h's
// KV head does not hold row s_first + j, else 0. [n_rows, 1, n_head], the type of the layer's mask.
class head_mask_input : public llm_graph_input_i {
public:
    head_mask_input(const ggml_tensor * storage, std::vector<uint32_t> head_start, uint32_t s_first, int64_t gqa)
        : storage(storage), head_start(std::move(head_start)), s_first(s_first), gqa(gqa) {}

    void set_input(const llama_ubatch * /*ubatch*/) override {
        const int64_t n_rows = bias->ne[0];
        const int64_t n_head = bias->ne[2];
        std::vector<float> values(n_rows * n_head, 0.0f);
        for (int64_t h = 0; h < n_head; ++h) {
            const int64_t n_masked = std::min<int64_t>(head_start[h / gqa] - s_first, n_rows);
            std::fill_n(values.begin() + h * n_rows, n_masked, -INFINITY);
        }
        if (bias->type == GGML_TYPE_F16) {
            std::vector<ggml_fp16_t> half(values.size());
            ggml_fp32_to_fp16_row(values.data(), half.data(), (int64_t) values.size());
            ggml_backend_tensor_set(bias, half.data(), 0, ggml_nbytes(bias));
        } else {
            ggml_backend_tensor_set(bias, values.data(), 0, ggml_nbytes(bias));
        }
    }

    // a reused graph keeps n_kv (the mask input checks it); the layout must not have changed either
    bool can_reuse(const llm_graph_params & /*params*/) override {
        return head_start_of(storage) == head_start;
    }

    ggml_tensor * bias = nullptr;

private:
    const ggml_tensor *   storage;
    std::vector<uint32_t> head_start;
    uint32_t              s_first;
    int64_t               gqa;
};

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
    std::vector<uint32_t> start = head_start_of(k->view_src);
    if (start.empty()) {
        return nullptr;
    }
    // the engine records layouts only for what this handles: one stream, no per-head bias or ALiBi, no MLA
    GGML_ASSERT(k->ne[3] == 1 && kq_b == nullptr && v_mla == nullptr && gctx.hparams.f_max_alibi_bias == 0.0f);
    GGML_ASSERT(kq_mask != nullptr && kq_mask->ne[2] == 1 && kq_mask->ne[3] == 1 && (int64_t) start.size() == k->ne[1]);

    ggml_context * ctx = gctx.ctx0;
    const int64_t n_head   = q->ne[1];
    const int64_t n_tokens = kq_mask->ne[1];
    const int64_t n_kv     = k->ne[2];
    const bool    v_trans  = v->nb[1] > v->nb[2]; // [n_kv, n_head_kv, head_dim_v] instead of [head_dim_v, n_head_kv, n_kv]
    // the ubatch's own cells follow every head's start, so s_first < n_kv; the clamp only guards
    const int64_t s_first  = std::min<int64_t>(*std::min_element(start.begin(), start.end()), n_kv - 1);
    const int64_t n_rows   = n_kv - s_first;

    // rows [s_first, n_kv) of every head: k, v [head_dim, n_head_kv, n_rows] (v transposed: [n_rows, n_head_kv, head_dim_v])
    ggml_tensor * k_rows = ggml_view_3d(ctx, k, k->ne[0], k->ne[1], n_rows, k->nb[1], k->nb[2], s_first * k->nb[2]);
    ggml_tensor * v_rows = v_trans
        ? ggml_view_3d(ctx, v, n_rows, v->ne[1], v->ne[2], v->nb[1], v->nb[2], s_first * v->nb[0])
        : ggml_view_3d(ctx, v, v->ne[0], v->ne[1], n_rows, v->nb[1], v->nb[2], s_first * v->nb[2]);

    // mask [n_rows, n_tokens, n_head] = the layer's mask (rows [s_first, n_kv)) + the per-head bias;
    // the kernels skip -INF rows, so a head's work is its own rows
    auto * input = new head_mask_input(k->view_src, start, (uint32_t) s_first, n_head / k->ne[1]);
    gctx.res->add_input(llm_graph_input_ptr(input));
    input->bias = ggml_new_tensor_3d(ctx, kq_mask->type, n_rows, 1, n_head);
    ggml_set_input(input->bias);
    ggml_tensor * mask_rows = ggml_view_2d(ctx, kq_mask, n_rows, n_tokens, kq_mask->nb[1], s_first * kq_mask->nb[0]);
    ggml_tensor * bias      = n_tokens == 1 ? input->bias : ggml_repeat_4d(ctx, input->bias, n_rows, n_tokens, n_head, 1);
    ggml_tensor * mask_head = ggml_add(ctx, bias, mask_rows);

    t_in_hook = true;
    ggml_tensor * out = gctx.build_attn_mha(q, k_rows, v_rows, nullptr, mask_head, sinks, nullptr, n_kv_max, kq_scale, il);
    t_in_hook = false;
    return out;
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
