"""What the session-30 pruning diagnostics here share: seed 0's multi-key 2k prompts, the two evaluations
they compare (unpruned; a pruned prefill that the 1536-token floor limits to dropping 256 tokens), and
mapping a head's held key rows back to prompt positions."""
import numpy as np
import pyuncomp
from pyuncomp.eval.runner import Evaluator
from pyuncomp.eval.tasks import make_samples

MODEL = pyuncomp.resolve_model(None)
LLAMA_ARGS = dict(n_ctx=2560, auto_compress=False, verbose=False, shrink_cache=False)
VARIANTS = (("unpruned", {}), ("drop256", dict(prefill_prune=True, prefill_keep=0.5, prefill_min_tokens=1536)))


def multikey_prompts(indices):
    """(sample, prompt tokens) of seed 0's multi-key 2k samples at depths 0.5 / 0.75 / 1.0 (two each)."""
    ev = Evaluator(MODEL, n_ctx=2560)
    samples = make_samples("niah_multikey", 2048, [0.5, 0.75, 1.0], 2, 0, ev.count_tokens)
    prompts = [(samples[i], ev.prompt_tokens(samples[i])) for i in indices]
    ev.close()
    return prompts


def answer_positions(llm, tokens, answer):
    """Positions of the answer's tokens in the prompt (with or without a leading space), or None."""
    for text in (answer, " " + answer):
        sub = llm.tokenize(text.encode(), add_bos=False, special=False)
        for i in range(len(tokens) - len(sub) + 1):
            if tokens[i:i + len(sub)] == sub:
                return list(range(i, i + len(sub)))
    return None


def nearest_positions(rows, reference):
    """For each key row [rows, head_dim], the position whose reference key (an unpruned full evaluation's,
    same layer and head: [positions, head_dim]) is nearest by cosine, and that cosine."""
    def unit(x):
        return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)
    cos = unit(rows) @ unit(reference).T
    return cos.argmax(1), cos.max(1)
