"""The layer splits compared in this folder, by name, and a switch that makes the engine's "uncomp"
method use one of them (the policy is built per set_compression, so the factory is swapped in there)."""
import numpy as np

import pyuncomp.llama as engine
from pyuncomp.eval.runner import Evaluator
from pyuncomp.policies import PyramidKV, SnapKV, UNComp

VARIANTS = {
    "snapkv": SnapKV,
    "pyramidkv": PyramidKV,  # session 33: the second baseline beside the lookahead
    "uncomp": UNComp,  # the engine's default (pyramid by depth, beta 4 until session 25, then 1.5)
    "depth-b4": lambda: UNComp(beta=4.0),
    "depth-b1.5": lambda: UNComp(beta=1.5),
    "flat": lambda: UNComp(beta=1.0),  # layers equal, heads split by entropy
    "entropy-b2": lambda: UNComp(layer_order="entropy", beta=2.0),
    # session 27: the head split. uncomp's default gives a 3-head layer 1.2 / 1.2 / 0.6 of its share; on
    # top of the depth pyramid a deep layer's less-favoured head gets ~0.4 of snapkv's flat budget
    "spread1.5": lambda: UNComp(head_spread=1.5),
    "heads-equal": lambda: UNComp(head_spread=1.0),  # only the layer stages differ from snapkv
    "floor0.75": lambda: _Floored(0.75),
}


class _Floored(UNComp):
    """uncomp's shares, none below ``floor`` of the overall mean (fit_budgets rescales to the mean)."""

    def __init__(self, floor):
        super().__init__()
        self.floor = floor

    def weights(self, layers):
        return [np.maximum(w, self.floor) for w in super().weights(layers)]


_chosen = {"factory": None}
_make_policy = engine.make_policy
engine.make_policy = lambda method, n_head_groups=2: (_chosen["factory"]() if _chosen["factory"] and method == "uncomp"
                                                      else _make_policy(method, n_head_groups))


def use(name):
    """From now on, the "uncomp" method compresses with variant ``name`` (None: the engine's own)."""
    _chosen["factory"] = None if name is None else VARIANTS[name]


def evaluator(model_path, lengths, **llama_kwargs) -> Evaluator:
    """An Evaluator whose context holds the longest prompt (a few percent over its target) and its answer."""
    return Evaluator(str(model_path), n_ctx=-(-(int(max(lengths) * 1.05) + 256) // 256) * 256, **llama_kwargs)
