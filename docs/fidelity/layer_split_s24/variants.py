"""The layer splits compared in this folder, by name, and a switch that makes the engine's "uncomp"
method use one of them (the policy is built per set_compression, so the factory is swapped in there)."""
import pyuncomp.llama as engine
from pyuncomp.eval.runner import Evaluator
from pyuncomp.policies import SnapKV, UNComp

VARIANTS = {
    "snapkv": SnapKV,
    "uncomp": UNComp,  # the engine's default (pyramid by depth, beta 4 until session 25, then 1.5)
    "depth-b4": lambda: UNComp(beta=4.0),
    "depth-b1.5": lambda: UNComp(beta=1.5),
    "flat": lambda: UNComp(beta=1.0),  # layers equal, heads split by entropy
    "entropy-b2": lambda: UNComp(layer_order="entropy", beta=2.0),
}
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
