"""A compressed cache's next turn evaluated as one batch against the same tokens one at a time.

    python tools/chunk_probe.py [--model M] [--cache f16|q8_0] [--n-gpu-layers N]   # exit 1 when they disagree

After an uncomp prompt (heads of a layer keep different numbers of rows), a multi-token batch attends
through the per-head mask repeated over its rows, a single token through the mask itself. Both must
give the chunk's last token the same logits up to the kernels' rounding, which the full cache's own
batched-vs-single agreement measures: uncomp's correlation must be at least the full cache's minus
0.002 (on CUDA the batched kernels round differently: SmolLM2's full cache correlates 0.9965), and
no NaN."""

import argparse
import sys

import pyuncomp  # first: it loads pyuncomp's libllama  # noqa: I001

import numpy as np

from compress_probe import CACHES, PROMPT  # the same prompt and cache settings as the compression probe

CHUNK = " 48213. Good. Now tell me about the fox, the dog, the grass and the sky, and then the number again:"


def chunk_logits(llm, chunk):
    """(batched, single): the last logits of `chunk` evaluated after llm's current state as one batch,
    then from the same state token by token."""
    state = llm.save_state()
    llm.eval(chunk)
    batched = llm._last_logits().copy()
    llm.load_state(state)
    for token in chunk:
        llm.eval([token])
    return batched, llm._last_logits().copy()


def batched_vs_single(args, method):
    """(correlation, max |diff|, same argmax, tokens kept per head) of the chunk's last logits."""
    cache = {"flash_attn": True, **CACHES[args.cache]}
    llm = pyuncomp.Llama(pyuncomp.resolve_model(args.model), n_ctx=8192, method=method, ratio=0.1,
                         n_gpu_layers=args.n_gpu_layers, shrink_cache=False, seed=0, verbose=False, **cache)
    llm.eval(llm.tokenize(PROMPT.encode()))
    kept = llm.compression_stats()["tokens_kept"]
    batched, single = chunk_logits(llm, llm.tokenize(CHUNK.encode(), add_bos=False))
    llm.close()
    finite = np.all(np.isfinite(batched)) and np.all(np.isfinite(single))
    corr = float(np.corrcoef(batched, single)[0, 1]) if finite else float("nan")
    return corr, float(np.abs(batched - single).max()), bool(batched.argmax() == single.argmax()), kept


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--cache", choices=["f16", "q8_0"], default="f16")
    ap.add_argument("--n-gpu-layers", type=int, default=0)
    args = ap.parse_args()
    full_corr = batched_vs_single(args, "full")[0]
    corr, diff, same, kept = batched_vs_single(args, "uncomp")
    kept = np.asarray(kept)
    ok = np.isfinite(corr) and np.isfinite(full_corr) and corr >= full_corr - 0.002
    print(f"{args.cache}, n_gpu_layers {args.n_gpu_layers}: a next turn after a prompt keeping {kept.min()}-{kept.max()} "
          f"tokens per head, batched vs one at a time: correlation {corr:.6f} (full cache {full_corr:.6f}), "
          f"max |diff| {diff:.3g}, same argmax {same}" + ("" if ok else "  FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
