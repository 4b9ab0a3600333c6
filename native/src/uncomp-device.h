// The engine's steps that run where the cache lives (CPU or GPU), as small ggml graphs on a backend of
// the cache's own device: window scoring, key Gram matrices and the compaction of kept rows. Only
// per-token scores, d×d Gram matrices and cell indices cross to the host; the cached rows never do.
// Used for every cache: host caches run them on the CPU backend (UNCOMP_DEVICE_PATH=0: the host path
// instead, which the tests compare them with on the same cache).
#pragma once

#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-alloc.h"

#include <cstdint>
#include <vector>

// some KV heads' cells of one cache layer: storage [n_embd, kv_size, n_stream] (K, or V untransposed)
struct uncomp_head_cells {
    ggml_tensor * storage;
    uint32_t      stream;
    int64_t       head_dim;
    // per KV head, owned by the caller; nullptr or empty: not part of the step. Heads holding the same
    // cells point at one list (after a prompt every head does), which is uploaded once.
    std::vector<const std::vector<uint32_t> *> cells;
};

// n values of one KV head that a step computed, read where they are: in the device's staging memory
// (valid until its next step) or in the host path's own vector. Results come back this way because
// copying each head's values into a fresh vector cost more than the step itself on a 32k prompt
// (hundreds of 128 KiB allocations, each first touched page by page).
struct uncomp_values {
    const float * ptr = nullptr;
    size_t        n   = 0;

    const float * begin() const { return ptr; }
    const float * end() const { return ptr + n; }
    size_t size() const { return n; }
    bool   empty() const { return n == 0; }
    float  operator[](size_t i) const { return ptr[i]; }
};
using uncomp_step_values = std::vector<std::vector<uncomp_values>>; // [job][KV head]

// window queries of one layer against its heads' cells
struct uncomp_score_job {
    uncomp_head_cells  keys;
    std::vector<float> q;      // [n_head][wq][head_dim], in the cached keys' basis
    int64_t            wq;
    int64_t            n_head;
    float              scale;
};

struct uncomp_device {
    ggml_backend_t backend = nullptr;
    ggml_gallocr_t galloc  = nullptr;

    explicit uncomp_device(const ggml_tensor * storage);
    ~uncomp_device();
    uncomp_device(const uncomp_device &) = delete;
    uncomp_device & operator=(const uncomp_device &) = delete;

    // Each step takes the KV heads of several cache layers and runs them in one graph.

    // Attention mass of the window queries on the tokens each KV head holds: for head h of a layer, its
    // n_h held cells (position order, the last wq of them are the window's own tokens), the softmax of
    // scale·q·k over those cells (causal inside the window) summed over the wq window rows and the gqa
    // query heads of the head. Heads with no cells get no values.
    uncomp_step_values attention_mass(const std::vector<uncomp_score_job> & jobs);

    // attention_mass in two halves: start launches the graph and returns while the device computes
    // (the jobs' data is uploaded by then), finish waits for it and returns its values. Any other step
    // started in between waits for it and drops its values first (the steps share one allocator).
    void               start_attention_mass(const std::vector<uncomp_score_job> & jobs);
    uncomp_step_values finish_attention_mass();

    // Σ z zᵀ over the cells of each KV head, z = the centred key scaled to unit norm ([head_dim,
    // head_dim] floats per head, the spec's entropy before its /n and trace normalisation).
    uncomp_step_values key_gram(const std::vector<uncomp_head_cells> & jobs);

    // Moves, for each job and KV head h, the rows of cells cells[h][i] to n_kept - cells[h].size() + i
    // (a row holds every head's slice of head_dim values); false, with nothing moved, when a storage
    // cannot be moved as 32-bit words (the caller copies through the host then).
    bool compact(const std::vector<uncomp_head_cells> & jobs, size_t n_kept);

private:
    // the device's pinned host memory where it has some (the fast way back), else plain host memory;
    // kept between steps and grown as needed (a step's results: n floats per held token and head). Two
    // slots, so that scores computed during the entropy's eigen-solves (start_attention_mass) do not
    // overwrite the Gram matrices being read: 0 for Gram matrices, 1 for scores.
    ggml_backend_buffer_type_t host_buft = nullptr;
    ggml_backend_buffer_t      staging[2] = { nullptr, nullptr };
    float *        staging_for(int slot, int64_t n_values);

    // the graph start_attention_mass launched, until finish_attention_mass reads it or settle drops it
    struct pending_step;
    pending_step * pending = nullptr;
    void           settle();

    ggml_context * begin(size_t n_tensors);
    // allocates the graph's tensors (inputs are set after this); frees ctx and throws when out of memory
    void           allocate(ggml_context * ctx, ggml_cgraph * gf);
};

// the device whose memory holds a cache tensor
ggml_backend_dev_t uncomp_device_of(const ggml_tensor * storage);

// whether the engine uses uncomp_device for a cache tensor (always, unless UNCOMP_DEVICE_PATH=0 for a host one)
bool uncomp_device_wanted(const ggml_tensor * storage);
