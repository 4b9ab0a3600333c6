"""Per-head profile of a compressed cache: key entropy, tokens kept, likely retrieval heads (``pyuncomp profile``).

    llm = pyuncomp.Llama(path, n_ctx=8192, method="uncomp", ratio=0.05)
    llm.eval(llm.tokenize(text.encode()))
    write_profile(profile(llm), "profile/")   # profile.json and profile.png

Likely retrieval heads: compressible KV heads among the lowest-entropy ``RETRIEVAL_FRACTION`` of all
compressible heads whose budget (tokens kept) is above the mean budget. UNComp gives low-entropy key
heads the larger budgets (their keys concentrate on few directions, as those of heads that look tokens
up do), so a head that is both is a candidate for the heads long-context retrieval relies on. A method
with one budget for every head (snapkv, streamingllm) marks none.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

import numpy as np

RETRIEVAL_FRACTION = 0.1


def retrieval_heads(entropy: List[Optional[List[float]]], tokens_kept: List[List[int]],
                    fraction: float = RETRIEVAL_FRACTION) -> List[List[bool]]:
    """Per layer and head: among the ceil(fraction x heads) lowest-entropy heads and keeping more tokens
    than the mean. Layers whose entropy is None (not compressed) mark none and count for neither."""
    rows = [i for i, e in enumerate(entropy) if e is not None]
    flags = [[False] * len(kept) for kept in tokens_kept]
    if not rows:
        return flags
    heads = [(i, h) for i in rows for h in range(len(tokens_kept[i]))]
    ent = np.array([entropy[i][h] for i, h in heads])
    kept = np.array([tokens_kept[i][h] for i, h in heads], dtype=float)
    lowest = np.argsort(ent, kind="stable")[: math.ceil(fraction * len(heads))]
    for j in lowest:
        if kept[j] > kept.mean():
            i, h = heads[j]
            flags[i][h] = True
    return flags


def profile(llm, k: int = 32) -> dict:
    """The profile of ``llm``'s cache after its last evaluation, as JSON-ready lists per cache layer and
    KV head. Entropy: what the last compression split budgets by (uncomp; sliding-window layers, not
    compressed, get None), else ``entropy_profile(k)`` of the keys the cache holds now."""
    stats = llm.compression_stats()
    if stats["entropy"] is not None:
        by_layer = iter(stats["entropy"])
        entropy = [None if il in stats["swa_layers"] else next(by_layer) for il in stats["layers"]]
        source = "compression"
    else:
        entropy = llm.entropy_profile(k)
        source = f"entropy_profile(k={k})"
    n_tokens = stats["n_tokens"]
    return {
        "model": str(llm.model_path),
        "method": stats["method"],
        "ratio": stats["ratio"],
        "n_tokens": n_tokens,
        "kv_bytes": stats["kv_bytes"],
        "kv_bytes_full": stats["kv_bytes_full"],
        "layers": stats["layers"],
        "swa_layers": stats["swa_layers"],
        "entropy_source": source,
        "entropy": entropy,
        "tokens_kept": stats["tokens_kept"],
        "budget_fraction": [[t / n_tokens for t in kept] for kept in stats["tokens_kept"]],
        "likely_retrieval_head": retrieval_heads(entropy, stats["tokens_kept"]),
        "retrieval_rule": f"among the lowest-entropy {RETRIEVAL_FRACTION:.0%} of compressed KV heads and "
                          "keeping more tokens than the mean",
    }


def write_profile(data: dict, out_dir) -> Path:
    """Writes ``profile.json`` and ``profile.png`` (entropy and tokens kept, layers x KV heads, likely
    retrieval heads circled) into out_dir; returns it."""
    from .eval.report import _pyplot

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(data, indent=1))
    plt = _pyplot()
    entropy = np.array([[np.nan] * len(kept) if e is None else e
                        for e, kept in zip(data["entropy"], data["tokens_kept"])], dtype=float)
    kept = np.array(data["tokens_kept"], dtype=float)
    marked = np.argwhere(np.array(data["likely_retrieval_head"]))
    n_layers, n_heads = kept.shape
    fig, axes = plt.subplots(1, 2, figsize=(3 + 1.2 * n_heads, 1.5 + 0.22 * n_layers), squeeze=False)
    panels = [(entropy, f"key entropy ({data['entropy_source']})", "viridis"),
              (kept, f"tokens kept of {data['n_tokens']}", "magma")]
    for ax, (grid, title, cmap) in zip(axes.flat, panels):
        image = ax.imshow(grid, cmap=cmap, aspect="auto", interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.08)
        ax.scatter(marked[:, 1], marked[:, 0], s=60, facecolors="none", edgecolors="red", linewidths=1.5)
        ax.set_title(title, fontsize=8)
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(n_layers), [str(il) for il in data["layers"]], fontsize=6)
        ax.set_xlabel("KV head", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
    fig.suptitle(f"{Path(data['model']).name}: {data['method']} {data['ratio']}, red: likely retrieval heads",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "profile.png", dpi=110)
    plt.close(fig)
    return out
