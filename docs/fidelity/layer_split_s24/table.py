"""Per-cell and pooled scores of sweep.py's results (one or more files): one row per setting."""
import json
import sys
from collections import defaultdict

records = [r for path in sys.argv[1:] for r in json.load(open(path))["records"]]
cells = sorted({(r["task"], r["length"]) for r in records})
seeds = sorted({r["seed"] for r in records})
by = defaultdict(list)
for r in records:
    by[(r["setting"], r["seed"], r["task"], r["length"])].append(r["score"])
settings = list(dict.fromkeys(r["setting"] for r in records))
print("| setting | " + " | ".join(f"{t} {n // 1024}k" for t, n in cells) + " | "
      + " | ".join(f"seed {s}" for s in seeds) + " | pooled |")
print("|---|" + "---|" * (len(cells) + len(seeds) + 1))
for name in sorted(settings, key=lambda s: (s.split()[-1] if " " in s else "", s)):
    cell = [100 * sum([x for s in seeds for x in by[(name, s, *c)]])
            / max(1, len([x for s in seeds for x in by[(name, s, *c)]])) for c in cells]
    per_seed = []
    for s in seeds:
        means = [100 * sum(by[(name, s, *c)]) / len(by[(name, s, *c)]) for c in cells if by[(name, s, *c)]]
        per_seed.append(sum(means) / len(means))
    print(f"| {name} | " + " | ".join(f"{x:.0f}" for x in cell) + " | " + " | ".join(f"{x:.2f}" for x in per_seed)
          + f" | {sum(per_seed) / len(per_seed):.2f} |")
