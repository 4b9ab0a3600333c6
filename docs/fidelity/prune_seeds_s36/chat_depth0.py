"""Why the pruned prefill loses chat answers at depths 0 and 0.25 (the fact near the note's start): the chat
prompts at those depths of seeds 0 and 1 (2k, new_turns="recall", 2 threads as the harness runs had: a thread
count changes the sums' order), answered by uncomp at ratio 1 (nothing evicted: the pruned prefill alone),
0.1 and 0.05, unpruned and pruned, with where the fact's number tokens sit.
chat_depth0.txt: the first 5 of the 8 prompts (stopped for time)."""
import pyuncomp
from pyuncomp.eval.runner import Evaluator, Setting
from pyuncomp.eval.tasks import make_samples

MODEL = pyuncomp.resolve_model(None)


def recalled_chat_evaluator(**llama_kwargs):
    ev = Evaluator(MODEL, n_ctx=2560, n_threads=2, **llama_kwargs)
    ev.llm.new_turns = "recall"
    return ev


def early_chat_samples(ev):
    """(seed, sample) of the chat prompts whose fact sits at depth 0 or 0.25, seeds 0 and 1, 2k"""
    for seed in range(2):
        for sample in make_samples("chat", 2048, [0.0, 0.25], 2, seed, ev.count_tokens):
            yield seed, sample


def main():
    ev = recalled_chat_evaluator()
    settings = [Setting("uncomp", r, k) for r in (1.0, 0.1, 0.05) for k in (None, 0.5)]
    for seed, sample in early_chat_samples(ev):
        tokens = ev.prompt_tokens(sample)
        span = ev.token_span(tokens, sample.answers[0])
        print(f"seed {seed} depth {sample.depth} #{sample.index} answer {sample.answers[0]} at {span} of {len(tokens)} tokens")
        for rec in ev.run(sample, settings):
            print(f"    {rec['setting']:22s} {rec['score']:.0f} {rec['output'][:50]!r}")
    ev.close()


if __name__ == "__main__":
    main()
