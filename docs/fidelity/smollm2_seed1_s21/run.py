# SmolLM2 grid with a second seed (seed 1), to pool with the seed-0 tables of docs/fidelity.md
import json, time, pyuncomp
from pyuncomp.eval import evaluate
t0 = time.time()
r = evaluate(pyuncomp.resolve_model(None), ["passkey", "niah_multikey", "niah_multivalue", "qa", "chat"],
             ["full", "snapkv", "pyramidkv", "uncomp"], [0.05, 0.1], [2048, 4096],
             depths=(0.0, 0.25, 0.5, 0.75, 1.0), samples=1, seed=1, out_dir="/tmp/seed1/out", n_threads=2)
print(f"{len(r['records'])} answers in {time.time() - t0:.0f} s")
