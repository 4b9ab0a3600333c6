// The engine's device-side steps as ggml graphs (see uncomp-device.h).
#include "uncomp-device.h"
#include "uncomp-impl.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <utility>

namespace {

// rows [0, kv_size) of KV head h of one stream of a K or untransposed V storage [n_embd, kv_size, n_stream]:
// [head_dim, kv_size], typed as the storage
ggml_tensor * head_rows(ggml_context * ctx, ggml_tensor * storage, uint32_t stream, int64_t head_dim, int64_t h) {
    return ggml_view_2d(ctx, storage, head_dim, storage->ne[1], storage->nb[1],
                        stream * storage->nb[2] + h * ggml_row_size(storage->type, head_dim));
}

// rows [0, kv_size) of every KV head of one stream of a K storage: [n_embd_k_gqa, kv_size]
ggml_tensor * stream_rows(ggml_context * ctx, ggml_tensor * storage, uint32_t stream) {
    return ggml_view_2d(ctx, storage, storage->ne[0], storage->ne[1], storage->nb[1], stream * storage->nb[2]);
}

} // namespace

ggml_backend_dev_t uncomp_device_of(const ggml_tensor * storage) {
    ggml_backend_buffer_type_t buft = ggml_backend_buffer_get_type(storage->buffer);
    ggml_backend_dev_t dev = ggml_backend_buft_get_device(buft);
    // ggml's plain CPU buffer type names no device
    if (dev == nullptr && ggml_backend_buft_is_host(buft)) {
        dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    }
    return dev;
}

// Host caches take the graph steps too (on the CPU backend, every core, ggml's SIMD kernels): on a 2-core
// box they scored a 7k SmolLM2 prompt in 86 ms where the host loops took 596 ms, keeping the same rows.
// UNCOMP_DEVICE_PATH=0 runs the host twins instead (the references the tests compare against).
bool uncomp_device_wanted(const ggml_tensor * storage) {
    static const bool host_twins = [] {
        const char * v = std::getenv("UNCOMP_DEVICE_PATH");
        return v != nullptr && std::strcmp(v, "0") == 0;
    }();
    return storage->buffer != nullptr && !(host_twins && ggml_backend_buffer_is_host(storage->buffer));
}

uncomp_device::uncomp_device(const ggml_tensor * storage) {
    ggml_backend_dev_t dev = uncomp_device_of(storage);
    backend = dev ? ggml_backend_dev_init(dev, nullptr) : nullptr;
    if (backend == nullptr) {
        throw std::runtime_error("uncomp: no backend for the cache's device");
    }
    // a CPU backend starts with a few threads; give it the machine (the host path's work moves here)
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    if (auto set_threads = (ggml_backend_set_n_threads_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads")) {
        set_threads(backend, (int) std::max(1u, std::thread::hardware_concurrency()));
    }
    galloc = ggml_gallocr_new(ggml_backend_get_default_buffer_type(backend));
    host_buft = ggml_backend_dev_host_buffer_type(dev);
}

namespace {

// The largest staging buffer a freed uncomp_device left, per host buffer type, for the next one: pinned
// memory is slow to get (reading a 32k prompt's 32 MB of scores took 18 ms into fresh pinned memory on an
// H200 host, 0.7 ms into memory pinned before), and a server makes a context per session. Never destroyed, like the layouts' biases: a buffer
// still held at exit must not be freed after the device's runtime has shut down.
std::mutex g_staging_mutex;
auto & g_spare_staging = *new std::unordered_map<ggml_backend_buffer_type_t, ggml_backend_buffer_t>();

// hands a buffer to the pool; the pool keeps the larger of it and the one it has
void return_staging(ggml_backend_buffer_t buf) {
    if (buf == nullptr) {
        return;
    }
    std::lock_guard<std::mutex> lock(g_staging_mutex);
    ggml_backend_buffer_t & spare = g_spare_staging[ggml_backend_buffer_get_type(buf)];
    if (spare != nullptr && ggml_backend_buffer_get_size(spare) >= ggml_backend_buffer_get_size(buf)) {
        ggml_backend_buffer_free(buf);
        return;
    }
    ggml_backend_buffer_free(spare);
    spare = buf;
}

// the pool's buffer of a type when it holds at least `bytes`, else nullptr
ggml_backend_buffer_t take_staging(ggml_backend_buffer_type_t buft, size_t bytes) {
    std::lock_guard<std::mutex> lock(g_staging_mutex);
    auto it = g_spare_staging.find(buft);
    if (it == g_spare_staging.end() || it->second == nullptr || ggml_backend_buffer_get_size(it->second) < bytes) {
        return nullptr;
    }
    return std::exchange(it->second, nullptr);
}

} // namespace

float * uncomp_device::staging_for(int slot, int64_t n_values) {
    const size_t bytes = std::max<size_t>(1, (size_t) n_values * sizeof(float));
    ggml_backend_buffer_t & buf = staging[slot];
    if (buf == nullptr || ggml_backend_buffer_get_size(buf) < bytes) {
        return_staging(std::exchange(buf, nullptr));
        for (ggml_backend_buffer_type_t buft : { host_buft, ggml_backend_cpu_buffer_type() }) {
            if (buft != nullptr && buf == nullptr) {
                buf = take_staging(buft, bytes);
            }
            if (buft != nullptr && buf == nullptr) {
                buf = ggml_backend_buft_alloc_buffer(buft, bytes);
            }
        }
        if (buf == nullptr) {
            throw std::runtime_error("uncomp: out of host memory for a compression step's results");
        }
    }
    return (float *) ggml_backend_buffer_get_base(buf);
}

uncomp_device::~uncomp_device() {
    settle();
    for (ggml_backend_buffer_t buf : staging) return_staging(buf);
    ggml_gallocr_free(galloc);
    ggml_backend_free(backend);
}

ggml_context * uncomp_device::begin(size_t n_tensors) {
    ggml_init_params ip = { n_tensors * ggml_tensor_overhead() + ggml_graph_overhead_custom(n_tensors, false), nullptr, true };
    return ggml_init(ip);
}

void uncomp_device::allocate(ggml_context * ctx, ggml_cgraph * gf) {
    if (!ggml_gallocr_alloc_graph(galloc, gf)) {
        ggml_free(ctx);
        throw std::runtime_error("uncomp: out of device memory for a compression step");
    }
}

namespace {

bool takes_part(const std::vector<uint32_t> * cells) {
    return cells != nullptr && !cells->empty();
}

// every KV head of the layer takes part with the same list of cells
bool shares_cells(const uncomp_head_cells & j) {
    return !j.cells.empty() && takes_part(j.cells[0]) &&
           std::all_of(j.cells.begin(), j.cells.end(), [&](const auto * c) { return c == j.cells[0]; });
}

// the rows of cells idx ([n] i32) of every KV head of a job whose heads share them, one head after the
// other: [head_dim, n, n_head_kv] f32
ggml_tensor * shared_rows(ggml_context * ctx, const uncomp_head_cells & j, ggml_tensor * idx) {
    const int64_t n_head_kv = (int64_t) j.cells.size();
    ggml_tensor * rows = ggml_get_rows(ctx, stream_rows(ctx, j.storage, j.stream), idx); // [n_embd_k_gqa, n]
    return ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_3d(ctx, rows, j.head_dim, n_head_kv, idx->ne[0]), 0, 2, 1, 3));
}

// whether a product can read a job's rows in place: its heads share one list of consecutive cells (a
// prompt just evaluated) and its storage is f16, which the products read as it is (cuBLAS on tensor
// cores). That spares an f32 copy of every row (on a 32k prompt of the 8B shape, 128 MB written and
// read again per layer). Quantized caches stay on gathered f32 rows: a product over q8_0 rows quantizes
// the queries too, and on SmolLM2 13% of the kept rows then differed from the host path's.
bool reads_in_place(const uncomp_head_cells & j) {
    if (!shares_cells(j) || j.storage->type != GGML_TYPE_F16) {
        return false;
    }
    const std::vector<uint32_t> & c = *j.cells[0];
    for (size_t i = 1; i < c.size(); ++i) {
        if (c[i] != c[0] + i) return false;
    }
    return true;
}

// the rows of a job that reads_in_place, as the cache holds them: [head_dim, n, n_head_kv] f16
ggml_tensor * rows_in_place(ggml_context * ctx, const uncomp_head_cells & j) {
    const std::vector<uint32_t> & c = *j.cells[0];
    return ggml_view_3d(ctx, j.storage, j.head_dim, (int64_t) c.size(), (int64_t) j.cells.size(), j.storage->nb[1],
                        ggml_row_size(j.storage->type, j.head_dim), j.stream * j.storage->nb[2] + c[0] * j.storage->nb[1]);
}

// a [m, k, b] summed over its second dimension: [m, 1, b]. An outer product with a column of ones
// (ones: an f32 vector of at least k·b ones) reads a once; permuting k into rows first would copy it.
ggml_tensor * sum_dim1(ggml_context * ctx, ggml_tensor * a, ggml_tensor * ones) {
    ggml_tensor * col = ggml_view_3d(ctx, ones, 1, a->ne[1], a->ne[2], sizeof(float), a->ne[1] * sizeof(float), 0);
    return ggml_out_prod(ctx, a, col);
}

// rows a Gram product sums at a time: many short products keep the device busy where one per head over
// a long prompt would be a few long ones (one f32 product per head over all rows, through a transposed
// copy, took 46 ms of a 32k prompt on an H200 against 26 ms for these)
constexpr int64_t k_gram_chunk = 512;

// Σ z zᵀ over the n rows of each head of k, z = the row centred over the n and scaled to unit norm:
// k [head_dim, n_head, n] f32 (a get_rows of cache rows as they are, every head's slice of a row
// together) -> [head_dim, head_dim, n_head]. The products read the rows in place through strided views
// (no copy per head, no zero padding of the last chunk), and the 1/head_dim of the unit norm is applied
// once to the d×d results instead of to every row.
ggml_tensor * unit_gram(ggml_context * ctx, ggml_tensor * k, ggml_tensor * ones) {
    const int64_t d = k->ne[0], n_head = k->ne[1], n = k->ne[2];
    ggml_tensor * sum = sum_dim1(ctx, ggml_reshape_3d(ctx, k, d * n_head, n, 1), ones);       // [d * n_head, 1, 1]
    ggml_tensor * mean = ggml_scale(ctx, ggml_reshape_3d(ctx, sum, d, n_head, 1), 1.0f / (float) n);
    // rms_norm gives rms 1, i.e. norm sqrt(d); a zero row stays zero. Over [d, n_head * n] rows: CUDA's
    // kernel puts dimension 2 on the grid's y, which stops at 65535 (a 64k prompt aborted)
    ggml_tensor * z = ggml_reshape_3d(ctx, ggml_rms_norm(ctx, ggml_reshape_2d(ctx, ggml_sub(ctx, k, mean), d, n_head * n), 1e-30f),
                                      d, n_head, n);                                          // [d, n_head, n]
    const size_t  row = z->nb[2]; // one token: every head's d values
    // rows [first, first + rows * chunks) of each head as [d, rows, chunks, n_head] -> Σ over the rows
    auto gram_of = [&](int64_t first, int64_t rows, int64_t chunks) {
        ggml_tensor * v = ggml_view_4d(ctx, z, d, rows, chunks, n_head, row, rows * row, z->nb[1], first * row);
        return ggml_out_prod(ctx, v, v);                                                      // [d, d, chunks, n_head]
    };
    const int64_t chunks = n / k_gram_chunk, rest = n % k_gram_chunk;
    ggml_tensor * g = nullptr;
    if (chunks > 0) {
        g = sum_dim1(ctx, ggml_reshape_3d(ctx, gram_of(0, k_gram_chunk, chunks), d * d, chunks, n_head), ones);
    }
    if (rest > 0) {
        ggml_tensor * last = ggml_reshape_3d(ctx, gram_of(chunks * k_gram_chunk, rest, 1), d * d, 1, n_head);
        g = g == nullptr ? last : ggml_add(ctx, g, last);
    }
    return ggml_reshape_3d(ctx, ggml_scale(ctx, g, 1.0f / (float) d), d, d, n_head);
}

// the column of ones sum_dim1 reads, [n] f32, set after allocation
struct ones_input {
    ggml_tensor * t = nullptr;
    ones_input(ggml_context * ctx, int64_t n) {
        t = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, std::max<int64_t>(1, n));
        ggml_set_input(t);
    }
    void upload() const {
        const std::vector<float> ones((size_t) t->ne[0], 1.0f);
        ggml_backend_tensor_set(t, ones.data(), 0, ggml_nbytes(t));
    }
};

size_t n_heads_in(const std::vector<uncomp_head_cells> & jobs) {
    size_t n = 0;
    for (const auto & j : jobs) n += j.cells.size();
    return n;
}

// the cell indices of every head of every job: each distinct list once, all of them packed into one i32
// input uploaded after allocation (one transfer: each is synchronous, and a compaction has a list per
// head). Lists are named with want() before create(), then each one's view is taken with of().
struct cell_inputs {
    std::unordered_map<const std::vector<uint32_t> *, int64_t> at; // where each list starts
    std::vector<const std::vector<uint32_t> *> lists;
    int64_t       n_values = 0;
    ggml_tensor * all      = nullptr;

    void want(const std::vector<uint32_t> * c) {
        if (takes_part(c) && at.emplace(c, n_values).second) {
            lists.push_back(c);
            n_values += (int64_t) c->size();
        }
    }
    void want(const uncomp_head_cells & j) {
        for (const auto * c : j.cells) want(c);
    }
    void create(ggml_context * ctx) {
        all = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, std::max<int64_t>(1, n_values));
        ggml_set_input(all);
    }
    ggml_tensor * of(ggml_context * ctx, const std::vector<uint32_t> * cells) const {
        return ggml_view_1d(ctx, all, (int64_t) cells->size(), at.at(cells) * sizeof(int32_t));
    }
    void upload() const {
        std::vector<uint32_t> packed;
        packed.reserve((size_t) n_values);
        for (const auto * c : lists) packed.insert(packed.end(), c->begin(), c->end());
        if (!packed.empty()) ggml_backend_tensor_set(all, packed.data(), 0, packed.size() * sizeof(uint32_t));
    }
};

// a step's per-head results (f32), copied into one output tensor so that they come back in one graph
struct packed_outputs {
    struct part {
        ggml_tensor * t = nullptr; // the result holding the head's values
        int64_t       at = 0;      // where they start in the output
        int64_t       n = 0;       // how many
    };
    std::vector<std::vector<part>> parts;                   // [layer][head]
    std::vector<std::pair<ggml_tensor *, int64_t>> copies;  // each result once: tensor, offset
    int64_t       n_values = 0;
    ggml_tensor * all      = nullptr;

    explicit packed_outputs(size_t n_layers) : parts(n_layers) {}
    void add(size_t l, size_t h, ggml_tensor * t) {
        if (parts[l].size() <= h) parts[l].resize(h + 1);
        parts[l][h] = { t, n_values, ggml_nelements(t) };
        copies.push_back({ t, n_values });
        n_values += ggml_nelements(t);
    }
    // t holds n_heads heads' values one after the other (the slowest dimension is the head)
    void add_heads(size_t l, ggml_tensor * t, int64_t n_heads) {
        const int64_t n = ggml_nelements(t) / n_heads;
        parts[l].assign(n_heads, part());
        for (int64_t h = 0; h < n_heads; ++h) parts[l][h] = { t, n_values + h * n, n };
        copies.push_back({ t, n_values });
        n_values += ggml_nelements(t);
    }
    // after every add: the copies into one tensor, the graph's output
    void pack(ggml_context * ctx, ggml_cgraph * gf) {
        if (n_values == 0) return;
        all = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, n_values);
        ggml_set_output(all);
        for (const auto & [t, at] : copies) {
            ggml_build_forward_expand(gf, ggml_cpy(ctx, t, ggml_view_1d(ctx, all, ggml_nelements(t), at * sizeof(float))));
        }
    }
    // [layer][head] values, no values where a head has none. They come back in one read into `staging`
    // (n_values floats), one transfer instead of one per head (each of which waits on its own), and are
    // read there.
    uncomp_step_values read(const std::vector<size_t> & n_heads, float * staging) const {
        uncomp_step_values out(parts.size());
        if (all != nullptr) {
            ggml_backend_tensor_get(all, staging, 0, ggml_nbytes(all));
        }
        for (size_t l = 0; l < parts.size(); ++l) {
            out[l].resize(n_heads[l]);
            for (size_t h = 0; h < parts[l].size(); ++h) {
                const part & p = parts[l][h];
                if (p.t != nullptr) out[l][h] = { staging + p.at, (size_t) p.n };
            }
        }
        return out;
    }
};

} // namespace

struct uncomp_device::pending_step {
    ggml_context *      ctx = nullptr;
    packed_outputs      mass;
    std::vector<size_t> heads_of;

    pending_step(ggml_context * ctx, packed_outputs mass, std::vector<size_t> heads_of)
        : ctx(ctx), mass(std::move(mass)), heads_of(std::move(heads_of)) {}
    ~pending_step() { ggml_free(ctx); }
};

void uncomp_device::settle() {
    if (pending != nullptr) {
        ggml_backend_synchronize(backend);
        delete std::exchange(pending, nullptr);
    }
}

uncomp_step_values uncomp_device::attention_mass(const std::vector<uncomp_score_job> & jobs) {
    start_attention_mass(jobs);
    return finish_attention_mass();
}

uncomp_step_values uncomp_device::finish_attention_mass() {
    GGML_ASSERT(pending != nullptr && "uncomp: no scores started");
    uncomp_step_timer timer("scores");
    ggml_backend_synchronize(backend);
    timer.step("compute");
    auto out = pending->mass.read(pending->heads_of, staging_for(1, pending->mass.n_values));
    timer.step("read");
    delete std::exchange(pending, nullptr);
    return out;
}

void uncomp_device::start_attention_mass(const std::vector<uncomp_score_job> & jobs) {
    settle();
    uncomp_step_timer timer("scores");
    size_t n_heads = 0;
    std::vector<size_t> heads_of(jobs.size());
    int64_t n_ones = 0; // the most rows a sum over the window and the gqa heads reads
    for (size_t l = 0; l < jobs.size(); ++l) {
        n_heads += heads_of[l] = jobs[l].keys.cells.size();
        n_ones = std::max<int64_t>(n_ones, jobs[l].wq * jobs[l].n_head);
    }
    const size_t n_nodes = 20 * n_heads + 4 * jobs.size() + 16;
    ggml_context * ctx = begin(n_nodes);
    ggml_cgraph * gf = ggml_new_graph_custom(ctx, n_nodes, false);
    cell_inputs cells;
    for (const auto & j : jobs) {
        if (!reads_in_place(j.keys)) cells.want(j.keys);
    }
    cells.create(ctx);
    const ones_input ones(ctx, n_ones);
    std::vector<ggml_tensor *> q_in(jobs.size());
    packed_outputs mass(jobs.size());
    for (size_t l = 0; l < jobs.size(); ++l) {
        const auto & j = jobs[l];
        const int64_t n_head_kv = (int64_t) j.keys.cells.size();
        const int64_t gqa       = j.n_head / n_head_kv;
        const int64_t head_dim  = j.keys.head_dim;
        // q: [head_dim, wq, n_head]; the query heads of KV head h are [h*gqa, (h+1)*gqa)
        q_in[l] = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, head_dim, j.wq, j.n_head);
        ggml_set_input(q_in[l]);
        // softmax(scale·q·k) over the n cells, causal inside the window (row t sees cells < n - wq + t + 1),
        // summed over the window rows and the gqa query heads: kq [n, wq, gqa, heads] -> [n, 1, heads]
        // kq must be a product of f32 precision: cuBLAS's default for f16 rows accumulates and writes in
        // f16, whose 65504 the logits of a random 8B-shaped model's layer 8 exceeded at 32k (all NaN)
        auto mass_of = [&](ggml_tensor * kq, int64_t n, int64_t heads) {
            kq = ggml_diag_mask_inf_inplace(ctx, kq, (int) (n - j.wq));
            kq = ggml_soft_max_ext(ctx, kq, nullptr, j.scale, 0.0f);
            return sum_dim1(ctx, ggml_reshape_3d(ctx, kq, n, j.wq * gqa, heads), ones.t);
        };
        if (shares_cells(j.keys)) {
            // every head holds the same cells (a prompt just evaluated): one batched product for the layer,
            // the same arithmetic per head as below
            const int64_t n = (int64_t) j.keys.cells[0]->size();
            ggml_tensor * k = reads_in_place(j.keys) ? rows_in_place(ctx, j.keys)           // [head_dim, n, n_head_kv]
                                                     : shared_rows(ctx, j.keys, cells.of(ctx, j.keys.cells[0]));
            ggml_tensor * qg = ggml_reshape_3d(ctx, q_in[l], head_dim, j.wq * gqa, n_head_kv);
            ggml_tensor * prod = ggml_mul_mat(ctx, k, qg);
            ggml_mul_mat_set_prec(prod, GGML_PREC_F32);
            ggml_tensor * kq = ggml_reshape_4d(ctx, prod, n, j.wq, gqa, n_head_kv);
            mass.add_heads(l, mass_of(kq, n, n_head_kv), n_head_kv);
            continue;
        }
        for (int64_t h = 0; h < n_head_kv; ++h) {
            if (!takes_part(j.keys.cells[h])) {
                continue;
            }
            const int64_t n_h = (int64_t) j.keys.cells[h]->size();
            ggml_tensor * k  = ggml_get_rows(ctx, head_rows(ctx, j.keys.storage, j.keys.stream, head_dim, h),
                                             cells.of(ctx, j.keys.cells[h]));                          // [head_dim, n_h] f32
            ggml_tensor * qg = ggml_view_3d(ctx, q_in[l], head_dim, j.wq, gqa, q_in[l]->nb[1], q_in[l]->nb[2],
                                            h * gqa * q_in[l]->nb[2]);
            ggml_tensor * prod = ggml_mul_mat(ctx, k, qg);                                               // [n_h, wq, gqa]
            ggml_mul_mat_set_prec(prod, GGML_PREC_F32);
            mass.add(l, (size_t) h, mass_of(prod, n_h, 1));
        }
    }
    mass.pack(ctx, gf);
    timer.step("build");
    allocate(ctx, gf);
    timer.step("alloc");
    for (size_t l = 0; l < jobs.size(); ++l) {
        ggml_backend_tensor_set(q_in[l], jobs[l].q.data(), 0, ggml_nbytes(q_in[l]));
    }
    cells.upload();
    ones.upload();
    timer.step("upload");
    if (ggml_backend_graph_compute_async(backend, gf) != GGML_STATUS_SUCCESS) {
        ggml_free(ctx);
        throw std::runtime_error("uncomp: the scoring graph failed");
    }
    timer.step("launch");
    pending = new pending_step(ctx, std::move(mass), std::move(heads_of));
}

uncomp_step_values uncomp_device::key_gram(const std::vector<uncomp_head_cells> & jobs) {
    settle();
    uncomp_step_timer timer("gram");
    // the most ones a sum reads: a mean reads one per row, a sum of chunks one per chunk and head
    int64_t n_ones = 0;
    auto need_ones = [&](int64_t n, int64_t n_head) {
        n_ones = std::max({ n_ones, n, (n / k_gram_chunk) * n_head });
    };
    for (const auto & j : jobs) {
        if (shares_cells(j)) {
            need_ones((int64_t) j.cells[0]->size(), (int64_t) j.cells.size());
            continue;
        }
        for (const auto * c : j.cells) {
            if (takes_part(c)) need_ones((int64_t) c->size(), 1);
        }
    }
    const size_t n_nodes = 20 * n_heads_in(jobs) + 24 * jobs.size() + 16; // per head, or per layer when batched
    ggml_context * ctx = begin(n_nodes);
    ggml_cgraph * gf = ggml_new_graph_custom(ctx, n_nodes, false);
    cell_inputs cells;
    for (const auto & j : jobs) cells.want(j);
    cells.create(ctx);
    const ones_input ones(ctx, n_ones);
    packed_outputs gram(jobs.size());
    std::vector<size_t> heads_of(jobs.size());
    for (size_t l = 0; l < jobs.size(); ++l) {
        const auto & j = jobs[l];
        const int64_t head_dim = j.head_dim;
        heads_of[l] = j.cells.size();
        if (shares_cells(j)) {
            // every head holds the same cells (a prompt just evaluated): one batched product for the layer
            const int64_t n_head_kv = (int64_t) j.cells.size();
            ggml_tensor * idx = cells.of(ctx, j.cells[0]);
            ggml_tensor * k = ggml_reshape_3d(ctx, ggml_get_rows(ctx, stream_rows(ctx, j.storage, j.stream), idx),
                                              head_dim, n_head_kv, idx->ne[0]);          // [head_dim, n_head_kv, n]
            gram.add_heads(l, unit_gram(ctx, k, ones.t), n_head_kv);                  // [head_dim, head_dim, n_head_kv]
            continue;
        }
        for (size_t h = 0; h < j.cells.size(); ++h) {
            if (!takes_part(j.cells[h])) {
                continue;
            }
            ggml_tensor * k = ggml_get_rows(ctx, head_rows(ctx, j.storage, j.stream, head_dim, (int64_t) h),
                                            cells.of(ctx, j.cells[h]));             // [head_dim, n_h]
            gram.add(l, h, unit_gram(ctx, ggml_reshape_3d(ctx, k, head_dim, 1, k->ne[1]), ones.t));
        }
    }
    gram.pack(ctx, gf);
    timer.step("build");
    allocate(ctx, gf);
    timer.step("alloc");
    cells.upload();
    ones.upload();
    timer.step("upload");
    ggml_backend_graph_compute(backend, gf);
    timer.step("compute");
    auto out = gram.read(heads_of, staging_for(0, gram.n_values));
    timer.step("read");
    ggml_free(ctx);
    return out;
}

bool uncomp_device::compact(const std::vector<uncomp_head_cells> & jobs, size_t n_kept) {
    settle();
    for (const auto & j : jobs) {
        const size_t head_bytes = ggml_row_size(j.storage->type, j.head_dim);
        if (head_bytes % 4 != 0 || j.storage->nb[1] % 4 != 0 || j.storage->nb[2] % 4 != 0) {
            return false;
        }
    }
    const size_t n_nodes = 8 * n_heads_in(jobs) + 2 * jobs.size() + 8;
    ggml_context * ctx = begin(n_nodes);
    ggml_cgraph * gf = ggml_new_graph_custom(ctx, n_nodes, false);
    // a job whose heads all take part moves in one gather and one write of [head_words, span, n_head_kv],
    // span = its longest head's rows (a graph node pair per head cost more than the copies on a 32k
    // prompt): rows [n_kept - span, n_kept) of every head, head h's list led by the rows
    // [n_kept - span, n_kept - n_h) themselves, which the write puts back as they were. K and V of a layer
    // share one list.
    std::map<std::vector<const std::vector<uint32_t> *>, std::vector<uint32_t>> layer_rows; // [n_head_kv][span]
    cell_inputs cells;
    for (const auto & j : jobs) {
        if (!std::all_of(j.cells.begin(), j.cells.end(), takes_part)) {
            cells.want(j);
            continue;
        }
        auto [it, fresh] = layer_rows.try_emplace(j.cells);
        size_t span = 0;
        for (const auto * c : j.cells) span = std::max(span, c->size());
        for (const auto * c : j.cells) {
            if (!fresh) break;
            for (size_t r = n_kept - span; r < n_kept - c->size(); ++r) it->second.push_back((uint32_t) r);
            it->second.insert(it->second.end(), c->begin(), c->end());
        }
        cells.want(&it->second);
    }
    cells.create(ctx);
    for (const auto & j : jobs) {
        // the storage seen as 32-bit words, so that rows move bit for bit whatever their type
        ggml_tensor * words = ggml_new_tensor_3d(ctx, GGML_TYPE_I32, j.storage->nb[1] / 4, j.storage->ne[1], j.storage->ne[2]);
        words->data   = j.storage->data;
        words->buffer = j.storage->buffer;
        const size_t  head_bytes = ggml_row_size(j.storage->type, j.head_dim);
        const int64_t head_words = (int64_t) head_bytes / 4;
        // rows are gathered into a buffer, then written: destinations overlap sources. Heads occupy
        // disjoint words of a row, so one head's writes never touch another's sources.
        if (auto it = layer_rows.find(j.cells); it != layer_rows.end()) {
            const int64_t n_head_kv = (int64_t) j.cells.size();
            const int64_t span      = (int64_t) it->second.size() / n_head_kv;
            auto heads_view = [&](int64_t first, int64_t n_rows) { // rows [first, first + n_rows) of every head
                return ggml_view_3d(ctx, words, head_words, n_rows, n_head_kv, words->nb[1], head_bytes,
                                    j.stream * words->nb[2] + first * words->nb[1]);     // [head_words, n_rows, n_head_kv]
            };
            ggml_tensor * idx  = ggml_reshape_2d(ctx, cells.of(ctx, &it->second), span, n_head_kv);
            ggml_tensor * rows = ggml_get_rows(ctx, heads_view(0, words->ne[1]), idx);       // [head_words, span, n_head_kv]
            ggml_build_forward_expand(gf, ggml_cpy(ctx, rows, heads_view((int64_t) n_kept - span, span)));
            continue;
        }
        for (size_t h = 0; h < j.cells.size(); ++h) {
            if (!takes_part(j.cells[h])) {
                continue;
            }
            ggml_tensor * rows = ggml_get_rows(ctx, head_rows(ctx, words, j.stream, head_words, (int64_t) h),
                                               cells.of(ctx, j.cells[h]));                             // [head_words, n_h]
            const size_t first = n_kept - j.cells[h]->size();
            ggml_tensor * dst = ggml_view_2d(ctx, words, head_words, (int64_t) j.cells[h]->size(), words->nb[1],
                                             j.stream * words->nb[2] + h * head_bytes + first * words->nb[1]);
            ggml_build_forward_expand(gf, ggml_cpy(ctx, rows, dst));
        }
    }
    allocate(ctx, gf);
    cells.upload();
    ggml_backend_graph_compute(backend, gf);
    ggml_free(ctx);
    return true;
}
