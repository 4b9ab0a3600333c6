"""Compare two `pyuncomp eval` results.json files answer by answer (e.g. the same command on the CPU and on
CUDA): prints every prompt and setting whose outputs differ, and how many matched.

    python tools/eval_compare.py A/results.json B/results.json
"""
import json
import sys


def keyed(path):
    return {(r["task"], r["length"], r["depth"], r["index"], r["setting"]): r for r in json.load(open(path))["records"]}


a, b = keyed(sys.argv[1]), keyed(sys.argv[2])
common = sorted(a.keys() & b.keys(), key=str)
differ = [k for k in common if a[k]["output"] != b[k]["output"]]
for k in differ:
    print(f"{' '.join(map(str, k))}: {a[k]['output'][:24]!r} (score {a[k]['score']:g}) vs {b[k]['output'][:24]!r} "
          f"(score {b[k]['score']:g})")
print(f"{len(common) - len(differ)} of {len(common)} answers equal")
