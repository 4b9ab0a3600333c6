// The compression engine (first version): observes the prompt's last queries while it is evaluated,
// scores every cached token per KV head (SnapKV: window attention, pooled) and compacts each head's
// kept rows into the lowest cells of the sequence, so later graphs attend over n_kv = budget cells.
//
// This version gives every layer and head the same budget (snapkv, streamingllm). With an iSWA cache
// (Gemma 3) it compresses the full-attention layers; the sliding-window layers stay as they are.
#include "uncomp.h"
#include "uncomp-impl.h"

#include "llama-context.h"
#include "llama-kv-cache.h"
#include "llama-kv-cache-iswa.h"
#include "llama-model.h"

#include "ggml-backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <numeric>
#include <unordered_map>
#include <vector>

namespace {

struct uncomp_state {
    llama_uncomp_params params;
    // per model layer: the last `window` post-RoPE query rows seen, each [head_dim * n_head] floats
    std::vector<std::deque<std::vector<float>>> window_q;
};

// The cache the engine compresses: a plain KV cache, or the full-attention (base) half of an iSWA
// cache, whose sliding-window layers already hold only their window. nullptr for other memories.
llama_kv_cache * compressible_cache(llama_context * ctx) {
    llama_memory_i * mem = ctx->get_memory();
    if (auto * kv = dynamic_cast<llama_kv_cache *>(mem)) {
        return kv;
    }
    if (auto * iswa = dynamic_cast<llama_kv_cache_iswa *>(mem)) {
        return iswa->get_base();
    }
    return nullptr;
}

std::mutex g_states_mutex;
std::unordered_map<const llama_context *, std::unique_ptr<uncomp_state>> g_states;

uncomp_state * state_of(const llama_context * ctx) {
    std::lock_guard<std::mutex> lock(g_states_mutex);
    auto it = g_states.find(ctx);
    return it == g_states.end() ? nullptr : it->second.get();
}

// ggml's eval callback: with ask=true it says which tensors it wants, then receives them computed.
// We want each layer's post-RoPE queries, the ROPE node named "Qcur-<il>".
bool observe_queries(ggml_tensor * t, bool ask, void * user_data) {
    const bool wanted = t->op == GGML_OP_ROPE && std::strncmp(t->name, "Qcur-", 5) == 0;
    if (ask) {
        return wanted;
    }
    if (!wanted) {
        return true;
    }
    auto * st = static_cast<uncomp_state *>(user_data);
    const int il = std::atoi(t->name + 5);
    if (t->type != GGML_TYPE_F32 || il < 0 || (size_t) il >= st->window_q.size() || !ggml_is_contiguous(t)) {
        return true;
    }
    // t: [head_dim, n_head, n_tokens]
    const int64_t row      = t->ne[0] * t->ne[1];
    const int64_t n_tokens = t->ne[2];
    const int64_t n_keep   = std::min<int64_t>(n_tokens, st->params.window);
    auto & rows = st->window_q[il];
    for (int64_t i = n_tokens - n_keep; i < n_tokens; ++i) {
        std::vector<float> q(row);
        ggml_backend_tensor_get(t, q.data(), i * t->nb[2], row * sizeof(float));
        rows.push_back(std::move(q));
        if ((int64_t) rows.size() > st->params.window) {
            rows.pop_front();
        }
    }
    return true;
}

// rows [n_cells][n_embd] of a K (or untransposed V) storage tensor, as floats
std::vector<float> rows_to_float(ggml_tensor * storage, uint32_t stream, const std::vector<uint32_t> & cells, int64_t n_embd) {
    const size_t row_bytes = ggml_row_size(storage->type, n_embd);
    std::vector<uint8_t> raw(row_bytes);
    std::vector<float> out(cells.size() * n_embd);
    const auto * traits = ggml_get_type_traits(storage->type);
    for (size_t i = 0; i < cells.size(); ++i) {
        ggml_backend_tensor_get(storage, raw.data(), stream * storage->nb[2] + cells[i] * storage->nb[1], row_bytes);
        if (storage->type == GGML_TYPE_F32) {
            std::memcpy(&out[i * n_embd], raw.data(), row_bytes);
        } else {
            traits->to_float(raw.data(), &out[i * n_embd], n_embd);
        }
    }
    return out;
}

// Moves, for every KV head h, the rows of cells src[h][i] to cells dst[i] (i < dst.size()).
// A row holds all heads (n_head_kv slices of head_dim elements); a transposed V holds one element
// per cell for each of its n_embd rows.
void compact_storage(ggml_tensor * storage, uint32_t stream, bool transposed, int64_t head_dim, int64_t n_head_kv,
                     const std::vector<std::vector<uint32_t>> & src, const std::vector<uint32_t> & dst) {
    const size_t base = stream * storage->nb[2];
    const size_t B    = dst.size();
    if (!transposed) {
        const size_t head_bytes = ggml_row_size(storage->type, head_dim);
        const size_t row_bytes  = storage->nb[1];
        // gather into a buffer first: destinations overlap sources
        std::vector<uint8_t> rows(B * row_bytes);
        for (int64_t h = 0; h < n_head_kv; ++h) {
            for (size_t i = 0; i < B; ++i) {
                ggml_backend_tensor_get(storage, &rows[i * row_bytes + h * head_bytes],
                                        base + src[h][i] * row_bytes + h * head_bytes, head_bytes);
            }
        }
        for (size_t i = 0; i < B; ++i) {
            ggml_backend_tensor_set(storage, &rows[i * row_bytes], base + dst[i] * row_bytes, row_bytes);
        }
        return;
    }
    // transposed V: the [n_embd, kv_size] storage holds element (dim j, cell c) at (j*kv_size + c)*elem
    const size_t elem = ggml_type_size(storage->type);
    const int64_t n_cells = storage->ne[1];
    std::vector<uint8_t> line(n_cells * elem);
    std::vector<uint8_t> moved(B * elem);
    for (int64_t h = 0; h < n_head_kv; ++h) {
        for (int64_t j = h * head_dim; j < (h + 1) * head_dim; ++j) {
            const size_t off = base + j * n_cells * elem;
            ggml_backend_tensor_get(storage, line.data(), off, n_cells * elem);
            for (size_t i = 0; i < B; ++i) {
                std::memcpy(&moved[i * elem], &line[src[h][i] * elem], elem);
            }
            for (size_t i = 0; i < B; ++i) {
                std::memcpy(&line[dst[i] * elem], &moved[i * elem], elem);
            }
            ggml_backend_tensor_set(storage, line.data(), off, n_cells * elem);
        }
    }
}

// SnapKV scores of the n prompt tokens for each KV head of one layer: softmax attention of the
// window queries (causal, as the model computed it), summed over the window and the query heads
// that share a KV head, then average-pooled over positions.
std::vector<std::vector<float>> window_scores(const uncomp_state & st, const llama_hparams & hp, uint32_t il,
                                              const std::vector<float> & k, const std::vector<llama_pos> & pos) {
    const int64_t n         = (int64_t) pos.size();
    const int64_t head_dim  = hp.n_embd_head_k(il);
    const int64_t n_head    = hp.n_head(il);
    const int64_t n_head_kv = hp.n_head_kv(il);
    const int64_t n_embd_k  = hp.n_embd_k_gqa(il);
    const int64_t gqa       = n_head / n_head_kv;
    const float   scale     = hp.f_attention_scale == 0.0f ? 1.0f / std::sqrt((float) head_dim) : hp.f_attention_scale;

    const auto & rows = st.window_q[il];
    const int64_t w = (int64_t) rows.size();
    std::vector<std::vector<float>> score(n_head_kv, std::vector<float>(n, 0.0f));
    std::vector<float> logit(n);
    for (int64_t t = 0; t < w; ++t) {
        const llama_pos qpos = pos[n - w + t];
        for (int64_t qh = 0; qh < n_head; ++qh) {
            const float * q = &rows[t][qh * head_dim];
            const int64_t kh = qh / gqa;
            float mx = -INFINITY;
            for (int64_t j = 0; j < n; ++j) {
                if (pos[j] > qpos) { logit[j] = -INFINITY; continue; }
                const float * kr = &k[j * n_embd_k + kh * head_dim];
                float dot = 0.0f;
                for (int64_t d = 0; d < head_dim; ++d) {
                    dot += q[d] * kr[d];
                }
                logit[j] = dot * scale;
                mx = std::max(mx, logit[j]);
            }
            double sum = 0.0;
            for (int64_t j = 0; j < n; ++j) {
                logit[j] = std::isinf(logit[j]) ? 0.0f : std::exp(logit[j] - mx);
                sum += logit[j];
            }
            for (int64_t j = 0; j < n; ++j) {
                score[kh][j] += (float) (logit[j] / sum);
            }
        }
    }
    // average pooling, kernel k, zero padding k/2, stride 1 (over the prefix before the window)
    const int64_t half = st.params.pool_kernel / 2;
    const int64_t n_prefix = n - w;
    for (auto & s : score) {
        std::vector<float> pooled(n_prefix);
        for (int64_t j = 0; j < n_prefix; ++j) {
            float acc = 0.0f;
            for (int64_t o = -half; o <= half; ++o) {
                const int64_t x = j + o;
                if (x >= 0 && x < n_prefix) acc += s[x];
            }
            pooled[j] = acc / (float) st.params.pool_kernel;
        }
        std::copy(pooled.begin(), pooled.end(), s.begin());
    }
    return score;
}

// indices (into the sequence's token list) kept by one head: the top (budget - w) prefix tokens by
// score, the sinks, and the w window tokens, in original order
std::vector<uint32_t> select_kept(const std::vector<float> & score, int64_t n, int64_t w, int64_t budget, int64_t n_sink) {
    std::vector<uint32_t> kept;
    const int64_t n_prefix = n - w;
    const int64_t sinks = std::min<int64_t>(n_sink, n_prefix);
    std::vector<uint32_t> order(n_prefix - sinks);
    std::iota(order.begin(), order.end(), (uint32_t) sinks);
    const int64_t n_top = std::max<int64_t>(0, budget - w - sinks);
    std::partial_sort(order.begin(), order.begin() + n_top, order.end(),
                      [&](uint32_t a, uint32_t b) { return score[a] > score[b] || (score[a] == score[b] && a < b); });
    for (int64_t i = 0; i < sinks; ++i) kept.push_back((uint32_t) i);
    kept.insert(kept.end(), order.begin(), order.begin() + n_top);
    std::sort(kept.begin() + sinks, kept.end());
    for (int64_t i = n_prefix; i < n; ++i) kept.push_back((uint32_t) i);
    return kept;
}

} // namespace

int32_t llama_uncomp_read_keys(
        const struct llama_context * ctx,
                    llama_seq_id   seq_id,
                         int32_t   il,
                           float * out,
                         int64_t   n_max) {
    const llama_kv_cache * cache = uncomp_cache_of_layer(ctx, il);
    if (cache == nullptr || seq_id < 0 || seq_id >= (llama_seq_id) cache->get_n_seq_max()) {
        return LLAMA_UNCOMP_ERR_PARAMS;
    }
    std::vector<uint32_t> cells;
    for (const auto & pc : cache->get_cells(seq_id).seq_pos_get(seq_id)) {
        cells.push_back(pc.second);
    }
    const int64_t n_embd = ctx->get_model().hparams.n_embd_k_gqa(il);
    if (out != nullptr) {
        if (n_max < (int64_t) cells.size() * n_embd) {
            return LLAMA_UNCOMP_ERR_PARAMS;
        }
        const auto rows = rows_to_float(cache->get_k_storage(il), cache->get_stream(seq_id), cells, n_embd);
        std::copy(rows.begin(), rows.end(), out);
    }
    return (int32_t) cells.size();
}

int32_t llama_uncomp_attach(struct llama_context * ctx, const struct llama_uncomp_params * params) {
    if (ctx == nullptr || llama_uncomp_params_check(params) != nullptr) {
        return LLAMA_UNCOMP_ERR_PARAMS;
    }
    if (compressible_cache(ctx) == nullptr) {
        return LLAMA_UNCOMP_ERR_MEMORY;
    }
    auto st = std::make_unique<uncomp_state>();
    st->params = *params;
    st->window_q.resize(ctx->get_model().hparams.n_layer());
    std::lock_guard<std::mutex> lock(g_states_mutex);
    g_states[ctx] = std::move(st);
    return 0;
}

void llama_uncomp_detach(struct llama_context * ctx) {
    if (state_of(ctx)) {
        ctx->set_eval_callback(nullptr, nullptr);
    }
    std::lock_guard<std::mutex> lock(g_states_mutex);
    g_states.erase(ctx);
}

int32_t llama_uncomp_observe(struct llama_context * ctx, bool on) {
    uncomp_state * st = state_of(ctx);
    if (st == nullptr) {
        return LLAMA_UNCOMP_ERR_NOT_ATTACHED;
    }
    if (on) {
        for (auto & rows : st->window_q) rows.clear();
    }
    ctx->set_eval_callback(on ? observe_queries : nullptr, on ? st : nullptr);
    return 0;
}

int32_t llama_uncomp_window_queries(
        const struct llama_context * ctx,
                         int32_t   il,
                           float * out,
                         int64_t   n_max) {
    const uncomp_state * st = state_of(ctx);
    if (st == nullptr) {
        return LLAMA_UNCOMP_ERR_NOT_ATTACHED;
    }
    if (il < 0 || (size_t) il >= st->window_q.size()) {
        return LLAMA_UNCOMP_ERR_PARAMS;
    }
    const auto & rows = st->window_q[il];
    int64_t at = 0;
    for (const auto & q : rows) {
        if (out != nullptr) {
            if (at + (int64_t) q.size() > n_max) {
                return LLAMA_UNCOMP_ERR_PARAMS;
            }
            std::copy(q.begin(), q.end(), out + at);
        }
        at += (int64_t) q.size();
    }
    return (int32_t) rows.size();
}

int32_t llama_uncomp_compress(struct llama_context * ctx, llama_seq_id seq_id) {
    uncomp_state * st = state_of(ctx);
    if (st == nullptr) {
        return LLAMA_UNCOMP_ERR_NOT_ATTACHED;
    }
    const auto & p = st->params;
    if (p.method != LLAMA_UNCOMP_METHOD_SNAPKV && p.method != LLAMA_UNCOMP_METHOD_STREAMINGLLM) {
        return LLAMA_UNCOMP_ERR_METHOD;
    }
    llama_kv_cache * kv = compressible_cache(ctx);
    if (seq_id < 0 || seq_id >= (llama_seq_id) kv->get_n_seq_max()) {
        return LLAMA_UNCOMP_ERR_PARAMS;
    }
    const auto & hp = ctx->get_model().hparams;
    const uint32_t stream = kv->get_stream(seq_id);

    // the sequence's cells, by position
    std::vector<llama_pos> pos;
    std::vector<uint32_t>  cells;
    for (const auto & [p_, c] : kv->get_cells(seq_id).seq_pos_get(seq_id)) {
        if (kv->get_cells(seq_id).seq_count(c) != 1) {
            return LLAMA_UNCOMP_ERR_SHARED; // cells shared with another sequence (seq_cp)
        }
        pos.push_back(p_);
        cells.push_back(c);
    }
    const int64_t n = (int64_t) pos.size();
    const int64_t n_pos = n == 0 ? 0 : (int64_t) pos.back() + 1;
    int64_t budget = p.budget > 0 ? p.budget : (int64_t) std::lround(p.ratio * (double) n_pos);
    // never fewer than the window and the sinks: they are always kept, and the window's tokens stay
    // the last cells at their true positions (so a rewind inside the window is exact)
    const int64_t w = p.window;
    budget = std::max<int64_t>(budget, w + p.n_sink);
    if (budget >= n) {
        return (int32_t) n; // nothing to evict
    }

    // destination: the lowest cells of the sequence, so later graphs attend over few cells
    std::vector<uint32_t> dst(cells);
    std::sort(dst.begin(), dst.end());
    dst.resize(budget);

    for (uint32_t il : kv->get_layer_ids()) {
        const int64_t n_head_kv = hp.n_head_kv(il);
        const int64_t head_dim  = hp.n_embd_head_k(il);
        std::vector<std::vector<uint32_t>> src(n_head_kv);
        if (p.method == LLAMA_UNCOMP_METHOD_STREAMINGLLM) {
            // attention sinks (at least one token) and the most recent tokens
            const int64_t sinks = std::min<int64_t>(std::max<int32_t>(p.n_sink, 1), budget - w);
            for (auto & s : src) {
                for (int64_t i = 0; i < sinks; ++i) s.push_back(cells[i]);
                for (int64_t i = n - (budget - sinks); i < n; ++i) s.push_back(cells[i]);
            }
        } else {
            if ((int64_t) st->window_q[il].size() < std::min<int64_t>(w, n)) {
                return LLAMA_UNCOMP_ERR_NO_QUERIES;
            }
            const auto k = rows_to_float(kv->get_k_storage(il), stream, cells, hp.n_embd_k_gqa(il));
            const auto score = window_scores(*st, hp, il, k, pos);
            const int64_t wq = (int64_t) st->window_q[il].size();
            for (int64_t h = 0; h < n_head_kv; ++h) {
                for (uint32_t i : select_kept(score[h], n, wq, budget, p.n_sink)) src[h].push_back(cells[i]);
            }
        }
        compact_storage(kv->get_k_storage(il), stream, false, head_dim, n_head_kv, src, dst);
        compact_storage(kv->get_v_storage(il), stream, kv->get_v_trans(), hp.n_embd_head_v(il), n_head_kv, src, dst);
    }

    // cell metadata: dst[i] now holds the i-th kept token of every head; give the cells the last
    // `budget` positions, so the sequence still ends at its true position and new tokens follow it
    kv->seq_rm(seq_id, -1, -1);
    auto & cells_mut = kv->get_cells_mut(seq_id);
    for (int64_t i = 0; i < budget; ++i) {
        cells_mut.pos_set(dst[i], pos[n - budget + i]);
        cells_mut.seq_add(dst[i], seq_id);
    }
    return (int32_t) budget;
}
