// The compression engine end to end on a real model, built with libllama under AddressSanitizer and
// UBSan: observe a prompt, compress it with different budgets per layer and KV head, check what each
// head holds, decode over the per-head layout, save and restore the compressed state, and feed the C
// API bad arguments; two sequences of one context compressed independently and decoded in one batch.
// Runs for the f16 cache (flash attention off and on) and q8_0 / q4_0 caches.
//
//     test-uncomp-engine model.gguf
#include "llama.h"
#include "uncomp.h"

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

static int n_fail = 0;

#define EXPECT(cond) do { if (!(cond)) { std::fprintf(stderr, "%s:%d: FAILED: %s\n", __FILE__, __LINE__, #cond); ++n_fail; } } while (0)

namespace {

struct cache_config {
    const char *         name;
    enum ggml_type       type;
    llama_flash_attn_type flash_attn;
};

// n tokens of a repeated text (a BOS first when bos)
std::vector<llama_token> prompt_tokens(const llama_vocab * vocab, int n, bool bos) {
    const std::string text = "The grass is green. The sky is blue. The pass key is 71832. Remember it. ";
    std::string all;
    while ((int) all.size() < n * 4) {
        all += text;
    }
    std::vector<llama_token> toks(all.size() + 8);
    const int n_tok = llama_tokenize(vocab, all.c_str(), (int32_t) all.size(), toks.data(), (int32_t) toks.size(), bos, false);
    EXPECT(n_tok >= n);
    toks.resize(n);
    return toks;
}

// evaluates toks at positions [pos0, ...) of seq in batches, logits of the last one; false on error
bool eval(llama_context * ctx, const std::vector<llama_token> & toks, llama_pos pos0, llama_seq_id seq = 0) {
    const int n_batch = 128;
    llama_batch batch = llama_batch_init(n_batch, 0, 1);
    bool ok = true;
    for (size_t i0 = 0; i0 < toks.size() && ok; i0 += n_batch) {
        batch.n_tokens = 0;
        for (size_t i = i0; i < toks.size() && i < i0 + n_batch; ++i) {
            const int j = batch.n_tokens++;
            batch.token[j] = toks[i];
            batch.pos[j] = pos0 + (llama_pos) i;
            batch.n_seq_id[j] = 1;
            batch.seq_id[j][0] = seq;
            batch.logits[j] = i + 1 == toks.size();
        }
        ok = llama_decode(ctx, batch) == 0;
    }
    llama_batch_free(batch);
    return ok;
}

// the most likely token of the logits of batch row i; they must be finite
llama_token argmax(llama_context * ctx, const llama_vocab * vocab, int32_t i) {
    const float * logits = llama_get_logits_ith(ctx, i);
    llama_token best = 0;
    for (int t = 0; t < llama_vocab_n_tokens(vocab); ++t) {
        EXPECT(std::isfinite(logits[t]));
        if (logits[t] > logits[best]) {
            best = t;
        }
    }
    return best;
}

// greedy continuation of n tokens from position pos
std::vector<llama_token> greedy(llama_context * ctx, const llama_vocab * vocab, llama_pos pos, int n) {
    std::vector<llama_token> out;
    for (int i = 0; i < n; ++i) {
        const llama_token best = argmax(ctx, vocab, -1);
        out.push_back(best);
        if (!eval(ctx, { best }, pos + i)) {
            EXPECT(false);
            break;
        }
    }
    return out;
}

// a context of 1024 cells per sequence with the cache type of cfg and the engine attached (snapkv, window 8)
llama_context * new_context(llama_model * model, const cache_config & cfg, uint32_t n_seq, bool unified) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 1024 * n_seq;
    cp.n_batch = 128;
    cp.n_ubatch = 128;
    cp.n_seq_max = n_seq;
    cp.kv_unified = unified;
    cp.n_threads = cp.n_threads_batch = 2;
    cp.type_k = cp.type_v = cfg.type;
    cp.flash_attn_type = cfg.flash_attn;
    llama_context * ctx = llama_init_from_model(model, cp);
    EXPECT(ctx != nullptr);
    if (!ctx) {
        return nullptr;
    }
    llama_uncomp_params up = llama_uncomp_default_params();
    up.method = LLAMA_UNCOMP_METHOD_SNAPKV;
    up.window = 8;
    EXPECT(llama_uncomp_compress(ctx, 0) == LLAMA_UNCOMP_ERR_NOT_ATTACHED);
    EXPECT(llama_uncomp_attach(ctx, &up) == 0);
    return ctx;
}

// budgets per cache layer and KV head: layer il, head h keeps 24 + 7 * ((il + 2 * h + salt) % 9)
// tokens (24 .. 80); the largest goes to b_max
std::vector<int32_t> test_budgets(llama_context * ctx, int salt, int32_t & b_max) {
    const int32_t n_layers = llama_uncomp_layer_stats(ctx, 0, nullptr, 0);
    std::vector<struct llama_uncomp_layer_stats> ls(n_layers);
    llama_uncomp_layer_stats(ctx, 0, ls.data(), n_layers);
    std::vector<int32_t> budgets;
    b_max = 0;
    for (const auto & l : ls) {
        for (int h = 0; h < l.n_head_kv; ++h) {
            budgets.push_back(24 + 7 * ((l.il + 2 * h + salt) % 9));
            b_max = budgets.back() > b_max ? budgets.back() : b_max;
        }
    }
    return budgets;
}

// observes the evaluation of prompt as seq, then compresses seq to budgets; false on error
bool observe_and_compress(llama_context * ctx, const std::vector<llama_token> & prompt, llama_seq_id seq,
                          const std::vector<int32_t> & budgets, int32_t b_max) {
    bool ok = llama_uncomp_observe(ctx, true) == 0 && eval(ctx, prompt, 0, seq) && llama_uncomp_observe(ctx, false) == 0;
    ok = ok && llama_uncomp_compress_budgets(ctx, seq, budgets.data(), (int64_t) budgets.size()) == b_max;
    EXPECT(ok);
    return ok;
}

void run(llama_model * model, const cache_config & cfg) {
    std::printf("cache %s\n", cfg.name);
    const llama_vocab * vocab = llama_model_get_vocab(model);
    llama_context * ctx = new_context(model, cfg, 1, false);
    if (!ctx) {
        return;
    }

    const std::vector<llama_token> prompt = prompt_tokens(vocab, 600, true);
    const llama_pos n_prompt = (llama_pos) prompt.size();
    EXPECT(llama_uncomp_observe(ctx, true) == 0);
    EXPECT(eval(ctx, prompt, 0));
    EXPECT(llama_uncomp_observe(ctx, false) == 0);

    const int32_t n_layers = llama_uncomp_layer_stats(ctx, 0, nullptr, 0);
    EXPECT(n_layers > 0);
    std::vector<struct llama_uncomp_layer_stats> ls(n_layers);
    llama_uncomp_layer_stats(ctx, 0, ls.data(), n_layers);
    int32_t b_max = 0;
    const std::vector<int32_t> budgets = test_budgets(ctx, 0, b_max);

    // bad arguments: a clear error code, the cache untouched
    EXPECT(llama_uncomp_compress_budgets(ctx, 0, budgets.data(), (int64_t) budgets.size() - 1) == LLAMA_UNCOMP_ERR_PARAMS);
    EXPECT(llama_uncomp_compress_budgets(ctx, 0, nullptr, (int64_t) budgets.size()) == LLAMA_UNCOMP_ERR_PARAMS);
    EXPECT(llama_uncomp_compress_budgets(ctx, -1, budgets.data(), (int64_t) budgets.size()) < 0);
    EXPECT(llama_uncomp_compress_budgets(ctx, 1 << 20, budgets.data(), (int64_t) budgets.size()) < 0);
    std::vector<int32_t> zero(budgets.size(), 0);
    EXPECT(llama_uncomp_compress_budgets(ctx, 0, zero.data(), (int64_t) zero.size()) == LLAMA_UNCOMP_ERR_PARAMS);
    EXPECT(llama_uncomp_tokens_kept(ctx, 0, -1, nullptr, 0) == -1);
    EXPECT(llama_uncomp_head_start(ctx, 0, n_layers + 100, nullptr, 0) < 0);
    EXPECT(llama_uncomp_head_start(ctx, 1, ls[0].il, nullptr, 0) == LLAMA_UNCOMP_ERR_PARAMS);
    std::vector<int32_t> kept(64);
    EXPECT(llama_uncomp_tokens_kept(ctx, 0, ls[0].il, kept.data(), (int32_t) kept.size()) == ls[0].n_head_kv);
    EXPECT(kept[0] == n_prompt);

    EXPECT(llama_uncomp_compress_budgets(ctx, 0, budgets.data(), (int64_t) budgets.size()) == b_max);

    // each head holds its budget; bytes held are the rows held
    size_t i_budget = 0;
    llama_uncomp_layer_stats(ctx, 0, ls.data(), n_layers);
    for (const auto & l : ls) {
        EXPECT(llama_uncomp_tokens_kept(ctx, 0, l.il, kept.data(), (int32_t) kept.size()) == l.n_head_kv);
        uint64_t rows = 0;
        for (int h = 0; h < l.n_head_kv; ++h) {
            EXPECT(kept[h] == budgets[i_budget + h]);
            rows += kept[h];
        }
        EXPECT(l.bytes_held == rows * l.bytes_per_token / l.n_head_kv);
        i_budget += l.n_head_kv;
    }

    // decode over the layout, then again from a saved and restored state: the same tokens
    std::vector<uint8_t> state(llama_state_seq_get_size(ctx, 0));
    EXPECT(llama_state_seq_get_data(ctx, state.data(), state.size(), 0) == state.size());
    std::vector<std::vector<uint32_t>> start(n_layers, std::vector<uint32_t>(64));
    for (int i = 0; i < n_layers; ++i) {
        EXPECT(llama_uncomp_head_start(ctx, 0, ls[i].il, start[i].data(), 64) == ls[i].n_head_kv);
    }
    const std::vector<llama_token> first = greedy(ctx, vocab, n_prompt, 12);

    llama_uncomp_forget(ctx, 0);
    llama_memory_seq_rm(llama_get_memory(ctx), 0, -1, -1);
    EXPECT(llama_state_seq_set_data(ctx, state.data(), state.size(), 0) == state.size());
    for (int i = 0; i < n_layers; ++i) {
        EXPECT(llama_uncomp_set_head_start(ctx, 0, ls[i].il, start[i].data(), ls[i].n_head_kv) == ls[i].n_head_kv);
    }
    EXPECT(llama_uncomp_set_head_start(ctx, 0, ls[0].il, start[0].data(), ls[0].n_head_kv + 1) < 0);
    // the restored state has no logits: re-evaluate the last prompt token's successor from the first run
    EXPECT(eval(ctx, { first[0] }, n_prompt));
    const std::vector<llama_token> second = greedy(ctx, vocab, n_prompt + 1, 11);
    EXPECT(std::vector<llama_token>(first.begin() + 1, first.end()) == second);

    // a second compression of the grown sequence (a new turn), uniform budget this time
    EXPECT(llama_uncomp_observe(ctx, true) == 0);
    EXPECT(eval(ctx, prompt_tokens(vocab, 100, false), n_prompt + 12));
    EXPECT(llama_uncomp_observe(ctx, false) == 0);
    EXPECT(llama_uncomp_compress(ctx, 0) > 0);
    greedy(ctx, vocab, llama_memory_seq_pos_max(llama_get_memory(ctx), 0) + 1, 4);

    llama_uncomp_detach(ctx);
    llama_free(ctx);
}

// Two sequences of one context (non-unified cache: a stream each), each compressed to its own budgets,
// then decoded together, one token of each per batch: each continues exactly as it does alone in a
// context of its own. A unified cache (sequences sharing one stream) is refused.
void run_two_sequences(llama_model * model, const cache_config & cfg) {
    std::printf("cache %s, two sequences\n", cfg.name);
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_gen = 12;
    // the second prompt: BOS, then the text from its 38th token on (another length and alignment)
    std::vector<llama_token> prompts[2] = { prompt_tokens(vocab, 600, true), prompt_tokens(vocab, 500, true) };
    prompts[1].erase(prompts[1].begin() + 1, prompts[1].begin() + 38);
    std::vector<llama_token> alone[2];
    std::vector<int32_t> budgets[2];
    int32_t b_max[2] = { 0, 0 };
    for (int s = 0; s < 2; ++s) {
        llama_context * ctx = new_context(model, cfg, 1, false);
        if (!ctx) {
            return;
        }
        budgets[s] = test_budgets(ctx, 4 * s, b_max[s]);
        if (observe_and_compress(ctx, prompts[s], 0, budgets[s], b_max[s])) {
            alone[s] = greedy(ctx, vocab, (llama_pos) prompts[s].size(), n_gen);
        }
        llama_uncomp_detach(ctx);
        llama_free(ctx);
    }

    llama_context * ctx = new_context(model, cfg, 2, false);
    if (!ctx) {
        return;
    }
    std::vector<llama_token> together[2];
    std::vector<int32_t> kept0(64), kept1(64);
    const int32_t il0 = 0;
    observe_and_compress(ctx, prompts[0], 0, budgets[0], b_max[0]);
    together[0].push_back(argmax(ctx, vocab, -1));
    llama_uncomp_tokens_kept(ctx, 0, il0, kept0.data(), 64);
    observe_and_compress(ctx, prompts[1], 1, budgets[1], b_max[1]);
    together[1].push_back(argmax(ctx, vocab, -1));
    llama_uncomp_tokens_kept(ctx, 1, il0, kept1.data(), 64);
    EXPECT(kept0[0] == budgets[0][0] && kept1[0] == budgets[1][0] && kept0[0] != kept1[0]);
    llama_uncomp_tokens_kept(ctx, 0, il0, kept1.data(), 64);
    EXPECT(kept0 == kept1); // compressing sequence 1 left sequence 0 as it was

    llama_batch batch = llama_batch_init(2, 0, 1);
    for (int i = 0; i + 1 < n_gen; ++i) {
        batch.n_tokens = 2;
        for (int s = 0; s < 2; ++s) {
            batch.token[s] = together[s].back();
            batch.pos[s] = (llama_pos) prompts[s].size() + i;
            batch.n_seq_id[s] = 1;
            batch.seq_id[s][0] = s;
            batch.logits[s] = true;
        }
        EXPECT(llama_decode(ctx, batch) == 0);
        for (int s = 0; s < 2; ++s) {
            together[s].push_back(argmax(ctx, vocab, s));
        }
    }
    llama_batch_free(batch);
    EXPECT(together[0] == alone[0]);
    EXPECT(together[1] == alone[1]);
    llama_uncomp_detach(ctx);
    llama_free(ctx);

    // one stream for both sequences: compressing either is refused, the cache untouched
    ctx = new_context(model, cfg, 2, true);
    if (!ctx) {
        return;
    }
    EXPECT(eval(ctx, prompts[0], 0, 0) && eval(ctx, prompts[1], 0, 1));
    EXPECT(llama_uncomp_compress(ctx, 0) == LLAMA_UNCOMP_ERR_SHARED);
    EXPECT(llama_memory_seq_pos_max(llama_get_memory(ctx), 0) + 1 == (llama_pos) prompts[0].size());
    llama_uncomp_detach(ctx);
    llama_free(ctx);
}

// Scores started during the entropy step (llama_uncomp_key_entropy_for_compress; on the device path
// they are computed beside the eigen-solves) give the compression what it computes itself, and a token
// evaluated in between makes the compression score afresh: each case keeps the same rows and continues
// with the same tokens as a context that never started any.
void run_started_scores(llama_model * model, const cache_config & cfg) {
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const std::vector<llama_token> prompt = prompt_tokens(vocab, 600, true);
    const llama_pos n_prompt = (llama_pos) prompt.size();
    // start: call the entropy step first; extra: evaluate (and observe) 24 more tokens after it, before
    // the compression, which then scores by their queries
    auto case_of = [&](bool start, bool extra) {
        std::vector<llama_token> out;
        llama_context * ctx = new_context(model, cfg, 1, false);
        if (!ctx) {
            return out;
        }
        EXPECT(llama_uncomp_observe(ctx, true) == 0 && eval(ctx, prompt, 0) && llama_uncomp_observe(ctx, false) == 0);
        int32_t b_max = 0;
        const std::vector<int32_t> budgets = test_budgets(ctx, 3, b_max);
        if (start) {
            std::vector<float> entropy(budgets.size());
            EXPECT(llama_uncomp_key_entropy_for_compress(ctx, 0, 32, entropy.data(), (int64_t) entropy.size()) == (int32_t) entropy.size());
        }
        const llama_pos n = n_prompt + (extra ? 24 : 0);
        EXPECT(!extra || (llama_uncomp_observe(ctx, true) == 0 && eval(ctx, prompt_tokens(vocab, 24, false), n_prompt) &&
                          llama_uncomp_observe(ctx, false) == 0));
        EXPECT(llama_uncomp_compress_budgets(ctx, 0, budgets.data(), (int64_t) budgets.size()) > 0);
        out = greedy(ctx, vocab, n, 8);
        llama_uncomp_detach(ctx);
        llama_free(ctx);
        return out;
    };
    for (bool extra : { false, true }) {
        const auto plain = case_of(false, extra);
        const bool same = !plain.empty() && case_of(true, extra) == plain;
        if (!same) {
            std::fprintf(stderr, "started scores, %s, %s:\n", cfg.name, extra ? "tokens evaluated between" : "compressed right after");
        }
        EXPECT(same);
    }
}

} // namespace

int main(int argc, char ** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s model.gguf\n", argv[0]);
        return 2;
    }
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        std::fprintf(stderr, "cannot load %s\n", argv[1]);
        return 2;
    }
    const cache_config configs[] = {
        { "f16",            GGML_TYPE_F16,  LLAMA_FLASH_ATTN_TYPE_DISABLED },
        { "f16 flash-attn", GGML_TYPE_F16,  LLAMA_FLASH_ATTN_TYPE_ENABLED  },
        { "q8_0",           GGML_TYPE_Q8_0, LLAMA_FLASH_ATTN_TYPE_ENABLED  },
        { "q4_0",           GGML_TYPE_Q4_0, LLAMA_FLASH_ATTN_TYPE_ENABLED  },
    };
    for (const auto & cfg : configs) {
        run(model, cfg);
        run_two_sequences(model, cfg);
        run_started_scores(model, cfg);
    }
    llama_model_free(model);
    llama_backend_free();

    if (n_fail) {
        std::fprintf(stderr, "%d check(s) failed\n", n_fail);
        return 1;
    }
    std::printf("test-uncomp-engine: all checks passed\n");
    return 0;
}
