"""Passkey retrieval over a length x depth grid for several methods; prints a markdown table.

    python tools/passkey_grid.py --model smollm2-135m --fillers 180 --methods full,snapkv,streamingllm --ratio 0.05
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import pyuncomp  # noqa: E402
from test_engine import passkey_key, passkey_prompt  # noqa: E402  (the same prompt as the tests)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--fillers", type=int, nargs="+", default=[180])
    ap.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ap.add_argument("--methods", default="full,snapkv,streamingllm")
    ap.add_argument("--ratio", type=float, default=0.05)
    ap.add_argument("--pool-kernel", type=int, default=None, help="pooling kernel (default: pyuncomp's)")
    ap.add_argument("--window", type=int, default=None, help="observation window (default: pyuncomp's)")
    a = ap.parse_args()
    overrides = {k: v for k, v in (("pool_kernel", a.pool_kernel), ("window", a.window)) if v is not None}
    path = str(pyuncomp.resolve_model(a.model))
    print(f"model {Path(path).name}, ratio {a.ratio} (full: 1.0) {overrides}\n")
    print("| method | tokens | " + " | ".join(f"depth {d}" for d in a.depths) + " | score |")
    print("|---" * (len(a.depths) + 3) + "|")
    for method in a.methods.split(","):
        ratio = 1.0 if method == "full" else a.ratio
        for n_filler in a.fillers:
            llm = pyuncomp.Llama(path, n_ctx=n_filler * 25 + 512, method=method, ratio=ratio, verbose=False,
                                 **(overrides if method != "full" else {}))
            cells, n_tokens = [], 0
            for depth in a.depths:
                key = passkey_key(depth, salt=n_filler)
                out = llm(passkey_prompt(n_filler, depth, key), max_tokens=8, temperature=0.0)
                n_tokens = out["usage"]["prompt_tokens"]
                cells.append("✓" if key in out["choices"][0]["text"] else "✗")
            llm.close()
            print(f"| {method} | {n_tokens} | " + " | ".join(cells) + f" | {cells.count('✓')}/{len(cells)} |",
                  flush=True)


if __name__ == "__main__":
    main()
