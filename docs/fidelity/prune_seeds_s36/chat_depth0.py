"""Why the pruned prefill loses chat answers at depths 0 and 0.25 (the fact near the note's start): the chat
prompts at those depths of seeds 0 and 1 (2k; new_turns as given, default recall), answered by uncomp at ratio 1 (nothing evicted: the pruned
prefill alone), 0.1 and 0.05, unpruned and pruned, with where the fact's number tokens sit.
chat_depth0.txt: the first 5 of the 8 prompts (stopped for time)."""
import sys

import pyuncomp
from pyuncomp.eval.runner import Evaluator, Setting
from pyuncomp.eval.tasks import make_samples

MODEL = pyuncomp.resolve_model(None)
THREADS = int(sys.argv[1]) if len(sys.argv) > 1 else 2  # the harness runs' --threads 2 (a thread count changes the sums' order)
NEW_TURNS = sys.argv[2] if len(sys.argv) > 2 else "recall"


def main():
    ev = Evaluator(MODEL, n_ctx=2560, n_threads=THREADS)
    ev.llm.new_turns = NEW_TURNS
    settings = [Setting("uncomp", r, k) for r in (1.0, 0.1, 0.05) for k in (None, 0.5)]
    for seed in range(2):
        for sample in make_samples("chat", 2048, [0.0, 0.25], 2, seed, ev.count_tokens):
            tokens = ev.prompt_tokens(sample)
            span = ev.token_span(tokens, sample.answers[0])
            print(f"seed {seed} depth {sample.depth} #{sample.index} answer {sample.answers[0]} at {span} of {len(tokens)} tokens")
            for rec in ev.run(sample, settings):
                print(f"    {rec['setting']:22s} {rec['score']:.0f} {rec['output'][:50]!r}")
    ev.close()


if __name__ == "__main__":
    main()
