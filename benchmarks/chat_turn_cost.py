"""What a chat's second turn costs under each new_turns mode: the time from the second turn's request to
its first token, the host copy recall keeps, and the KV bytes held after the turn. The first turn is a
long document (SmolLM2's chat task haystack) followed by a short question.

    python benchmarks/chat_turn_cost.py [--model M] [--length 4096] [--ratio 0.1] [--threads 2] [--n-gpu-layers 0]
"""
import argparse
import time

import pyuncomp  # noqa: I001  (first: it loads pyuncomp's libllama)
from pyuncomp.config import NEW_TURNS
from pyuncomp.eval.tasks import make_samples

ap = argparse.ArgumentParser()
ap.add_argument("--model", default=None)
ap.add_argument("--length", type=int, default=4096)
ap.add_argument("--ratio", type=float, default=0.1)
ap.add_argument("--threads", type=int, default=None)
ap.add_argument("--n-gpu-layers", type=int, default=0)
args = ap.parse_args()

path = str(pyuncomp.resolve_model(args.model))
for mode in NEW_TURNS:
    llm = pyuncomp.Llama(path, n_ctx=args.length + 512, ratio=args.ratio, new_turns=mode, n_threads=args.threads,
                         n_gpu_layers=args.n_gpu_layers, verbose=False)
    count = lambda text: len(llm.tokenize(text.encode(), add_bos=False))  # noqa: E731
    sample = make_samples("chat", args.length, [0.5], 1, 0, count)[0]
    chat = [{"role": "user", "content": sample.prompt}]
    t0 = time.perf_counter()
    reply = llm.create_chat_completion(chat, max_tokens=8, temperature=0.0)["choices"][0]["message"]
    t1 = time.perf_counter()
    stats = llm.compression_stats()
    chat += [reply, {"role": "user", "content": sample.followup}]
    t2 = time.perf_counter()
    answer = next(iter(llm.create_chat_completion(chat, max_tokens=1, temperature=0.0, stream=True)))
    t3 = time.perf_counter()
    after = llm.compression_stats()
    print(f"{mode:10s} first turn {t1 - t0:6.2f} s ({stats['n_tokens']} tokens); second turn to its first token "
          f"{t3 - t2:6.2f} s; host copy {after['recall_bytes'] / 2**20:6.1f} MiB; KV held after it "
          f"{after['kv_bytes'] / 2**20:.1f} of {after['kv_bytes_full'] / 2**20:.1f} MiB", flush=True)
    llm.close()
