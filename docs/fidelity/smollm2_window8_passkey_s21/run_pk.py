import sys, json, pyuncomp
from pyuncomp.eval import evaluate
w = int(sys.argv[1])
r = evaluate(pyuncomp.resolve_model(None), ["passkey"], ["full", "snapkv", "uncomp"], [0.05, 0.1],
             [2048], depths=(0.0, 0.25, 0.5, 0.75, 1.0), samples=1, seed=0, out_dir=f"/tmp/w32/out{w}", n_threads=2, window=w)
print(json.dumps(r["summary"], indent=1)[:3000])
