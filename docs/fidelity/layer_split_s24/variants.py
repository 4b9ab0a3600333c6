"""The layer splits compared in this folder, by name, and a switch that makes the engine's "uncomp"
method use one of them (the policy is built per set_compression, so the factory is swapped in there)."""
import pyuncomp.llama as engine
from pyuncomp.policies import SnapKV, UNComp

VARIANTS = {
    "snapkv": SnapKV,
    "uncomp": UNComp,  # the default: pyramid by depth, beta 4
    "depth-b1.5": lambda: UNComp(beta=1.5),
    "flat": lambda: UNComp(beta=1.0),  # layers equal, heads split by entropy
    "entropy-b2": lambda: UNComp(layer_order="entropy", beta=2.0),
    "entropy-b4": lambda: UNComp(layer_order="entropy", beta=4.0),
    "entropy-b2-layers": lambda: UNComp(layer_order="entropy", beta=2.0, n_stages=1000),
}
_chosen = {"factory": None}
_make_policy = engine.make_policy
engine.make_policy = lambda method, n_head_groups=2: (_chosen["factory"]() if _chosen["factory"] and method == "uncomp"
                                                      else _make_policy(method, n_head_groups))


def use(name):
    """From now on, the "uncomp" method compresses with variant ``name`` (None: the engine's own)."""
    _chosen["factory"] = None if name is None else VARIANTS[name]
