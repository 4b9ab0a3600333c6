"""Does the pruned prefill lose the chat's fact because its ranking sees only the template? In recall mode the
second turn evaluates the whole chat again, pruned after layer 7 by the attention of the last `window` queries.
With the default window of 8 those are the turn's closing template tokens; 32 also covers the question
("What is my lucky number? ..."). Ratio 1 (nothing evicted afterwards): the pruned prefill alone. Chat
prompts at depths 0 and 0.25 of seeds 0 and 1, 2k, 2 threads."""
from chat_depth0 import early_chat_samples, recalled_chat_evaluator  # noqa: I001  (first: it loads pyuncomp's libllama)
from pyuncomp.eval.runner import Setting

for window in (8, 32):
    ev = recalled_chat_evaluator(window=window)
    right = 0
    for seed, sample in early_chat_samples(ev):
        rec = ev.run(sample, [Setting("uncomp", 1.0, 0.5)])[0]
        right += rec["score"] == 1
        print(f"window {window} seed {seed} depth {sample.depth} #{sample.index} {sample.answers[0]}: "
              f"{rec['score']:.0f} {rec['output'][:50]!r}", flush=True)
    print(f"window {window}: {right} of 8 right")
    ev.close()
