// The compression engine: observes the prompt's last queries while it is evaluated, scores every
// cached token per KV head (SnapKV: window attention, pooled; StreamingLLM: sinks and recency) and
// compacts each head's kept rows into the sequence's first cells, right-aligned so that every head
// ends at the same cell (uncomp-layout.h): later graphs attend per head over its own rows only.
//
// Budgets are given per layer and KV head (policies split them in Python). With an iSWA cache
// (Gemma 3) the full-attention layers are compressed; the sliding-window layers stay as they are.
#include "uncomp.h"
#include "uncomp-impl.h"
#include "uncomp-device.h"
#include "uncomp-layout.h"
#include "uncomp-prefill.h"

#include "llama-context.h"
#include "llama-impl.h"
#include "llama-kv-cache.h"
#include "llama-kv-cache-iswa.h"
#include "llama-model.h"

#include "ggml-backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

struct uncomp_state {
    llama_uncomp_params params;
    bool observing = false;
    // per model layer: the last `window` post-RoPE query rows seen, each [head_dim * n_head] floats
    std::vector<std::deque<std::vector<float>>> window_q;
    // a pruned prefill's ranking layer keeps its last rank_rows rows instead, when more (uncomp_rank_window)
    int32_t rank_layer = -1;
    int32_t rank_rows  = 0;
    uint64_t queries_generation = 0; // changes whenever window_q does
    // the device-side steps, per device holding cache layers (several with a partial GPU offload)
    std::map<ggml_backend_dev_t, std::unique_ptr<uncomp_device>> devices;
    uncomp_prefill prefill;
    // window scores started during the entropy step for the compression that follows it
    // (uncomp_start_scores): valid while the sequence's cells and the window queries are the same
    struct started_scores {
        llama_seq_id           seq = -1;
        uint32_t               stream = 0;
        std::vector<uint32_t>  cells;
        std::vector<llama_pos> pos;
        uint64_t               queries_generation = 0;
        std::vector<std::pair<uncomp_device *, std::vector<size_t>>> groups; // a device, the layers (li) it scores
    } started;
};

uncomp_device & device_of(uncomp_state & st, const ggml_tensor * storage) {
    auto & d = st.devices[uncomp_device_of(storage)];
    if (!d) {
        d = std::make_unique<uncomp_device>(storage);
    }
    return *d;
}

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

// the layouts of every cache of the context for one stream (-1: all): a pruned prefill also gives an
// iSWA cache's sliding half some
void clear_layouts(const llama_context * ctx, int32_t stream) {
    const llama_kv_cache * last = nullptr;
    for (const auto & l : uncomp_cache_layers(ctx)) { // by model layer: a cache's layers may interleave
        if (l.cache != last) {
            uncomp_layout_clear(l.cache, stream);
            last = l.cache;
        }
    }
}

// ggml's eval callback: with ask=true it says which tensors it wants, then receives them computed.
// We want each layer's post-RoPE queries, the ROPE node named "Qcur-<il>", while observing. It is
// installed only then: with any callback, ggml's scheduler waits for the device after every split.
bool observe_queries(ggml_tensor * t, bool ask, void * user_data) {
    auto * st = static_cast<uncomp_state *>(user_data);
    const bool query = st->observing && t->op == GGML_OP_ROPE && std::strncmp(t->name, "Qcur-", 5) == 0;
    if (ask) {
        return query;
    }
    if (!query) {
        return true;
    }
    const int il = std::atoi(t->name + 5);
    if (t->type != GGML_TYPE_F32 || il < 0 || (size_t) il >= st->window_q.size() || !ggml_is_contiguous(t)) {
        return true;
    }
    // t: [head_dim, n_head, n_tokens]
    const int64_t row      = t->ne[0] * t->ne[1];
    const int64_t n_tokens = t->ne[2];
    const int64_t n_rows   = il == st->rank_layer ? std::max(st->params.window, st->rank_rows) : st->params.window;
    const int64_t n_keep   = std::min<int64_t>(n_tokens, n_rows);
    auto & rows = st->window_q[il];
    ++st->queries_generation;
    for (int64_t i = n_tokens - n_keep; i < n_tokens; ++i) {
        std::vector<float> q(row);
        ggml_backend_tensor_get(t, q.data(), i * t->nb[2], row * sizeof(float));
        rows.push_back(std::move(q));
        if ((int64_t) rows.size() > n_rows) {
            rows.pop_front();
        }
    }
    return true;
}

// rows [n_cells][n_embd] of a K (or untransposed V) storage tensor, as floats; runs of consecutive
// cells are read in one transfer
std::vector<float> rows_to_float(ggml_tensor * storage, uint32_t stream, const std::vector<uint32_t> & cells, int64_t n_embd) {
    const size_t row_bytes = ggml_row_size(storage->type, n_embd);
    std::vector<uint8_t> raw;
    std::vector<float> out(cells.size() * n_embd);
    const auto * traits = ggml_get_type_traits(storage->type);
    for (size_t i = 0; i < cells.size();) {
        size_t run = 1;
        while (i + run < cells.size() && cells[i + run] == cells[i] + run) ++run;
        raw.resize(run * row_bytes);
        ggml_backend_tensor_get(storage, raw.data(), stream * storage->nb[2] + cells[i] * storage->nb[1], run * row_bytes);
        for (size_t r = 0; r < run; ++r) {
            if (storage->type == GGML_TYPE_F32) {
                std::memcpy(&out[(i + r) * n_embd], &raw[r * row_bytes], row_bytes);
            } else {
                traits->to_float(&raw[r * row_bytes], &out[(i + r) * n_embd], n_embd);
            }
        }
        i += run;
    }
    return out;
}

// Writes, for every KV head h, the rows of cells src[h][i] to cells n_kept - src[h].size() + i: each
// head's kept rows end at cell n_kept - 1 (the layout of uncomp-layout.h). A row holds all heads
// (n_head_kv slices of head_dim elements); a transposed V holds one element per cell for each of its
// n_embd rows. Cells below a head's first kept row are left as zeros.
void compact_storage(ggml_tensor * storage, uint32_t stream, bool transposed, int64_t head_dim, int64_t n_head_kv,
                     const std::vector<std::vector<uint32_t>> & src, size_t n_kept) {
    const size_t base = stream * storage->nb[2];
    if (!transposed) {
        const size_t head_bytes = ggml_row_size(storage->type, head_dim);
        const size_t row_bytes  = storage->nb[1];
        // gather into a buffer first: destinations overlap sources
        std::vector<uint8_t> rows(n_kept * row_bytes, 0);
        for (int64_t h = 0; h < n_head_kv; ++h) {
            const size_t first = n_kept - src[h].size();
            for (size_t i = 0; i < src[h].size(); ++i) {
                ggml_backend_tensor_get(storage, &rows[(first + i) * row_bytes + h * head_bytes],
                                        base + src[h][i] * row_bytes + h * head_bytes, head_bytes);
            }
        }
        ggml_backend_tensor_set(storage, rows.data(), base, n_kept * row_bytes);
        return;
    }
    // transposed V: the [n_embd, kv_size] storage holds element (dim j, cell c) at (j*kv_size + c)*elem
    const size_t elem = ggml_type_size(storage->type);
    const int64_t n_cells = storage->ne[1];
    std::vector<uint8_t> line(n_cells * elem);
    std::vector<uint8_t> moved(n_kept * elem);
    for (int64_t h = 0; h < n_head_kv; ++h) {
        const size_t first = n_kept - src[h].size();
        for (int64_t j = h * head_dim; j < (h + 1) * head_dim; ++j) {
            const size_t off = base + j * n_cells * elem;
            ggml_backend_tensor_get(storage, line.data(), off, n_cells * elem);
            std::fill(moved.begin(), moved.end(), 0);
            for (size_t i = 0; i < src[h].size(); ++i) {
                std::memcpy(&moved[(first + i) * elem], &line[src[h][i] * elem], elem);
            }
            std::memcpy(line.data(), moved.data(), n_kept * elem);
            ggml_backend_tensor_set(storage, line.data(), off, n_cells * elem);
        }
    }
}

// A quantized cache stores keys rotated by an orthonormal Walsh-Hadamard matrix H, block by block of
// n_rot values (llama.cpp's attn_rot_k; its graph rotates the queries alike, q·k is unchanged). The
// observed queries are taken before that rotation: scoring them against cached keys needs them rotated
// too. Returns the window queries of layer il in the cached keys' basis.
std::vector<std::vector<float>> queries_in_key_basis(const llama_kv_cache * kv, const std::deque<std::vector<float>> & rows) {
    ggml_init_params ip = { ggml_tensor_overhead(), nullptr, /*no_alloc =*/ true };
    ggml_context * gctx = ggml_init(ip);
    const ggml_tensor * rot = kv->build_input_k_rot(gctx);
    const int64_t n_rot = rot ? rot->ne[0] : 0;
    ggml_free(gctx);
    if (n_rot == 0) {
        return { rows.begin(), rows.end() };
    }
    // H is Sylvester's construction scaled by 1/sqrt(n_rot), the matrix llama.cpp builds: applied with
    // the fast transform's butterflies, n log n per block (the n² product took ~150 ms for an 8B model's
    // 32 layers of window queries)
    const float scale = 1.0f / std::sqrt((float) n_rot);
    std::vector<std::vector<float>> out(rows.size());
    for (size_t t = 0; t < rows.size(); ++t) {
        out[t].assign(rows[t].size(), 0.0f);
        for (size_t b = 0; b + n_rot <= rows[t].size(); b += n_rot) {
            float * v = &out[t][b];
            std::copy_n(&rows[t][b], n_rot, v);
            for (int64_t h = 1; h < n_rot; h *= 2) {
                for (int64_t i = 0; i < n_rot; i += 2 * h) {
                    for (int64_t j = i; j < i + h; ++j) {
                        const float x = v[j], y = v[j + h];
                        v[j]     = x + y;
                        v[j + h] = x - y;
                    }
                }
            }
            for (int64_t i = 0; i < n_rot; ++i) v[i] *= scale;
        }
    }
    return out;
}

float attention_scale(const llama_hparams & hp, uint32_t il) {
    return hp.f_attention_scale == 0.0f ? 1.0f / std::sqrt((float) hp.n_embd_head_k(il)) : hp.f_attention_scale;
}

// Attention mass of the window queries on the n tokens KV head kh of layer il holds (token i: row
// idx[i] of k, [*, n_embd_k_gqa], at position pos[idx[i]]): softmax attention of the window queries
// (causal, as the model computed it), summed over the window and the query heads that share the KV
// head. The host twin of uncomp_device::attention_mass.
std::vector<float> attention_mass(const std::vector<std::vector<float>> & rows, const llama_hparams & hp, uint32_t il,
                                  int64_t kh, const std::vector<float> & k, const std::vector<llama_pos> & pos,
                                  const std::vector<uint32_t> & idx) {
    const int64_t n         = (int64_t) idx.size();
    const int64_t head_dim  = hp.n_embd_head_k(il);
    const int64_t n_embd_k  = hp.n_embd_k_gqa(il);
    const int64_t gqa       = hp.n_head(il) / hp.n_head_kv(il);
    const float   scale     = attention_scale(hp, il);

    const int64_t w = (int64_t) rows.size();
    std::vector<float> score(n, 0.0f);
    std::vector<float> logit(n);
    for (int64_t t = 0; t < w; ++t) {
        const llama_pos qpos = pos[idx[n - w + t]];
        for (int64_t qh = kh * gqa; qh < (kh + 1) * gqa; ++qh) {
            const float * q = &rows[t][qh * head_dim];
            float mx = -INFINITY;
            for (int64_t j = 0; j < n; ++j) {
                if (pos[idx[j]] > qpos) { logit[j] = -INFINITY; continue; }
                const float * kr = &k[idx[j] * n_embd_k + kh * head_dim];
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
                score[j] += (float) (logit[j] / sum);
            }
        }
    }
    return score;
}

// SnapKV's score of each of the n_prefix tokens before the window: its attention mass average-pooled
// (kernel k, zero padding k/2, stride 1), into `pooled` (the caller's buffer, reused across heads)
void pool_prefix(const uncomp_values & mass, int64_t n_prefix, int32_t pool_kernel, std::vector<float> & pooled) {
    const int64_t half = pool_kernel / 2;
    pooled.resize(n_prefix);
    for (int64_t j = 0; j < n_prefix; ++j) {
        float acc = 0.0f;
        for (int64_t o = -half; o <= half; ++o) {
            const int64_t x = j + o;
            if (x >= 0 && x < n_prefix) acc += mass[x];
        }
        pooled[j] = acc / (float) pool_kernel;
    }
}

// indices (into the sequence's token list) kept by one head: the top (budget - w) prefix tokens by
// score, the sinks, and the w window tokens, in original order
std::vector<uint32_t> select_kept(const std::vector<float> & score, int64_t n, int64_t w, int64_t budget, int64_t n_sink) {
    std::vector<uint32_t> kept;
    const int64_t n_prefix = n - w;
    const int64_t sinks = std::min<int64_t>(n_sink, n_prefix);
    // one per selecting thread, reused: a head's candidates are a whole long prompt
    thread_local std::vector<uint32_t> order;
    order.resize(n_prefix - sinks);
    std::iota(order.begin(), order.end(), (uint32_t) sinks);
    const int64_t n_top = std::max<int64_t>(0, budget - w - sinks);
    std::nth_element(order.begin(), order.begin() + n_top, order.end(),
                     [&](uint32_t a, uint32_t b) { return score[a] > score[b] || (score[a] == score[b] && a < b); });
    kept.reserve(budget);
    for (int64_t i = 0; i < sinks; ++i) kept.push_back((uint32_t) i);
    kept.insert(kept.end(), order.begin(), order.begin() + n_top);
    std::sort(kept.begin() + sinks, kept.end());
    for (int64_t i = n_prefix; i < n; ++i) kept.push_back((uint32_t) i);
    return kept;
}

} // namespace

uncomp_device * uncomp_device_for(const llama_context * ctx, int32_t il) {
    uncomp_state * st = state_of(ctx);
    const llama_kv_cache * cache = uncomp_cache_of_layer(ctx, il);
    if (st == nullptr || cache == nullptr || !uncomp_device_wanted(cache->get_k_storage(il))) {
        return nullptr;
    }
    try {
        return &device_of(*st, cache->get_k_storage(il));
    } catch (const std::exception & e) {
        LLAMA_LOG_ERROR("%s\n", e.what());
        return nullptr; // no backend for that device: the host path still works
    }
}

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
        clear_layouts(ctx, -1);
        ctx->set_eval_callback(nullptr, nullptr);
    }
    std::lock_guard<std::mutex> lock(g_states_mutex);
    g_states.erase(ctx);
}

int32_t llama_uncomp_set_params(struct llama_context * ctx, const struct llama_uncomp_params * params) {
    uncomp_state * st = state_of(ctx);
    if (st == nullptr) {
        return LLAMA_UNCOMP_ERR_NOT_ATTACHED;
    }
    if (llama_uncomp_params_check(params) != nullptr) {
        return LLAMA_UNCOMP_ERR_PARAMS;
    }
    st->params = *params;
    for (auto & rows : st->window_q) {
        while ((int64_t) rows.size() > params->window) {
            rows.pop_front();
        }
    }
    return 0;
}

int32_t llama_uncomp_observe(struct llama_context * ctx, bool on) {
    return uncomp_observe(ctx, on, 0);
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

int32_t llama_uncomp_set_window_queries(struct llama_context * ctx, int32_t il, const float * q, int32_t n_rows) {
    uncomp_state * st = state_of(ctx);
    if (st == nullptr) {
        return LLAMA_UNCOMP_ERR_NOT_ATTACHED;
    }
    if (il < 0 || (size_t) il >= st->window_q.size() || n_rows < 0 || n_rows > st->params.window || (q == nullptr && n_rows > 0)) {
        return LLAMA_UNCOMP_ERR_PARAMS;
    }
    const auto & hp = ctx->get_model().hparams;
    const int64_t row = (int64_t) hp.n_head(il) * hp.n_embd_head_k(il);
    auto & rows = st->window_q[il];
    rows.clear();
    ++st->queries_generation;
    for (int32_t t = 0; t < n_rows; ++t) {
        rows.emplace_back(q + t * row, q + (t + 1) * row);
    }
    return n_rows;
}

namespace {

// The next graph must be built afresh: a reused one would keep views of the old per-head layout.
// (Setting the eval callback drops the reusable graph; the callback is installed while it has work.)
void rebuild_graphs(llama_context * ctx, uncomp_state & st) {
    ctx->set_eval_callback(st.observing ? observe_queries : nullptr, st.observing ? &st : nullptr);
}

// per layer and KV head, the window attention mass of the tokens it holds: the host path's own values
// and views of the device steps' results (valid until the device's next step)
struct window_mass {
    uncomp_step_values                heads; // [layer][KV head]
    std::deque<std::vector<float>>    host;  // what the host path's views point at
};

// The device job scoring layer il's heads with scored[h] set over the tokens they hold, held[h]
// (indices into cells, increasing); head_cells keeps the cell lists it points at.
uncomp_score_job score_job(
        const uncomp_state & st, const llama_kv_cache * kv, const llama_hparams & hp, uint32_t il, uint32_t stream,
        const std::vector<uint32_t> & cells, const std::vector<const std::vector<uint32_t> *> & held,
        const std::vector<char> & scored, std::deque<std::vector<uint32_t>> & head_cells) {
    const int64_t n_head_kv = (int64_t) scored.size();
    const auto window_q = queries_in_key_basis(kv, st.window_q[il]);
    uncomp_score_job job;
    job.keys = { kv->get_k_storage(il), stream, hp.n_embd_head_k(il), std::vector<const std::vector<uint32_t> *>(n_head_kv) };
    for (int64_t h = 0; h < n_head_kv; ++h) {
        const auto & idx = *held[h];
        if (!scored[h]) {
            continue;
        }
        if (idx.size() == cells.size()) { // the whole sequence (indices are increasing)
            job.keys.cells[h] = &cells;
            continue;
        }
        auto & to = head_cells.emplace_back(idx.size());
        std::transform(idx.begin(), idx.end(), to.begin(), [&](uint32_t i) { return cells[i]; });
        job.keys.cells[h] = &to;
    }
    job.wq = (int64_t) window_q.size();
    job.n_head = hp.n_head(il);
    job.scale = attention_scale(hp, il);
    const int64_t head_dim = job.keys.head_dim;
    job.q.resize(job.n_head * job.wq * head_dim); // [n_head][wq][head_dim]
    for (int64_t t = 0; t < job.wq; ++t) {
        for (int64_t qh = 0; qh < job.n_head; ++qh) {
            std::copy_n(&window_q[t][qh * head_dim], head_dim, &job.q[(qh * job.wq + t) * head_dim]);
        }
    }
    return job;
}

// per device: the layers (li) it scores and their jobs, in layer order
using device_score_jobs = std::map<uncomp_device *, std::pair<std::vector<size_t>, std::vector<uncomp_score_job>>>;

// The jobs scoring, on the device that holds their keys, the heads with scored[li][h] set of every layer
// whose keys live on a device and that skip[li] does not exclude (its scores are already under way)
device_score_jobs score_jobs_by_device(
        uncomp_state & st, const llama_kv_cache * kv, const llama_hparams & hp, const std::vector<uint32_t> & layer_ids,
        uint32_t stream, const std::vector<uint32_t> & cells, const std::vector<std::vector<const std::vector<uint32_t> *>> & held,
        const std::vector<std::vector<char>> & scored, const std::vector<char> & skip, std::deque<std::vector<uint32_t>> & head_cells) {
    device_score_jobs out;
    for (size_t li = 0; li < layer_ids.size(); ++li) {
        ggml_tensor * k_storage = kv->get_k_storage(layer_ids[li]);
        if (skip[li] || !uncomp_device_wanted(k_storage) || std::none_of(scored[li].begin(), scored[li].end(), [](char c) { return c; })) {
            continue;
        }
        auto & group = out[&device_of(st, k_storage)];
        group.first.push_back(li);
        group.second.push_back(score_job(st, kv, hp, layer_ids[li], stream, cells, held[li], scored[li], head_cells));
    }
    return out;
}

// Window attention mass (attention_mass) of every layer's heads with scored[li][h] set over the tokens
// they hold, held[li][h] (indices into cells/pos, increasing), computed where each layer's keys live:
// the layers of one device in one graph. started: the scores uncomp_start_scores began for these cells
// (every head of its layers holding every token), read instead of computed again; nullptr: none.
window_mass window_masses(
        uncomp_state & st, const llama_kv_cache * kv, const llama_hparams & hp, const std::vector<uint32_t> & layer_ids,
        uint32_t stream, const std::vector<uint32_t> & cells, const std::vector<llama_pos> & pos,
        const std::vector<std::vector<const std::vector<uint32_t> *>> & held, const std::vector<std::vector<char>> & scored,
        const uncomp_state::started_scores * started) {
    std::vector<char> from_started(layer_ids.size(), 0);
    for (const auto & group : started ? started->groups : decltype(started->groups)()) {
        for (size_t li : group.second) from_started[li] = 1;
    }
    window_mass out;
    auto & mass = out.heads;
    mass.resize(layer_ids.size());
    std::deque<std::vector<uint32_t>> head_cells; // the cells of heads that hold a part of the sequence
    device_score_jobs on_device = score_jobs_by_device(st, kv, hp, layer_ids, stream, cells, held, scored, from_started, head_cells);
    for (size_t li = 0; li < layer_ids.size(); ++li) {
        const uint32_t il = layer_ids[li];
        const int64_t n_head_kv = (int64_t) scored[li].size();
        mass[li].resize(n_head_kv);
        ggml_tensor * k_storage = kv->get_k_storage(il);
        if (uncomp_device_wanted(k_storage) || std::none_of(scored[li].begin(), scored[li].end(), [](char c) { return c; })) {
            continue; // on a device (above), or nothing to score
        }
        const auto window_q = queries_in_key_basis(kv, st.window_q[il]);
        const std::vector<float> k = rows_to_float(k_storage, stream, cells, hp.n_embd_k_gqa(il));
        for (int64_t h = 0; h < n_head_kv; ++h) {
            if (scored[li][h]) {
                const auto & m = out.host.emplace_back(attention_mass(window_q, hp, il, h, k, pos, *held[li][h]));
                mass[li][h] = { m.data(), m.size() };
            }
        }
    }
    for (const auto & [dev, layers] : started ? started->groups : decltype(started->groups)()) {
        auto res = dev->finish_attention_mass();
        for (size_t i = 0; i < res.size(); ++i) {
            mass[layers[i]] = std::move(res[i]);
        }
    }
    for (auto & [dev, group] : on_device) {
        auto res = dev->attention_mass(group.second);
        for (size_t i = 0; i < res.size(); ++i) {
            mass[group.first[i]] = std::move(res[i]);
        }
    }
    return out;
}

// compact_storage for the K and V storage of every layer, src[li][h] the cells head h keeps: on each
// storage's device when it can (one graph per device), else through the host
void compact_layers(uncomp_state & st, llama_kv_cache * kv, const llama_hparams & hp, const std::vector<uint32_t> & layer_ids,
                    uint32_t stream, const std::vector<std::vector<std::vector<uint32_t>>> & src, size_t n_kept) {
    std::map<ggml_backend_dev_t, std::vector<uncomp_head_cells>> on_device;
    for (size_t li = 0; li < layer_ids.size(); ++li) {
        const uint32_t il = layer_ids[li];
        const std::pair<ggml_tensor *, int64_t> k_and_v[2] = {
            { kv->get_k_storage(il), hp.n_embd_head_k(il) }, { kv->get_v_storage(il), hp.n_embd_head_v(il) } };
        for (int i = 0; i < 2; ++i) {
            const auto [storage, head_dim] = k_and_v[i];
            const bool transposed = i == 1 && kv->get_v_trans();
            if (!transposed && uncomp_device_wanted(storage)) {
                std::vector<const std::vector<uint32_t> *> heads;
                for (const auto & c : src[li]) heads.push_back(&c);
                on_device[uncomp_device_of(storage)].push_back({ storage, stream, head_dim, heads });
            } else {
                compact_storage(storage, stream, transposed, head_dim, (int64_t) src[li].size(), src[li], n_kept);
            }
        }
    }
    for (auto & [dev, jobs] : on_device) {
        if (!device_of(st, jobs[0].storage).compact(jobs, n_kept)) {
            for (const auto & j : jobs) { // a storage the device step cannot move as words: rare, so copied
                std::vector<std::vector<uint32_t>> heads;
                for (const auto * c : j.cells) heads.push_back(*c);
                compact_storage(j.storage, stream, false, j.head_dim, (int64_t) heads.size(), heads, n_kept);
            }
        }
    }
}

// Evicts tokens of seq_id so that KV head h of cache layer i keeps budget[i][h] tokens (clamped to
// [window + n_sink, tokens it holds]); see llama_uncomp_compress_budgets.
int32_t compress_seq(llama_context * ctx, uncomp_state & st, llama_seq_id seq_id,
                     const std::vector<std::vector<int64_t>> & budget) {
    const auto & p = st.params;
    llama_kv_cache * kv = compressible_cache(ctx);
    if (seq_id < 0 || seq_id >= (llama_seq_id) kv->get_n_seq_max()) {
        return LLAMA_UNCOMP_ERR_PARAMS;
    }
    const auto & hp = ctx->get_model().hparams;
    const uint32_t stream = kv->get_stream(seq_id);
    uncomp_step_timer timer("compress");
    ctx->synchronize(); // the last evaluation may still be writing the cache
    timer.step("sync");
    const auto & cells_ro = kv->get_cells(seq_id);

    // the sequence's cells, by position; it must own its stream's cells alone, so that its kept
    // rows can fill cells [0, n_kept) and new tokens land after every head's rows
    std::vector<llama_pos> pos;
    std::vector<uint32_t>  cells;
    for (const auto & [p_, c] : cells_ro.seq_pos_get(seq_id)) {
        if (cells_ro.seq_count(c) != 1) {
            return LLAMA_UNCOMP_ERR_SHARED; // cells shared with another sequence (seq_cp)
        }
        pos.push_back(p_);
        cells.push_back(c);
    }
    if (cells_ro.get_used() != cells.size()) {
        return LLAMA_UNCOMP_ERR_SHARED; // another sequence holds cells of this stream
    }
    const int64_t n = (int64_t) pos.size();
    const int64_t w = p.window;

    // per layer and head: the tokens it holds (indices into cells/pos, in position order), then kept
    const std::vector<uint32_t> layer_ids = kv->get_layer_ids();
    std::vector<std::vector<std::vector<uint32_t>>> kept(layer_ids.size());
    size_t n_kept = 0;
    bool evicts = false;
    // per layer and head: the tokens it holds (indices into cells/pos), how many it keeps, and whether
    // it is scored (it evicts by score). Heads of uncompressed layers share one list: every token.
    std::vector<uint32_t> every_token(n);
    std::iota(every_token.begin(), every_token.end(), 0u);
    std::deque<std::vector<uint32_t>> head_tokens;
    std::vector<std::vector<const std::vector<uint32_t> *>> held(layer_ids.size());
    std::vector<std::vector<char>> scored(layer_ids.size());
    std::vector<std::vector<int64_t>> keep(layer_ids.size());
    for (size_t li = 0; li < layer_ids.size(); ++li) {
        const uint32_t il = layer_ids[li];
        const int64_t n_head_kv = hp.n_head_kv(il);
        const std::vector<uint32_t> start = uncomp_layout_get(kv, (int32_t) il, stream);
        const int64_t wq = (int64_t) st.window_q[il].size();
        held[li].resize(n_head_kv);
        scored[li].resize(n_head_kv);
        keep[li].resize(n_head_kv);
        for (int64_t h = 0; h < n_head_kv; ++h) {
            if (start.empty()) {
                held[li][h] = &every_token;
            } else {
                auto & mine = head_tokens.emplace_back();
                for (int64_t i = 0; i < n; ++i) {
                    if (cells[i] >= start[h]) mine.push_back((uint32_t) i);
                }
                held[li][h] = &mine;
            }
            const int64_t n_h = (int64_t) held[li][h]->size();
            // never fewer than the window and the sinks: they are always kept, and the window's
            // tokens stay in the last cells at their true positions (a rewind inside it is exact)
            keep[li][h] = std::min<int64_t>(n_h, std::max<int64_t>(budget[li][h], w + p.n_sink));
            evicts = evicts || keep[li][h] < n_h;
            if (keep[li][h] < n_h && p.method != LLAMA_UNCOMP_METHOD_STREAMINGLLM) {
                // an evaluation shorter than the window (a short new turn) scores by the queries it has
                if (wq == 0) {
                    return LLAMA_UNCOMP_ERR_NO_QUERIES;
                }
                scored[li][h] = 1;
            }
        }
    }
    if (!evicts) {
        return (int32_t) n; // every head keeps what it holds
    }
    timer.step("plan");
    // scores the entropy step started for this very state, if any (taken either way: once only)
    const uncomp_state::started_scores started = std::exchange(st.started, {});
    bool use_started = !started.groups.empty() && started.seq == seq_id && started.stream == stream &&
                       started.cells == cells && started.pos == pos && started.queries_generation == st.queries_generation;
    for (const auto & group : started.groups) {
        for (size_t li : group.second) use_started = use_started && held[li][0] == &every_token;
    }
    window_mass mass;
    try {
        mass = window_masses(st, kv, hp, layer_ids, stream, cells, pos, held, scored, use_started ? &started : nullptr);
        timer.step("scores");
    } catch (const std::exception & e) {
        LLAMA_LOG_ERROR("%s\n", e.what());
        return LLAMA_UNCOMP_ERR_DEVICE; // nothing moved yet
    }
    // selection, every head of every layer in parallel
    std::vector<std::pair<size_t, size_t>> heads;
    for (size_t li = 0; li < layer_ids.size(); ++li) {
        kept[li].resize(held[li].size());
        for (size_t h = 0; h < held[li].size(); ++h) heads.emplace_back(li, h);
    }
    uncomp_parallel_for(heads.size(), [&](size_t i) {
        const auto [li, h] = heads[i];
        const int64_t wq = (int64_t) st.window_q[layer_ids[li]].size();
        const auto & hh = *held[li][h];
        const int64_t n_h = (int64_t) hh.size();
        const int64_t b = keep[li][h];
        auto & out = kept[li][h];
        if (b >= n_h) {
            out = hh;
        } else if (p.method == LLAMA_UNCOMP_METHOD_STREAMINGLLM) {
            // attention sinks (at least one token) and the most recent tokens
            const int64_t sinks = std::min<int64_t>(std::max<int32_t>(p.n_sink, 1), b - w);
            out.assign(hh.begin(), hh.begin() + sinks);
            out.insert(out.end(), hh.end() - (b - sinks), hh.end());
        } else {
            thread_local std::vector<float> score;
            pool_prefix(mass.heads[li][h], n_h - wq, p.pool_kernel, score);
            out.reserve(b);
            // the last `window` tokens are kept even when fewer of them were observed
            const int64_t tail = std::max<int64_t>(wq, std::min<int64_t>(w, n_h));
            for (uint32_t k : select_kept(score, n_h, tail, b, p.n_sink)) out.push_back(hh[k]);
        }
    });
    for (const auto & layer : kept) {
        for (const auto & out : layer) n_kept = std::max(n_kept, out.size());
    }
    timer.step("select");

    // move each head's kept rows so that they end at cell n_kept - 1 and record where each starts
    std::vector<std::vector<std::vector<uint32_t>>> src(layer_ids.size());
    for (size_t li = 0; li < layer_ids.size(); ++li) {
        src[li].resize(kept[li].size());
        for (size_t h = 0; h < kept[li].size(); ++h) {
            for (uint32_t i : kept[li][h]) src[li][h].push_back(cells[i]);
        }
    }
    // the per-head attention biases of the layers that will have a layout, before anything moves
    for (size_t li = 0; li < layer_ids.size(); ++li) {
        const bool moves = std::any_of(src[li].begin(), src[li].end(), [&](const auto & rows) { return rows.size() < n_kept; });
        if (moves && !uncomp_layout_reserve(kv, (int32_t) layer_ids[li], hp.n_head(layer_ids[li]))) {
            LLAMA_LOG_ERROR("%s: no device memory for layer %u's per-head attention bias\n", __func__, layer_ids[li]);
            return LLAMA_UNCOMP_ERR_DEVICE; // nothing moved yet
        }
    }
    try {
        compact_layers(st, kv, hp, layer_ids, stream, src, n_kept);
        timer.step("compact");
    } catch (const std::exception & e) {
        LLAMA_LOG_ERROR("%s\n", e.what());
        // host-side layers may be compacted already: the sequence cannot be kept
        kv->seq_rm(seq_id, -1, -1);
        uncomp_layout_clear(kv, (int32_t) stream);
        rebuild_graphs(ctx, st);
        return LLAMA_UNCOMP_ERR_DEVICE;
    }
    for (size_t li = 0; li < layer_ids.size(); ++li) {
        std::vector<uint32_t> start(src[li].size());
        for (size_t h = 0; h < src[li].size(); ++h) start[h] = (uint32_t) (n_kept - src[li][h].size());
        uncomp_layout_set(kv, (int32_t) layer_ids[li], stream, start);
    }

    // cell metadata: cells [0, n_kept) get the last n_kept positions, so the sequence still ends at
    // its true position, the window's cells keep their own, and new tokens follow
    kv->seq_rm(seq_id, -1, -1);
    auto & cells_mut = kv->get_cells_mut(seq_id);
    for (size_t i = 0; i < n_kept; ++i) {
        cells_mut.pos_set((uint32_t) i, pos[n - n_kept + i]);
        cells_mut.seq_add((uint32_t) i, seq_id);
    }
    rebuild_graphs(ctx, st);
    timer.step("cells");
    uncomp_check_finite(ctx, "after compression", 0, 0, UINT32_MAX);
    return (int32_t) n_kept;
}

// 0 when st is an attached state whose method evicts and whose cache may be compacted, else the error
// the compress calls return. A fitted cache (uncomp-fit.h) may not: compaction moves kept rows to cells
// below a layer's first row.
int32_t check_compresses(const llama_context * ctx, const uncomp_state * st) {
    if (st == nullptr) {
        return LLAMA_UNCOMP_ERR_NOT_ATTACHED;
    }
    if (st->params.method == LLAMA_UNCOMP_METHOD_FULL) {
        return LLAMA_UNCOMP_ERR_METHOD;
    }
    return uncomp_context_fitted(ctx) ? LLAMA_UNCOMP_ERR_FITTED : 0;
}

} // namespace

// UNCOMP_CHECK_FINITE (diagnosis of GPU-only NaN logits): the non-finite K and V values of layers
// [il0, n_layer) in cells [c0, c1) of sequence 0's stream, printed with `where` and the first layer and
// cell holding one. Costs a copy of those layers; does nothing unless the variable is set.
void uncomp_check_finite(llama_context * ctx, const char * where, int32_t il0, uint32_t c0, uint32_t c1) {
    static const bool on = std::getenv("UNCOMP_CHECK_FINITE") != nullptr;
    llama_kv_cache * kv = on ? compressible_cache(ctx) : nullptr;
    if (kv == nullptr) {
        return;
    }
    ctx->synchronize();
    const uint32_t size = kv->get_size();
    c1 = std::min(c1, size);
    const uint32_t stream = kv->get_stream(0);
    int64_t n_bad = 0;
    int32_t first_il = -1;
    int64_t first_cell = -1;
    std::vector<float> vals;
    std::vector<uint8_t> raw;
    for (uint32_t il : kv->get_layer_ids()) {
        if ((int32_t) il < il0) {
            continue;
        }
        ggml_tensor * v = kv->get_v_storage((int32_t) il);
        for (ggml_tensor * t : { kv->get_k_storage((int32_t) il), v }) {
            const bool v_trans = t == v && kv->get_v_trans();
            const int64_t n_embd = t->ne[0];
            // the stream's whole [n_embd, size] block (a transposed V: [size, n_embd])
            raw.resize(t->nb[2]);
            ggml_backend_tensor_get(t, raw.data(), stream * t->nb[2], t->nb[2]);
            vals.resize((size_t) n_embd * size);
            if (t->type == GGML_TYPE_F32) {
                std::memcpy(vals.data(), raw.data(), vals.size() * sizeof(float));
            } else {
                ggml_get_type_traits(t->type)->to_float(raw.data(), vals.data(), (int64_t) vals.size());
            }
            for (uint32_t c = c0; c < c1; ++c) {
                for (int64_t e = 0; e < n_embd; ++e) {
                    if (!std::isfinite(vals[v_trans ? e * size + c : (int64_t) c * n_embd + e]) && n_bad++ == 0) {
                        first_il   = (int32_t) il;
                        first_cell = c;
                    }
                }
            }
        }
    }
    fprintf(stderr, "uncomp check %s: layers %d.., cells [%u, %u): %lld non-finite K/V values (first: layer %d cell %lld)\n",
            where, il0, c0, c1, (long long) n_bad, first_il, (long long) first_cell);
}

int32_t llama_uncomp_compress(struct llama_context * ctx, llama_seq_id seq_id) {
    uncomp_state * st = state_of(ctx);
    if (const int32_t err = check_compresses(ctx, st)) {
        return err;
    }
    // one budget for every layer and head: the average asked for
    llama_kv_cache * kv = compressible_cache(ctx);
    if (seq_id < 0 || seq_id >= (llama_seq_id) kv->get_n_seq_max()) {
        return LLAMA_UNCOMP_ERR_PARAMS;
    }
    const llama_pos n_pos = kv->seq_pos_max(seq_id) + 1;
    const int64_t b = st->params.budget > 0 ? st->params.budget : (int64_t) std::lround(st->params.ratio * (double) n_pos);
    std::vector<std::vector<int64_t>> budget;
    for (uint32_t il : kv->get_layer_ids()) {
        budget.emplace_back(ctx->get_model().hparams.n_head_kv(il), b);
    }
    return compress_seq(ctx, *st, seq_id, budget);
}

void uncomp_start_scores(const llama_context * ctx, llama_seq_id seq_id) {
    uncomp_state * st = state_of(ctx);
    if (st == nullptr || st->params.method == LLAMA_UNCOMP_METHOD_STREAMINGLLM || st->params.method == LLAMA_UNCOMP_METHOD_FULL) {
        return;
    }
    st->started = {};
    llama_kv_cache * kv = compressible_cache(const_cast<llama_context *>(ctx));
    if (kv == nullptr || seq_id < 0 || seq_id >= (llama_seq_id) kv->get_n_seq_max()) {
        return;
    }
    const auto & hp = ctx->get_model().hparams;
    const uint32_t stream = kv->get_stream(seq_id);
    uncomp_state::started_scores started;
    for (const auto & [p_, c] : kv->get_cells(seq_id).seq_pos_get(seq_id)) {
        started.pos.push_back(p_);
        started.cells.push_back(c);
    }
    std::vector<uint32_t> every_token(started.cells.size());
    std::iota(every_token.begin(), every_token.end(), 0u);
    const std::vector<uint32_t> layer_ids = kv->get_layer_ids();
    // every head of every layer holds every token and is scored, as compress_seq will find right after a prompt
    std::vector<std::vector<const std::vector<uint32_t> *>> held(layer_ids.size());
    std::vector<std::vector<char>> scored(layer_ids.size());
    for (size_t li = 0; li < layer_ids.size(); ++li) {
        const uint32_t il = layer_ids[li];
        if (!uncomp_layout_get(kv, (int32_t) il, stream).empty() || st->window_q[il].empty()) {
            return; // a compressed layer, or one without its queries: compress_seq decides
        }
        held[li].assign(hp.n_head_kv(il), &every_token);
        scored[li].assign(hp.n_head_kv(il), 1);
    }
    std::deque<std::vector<uint32_t>> head_cells;
    try {
        device_score_jobs on_device = score_jobs_by_device(*st, kv, hp, layer_ids, stream, started.cells, held, scored,
                                                           std::vector<char>(layer_ids.size(), 0), head_cells);
        for (auto & [dev, group] : on_device) {
            dev->start_attention_mass(group.second);
            started.groups.emplace_back(dev, std::move(group.first));
        }
    } catch (const std::exception & e) {
        LLAMA_LOG_ERROR("%s\n", e.what());
        return; // the compression computes its scores itself
    }
    started.seq = seq_id;
    started.stream = stream;
    started.queries_generation = st->queries_generation;
    st->started = std::move(started);
}

int32_t llama_uncomp_compress_budgets(struct llama_context * ctx, llama_seq_id seq_id, const int32_t * budgets, int64_t n_budgets) {
    uncomp_state * st = state_of(ctx);
    if (const int32_t err = check_compresses(ctx, st)) {
        return err;
    }
    // budgets cover every cache layer (as llama_uncomp_layer_stats lists them), n_head_kv each;
    // those of sliding-window layers are not used
    llama_kv_cache * kv = compressible_cache(ctx);
    const auto & hp = ctx->get_model().hparams;
    std::vector<std::vector<int64_t>> budget;
    int64_t at = 0;
    for (const auto & l : uncomp_cache_layers(ctx)) {
        const int64_t n_head_kv = hp.n_head_kv(l.il);
        if (budgets == nullptr || at + n_head_kv > n_budgets) {
            return LLAMA_UNCOMP_ERR_PARAMS;
        }
        if (l.cache == kv) {
            budget.emplace_back(budgets + at, budgets + at + n_head_kv);
            if (std::any_of(budget.back().begin(), budget.back().end(), [](int64_t b) { return b < 1; })) {
                return LLAMA_UNCOMP_ERR_PARAMS;
            }
        }
        at += n_head_kv;
    }
    if (at != n_budgets) {
        return LLAMA_UNCOMP_ERR_PARAMS;
    }
    return compress_seq(ctx, *st, seq_id, budget);
}

namespace {

// the stream of seq_id in the compressible cache of an attached context, or a negative llama_uncomp_error
int64_t stream_of(const llama_context * ctx, llama_seq_id seq_id) {
    uncomp_state * st = state_of(ctx);
    if (st == nullptr) {
        return LLAMA_UNCOMP_ERR_NOT_ATTACHED;
    }
    const llama_kv_cache * kv = compressible_cache(const_cast<llama_context *>(ctx));
    if (seq_id < 0 || seq_id >= (llama_seq_id) kv->get_n_seq_max()) {
        return LLAMA_UNCOMP_ERR_PARAMS;
    }
    return kv->get_stream(seq_id);
}

} // namespace

void llama_uncomp_forget(struct llama_context * ctx, llama_seq_id seq_id) {
    if (state_of(ctx) == nullptr) {
        return;
    }
    const int64_t stream = seq_id < 0 ? -1 : stream_of(ctx, seq_id);
    if (seq_id < 0 || stream >= 0) {
        clear_layouts(ctx, (int32_t) stream);
    }
}

int32_t llama_uncomp_head_start(const struct llama_context * ctx, llama_seq_id seq_id, int32_t il, uint32_t * out, int32_t n_max) {
    const llama_kv_cache * cache = uncomp_cache_of_layer(ctx, il);
    const int64_t stream = stream_of(ctx, seq_id);
    if (stream < 0) {
        return (int32_t) stream;
    }
    if (cache == nullptr) {
        return LLAMA_UNCOMP_ERR_PARAMS;
    }
    const int32_t n_head_kv = (int32_t) ctx->get_model().hparams.n_head_kv(il);
    const std::vector<uint32_t> start = uncomp_layout_get(cache, il, (uint32_t) stream);
    for (int32_t h = 0; out != nullptr && h < n_head_kv && h < n_max; ++h) {
        out[h] = start.empty() ? 0 : start[h];
    }
    return n_head_kv;
}

int32_t llama_uncomp_set_head_start(struct llama_context * ctx, llama_seq_id seq_id, int32_t il, const uint32_t * start, int32_t n) {
    const llama_kv_cache * cache = uncomp_cache_of_layer(ctx, il);
    const int64_t stream = stream_of(ctx, seq_id);
    if (stream < 0) {
        return (int32_t) stream;
    }
    // any cache layer: a pruned prefill also gives an iSWA cache's sliding layers a layout
    if (cache == nullptr || start == nullptr || n != (int32_t) ctx->get_model().hparams.n_head_kv(il) ||
        std::any_of(start, start + n, [&](uint32_t s) { return s > cache->get_size(); })) {
        return LLAMA_UNCOMP_ERR_PARAMS;
    }
    const uint32_t first_row = uncomp_layer_first_row(cache, il);
    if (std::any_of(start, start + n, [&](uint32_t s) { return s < first_row; })) {
        return LLAMA_UNCOMP_ERR_FITTED; // the head would read rows the layer has no memory of
    }
    const bool all_zero = std::all_of(start, start + n, [](uint32_t s) { return s == 0; });
    if (!all_zero && !uncomp_layout_reserve(cache, il, ctx->get_model().hparams.n_head(il))) {
        return LLAMA_UNCOMP_ERR_DEVICE;
    }
    uncomp_layout_set(cache, il, (uint32_t) stream, std::vector<uint32_t>(start, start + n));
    rebuild_graphs(ctx, *state_of(ctx));
    return n;
}

// --- for the pruned prefill (uncomp-prefill.cpp) ---

int32_t uncomp_observe(llama_context * ctx, bool on, int32_t il_clear_from) {
    uncomp_state * st = state_of(ctx);
    if (st == nullptr) {
        return LLAMA_UNCOMP_ERR_NOT_ATTACHED;
    }
    if (on) {
        for (size_t il = (size_t) std::max(0, il_clear_from); il < st->window_q.size(); ++il) st->window_q[il].clear();
        ++st->queries_generation;
    }
    st->observing = on;
    rebuild_graphs(ctx, *st);
    return 0;
}

int32_t uncomp_rank_window(llama_context * ctx, int32_t il, int32_t n_rows) {
    uncomp_state * st = state_of(ctx);
    if (st == nullptr) {
        return LLAMA_UNCOMP_ERR_NOT_ATTACHED;
    }
    // the ranking layer's extra rows go: its compression is scored by the window, as every layer's
    if (st->rank_layer >= 0) {
        auto & rows = st->window_q[st->rank_layer];
        while ((int64_t) rows.size() > st->params.window) rows.pop_front();
        ++st->queries_generation;
    }
    st->rank_layer = n_rows > 0 ? il : -1;
    st->rank_rows  = n_rows > 0 ? n_rows : 0;
    return 0;
}

const llama_uncomp_params * uncomp_params_of(const llama_context * ctx) {
    const uncomp_state * st = state_of(ctx);
    return st == nullptr ? nullptr : &st->params;
}

uncomp_prefill * uncomp_prefill_of(const llama_context * ctx) {
    uncomp_state * st = state_of(ctx);
    return st == nullptr ? nullptr : &st->prefill;
}

uncomp_prefill * uncomp_prefill_of_sched(const ggml_backend_sched * sched) {
    std::lock_guard<std::mutex> lock(g_states_mutex);
    for (const auto & [ctx, st] : g_states) {
        if (ctx->get_sched() == sched) {
            return &st->prefill;
        }
    }
    return nullptr;
}

void uncomp_refresh_graphs(llama_context * ctx) {
    if (uncomp_state * st = state_of(ctx)) {
        rebuild_graphs(ctx, *st);
    }
}

int32_t uncomp_rank_tokens(llama_context * ctx, int32_t il, int64_t n_keep, std::vector<uint32_t> & kept) {
    uncomp_state * st = state_of(ctx);
    llama_kv_cache * kv = compressible_cache(ctx);
    if (st == nullptr || kv == nullptr) {
        return LLAMA_UNCOMP_ERR_NOT_ATTACHED;
    }
    const auto & hp = ctx->get_model().hparams;
    const uint32_t stream = kv->get_stream(0);
    std::vector<llama_pos> pos;
    std::vector<uint32_t>  cells;
    for (const auto & [p_, c] : kv->get_cells(0).seq_pos_get(0)) {
        pos.push_back(p_);
        cells.push_back(c);
    }
    const int64_t n  = (int64_t) pos.size();
    const int64_t wq = (int64_t) st->window_q[il].size();
    if (wq < std::min<int64_t>(st->params.window, n)) {
        return LLAMA_UNCOMP_ERR_NO_QUERIES;
    }
    std::vector<uint32_t> every_token(n);
    std::iota(every_token.begin(), every_token.end(), 0u);
    const int64_t n_head_kv = hp.n_head_kv(il);
    const std::vector<std::vector<const std::vector<uint32_t> *>> held = { std::vector<const std::vector<uint32_t> *>(n_head_kv, &every_token) };
    const std::vector<std::vector<char>> scored = { std::vector<char>(n_head_kv, 1) };
    window_mass mass;
    try {
        mass = window_masses(*st, kv, hp, { (uint32_t) il }, stream, cells, pos, held, scored, nullptr);
    } catch (const std::exception & e) {
        LLAMA_LOG_ERROR("%s\n", e.what());
        return LLAMA_UNCOMP_ERR_DEVICE;
    }
    std::vector<float> total(n, 0.0f);
    for (const auto & head : mass.heads[0]) {
        for (int64_t i = 0; i < n; ++i) total[i] += head[i];
    }
    // a non-finite score would make the ranking's ordering undefined: it ranks last, and is reported
    int64_t n_bad = 0;
    for (float & v : total) {
        if (!std::isfinite(v)) {
            v = -INFINITY;
            ++n_bad;
        }
    }
    if (n_bad > 0) {
        LLAMA_LOG_WARN("uncomp: %lld of %lld window scores of layer %d are not finite\n", (long long) n_bad, (long long) n, il);
    }
    std::vector<float> score;
    pool_prefix({ total.data(), total.size() }, n - wq, st->params.pool_kernel, score);
    kept = select_kept(score, n, wq, n_keep, st->params.n_sink);
    return 0;
}
