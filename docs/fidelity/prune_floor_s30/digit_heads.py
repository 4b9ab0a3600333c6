"""Issue #6, session 30: how many of the target needle's digit tokens each KV head of each layer holds after
uncomp 0.05, unpruned against a pruned prefill dropping 256 tokens (floor 1536). A held row is mapped to a
prompt position by its nearest key (cosine) in an unpruned full evaluation of the same layer and head: exact
in layers <= 8, approximate deeper (pruning changes those layers' keys). Prints "held:digits" per head,
unpruned / pruned. Run: python digit_heads.py 4 (sample indices; output: digit_heads.log)"""
import sys

import pyuncomp
import llama_cpp  # after pyuncomp, which points it at pyuncomp's libllama
from common import LLAMA_ARGS, MODEL, VARIANTS, answer_positions, multikey_prompts, nearest_positions

for s, toks in multikey_prompts([int(a) for a in sys.argv[1:]] or [4]):
    plain = pyuncomp.Llama(MODEL, method="full", **LLAMA_ARGS)
    plain.eval(toks)
    n_layer = llama_cpp.llama_model_n_layer(plain._model.model)
    full = [plain.cached_keys(l) for l in range(n_layer)]
    dig = answer_positions(plain, toks, s.answers[0])
    plain.close()
    print(s.answers, "digits at", dig, "of", len(toks))
    held = {}  # variant -> per layer, per head: "tokens held:digits among them"
    for name, extra in VARIANTS:
        m = pyuncomp.Llama(MODEL, method="uncomp", ratio=0.05, **LLAMA_ARGS, **extra)
        m.eval(toks)
        m.compress()
        kept = m.compression_stats()["tokens_kept"]
        held[name] = []
        for l in range(n_layer):
            k = m.cached_keys(l)
            hd = k.shape[1] // len(kept[l])
            cells = []
            for h, n_kept in enumerate(kept[l]):
                pos, _ = nearest_positions(k[len(k) - n_kept:, h * hd:(h + 1) * hd], full[l][:, h * hd:(h + 1) * hd])
                cells.append(f"{n_kept}:{len(set(dig) & set(pos.tolist()))}")
            held[name].append(" ".join(cells))
        m.close()
    for l in range(n_layer):
        print(f"layer {l:2d}: {held['unpruned'][l]}/{held['drop256'][l]}")
