"""Gemma-3-270M's qa answers after a pruned prefill name another document's city (session 38's grid:
Prague -> Copenhagen, Kyoto -> Oslo; docs/fidelity/prune_gemma_s38). Does the pruning drop the gold
document's name or city, or keep them and still lose the answer? For every qa prompt of seeds 0-3 at 2k
(the grid's), at ratio 1 (nothing evicted after the pruning), the answers unpruned, pruned after layer 5
(the default) and after layer 11; for the pruned ones, whether the first pruned layer holds the gold
sentence's name and city tokens (its keys matched against an unpruned evaluation's, as
tests/test_prefill.py does) and how many of the gold sentence's tokens it keeps. 2 threads.

    python qa_kept.py [seeds]      # e.g. 0,1,2,3 (the default)
"""
import sys

import numpy as np

import pyuncomp
from pyuncomp.eval.runner import Evaluator, Setting
from pyuncomp.eval.tasks import make_samples

MODEL = str(pyuncomp.resolve_model("gemma3-270m"))
LAYERS = (5, 11)  # the pruning layers compared; the rows matched are those of the layer after each


def kept_positions(tokens, rows, plain, layer):
    """positions (into tokens) of the rows layer holds, matched against an unpruned evaluation's keys"""
    plain.reset()
    plain.eval(tokens)
    full = plain.cached_keys(layer)
    used = rows[~(rows == 0).all(axis=1)]
    return {int(np.argmin(np.abs(full - row).max(axis=1))) for row in used}


def main():
    seeds = [int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "0,1,2,3").split(",")]
    ev = Evaluator(MODEL, n_ctx=2560, n_threads=2)
    plain = pyuncomp.Llama(MODEL, n_ctx=2560, n_threads=2, method="snapkv", ratio=0.5, auto_compress=False,
                           verbose=False)
    llm, recorded = ev.llm, {}
    original = type(llm).eval

    def recording_eval(self, tokens, original=original):
        original(self, tokens)
        if self.prefill_kept is not None and len(tokens) > 1:
            layer = self._prefill_layer + 1
            recorded[layer] = (list(tokens), self.cached_keys(layer).copy())

    type(llm).eval = recording_eval
    settings = [Setting("uncomp", 1.0)] + [Setting("uncomp", 1.0, 0.5, layer) for layer in LAYERS]
    try:
        for seed in seeds:
            for sample in make_samples("qa", 2048, [0.0, 0.25, 0.5, 0.75, 1.0], 2, seed, ev.count_tokens):
                recorded.clear()
                recs = ev.run(sample, settings)
                tokens = recorded[LAYERS[0] + 1][0]
                name = sample.prompt.split("In which city was ")[1].split(" born?")[0]
                gold = f"Document: {name} was born in {sample.answers[0]}"
                gold_span = ev.token_span(tokens, gold)
                parts = []
                for rec, layer in zip(recs[1:], LAYERS):
                    kept = kept_positions(tokens, recorded[layer + 1][1], plain, layer + 1)
                    parts.append(f"@{layer}: {rec['score']:.0f} {rec['output'].split('.')[0].strip()!r:14s} "
                                 f"keeps {len(kept)}/{len(tokens)}, gold {sum(p in kept for p in gold_span)}/{len(gold_span)} "
                                 f"({''.join('+' if p in kept else '.' for p in gold_span)})")
                print(f"seed {seed} depth {sample.depth} #{sample.index} {sample.answers[0]:10s} unpruned "
                      f"{recs[0]['score']:.0f} {recs[0]['output'].split('.')[0].strip()!r:14s} | " + " | ".join(parts),
                      flush=True)
    finally:
        type(llm).eval = original
        ev.close()
        plain.close()


if __name__ == "__main__":
    main()
