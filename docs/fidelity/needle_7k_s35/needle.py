"""The prompt every script here traces: SmolLM2, the 7k multi-key task of seed 0 with its needle at
depth 0 (9479793), evaluated once with the full cache; and a policy with layer shares set directly."""
import pyuncomp  # noqa: I001  (first: it loads pyuncomp's libllama)
import numpy as np
from pyuncomp.eval.runner import Evaluator
from pyuncomp.eval.tasks import make_samples
from pyuncomp.policies import Policy


class LayerShares(Policy):
    """snapkv's scoring with one share per compressible layer, given in layer order (heads share equally)"""

    def __init__(self, shares):
        self.shares = shares

    def weights(self, infos):
        return [np.full(i.n_head_kv, s) for i, s in zip(infos, self.shares)]


def evaluated_needle():
    """(evaluator, sample, prompt tokens), the prompt evaluated with the full cache"""
    ev = Evaluator(str(pyuncomp.resolve_model(None)), n_ctx=7680, n_threads=2)
    sample = make_samples("niah_multikey", 7168, [0.0], 1, 0, ev.count_tokens)[0]
    tokens = ev.llm.tokenize(sample.prompt.encode())
    ev.llm.reset()
    ev.llm.eval(tokens)
    return ev, sample, tokens
