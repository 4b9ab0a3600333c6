"""The probabilities of the next token at each step of the answer ": 9479793." (teacher-forced), with the
full cache and after snapkv at 0.1 and 0.2 (lookahead 16, the default): how close the last digit is.

    python margin.py > margin.txt
"""
from needle import evaluated_needle  # noqa: I001  (first: it loads pyuncomp's libllama)
import numpy as np

ev, sample, tokens = evaluated_needle()
llm = ev.llm
state = llm.save_state()
answer = llm.tokenize(b": 9479793.", add_bos=False)


def top4():
    logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),)).astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return " ".join(f"{llm.detokenize([int(t)]).decode()!r}:{p[t]:.2f}" for t in np.argsort(-p)[:4])


for name, setting in [("full", None), ("snapkv 0.1", dict(method="snapkv", ratio=0.1)),
                      ("snapkv 0.2", dict(method="snapkv", ratio=0.2))]:
    llm.load_state(state)
    if setting:
        llm.set_compression(**setting)
        llm.compress()
    print(name)
    for t in answer[:-1]:
        llm.eval([t])
        print(f"  after {llm.detokenize([t]).decode()!r}: {top4()}")
