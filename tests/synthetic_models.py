"""Tiny random-weight GGUFs of architectures the real test models do not cover (meaningless text; for
error paths only). Written with llama.cpp's gguf-py from the pinned tree (it needs PyYAML, a test
dependency)."""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _gguf():
    sys.path.insert(0, str(ROOT / "third_party" / "llama.cpp" / "gguf-py"))
    try:
        import gguf
    finally:
        sys.path.pop(0)
    return gguf


def _random(seed=0, scale=0.02):
    rng = np.random.default_rng(seed)

    def rand(*shape):  # numpy shapes: ggml's ne reversed
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return rand


def _writer(path, arch, n_layer, n_embd, n_ff, n_head, n_vocab, **head_counts):
    """A GGUFWriter with the shape keys, f32 weights, a byte-level SPM vocabulary (<unk> <s> </s>, the 256
    bytes, then t0, t1, ...) and the embedding and output tensors written."""
    gguf = _gguf()
    rand = _random()
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"synthetic-{arch}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    for key, value in head_counts.items():
        getattr(w, f"add_{key}")(value)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"t{i}" for i in range(n_vocab - len(tokens))]
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (n_vocab - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_tensor("token_embd.weight", rand(n_vocab, n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("output.weight", rand(n_vocab, n_embd))
    return w


def _close(w, path):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_transformer_gguf(path, arch, n_layer=4, n_embd=128, n_head=4, n_head_kv=2, n_ff=256, n_vocab=300,
                          ffn_norm=1.0):
    """A transformer of random weights with llama's tensors; qwen2 adds attention biases, qwen3 per-head
    q/k norms (other architectures of llama's tensors, e.g. ernie4_5, take them as they are). ffn_norm:
    every ffn_norm weight (NaN: a model whose every evaluation computes garbage)."""
    rand = _random(seed=1, scale=0.1)
    head_dim = n_embd // n_head
    w = _writer(path, arch, n_layer, n_embd, n_ff, n_head, n_vocab, head_count_kv=n_head_kv, rope_freq_base=10000.0)
    for i in range(n_layer):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name, rows in (("attn_q", n_embd), ("attn_k", n_head_kv * head_dim), ("attn_v", n_head_kv * head_dim)):
            w.add_tensor(b + name + ".weight", rand(rows, n_embd))
            if arch == "qwen2":
                w.add_tensor(b + name + ".bias", rand(rows))
        if arch == "qwen3":
            w.add_tensor(b + "attn_q_norm.weight", np.ones(head_dim, dtype=np.float32))
            w.add_tensor(b + "attn_k_norm.weight", np.ones(head_dim, dtype=np.float32))
        w.add_tensor(b + "attn_output.weight", rand(n_embd, n_embd))
        w.add_tensor(b + "ffn_norm.weight", np.full(n_embd, ffn_norm, dtype=np.float32))
        w.add_tensor(b + "ffn_gate.weight", rand(n_ff, n_embd))
        w.add_tensor(b + "ffn_up.weight", rand(n_ff, n_embd))
        w.add_tensor(b + "ffn_down.weight", rand(n_embd, n_ff))
    return _close(w, path)


def write_mamba_gguf(path, n_layer=2, n_embd=64, d_inner=128, d_state=16, d_conv=4, dt_rank=4, n_vocab=300):
    """A recurrent (Mamba) model: its memory is not a KV cache."""
    rand = _random()
    w = _writer(path, "mamba", n_layer, n_embd, 0, 0, n_vocab)
    w.add_ssm_conv_kernel(d_conv)
    w.add_ssm_inner_size(d_inner)
    w.add_ssm_state_size(d_state)
    w.add_ssm_time_step_rank(dt_rank)
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ssm_in.weight", rand(2 * d_inner, n_embd))
        w.add_tensor(f"blk.{i}.ssm_conv1d.weight", rand(d_inner, d_conv))
        w.add_tensor(f"blk.{i}.ssm_conv1d.bias", rand(d_inner))
        w.add_tensor(f"blk.{i}.ssm_x.weight", rand(dt_rank + 2 * d_state, d_inner))
        w.add_tensor(f"blk.{i}.ssm_dt.weight", rand(d_inner, dt_rank))
        w.add_tensor(f"blk.{i}.ssm_dt.bias", rand(d_inner))
        w.add_tensor(f"blk.{i}.ssm_a", -np.ones((d_inner, d_state), dtype=np.float32))
        w.add_tensor(f"blk.{i}.ssm_d", np.ones(d_inner, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ssm_out.weight", rand(n_embd, d_inner))
    return _close(w, path)
