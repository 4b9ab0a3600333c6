"""Does any split of the same mean budget (ratio 0.1, lookahead 16) keep the needle's last digit? The
7k multi-key prompt of run.py; layer shares are set directly (heads of a layer share equally) and the
engine scores tokens as for snapkv.

    python split.py > split.txt
"""
from needle import LayerShares, evaluated_needle  # noqa: I001  (first: it loads pyuncomp's libllama)
import numpy as np
from pyuncomp.policies import pyramid_schedule


def bands(*runs):
    """shares from (first layer, last layer, share) runs; layers not named get 1"""
    s = np.ones(30)
    for lo, hi, share in runs:
        s[lo:hi + 1] = share
    return s


SPLITS = {
    "flat (snapkv)": np.ones(30),
    "uncomp's depth pyramid (beta 1.5)": pyramid_schedule(30, 1.5),
    "layers 5-14 x2, 15-29 x0.5": bands((5, 14, 2.0), (15, 29, 0.5)),
    "layers 5-14 x2, 0-4 and 15-29 x0.5": bands((0, 4, 0.5), (5, 14, 2.0), (15, 29, 0.5)),
    "layers 5-14 x1.5, 15-29 x0.75": bands((5, 14, 1.5), (15, 29, 0.75)),
    "layers 0-14 x1.5, 15-29 x0.5": bands((0, 14, 1.5), (15, 29, 0.5)),
}

ev, sample, tokens = evaluated_needle()
llm = ev.llm
first, state = ev._argmax(), llm.save_state()
for name, shares in SPLITS.items():
    llm.load_state(state)
    llm.set_compression(method="snapkv", ratio=0.1, lookahead=16)
    llm.policy = LayerShares(shares)
    llm.compress()
    kept = np.asarray(llm.compression_stats()["tokens_kept"]).mean(axis=1)
    out = llm.detokenize(ev._greedy(first, 12)).decode(errors="replace")
    print(f"{name}: {out!r}  (mean budget {kept.mean():.0f}; layers 0-4 {kept[:5].mean():.0f}, "
          f"5-14 {kept[5:15].mean():.0f}, 15-29 {kept[15:].mean():.0f})", flush=True)
