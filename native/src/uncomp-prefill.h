// Hidden-state pruning during prefill (UNComp's first stage): a prompt is evaluated in two phases.
// Phase "head" runs layers 0..L on every token (chunked as usual) and its graphs write layer L's output
// rows (the residual stream) into a buffer on that layer's device. The window's attention at layer L then
// ranks the tokens, and phase "tail" runs layers L+1.. on the kept tokens only, its graphs gathering their
// rows from that buffer, at their own positions (RoPE), their K/V rows going to the sequence's last |S|
// cells. Afterwards layers > L look like layers compressed to |S|
// tokens (uncomp-layout.h: every head starts at cell N - |S|): decoding, compression and states need
// nothing new.
//
// This header is also included by llama.cpp's model builders (patch 0005): keep it free of llama.cpp
// internals.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

class llama_kv_cache;
struct ggml_tensor;
struct llm_graph_context;

enum uncomp_prefill_phase {
    UNCOMP_PREFILL_OFF,
    UNCOMP_PREFILL_HEAD, // layers 0..layer on every prompt token
    UNCOMP_PREFILL_TAIL, // layers layer+1.. on the kept tokens
};

struct uncomp_prefill {
    uncomp_prefill_phase phase = UNCOMP_PREFILL_OFF;
    int32_t              layer = -1;
    int32_t              window = 0;   // the last queries that rank the prompt at `layer` (at least the params' window)
    // layer's output rows by position, [n_embd, n_prompt] f32 on the layer's device (frees its buffer)
    std::shared_ptr<ggml_tensor> residual;
    int64_t              n_written = 0;     // head: rows the graphs were given to write
    bool                 overflow = false;  // head: a position beyond the buffer was evaluated
    std::chrono::steady_clock::time_point t_begin; // UNCOMP_TIMING: when the head phase began
    std::vector<int32_t> kept_pos;      // tail: the kept tokens' true positions, in order
    int32_t              tail_pos0 = 0; // tail: the batch position (and cell) of the first kept token
    const llama_kv_cache * swa = nullptr; // an iSWA cache's sliding-window half (its mask needs true positions)
};

// uncomp hook, first in a model builder's layer loop: true when layer il is not evaluated by this graph
// (a pruned prefill's phase). In the head phase the first skipped layer's input (layer L's output) is
// written to the residual buffer, and skipping the last layer applies the output row selection to inpL
// as that layer would have. In the tail phase layer L + 1's input becomes the kept tokens' rows of that
// buffer, and inp_pos gets their true positions (the batch carries consecutive ones, which llama.cpp's
// batch checks want).
bool uncomp_prefill_skip_layer(const llm_graph_context & gctx, int il, ggml_tensor *& inpL, ggml_tensor * inp_pos,
                               ggml_tensor * inp_out_ids);
