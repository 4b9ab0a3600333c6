"""Results of an evaluation run: JSON, markdown tables and PNG plots (matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np


def write_json(path: Path, run: dict, records: List[dict], summary: List[dict]) -> None:
    path.write_text(json.dumps({"run": run, "summary": summary, "records": records}, indent=1))


def markdown_table(summary: List[dict]) -> str:
    """Settings as rows, tasks (and their lengths) as columns, mean scores in percent."""
    columns = sorted({(r["task"], r["length"]) for r in summary if r["task"] != "average"}, key=str)
    has_average = any(r["task"] == "average" for r in summary)
    settings = list(dict.fromkeys(r["setting"] for r in summary))
    cell = {(r["setting"], r["task"], r["length"]): r["score"] for r in summary}
    kv = {r["setting"]: r["kv_fraction"] for r in summary}
    head = [f"{t} {n}" for t, n in columns] + (["average"] if has_average else [])
    lines = ["| setting | KV held | " + " | ".join(head) + " |", "|---" * (len(head) + 2) + "|"]
    for s in settings:
        values = [cell.get((s, t, n)) for t, n in columns] + ([cell.get((s, "average", None))] if has_average else [])
        shown = ["" if v is None else f"{100 * v:.0f}" for v in values]
        lines.append(f"| {s} | {kv[s]:.3f} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_heatmaps(records: List[dict], task: str, path: Path) -> None:
    """One panel per setting: mean score of task over depth (rows) x length (columns), like the
    needle-in-a-haystack figures of the UNComp paper."""
    rs = [r for r in records if r["task"] == task and r["depth"] is not None]
    if not rs:
        return
    plt = _pyplot()
    settings = list(dict.fromkeys(r["setting"] for r in rs))
    lengths = sorted({r["length"] for r in rs})
    depths = sorted({r["depth"] for r in rs})
    n_cols = min(4, len(settings))
    n_rows = -(-len(settings) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.2 * n_cols, 2.8 * n_rows), squeeze=False)
    for ax, setting in zip(axes.flat, settings):
        grid = np.full((len(depths), len(lengths)), np.nan)
        for i, d in enumerate(depths):
            for j, n in enumerate(lengths):
                scores = [r["score"] for r in rs if r["setting"] == setting and r["depth"] == d and r["length"] == n]
                if scores:
                    grid[i, j] = np.mean(scores)
        ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        ax.set_title(f"{setting}: {100 * np.nanmean(grid):.0f}%", fontsize=9)
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
        ax.set_xlabel("tokens", fontsize=7)
        ax.set_ylabel("depth", fontsize=7)
    for ax in list(axes.flat)[len(settings):]:
        ax.axis("off")
    fig.suptitle(task, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_summary(summary: List[dict], path: Path) -> None:
    """Grouped bars: mean score per task (over lengths) for each setting."""
    plt = _pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in summary))
    settings = list(dict.fromkeys(r["setting"] for r in summary))
    width = 0.8 / len(settings)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(tasks) * max(1, len(settings) / 4)), 3.6))
    for k, s in enumerate(settings):
        means = [np.mean([r["score"] for r in summary if r["task"] == t and r["setting"] == s] or [np.nan]) for t in tasks]
        ax.bar(np.arange(len(tasks)) + (k - (len(settings) - 1) / 2) * width, means, width, label=s)
    ax.set_xticks(range(len(tasks)), tasks, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.legend(fontsize=7, ncol=max(1, len(settings) // 6), loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
