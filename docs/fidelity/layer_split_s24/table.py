"""Per-cell and pooled scores of sweep.py's results (one or more files; answer_nll.py's get their own
table), beside the answers recorded for the same samples by earlier runs (full, snapkv, pyramidkv and uncomp with beta 4; seed 0:
docs/fidelity/smollm2 and smollm2_s18, seed 1: smollm2_seed1_s21). One row per setting; a cell's
score is the mean over its prompts, a seed's average the mean over its cells."""
import json
import sys
from collections import defaultdict

RECORDED = {0: ["docs/fidelity/smollm2/results.json", "docs/fidelity/smollm2_s18/results.json"],
            1: ["docs/fidelity/smollm2_seed1_s21/results.json"]}
KEEP = ("full", "snapkv 0.05", "snapkv 0.1", "pyramidkv 0.05", "pyramidkv 0.1", "uncomp 0.05", "uncomp 0.1")


def answer_nll_table(path):
    """answer_nll.py's records: per setting, the mean negative log-probability of the full cache's answer
    tokens and how many of them are still the argmax, per length and pooled."""
    records = json.load(open(path))["records"]
    lengths = sorted({r["length"] for r in records})
    print("| setting | " + " | ".join(f"NLL {n // 1024}k" for n in lengths)
          + " | NLL | same argmax | answers kept | first token NLL |")
    print("|---|" + "---|" * (len(lengths) + 4))
    for name in dict.fromkeys(r["setting"] for r in records):
        rs = [r for r in records if r["setting"] == name]
        per_len = [-sum(x for r in rs if r["length"] == n for x in r["log_p"])
                   / sum(r["n"] for r in rs if r["length"] == n) for n in lengths]
        lp = [x for r in rs for x in r["log_p"]]
        agree = [x for r in rs for x in r["agree"]]
        whole = sum(all(r["agree"]) for r in rs)
        first = [r["first_log_p"] for r in rs if r.get("first_log_p") is not None]
        print(f"| {name} | " + " | ".join(f"{x:.3f}" for x in per_len)
              + f" | {-sum(lp) / len(lp):.3f} | {100 * sum(agree) / len(agree):.1f}% | {whole}/{len(rs)} | "
              + (f"{-sum(first) / len(first):.3f}" if first else "") + " |")


def grid_table(paths, recorded=True):
    """recorded=False: every setting from paths alone (a run on another device, whose answers differ)."""
    by = defaultdict(list)  # (setting, seed, task, length) -> scores
    for seed, recorded_paths in RECORDED.items() if recorded else ():
        recorded = {}
        for path in recorded_paths:  # a later file replaces a setting: smollm2_s18 holds uncomp with beta 4
            records = json.load(open(path))["records"]
            for name in {r["setting"] for r in records} & set(KEEP):
                recorded[name] = [r for r in records if r["setting"] == name]
        for name, records in recorded.items():
            for r in records:
                by[(name, seed, r["task"], r["length"])].append(r["score"])
    for path in paths:
        for r in json.load(open(path))["records"]:
            if not recorded or r["setting"] not in KEEP:  # the sweep's own full/snapkv/uncomp answers repeat the recorded ones
                by[(r["setting"], r["seed"], r["task"], r["length"])].append(r["score"])
    settings = list(dict.fromkeys(k[0] for k in by))
    cells = sorted({k[2:] for k in by})  # (task, length)
    seeds = sorted({k[1] for k in by})
    print("| setting | " + " | ".join(f"{t} {n // 1024}k" for t, n in cells) + " | "
          + " | ".join(f"seed {s}" for s in seeds) + " | pooled |")
    print("|---|" + "---|" * (len(cells) + len(seeds) + 1))
    for name in sorted(settings, key=lambda s: (s != "full", s.split()[-1], s)):
        cell = [[x for s in seeds for x in by[(name, s, *c)]] for c in cells]
        per_seed = [sum(100 * sum(by[(name, s, *c)]) / len(by[(name, s, *c)]) for c in cells) / len(cells)
                    if all(by[(name, s, *c)] for c in cells) else None for s in seeds]
        done = [x for x in per_seed if x is not None]
        print(f"| {name} | " + " | ".join(f"{100 * sum(x) / len(x):.0f}" if x else "" for x in cell) + " | "
              + " | ".join("" if x is None else f"{x:.1f}" for x in per_seed)
              + f" | {sum(done) / len(done) if len(done) == len(seeds) else float('nan'):.2f} |")


if __name__ == "__main__":
    own = "--own" in sys.argv  # no recorded answers beside the files' own
    files = [p for p in sys.argv[1:] if p != "--own"]
    nll = [p for p in files if "log_p" in json.load(open(p))["records"][0]]
    grid_table([p for p in files if p not in nll], recorded=not own)
    for path in nll:
        print()
        answer_nll_table(path)
