"""Does a pruned prefill give the same next-token logits on CUDA as on the CPU? (issue #6)

Session 27 found the harness's pruned answers on an H200 differing from the CPU's on 3 of 8 SmolLM2
prompts (empty or wrong answers where the CPU kept the unpruned one; docs/fidelity.md, "The pruned
prefill on the GPU"). For the named prompts of the eval harness (task:length:depth:index, seed 0) this
evaluates each prompt unpruned and pruned (keep 0.5, the default layer) in a fresh context and records
the last position's logits (top 8 and a checksum of all), the cache's bytes after compression
(uncomp 0.1) and the 12-token greedy answer. --compare prints, per prompt, the largest logit difference between two runs.

    python tools/prune_probe.py OUT.json [--n-gpu-layers -1] [--flash-attn on|off] [PROMPT ...]
    python tools/prune_probe.py --compare CPU.json CUDA.json

Run on the GPU with and without GGML_CUDA_DISABLE_GRAPHS=1 to tell a stale CUDA graph from a kernel.
"""
import argparse
import json
import sys

import pyuncomp  # noqa: I001  (first: it loads pyuncomp's libllama)
import numpy as np
from pyuncomp.eval.tasks import make_samples

# the prompts whose pruned answers differed between the H200 and the CPU in session 27, and two that agreed
PROMPTS = ["passkey:2048:0.0:1", "niah_multikey:2048:0.75:0", "niah_multikey:2048:0.75:1",
           "passkey:2048:0.0:0", "niah_multikey:2048:0.0:0"]


def last_logits(llm):
    return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),)).astype(np.float64)


def logits_of(llm, tokens, n_answer=12):
    """The prompt's last logits, the cache's stats after compression, and the greedy answer after it."""
    llm.reset()
    llm.eval(tokens)
    logits = last_logits(llm)
    llm.compress()
    answer = [int(np.argmax(logits))]
    while len(answer) < n_answer:
        llm.eval([answer[-1]])
        answer.append(int(np.argmax(last_logits(llm))))
    return logits, llm.compression_stats(), llm.detokenize(answer).decode(errors="replace")


def probe(a) -> dict:
    out = {"n_gpu_layers": a.n_gpu_layers, "flash_attn": a.flash_attn, "prompts": {}}
    settings = {"unpruned": {}, "pruned": dict(prefill_prune=True, prefill_keep=0.5)}
    llms = {name: pyuncomp.Llama(str(pyuncomp.resolve_model(a.model)), n_ctx=4608, n_gpu_layers=a.n_gpu_layers,
                                 flash_attn=a.flash_attn == "on", method="uncomp", ratio=0.1, auto_compress=False,
                                 shrink_cache=False, verbose=False, **kw) for name, kw in settings.items()}
    count = lambda text: len(llms["unpruned"].tokenize(text.encode(), add_bos=False))  # noqa: E731
    for spec in a.prompts:
        task, length, depth, index = spec.split(":")
        sample = make_samples(task, int(length), [float(depth)], int(index) + 1, 0, count)[int(index)]
        tokens = llms["unpruned"].tokenize(sample.prompt.encode())
        row = {"n_tokens": len(tokens)}
        for name, llm in llms.items():
            logits, stats, answer = logits_of(llm, tokens)
            top = np.argsort(-logits)[:8]
            row[name] = {"top": top.tolist(), "top_logits": logits[top].round(4).tolist(),
                         "sum": float(logits.sum()), "finite": bool(np.isfinite(logits).all()),
                         "first": llm.detokenize([int(top[0])]).decode(errors="replace"),
                         "kv_bytes": stats["kv_bytes"], "answer": answer}
        out["prompts"][spec] = row
        print(spec, {k: v["answer"] for k, v in row.items() if k != "n_tokens"}, flush=True)
    return out


def compare(path_a, path_b) -> int:
    a, b = json.load(open(path_a))["prompts"], json.load(open(path_b))["prompts"]
    worst = 0.0
    for spec in a.keys() & b.keys():
        for name in ("unpruned", "pruned"):
            x, y = a[spec][name], b[spec][name]
            diff = max(abs(p - q) for p, q in zip(x["top_logits"], y["top_logits"]))
            same = x["top"][:3] == y["top"][:3]
            worst = max(worst, diff)
            print(f"{spec:28s} {name:8s} top-3 {'same' if same else 'DIFFER'}  max top-8 logit diff {diff:.3f}  "
                  f"answers {x['answer']!r} vs {y['answer']!r}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?")
    ap.add_argument("prompts", nargs="*", default=PROMPTS)
    ap.add_argument("--model", default=None)
    ap.add_argument("--n-gpu-layers", type=int, default=0)
    ap.add_argument("--flash-attn", choices=["on", "off"], default="on")
    ap.add_argument("--compare", nargs=2)
    a = ap.parse_args()
    if a.compare:
        sys.exit(compare(*a.compare))
    a.prompts = a.prompts or PROMPTS
    json.dump(probe(a), open(a.out, "w"), indent=1)
