"""What the pruned prefill costs, pooled over `pyuncomp eval` runs of several seeds (one results.json each).

Per setting: each task's score over every prompt of every run, each run's average (the harness's own
`summarize`, as in summary.md), the pooled average (mean over runs), and for a pruned setting its difference from the same
setting unpruned with the spread of that difference over runs and the prompts it changes either way.

    python pool.py LABEL=seed2/results.json ... [--tasks passkey,qa,...]
"""
import json
import statistics
import sys

from pyuncomp.eval.runner import summarize


def load(paths, tasks=None):
    runs = {}
    for arg in paths:
        label, _, path = arg.rpartition("=")
        runs[label or path] = [r for r in json.load(open(path))["records"] if tasks is None or r["task"] in tasks]
    return runs


def prompt_key(r):
    return (r["task"], r["length"], r["depth"], r["index"])


def run_averages(records):
    """Each setting's average of one run, in percent: summarize's over its tasks, or its one task's score."""
    rows = summarize(records)
    tasks = {r["task"] for r in rows} - {"average"}
    row_task = "average" if len(tasks) > 1 else tasks.pop()
    return {r["setting"]: 100 * r["score"] for r in rows if r["task"] == row_task}


def table(runs):
    # the settings every run has (a run may leave out e.g. the full cache, which nothing is compared with)
    settings = [s for s in dict.fromkeys(r["setting"] for rs in runs.values() for r in rs)
                if all(any(r["setting"] == s for r in rs) for rs in runs.values())]
    tasks = list(dict.fromkeys(r["task"] for rs in runs.values() for r in rs))
    print("| setting | " + " | ".join(tasks) + " | " + " | ".join(runs) + " | pooled | pruned − unpruned |")
    print("|---|" + "---|" * (len(tasks) + len(runs) + 2))
    averages = [run_averages(rs) for rs in runs.values()]
    for s in settings:
        cells = [100 * statistics.mean(r["score"] for rs in runs.values() for r in rs
                                       if r["setting"] == s and r["task"] == t) for t in tasks]
        avgs = [a[s] for a in averages]
        base = s.rsplit(" prune", 1)[0]
        diff = ""
        if base != s:
            per_run = [a[s] - a[base] for a in averages]
            up = down = 0
            for rs in runs.values():
                unpruned = {prompt_key(r): r["score"] for r in rs if r["setting"] == base}
                for r in rs:
                    if r["setting"] == s:
                        d = r["score"] - unpruned[prompt_key(r)]
                        up += d > 0
                        down += d < 0
            sd = statistics.stdev(per_run) / len(per_run) ** 0.5 if len(per_run) > 1 else float("nan")
            diff = f"{statistics.mean(per_run):+.2f} (± {sd:.2f}; prompts +{up} / −{down})"
        print(f"| {s} | " + " | ".join(f"{c:.0f}" for c in cells) + " | "
              + " | ".join(f"{a:.1f}" for a in avgs) + f" | {statistics.mean(avgs):.2f} | {diff} |")


def main(argv):
    tasks = None
    if "--tasks" in argv:
        i = argv.index("--tasks")
        tasks = argv[i + 1].split(",")
        argv = argv[:i] + argv[i + 2:]
    table(load(argv, tasks))


if __name__ == "__main__":
    main(sys.argv[1:])
