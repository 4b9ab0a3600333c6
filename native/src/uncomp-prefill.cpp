// The pruned prefill (uncomp-prefill.h): the layer-skip hook of the model builders and the C API that
// runs the two phases around the caller's own evaluation of the prompt.
#include "uncomp-prefill.h"
#include "uncomp.h"
#include "uncomp-impl.h"
#include "uncomp-layout.h"

#include "llama-arch.h"
#include "llama-context.h"
#include "llama-graph.h"
#include "llama-impl.h"
#include "llama-kv-cache.h"
#include "llama-kv-cache-iswa.h"
#include "llama-model.h"

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>

namespace {

// The rows of the residual buffer that a ubatch's graph writes (head: the tokens' positions, which are
// their rows on a prompt evaluated from an empty cache) or gathers (tail: the kept tokens' positions):
// an input [n_tokens] i32. In the tail the batch carries consecutive positions (tail_pos0 + i, also the
// cells the kept tokens land in); after llama.cpp's own input wrote them into the graph's position tensor
// (inputs are set in the order they were added), each is replaced by the kept token's own (RoPE).
class residual_rows_input : public llm_graph_input_i {
public:
    residual_rows_input(uncomp_prefill & pf, ggml_tensor * rows, ggml_tensor * pos) : rows(rows), pos(pos), pf(pf) {}

    void set_input(const llama_ubatch * ubatch) override {
        const uint32_t n = ubatch->n_tokens;
        std::vector<int32_t> row(n);
        for (uint32_t i = 0; i < n; ++i) {
            if (pf.phase == UNCOMP_PREFILL_HEAD) {
                const llama_pos p = ubatch->pos[i];
                // a position beyond the buffer fails the prefill at finish; its row goes to row 0
                pf.overflow = pf.overflow || p < 0 || p >= pf.residual->ne[1];
                row[i] = p >= 0 && p < pf.residual->ne[1] ? p : 0;
                continue;
            }
            const int64_t k = (int64_t) ubatch->pos[i] - pf.tail_pos0;
            GGML_ASSERT(k >= 0 && k < (int64_t) pf.kept_pos.size());
            row[i] = pf.kept_pos[k];
        }
        ggml_backend_tensor_set(rows, row.data(), 0, ggml_nbytes(rows));
        if (pos != nullptr) {
            ggml_backend_tensor_set(pos, row.data(), 0, ggml_nbytes(pos)); // a kept token's row is its position
        }
        if (pf.phase == UNCOMP_PREFILL_HEAD) {
            pf.n_written += n;
        }
    }

    // rows differ per ubatch and the phases end after a few: always built afresh
    bool can_reuse(const llm_graph_params & /*params*/) override { return false; }

private:
    ggml_tensor *    rows;
    ggml_tensor *    pos; // tail: the graph's position input, else nullptr
    uncomp_prefill & pf;
};

// The tail's sliding-window mask: llama.cpp's compares the cells' batch positions, whose distances
// understate the kept tokens' true ones. For the cells from tail_pos0 on (the layers > layer read no
// others, uncomp-layout.h) this rewrites it after llama.cpp's input has: a token sees a kept token
// at or before it whose true position is inside its window.
class swa_mask_input : public llm_graph_input_i {
public:
    swa_mask_input(const uncomp_prefill & pf, ggml_tensor * mask, const llama_hparams & hp) : mask(mask), pf(pf), hp(hp) {}

    void set_input(const llama_ubatch * ubatch) override {
        if (mask->buffer == nullptr) {
            return;
        }
        GGML_ASSERT(ggml_backend_buffer_is_host(mask->buffer) && mask->ne[3] == 1);
        const llama_kv_cells & cells = pf.swa->get_cells(0);
        const int64_t n_kv = mask->ne[0];
        auto true_pos = [&](llama_pos p) { return pf.kept_pos[p - pf.tail_pos0]; };
        for (uint32_t i = 0; i < ubatch->n_tokens; ++i) {
            const llama_pos p1 = ubatch->pos[i];
            for (int64_t j = pf.tail_pos0; j < n_kv; ++j) {
                const bool seen = !cells.is_empty(j) && cells.seq_has(j, 0) && cells.pos_get(j) >= pf.tail_pos0 &&
                                  cells.pos_get(j) <= p1 &&
                                  !llama_hparams::is_masked_swa(hp.n_swa, hp.swa_type, true_pos(cells.pos_get(j)), true_pos(p1));
                const float v = seen ? 0.0f : -INFINITY;
                if (mask->type == GGML_TYPE_F16) {
                    ((ggml_fp16_t *) mask->data)[i * n_kv + j] = ggml_fp32_to_fp16(v);
                } else {
                    ((float *) mask->data)[i * n_kv + j] = v;
                }
            }
        }
    }

    bool can_reuse(const llm_graph_params & /*params*/) override { return false; }

private:
    ggml_tensor *          mask;
    const uncomp_prefill & pf;
    const llama_hparams &  hp;
};

// the architectures whose builders call the hook (patch 0005)
bool has_layer_hook(const llama_model & model) {
    return model.arch == LLM_ARCH_LLAMA || model.arch == LLM_ARCH_QWEN2 || model.arch == LLM_ARCH_QWEN3 ||
           model.arch == LLM_ARCH_GEMMA3;
}

// The caches a pruned prefill writes: a plain KV cache (swa nullptr), or both halves of an iSWA one
struct prefill_caches {
    llama_kv_cache * base = nullptr;
    llama_kv_cache * swa  = nullptr;
};

prefill_caches caches_of(llama_context * ctx) {
    llama_memory_i * mem = ctx->get_memory();
    if (auto * kv = dynamic_cast<llama_kv_cache *>(mem)) {
        return { kv, nullptr };
    }
    if (auto * iswa = dynamic_cast<llama_kv_cache_iswa *>(mem)) {
        return { iswa->get_base(), iswa->get_swa() };
    }
    return {};
}

// cells [from, to) of sequence 0 in the cache hold positions from..to-1, one each
bool holds_in_place(const llama_kv_cache * kv, int64_t from, int64_t to) {
    const auto & cells = kv->get_cells(0);
    for (int64_t c = from; c < to; ++c) {
        if (c >= (int64_t) cells.size() || !cells.seq_has((uint32_t) c, 0) || cells.pos_get((uint32_t) c) != (llama_pos) c) {
            return false;
        }
    }
    return true;
}

// CUDA graphs paused on the context's backends from the prefill's begin to its end (patch 0009): with them,
// pruned 7k prompts on an H100 aborted in the tail ("illegal instruction" at cudaGraphLaunch, session 41), and
// the prefill's graphs change shape every chunk, so a graph would rarely be replayed there anyway.
// UNCOMP_PREFILL_CUDA_GRAPHS=1 leaves them on (to reproduce that abort).
void pause_cuda_graphs(llama_context * ctx, bool pause) {
    static const bool keep_graphs = [] {
        const char * v = std::getenv("UNCOMP_PREFILL_CUDA_GRAPHS");
        return v != nullptr && std::strcmp(v, "1") == 0;
    }();
    if (keep_graphs) {
        return;
    }
    using pause_graphs_fn = void (*)(ggml_backend_t, bool);
    ggml_backend_sched_t sched = ctx->get_sched();
    for (int i = 0; i < ggml_backend_sched_get_n_backends(sched); ++i) {
        ggml_backend_t     backend = ggml_backend_sched_get_backend(sched, i);
        ggml_backend_dev_t dev     = ggml_backend_get_device(backend);
        ggml_backend_reg_t reg     = dev != nullptr ? ggml_backend_dev_backend_reg(dev) : nullptr;
        auto pause_graphs = reg != nullptr ? (pause_graphs_fn) ggml_backend_reg_get_proc_address(reg, "ggml_backend_cuda_pause_graphs") : nullptr;
        if (pause_graphs != nullptr) {
            pause_graphs(backend, pause);
        }
    }
}

void end_prefill(llama_context * ctx, uncomp_prefill & pf) {
    llama_synchronize(ctx); // the last graphs may still read the residual buffer, freed here
    pause_cuda_graphs(ctx, false);
    pf = uncomp_prefill();
    uncomp_rank_window(ctx, -1, 0);
    uncomp_observe(ctx, false, 0);
}

} // namespace

bool uncomp_prefill_skip_layer(const llm_graph_context & gctx, int il, ggml_tensor *& inpL, ggml_tensor * inp_pos,
                               ggml_tensor * inp_out_ids) {
    uncomp_prefill * pf = uncomp_prefill_of_sched(gctx.sched);
    if (pf == nullptr || pf->phase == UNCOMP_PREFILL_OFF) {
        return false;
    }
    ggml_context * ctx = gctx.ctx0;
    // the residual rows of this ubatch's tokens: [n_tokens] i32
    auto residual_rows = [&](ggml_tensor * pos) {
        ggml_tensor * rows = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, gctx.n_tokens);
        ggml_set_input(rows);
        gctx.res->add_input(llm_graph_input_ptr(new residual_rows_input(*pf, rows, pos)));
        return rows;
    };
    if (pf->phase == UNCOMP_PREFILL_HEAD) {
        if (il <= pf->layer) {
            return false;
        }
        if (il == pf->layer + 1) { // inpL: layer's output [n_embd, n_tokens]
            ggml_build_forward_expand(gctx.gf, ggml_set_rows(ctx, pf->residual.get(), inpL, residual_rows(nullptr)));
        }
        if (il == gctx.n_layer - 1 && inp_out_ids != nullptr) {
            inpL = ggml_get_rows(ctx, inpL, inp_out_ids);
        }
        return true;
    }
    if (il <= pf->layer) {
        return true;
    }
    if (il == pf->layer + 1) { // inpL: the batch's (unused) token embeddings
        GGML_ASSERT(inp_pos->type == GGML_TYPE_I32 && ggml_nelements(inp_pos) == gctx.n_tokens); // one position per token
        // they stay in the graph: llama.cpp sets the token input whatever the graph uses
        ggml_build_forward_expand(gctx.gf, inpL);
        inpL = ggml_get_rows(ctx, pf->residual.get(), residual_rows(inp_pos));
        ggml_tensor * swa_mask = nullptr;
        for (const auto & in : gctx.res->inputs) {
            if (const auto * attn = dynamic_cast<const llm_graph_input_attn_kv_iswa *>(in.get())) {
                swa_mask = attn->self_kq_mask_swa;
            }
        }
        if (swa_mask != nullptr && pf->swa != nullptr) {
            gctx.res->add_input(llm_graph_input_ptr(new swa_mask_input(*pf, swa_mask, gctx.hparams)));
        }
    }
    return false;
}

int32_t llama_uncomp_prefill_begin(struct llama_context * ctx, int32_t layer, int32_t n_tokens, int32_t window) {
    uncomp_prefill * pf = uncomp_prefill_of(ctx);
    if (pf == nullptr) {
        return LLAMA_UNCOMP_ERR_NOT_ATTACHED;
    }
    const llama_model & model = ctx->get_model();
    const prefill_caches kv = caches_of(ctx);
    // a sliding-window cache must hold every cell (swa_full): the tail's layers read theirs by cell
    if (kv.base == nullptr || !has_layer_hook(model) || (kv.swa != nullptr && kv.swa->get_size() < kv.base->get_size())) {
        return LLAMA_UNCOMP_ERR_MEMORY;
    }
    // the ranking reads the layer's keys of every token: a full-attention layer
    if (layer < 0 || layer >= (int32_t) model.hparams.n_layer() - 1 || model.hparams.is_swa(layer) || n_tokens < 1 ||
        window < 1 || window > 4096 || pf->phase != UNCOMP_PREFILL_OFF) {
        return LLAMA_UNCOMP_ERR_PARAMS;
    }
    if (llama_memory_seq_pos_max(llama_get_memory(ctx), 0) >= 0) {
        return LLAMA_UNCOMP_ERR_SHARED; // the prompt must start from an empty sequence
    }
    if (uncomp_context_fitted(ctx)) {
        return LLAMA_UNCOMP_ERR_FITTED; // the prefill writes every layer from cell 0
    }
    // the residual rows live where the layer runs (512 MiB at 32k tokens for an 8B model)
    const ggml_init_params rows_params = { ggml_tensor_overhead(), nullptr, /*no_alloc =*/ true };
    ggml_context * rows_ctx = ggml_init(rows_params);
    ggml_tensor * rows = ggml_new_tensor_2d(rows_ctx, GGML_TYPE_F32, model.hparams.n_embd, n_tokens);
    ggml_backend_buffer_t rows_buf = ggml_backend_alloc_ctx_tensors_from_buft(rows_ctx, model.select_buft(layer));
    if (rows_buf == nullptr) {
        ggml_free(rows_ctx);
        return LLAMA_UNCOMP_ERR_DEVICE;
    }
    // as for weights, ggml's scheduler runs the ops reading it where it lives (only the gathered rows move)
    ggml_backend_buffer_set_usage(rows_buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    *pf = uncomp_prefill();
    pf->phase    = UNCOMP_PREFILL_HEAD;
    pf->layer    = layer;
    pf->window   = std::max(window, uncomp_params_of(ctx)->window);
    pf->swa      = kv.swa;
    pf->residual = std::shared_ptr<ggml_tensor>(rows, [rows_ctx, rows_buf](ggml_tensor *) {
        ggml_backend_buffer_free(rows_buf);
        ggml_free(rows_ctx);
    });
    pf->t_begin  = std::chrono::steady_clock::now();
    pause_cuda_graphs(ctx, true);
    uncomp_rank_window(ctx, layer, pf->window);
    uncomp_refresh_graphs(ctx);
    return 0;
}

void llama_uncomp_prefill_abort(struct llama_context * ctx) {
    uncomp_prefill * pf = uncomp_prefill_of(ctx);
    if (pf == nullptr || pf->phase == UNCOMP_PREFILL_OFF) {
        return;
    }
    llama_memory_seq_rm(llama_get_memory(ctx), 0, -1, -1);
    llama_uncomp_forget(ctx, 0);
    end_prefill(ctx, *pf);
}

int32_t llama_uncomp_prefill_finish(struct llama_context * ctx, float keep, int32_t n_batch) {
    uncomp_prefill * pf = uncomp_prefill_of(ctx);
    if (pf == nullptr) {
        return LLAMA_UNCOMP_ERR_NOT_ATTACHED;
    }
    if (pf->phase != UNCOMP_PREFILL_HEAD || !(keep > 0.0f && keep <= 1.0f) || n_batch < 1) {
        return LLAMA_UNCOMP_ERR_PARAMS;
    }
    const prefill_caches kv = caches_of(ctx);
    const int64_t n = (int64_t) kv.base->seq_pos_max(0) + 1;
    // the head phase evaluated positions 0..n-1 of an empty cache into cells 0..n-1, one row each
    const bool in_place = n > 0 && n <= pf->residual->ne[1] && pf->n_written == n && !pf->overflow &&
                          kv.base->get_cells(0).get_used() == (uint32_t) n && holds_in_place(kv.base, 0, n) &&
                          (kv.swa == nullptr || holds_in_place(kv.swa, 0, n));
    if (!in_place) {
        llama_uncomp_prefill_abort(ctx);
        return LLAMA_UNCOMP_ERR_SHARED;
    }
    const llama_uncomp_params & p = *uncomp_params_of(ctx);
    uncomp_step_timer timer("prefill");
    if (timer.on) {
        char buf[96];
        snprintf(buf, sizeof(buf), " head %.1f ms", std::chrono::duration<double, std::milli>(timer.t - pf->t_begin).count());
        timer.line += buf;
    }
    // |S| tokens run the tail; the first of them at a cell on a 256-row tile, where all heads start,
    // so that the tail's attention needs no per-head mask (uncomp_build_attn_heads)
    int64_t n_kept = std::min<int64_t>(n, std::max<int64_t>((int64_t) std::ceil((double) keep * n), pf->window + p.n_sink));
    n_kept = n - (n - n_kept) / 256 * 256;
    std::vector<uint32_t> kept;
    if (n_kept < n) {
        if (const int32_t err = uncomp_rank_tokens(ctx, pf->layer, n_kept, kept); err < 0) {
            llama_uncomp_prefill_abort(ctx);
            return err;
        }
    } else {
        kept.resize(n);
        std::iota(kept.begin(), kept.end(), 0u);
    }
    GGML_ASSERT((int64_t) kept.size() == n_kept);
    uncomp_rank_window(ctx, -1, 0); // the layer's compression is scored by the window
    timer.step("rank");
    if (timer.on) { // which tokens were kept, to compare two backends' rankings of one prompt
        uint64_t hash = 1469598103934665603ull;
        for (uint32_t k : kept) hash = (hash ^ k) * 1099511628211ull;
        char buf[64];
        snprintf(buf, sizeof(buf), " (kept %lld of %lld, hash %016llx)", (long long) n_kept, (long long) n, (unsigned long long) hash);
        timer.line += buf;
    }

    // the tail: kept tokens at batch positions (and cells) n - n_kept.. n - 1, their rows of the residual
    // and their own positions for RoPE; layers > layer start at that cell for every head
    const int32_t  pos0   = (int32_t) (n - n_kept);
    const auto &   hp     = ctx->get_model().hparams;
    pf->kept_pos.assign(kept.begin(), kept.end());
    pf->tail_pos0 = pos0;
    pf->phase     = UNCOMP_PREFILL_TAIL;
    for (uint32_t il = (uint32_t) pf->layer + 1; il < hp.n_layer(); ++il) {
        if (!uncomp_layout_reserve(hp.is_swa(il) ? kv.swa : kv.base, (int32_t) il, hp.n_head(il))) {
            llama_uncomp_prefill_abort(ctx);
            return LLAMA_UNCOMP_ERR_DEVICE;
        }
    }
    llama_memory_seq_rm(llama_get_memory(ctx), 0, pos0, -1);
    for (uint32_t il = (uint32_t) pf->layer + 1; il < hp.n_layer(); ++il) {
        const llama_kv_cache * cache = hp.is_swa(il) ? kv.swa : kv.base;
        uncomp_layout_set(cache, (int32_t) il, cache->get_stream(0), std::vector<uint32_t>(hp.n_head_kv(il), (uint32_t) pos0));
    }
    uncomp_refresh_graphs(ctx);
    uncomp_check_finite(ctx, "before the tail", pf->layer + 1, 0, UINT32_MAX);
    // the batch's tokens only fill llama.cpp's token input; the graphs read the kept rows instead
    llama_batch batch = llama_batch_init(n_batch, 0, 1);
    int32_t err = 0;
    bool observing = false;
    for (int64_t at = 0; at < n_kept && err == 0; at += n_batch) {
        const int64_t m = std::min<int64_t>(n_batch, n_kept - at);
        for (int64_t i = 0; i < m; ++i) {
            batch.token[i]     = 0;
            batch.pos[i]       = pos0 + (llama_pos) (at + i);
            batch.n_seq_id[i]  = 1;
            batch.seq_id[i][0] = 0;
            batch.logits[i]    = at + i == n_kept - 1;
        }
        batch.n_tokens = (int32_t) m;
        // the window's queries of layers > layer come from the chunks holding it
        if (at + m > n_kept - p.window && !observing) {
            uncomp_observe(ctx, true, pf->layer + 1);
            observing = true;
        }
        if (llama_decode(ctx, batch) != 0) {
            err = LLAMA_UNCOMP_ERR_DEVICE;
        }
    }
    llama_batch_free(batch);
    timer.step("tail");
    // the kept tokens must have landed in cells pos0.. (an empty cache fills from its head)
    if (err == 0 && !(holds_in_place(kv.base, pos0, n) && (kv.swa == nullptr || holds_in_place(kv.swa, pos0, n)))) {
        err = LLAMA_UNCOMP_ERR_SHARED;
    }
    if (err != 0) {
        llama_uncomp_prefill_abort(ctx);
        return err;
    }
    uncomp_check_finite(ctx, "after the tail", pf->layer + 1, (uint32_t) pos0, (uint32_t) n);
    uncomp_check_finite(ctx, "after the tail, beyond the prompt", 0, (uint32_t) n, UINT32_MAX);
    // Later tokens' sliding-window masks compare batch positions again. The sliding-window layers > layer
    // keep only the kept tokens inside the next token's true window, so that what they read is what the
    // unpruned model would (up to the tokens that leave the true window over the next steps).
    if (kv.swa != nullptr) {
        int64_t first = 0;
        while (first < n_kept && llama_hparams::is_masked_swa(hp.n_swa, hp.swa_type, pf->kept_pos[first], (llama_pos) n)) {
            ++first;
        }
        for (uint32_t il = (uint32_t) pf->layer + 1; il < hp.n_layer(); ++il) {
            if (hp.is_swa(il)) {
                uncomp_layout_set(kv.swa, (int32_t) il, kv.swa->get_stream(0), std::vector<uint32_t>(hp.n_head_kv(il), (uint32_t) (pos0 + first)));
            }
        }
    }
    end_prefill(ctx, *pf);
    return (int32_t) n_kept;
}
