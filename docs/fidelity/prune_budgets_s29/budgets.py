# per-layer tokens kept (mean over KV heads) and entropies, unpruned vs pruned prefill, one multi-key 2k prompt
import sys, json
import pyuncomp
from pyuncomp.eval.tasks import make_samples
import numpy as np
path = str(pyuncomp.resolve_model("smollm2-135m"))
llm = pyuncomp.Llama(path, n_ctx=2560, method="uncomp", ratio=0.05, auto_compress=False, verbose=False, n_threads=2)
count = lambda t: len(llm.tokenize(t.encode(), add_bos=False))
s = make_samples("niah_multikey", 2048, [0.25], 1, 0, count)[0]
toks = llm.tokenize(s.prompt.encode())
out = {}
for keep in (None, 0.5):
    llm.reset()
    llm.set_compression(prefill_prune=keep is not None, **({"prefill_keep": keep} if keep else {}))
    llm.eval(toks)
    st = llm.save_state()
    for ratio in (0.05, 0.1):
        llm.load_state(st)
        llm.set_compression(method="uncomp", ratio=ratio)
        llm.compress()
        cs = llm.compression_stats()
        out[f"{keep} {ratio}"] = {"kept": [float(np.mean(k)) for k in cs["tokens_kept"]],
                                  "kept_heads": cs["tokens_kept"],
                                  "entropy": cs["entropy"]}
json.dump(out, open("/tmp/pb/budgets.json", "w"))
for r in (0.05, 0.1):
    a, b = out[f"None {r}"], out[f"0.5 {r}"]
    print("ratio", r)
    for l in range(len(a["kept"])):
        ea = np.mean(a["entropy"][l]) if a["entropy"] else 0
        eb = np.mean(b["entropy"][l]) if b["entropy"] else 0
        print(f"  layer {l:2d}: kept {a['kept_heads'][l]} -> {b['kept_heads'][l]}   entropy {ea:.3f} -> {eb:.3f}")
