"""Tiny random-weight GGUFs of architectures the real test models do not cover (meaningless text; for
error paths only). Written with llama.cpp's gguf-py from the pinned tree (it needs PyYAML, a test
dependency)."""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def write_mamba_gguf(path, n_layer=2, n_embd=64, d_inner=128, d_state=16, d_conv=4, dt_rank=4, n_vocab=300):
    """A recurrent (Mamba) model: its memory is not a KV cache."""
    sys.path.insert(0, str(ROOT / "third_party" / "llama.cpp" / "gguf-py"))
    try:
        import gguf
    finally:
        sys.path.pop(0)
    rng = np.random.default_rng(0)

    def rand(*shape):  # numpy shapes: ggml's ne reversed
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_name("synthetic-mamba")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(0)
    w.add_head_count(0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_ssm_conv_kernel(d_conv)
    w.add_ssm_inner_size(d_inner)
    w.add_ssm_state_size(d_state)
    w.add_ssm_time_step_rank(dt_rank)
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
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
