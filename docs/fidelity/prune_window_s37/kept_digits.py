"""Does the pruned prefill drop the chat fact's later digits, or keep them and still lose the answer? The
recalled chat's second turn evaluates the whole chat again, pruned after layer 7. For the early-fact chat
prompts of seed 0 and 1 (chat_depth0.py's), at ratio 1 (nothing evicted after the pruning), this records
each pruned evaluation's tokens, finds which of them layer 8 holds (its keys matched against an unpruned
evaluation's, as tests/test_prefill.py does) and prints, for the fact's number tokens in the note, whether
they were kept, and the runs of dropped positions, with the pruning window 8 (and 32 with --wide). 2 threads,
as the harness runs had. kept_digits.txt: window 8 on the first 6 prompts (stopped for time)."""
import sys

import numpy as np

sys.path.insert(0, "../prune_seeds_s36")
from chat_depth0 import MODEL, early_chat_samples, recalled_chat_evaluator  # noqa: I001  (first: loads pyuncomp's libllama)
import pyuncomp
from pyuncomp.eval.runner import Setting

LAYER = 30 // 4 + 1  # the first pruned layer of SmolLM2


def kept_positions(tokens, rows, plain):
    """positions (into tokens) of the kept rows of layer LAYER, matched against an unpruned evaluation"""
    plain.reset()
    plain.eval(tokens)
    full = plain.cached_keys(LAYER)
    used = rows[~(rows == 0).all(axis=1)]
    return [int(np.argmin(np.abs(full - row).max(axis=1))) for row in used]


def dropped_runs(kept, n):
    """the positions not in kept, as 'first-last' runs"""
    runs, start = [], None
    for p in range(n + 1):
        if p < n and p not in kept:
            start = p if start is None else start
        elif start is not None:
            runs.append(f"{start}-{p - 1}")
            start = None
    return " ".join(runs)


def main():
    plain = pyuncomp.Llama(str(MODEL), n_ctx=2560, n_threads=2, method="snapkv", ratio=0.5, auto_compress=False,
                           verbose=False)
    for window in (8, 32) if "--wide" in sys.argv else (8,):
        ev = recalled_chat_evaluator(prefill_window=window)
        pruned_evals = []
        original = type(ev.llm).eval

        def recording_eval(self, tokens, original=original, pruned_evals=pruned_evals):
            tokens = list(tokens)
            full_tokens = list(self._input_ids[: self.n_tokens]) + tokens
            original(self, tokens)
            if self.prefill_kept is not None and len(tokens) > 1:
                pruned_evals.append((full_tokens, self.cached_keys(LAYER).copy()))
                self.prefill_kept = None

        type(ev.llm).eval = recording_eval
        try:
            for seed, sample in early_chat_samples(ev):
                pruned_evals.clear()
                rec = ev.run(sample, [Setting("uncomp", 1.0, 0.5)])[0]
                tokens, rows = pruned_evals[-1]  # the second turn's: the whole chat
                span = ev.token_span(tokens, sample.answers[0])
                kept = set(kept_positions(tokens, rows, plain))
                print(f"window {window} seed {seed} depth {sample.depth} #{sample.index} {sample.answers[0]}: "
                      f"score {rec['score']:.0f} {rec['output'][:40]!r}; {len(pruned_evals)} pruned evaluations, "
                      f"the last of {len(tokens)} tokens keeps {len(kept)}; number tokens {span}: "
                      f"{['kept' if p in kept else 'dropped' for p in span]}; around them "
                      f"{''.join('+' if p in kept else '.' for p in range(max(0, span[0] - 12), span[-1] + 13))}; "
                      f"dropped {dropped_runs(kept, len(tokens))}", flush=True)
        finally:
            type(ev.llm).eval = original
            ev.close()
    plain.close()


if __name__ == "__main__":
    main()
